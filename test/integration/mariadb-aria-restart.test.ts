/**
 * Issue 21 item 7: encrypted Aria system tables (mysql.proc, mysql.event, ...) must survive restarts.
 * The Aria log lives on tmpfs (it is never encrypted), and `cdbp up` / a container restart empties that
 * directory after a clean stop. Without the Aria control file Aria gets a new UUID, "zerofills" every
 * table as moved, and MariaDB 10.11 then fails to decrypt mysql.proc. The control file is therefore kept
 * in the datadir (MariadbServerOptions.ariaLogDir, pinAriaControlFile). Facts: docs/KEYRING.md.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { lstatSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { startKeyedMariadb, type KeyedMariadb } from '../support/at-rest.ts';

async function createObjects(db: KeyedMariadb): Promise<void> {
  await db.query('CREATE DATABASE app');
  await db.query('CREATE TABLE app.inno (id INT PRIMARY KEY, v VARCHAR(40)) ENGINE=InnoDB');
  await db.query("INSERT INTO app.inno VALUES (1, 'one'), (2, 'two')");
  await db.query('CREATE TABLE app.aria (id INT PRIMARY KEY, v VARCHAR(40)) ENGINE=Aria TRANSACTIONAL=1');
  await db.query("INSERT INTO app.aria VALUES (1, 'aria-one'), (2, 'aria-two')");
  await db.query('CREATE VIEW app.v AS SELECT id, UPPER(v) AS u FROM app.inno');
  // Enough routines to span several mysql.proc pages.
  for (let i = 0; i < 30; i++) {
    await db.query(`CREATE PROCEDURE app.p${i}(IN x INT) BEGIN SELECT x + ${i} AS r, '${'body'.repeat(40)}' AS pad; END`);
  }
  await db.query('CREATE FUNCTION app.f(x INT) RETURNS INT DETERMINISTIC RETURN x * 2');
  await db.query("CREATE EVENT app.e ON SCHEDULE EVERY 1 DAY DISABLE DO INSERT INTO app.inno VALUES (99, 'event')");
}

/** Reads every object back; throws (with MariaDB's message) if any system table is unreadable. */
async function readBack(db: KeyedMariadb, extraRoutines = 0): Promise<void> {
  const [[p0]] = await db.query('CALL app.p0(1)');
  assert.equal(Number(p0.r), 1);
  const [[p29]] = await db.query('CALL app.p29(1)');
  assert.equal(Number(p29.r), 30);
  const [{ f }] = await db.query('SELECT app.f(21) AS f');
  assert.equal(Number(f), 42);
  const procs = await db.query("SELECT COUNT(*) AS n FROM mysql.proc WHERE db = 'app'");
  assert.equal(Number(procs[0].n), 31 + extraRoutines);
  const events = await db.query("SELECT EVENT_NAME AS n FROM information_schema.EVENTS WHERE EVENT_SCHEMA = 'app'");
  assert.deepEqual(events.map((e: { n: string }) => e.n), ['e']);
  const view = await db.query('SELECT u FROM app.v ORDER BY id');
  assert.deepEqual(view.map((r: { u: string }) => r.u).slice(0, 2), ['ONE', 'TWO']);
  const aria = await db.query('SELECT v FROM app.aria ORDER BY id');
  assert.deepEqual(aria.map((r: { v: string }) => r.v).slice(0, 2), ['aria-one', 'aria-two']);
  for (const t of ['mysql.proc', 'mysql.event', 'mysql.global_priv', 'mysql.db', 'app.aria']) {
    const rows = await db.query(`CHECK TABLE ${t}`);
    assert.equal(rows.at(-1).Msg_text, 'OK', `${t}: ${JSON.stringify(rows)}`);
  }
  // Accounts (mysql.global_priv) still work.
  await db.query('SELECT 1');
}

/** What `cdbp up` does after a clean stop and what a container restart does: the tmpfs is emptied. */
function emptyAriaLogDir(db: KeyedMariadb, keepControlLink: boolean): void {
  for (const f of readdirSync(db.ariaLogDir!)) {
    if (keepControlLink && f === 'aria_log_control') continue;
    rmSync(path.join(db.ariaLogDir!, f), { force: true });
  }
}

function moved(db: KeyedMariadb): string[] {
  return readFileSync(db.server.errorLog, 'utf8').split('\n').filter((l) => /Zerofilling moved table|failed to decrypt|Couldn't repair/.test(l));
}

test('procedures, views, events and Aria tables survive clean restarts with an emptied Aria log dir, and kill -9', async () => {
  const db = await startKeyedMariadb({ encryption: true });
  try {
    const control = path.join(db.ariaLogDir!, 'aria_log_control');
    assert.ok(lstatSync(control).isSymbolicLink(), 'the Aria control file in the tmpfs dir is a link');
    assert.ok(lstatSync(path.join(db.server.datadir, 'aria_log_control')).isFile(), 'the control file itself is in the datadir');
    await createObjects(db);
    await readBack(db);

    // Clean restart, the whole tmpfs dir emptied (control link included: it is recreated).
    await db.stop();
    emptyAriaLogDir(db, false);
    await db.start();
    await readBack(db);
    // Twice: the new Aria log numbering after a lost log must not matter either.
    await db.stop();
    emptyAriaLogDir(db, false);
    await db.start();
    await readBack(db);

    // Crash with writes in flight to Aria system and user tables; the tmpfs survives (only mariadbd died).
    await db.query('CREATE PROCEDURE app.late() SELECT 7 AS r');
    await db.query("INSERT INTO app.aria VALUES (3, 'aria-three')");
    await db.server.kill();
    await db.start();
    await readBack(db, 1);
    const [[late]] = await db.query('CALL app.late()');
    assert.equal(Number(late.r), 7);
    const [{ n }] = await db.query('SELECT COUNT(*) AS n FROM app.aria');
    assert.equal(Number(n), 3);

    // And a clean restart after that recovery.
    await db.stop();
    emptyAriaLogDir(db, false);
    await db.start();
    await readBack(db, 1);
    assert.deepEqual(moved(db), [], 'no table was treated as moved, nothing failed to decrypt');
  } finally {
    await db.destroy();
  }
});

test('control: without the pinned control file the same clean restart breaks mysql.proc (the MariaDB behaviour behind issue 21)', async () => {
  const db = await startKeyedMariadb({ encryption: true });
  try {
    await createObjects(db);
    await db.stop();
    // The layout before the fix: the control file only on tmpfs, lost with it.
    rmSync(path.join(db.server.datadir, 'aria_log_control'));
    emptyAriaLogDir(db, false);
    await db.start();
    await assert.rejects(readBack(db));
    assert.ok(moved(db).some((l) => /Zerofilling moved table/.test(l)), moved(db).join('\n'));
    assert.ok(moved(db).some((l) => /failed to decrypt '\.\/mysql\/proc'/.test(l)), moved(db).join('\n'));
  } finally {
    await db.destroy();
  }
});
