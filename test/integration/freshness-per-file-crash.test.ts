/**
 * Issue 22 after crashes: kill -9 of mariadbd (and the proxy) under write load. The inventory sealed by
 * the last background sweep still catches each attack on a copy of the crashed volume (a table file,
 * ibdata1, an undo tablespace or all of them put back, a foreign file, a copy beside, a swap, a deletion);
 * legitimate DDL
 * (TRUNCATE, OPTIMIZE, CREATE DATABASE, DROP TABLE, RENAME) never raises a false alarm, after a clean stop
 * or a crash; and a seeded loop of crash/restart cycles under write load never does either
 * (CDBP_PERFILE_CRASH_CYCLES raises its count; the default keeps CI time modest).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, existsSync, readFileSync, renameSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import { startStack, expectStackFailure, connectThroughProxy, queryThroughProxy, removeStackVolatile, type RunningStack } from '../support/stack.ts';
import { tempDir } from '../support/tmp.ts';
import { prng } from '../support/prng.ts';
import { volatileDir } from '../../cli/commands/up.ts';

const SWEEP_ENV = { CDBP_INVENTORY_SWEEP_MS: '700' };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const sql = queryThroughProxy;

function childPid(s: RunningStack, role: 'proxy' | 'cas'): number {
  const kids = readFileSync(`/proc/${s.proc.pid}/task/${s.proc.pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  const pid = kids.find((p) => readFileSync(`/proc/${p}/cmdline`, 'utf8').replace(/\0/g, ' ').includes(` ${role}`));
  assert.ok(pid, `no ${role} child of cdbp up`);
  return pid;
}

async function status(s: RunningStack): Promise<any> {
  return (await fetch(`${s.stack.ops.url}/v1/status`)).json();
}

/** Inserts from `n` connections until stopped; returns the values whose OK reached the client. */
function writeLoad(s: RunningStack, n: number, table = 'app.t'): { stop: () => Promise<string[]> } {
  const acked: string[] = [];
  let stopping = false;
  const one = async (w: number) => {
    let c;
    try {
      c = await connectThroughProxy(s.stack);
      c.on('error', () => undefined);
      for (let i = 0; !stopping; i++) {
        const v = `w${w}-${i}-${Date.now()}`;
        await c.query(`INSERT INTO ${table} (v) VALUES (?)`, [v]);
        acked.push(v);
      }
    } catch {
      // the crash cut the connection
    } finally {
      c?.destroy();
    }
  };
  const all = Array.from({ length: n }, (_, w) => one(w));
  return { stop: async () => { stopping = true; await Promise.all(all); return acked; } };
}

/** kill -9 of mariadbd and the proxy (the CAS survives), then the stack's own exit. */
async function crash(s: RunningStack, alsoProxy = true): Promise<void> {
  const proxy = childPid(s, 'proxy');
  process.kill(s.stack.mariadb.pid!, 'SIGKILL');
  if (alsoProxy) process.kill(proxy, 'SIGKILL');
  await s.stop();
}

function logSize(dir: string): number {
  const f = path.join(dir, 'run', 'proxy.log');
  return existsSync(f) ? statSync(f).size : 0;
}

async function currentLsn(s: RunningStack): Promise<bigint> {
  const [rows] = await sql(s, "SHOW GLOBAL STATUS LIKE 'Innodb_lsn_current'");
  return BigInt(rows[0].Value);
}

/** Until an epoch the CAS counted carries an inventory whose witnesses may reach LSN `lsn`. */
async function waitForCountedInventory(s: RunningStack, lsn: bigint): Promise<void> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const st = await status(s);
    if (st.freshness.inventory && BigInt(st.freshness.inventory.durableLsn) >= lsn) return;
    assert.ok(Date.now() < deadline, `no counted inventory reached LSN ${lsn}: ${JSON.stringify(st.freshness)}`);
    await sleep(200);
  }
}

async function expectFresh(dir: string): Promise<RunningStack> {
  const at = logSize(dir);
  const s = await startStack(dir, [], SWEEP_ENV);
  const log = readFileSync(path.join(dir, 'run', 'proxy.log')).subarray(at).toString('utf8');
  assert.doesNotMatch(log, /freshness violation/, 'no alarm');
  const st = await status(s);
  assert.equal(st.freshness.verified, true);
  return s;
}

/** Puts the untrusted volume back to `from` (a copy taken by the test) and clears the stack's volatile dir. */
function restoreVolume(dir: string, from: string): void {
  const untrusted = path.join(dir, 'untrusted');
  rmSync(untrusted, { recursive: true, force: true });
  cpSync(from, untrusted, { recursive: true });
  rmSync(volatileDir(dir), { recursive: true, force: true });
}

/**
 * A start that must be refused for `reason`. `offline`: refused before the keyring served a key and before
 * mariadbd started; otherwise by the online check (a file missing or moved after a crash is judged against
 * InnoDB's dictionary), which still refuses before any client is served.
 */
async function expectRefused(dir: string, reason: RegExp, offline: boolean): Promise<void> {
  const at = logSize(dir);
  const fail = await expectStackFailure(dir, [], SWEEP_ENV);
  assert.equal(fail.code, 1, fail.output);
  assert.match(fail.output, /ROLLBACK_DETECTED/);
  assert.match(fail.output, reason);
  const log = readFileSync(path.join(dir, 'run', 'proxy.log')).subarray(at).toString('utf8');
  assert.match(log, /freshness violation/);
  assert.doesNotMatch(log, /proxy ready|"state":"ready"/, 'no client was ever served');
  if (offline) assert.doesNotMatch(log, /keyring ready|keyring request|mariadbd started/, 'refused before the keyring released any key');
}

test('kill -9 under write load: data files put back, swapped, deleted or added afterwards are each refused; the crashed volume itself starts with every acknowledged row', async (t) => {
  const tmp = tempDir('perfile-kill');
  t.after(() => tmp.remove());
  const dir = path.join(tmp.path, 'stack');
  t.after(() => removeStackVolatile(dir));
  const data = path.join(dir, 'untrusted', 'mariadb');
  const old = path.join(tmp.path, 'old');
  const crashed = path.join(tmp.path, 'crashed');
  let s = await startStack(dir, [], SWEEP_ENV);
  await sql(s, 'CREATE DATABASE app',
    'CREATE TABLE app.t (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(200)) ENGINE=InnoDB',
    'CREATE TABLE app.u (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(200)) ENGINE=InnoDB',
    'CREATE TABLE app.gone (id INT PRIMARY KEY) ENGINE=InnoDB',
    "INSERT INTO app.t (v) SELECT REPEAT('a', 200) FROM app.seq_1_to_300",
    "INSERT INTO app.u (v) SELECT REPEAT('a', 200) FROM app.seq_1_to_300",
    'INSERT INTO app.gone SELECT seq FROM app.seq_1_to_10');
  assert.equal(await s.stop(), 0);
  cpSync(path.join(dir, 'untrusted'), old, { recursive: true });

  s = await startStack(dir, [], SWEEP_ENV);
  // Keep the page cleaner flushing so the checkpoint (and with it the durable witnesses) moves under load.
  await sql(s, 'SET GLOBAL innodb_max_dirty_pages_pct_lwm = 0.001', 'SET GLOBAL innodb_max_dirty_pages_pct = 0', 'DROP TABLE app.gone');
  const load = writeLoad(s, 2);
  const loadU = writeLoad(s, 2, 'app.u');
  await sleep(2000);
  // The guarantee covers what a counted inventory saw durable: wait until one reaches past the load's
  // first writes, then past everything the sweep that saw them read (a page rewritten all the time, like
  // an undo log page, is witnessed once a later checkpoint passes the version the sweep read).
  await waitForCountedInventory(s, await currentLsn(s));
  await waitForCountedInventory(s, await currentLsn(s));
  await crash(s);
  const acked = await load.stop();
  const ackedU = await loadU.stop();
  assert.ok(acked.length > 20 && ackedU.length > 20, `writers got ${acked.length} + ${ackedU.length} acknowledgments`);
  cpSync(path.join(dir, 'untrusted'), crashed, { recursive: true });
  const oldFile = (f: string) => path.join(old, 'mariadb', f);

  await t.test('one table file put back', async () => {
    restoreVolume(dir, crashed);
    cpSync(oldFile('app/t.ibd'), path.join(data, 'app', 't.ibd'));
    // A witness page older in the copy, or past its end (the load grew the file since the copy).
    await expectRefused(dir, /ROLLBACK_DETECTED: .*data file app\/t\.ibd rolled back: (page \d+ carries LSN \d+, behind the \d+ the sealed inventory saw|it has \d+ pages, behind the sealed inventory, which saw page \d+ written at LSN \d+ \(an older, shorter copy\))/, true);
  });

  await t.test('all InnoDB data files put back (the crashed redo log, binlog and record kept)', async () => {
    restoreVolume(dir, crashed);
    for (const f of ['ibdata1', 'undo001', 'undo002', 'undo003', 'app/t.ibd', 'app/u.ibd']) cpSync(oldFile(f), path.join(data, f));
    await expectRefused(dir, /data file \S+ rolled back/, true);
  });

  await t.test('older ibdata1 alone', async () => {
    restoreVolume(dir, crashed);
    cpSync(oldFile('ibdata1'), path.join(data, 'ibdata1'));
    await expectRefused(dir, /data file ibdata1 rolled back/, true);
  });

  await t.test('an older undo tablespace alone (each one the load wrote)', async () => {
    const changed = ['undo001', 'undo002', 'undo003'].filter((f) => !readFileSync(oldFile(f)).equals(readFileSync(path.join(crashed, 'mariadb', f))));
    assert.ok(changed.length > 0, 'the load wrote undo records');
    for (const f of changed) {
      restoreVolume(dir, crashed);
      cpSync(oldFile(f), path.join(data, f));
      await expectRefused(dir, new RegExp(`data file ${f} rolled back`), true);
    }
  });

  await t.test('a foreign file: the dropped table\'s old file put back', async () => {
    restoreVolume(dir, crashed);
    cpSync(oldFile('app/gone.ibd'), path.join(data, 'app', 'gone.ibd'));
    cpSync(oldFile('app/gone.frm'), path.join(data, 'app', 'gone.frm'));
    await expectRefused(dir, /data file app\/gone\.ibd \(space id \d+\) is not in the sealed inventory .* a file from elsewhere/, true);
  });

  await t.test('an older copy of a live table\'s file beside it', async () => {
    restoreVolume(dir, crashed);
    cpSync(oldFile('app/t.ibd'), path.join(data, 'app', 'copy.ibd'));
    await expectRefused(dir, /are the same tablespace \(space id \d+\)/, true);
  });

  await t.test('two tables\' files swapped (after a crash: judged against the dictionary, before any client)', async () => {
    restoreVolume(dir, crashed);
    renameSync(path.join(data, 'app', 't.ibd'), path.join(data, 'app', 'x.tmp'));
    renameSync(path.join(data, 'app', 'u.ibd'), path.join(data, 'app', 't.ibd'));
    renameSync(path.join(data, 'app', 'x.tmp'), path.join(data, 'app', 'u.ibd'));
    // Either InnoDB's crash recovery looks for the tablespace where the dictionary has it and refuses
    // (it still had redo for it), or the server starts and the dictionary check refuses.
    await expectRefused(dir, /data file app\/(t|u)\.ibd holds space id \d+(, which InnoDB's dictionary names app\/(u|t) | \(sealed at app\/(u|t)\.ibd\), and InnoDB's crash recovery looks for it at app\/(u|t)\.ibd).*files swapped or moved/, false);
  });

  await t.test('a table file deleted (after a crash: judged against the dictionary, before any client)', async () => {
    restoreVolume(dir, crashed);
    rmSync(path.join(data, 'app', 'u.ibd'));
    await expectRefused(dir, /data file app\/u\.ibd \(space id \d+(, table app\/u\) is missing but the table was not dropped|\) is missing, and InnoDB's crash recovery still has changes for it)/, false);
  });

  await t.test('the crashed volume itself: no alarm, every acknowledged row', async () => {
    restoreVolume(dir, crashed);
    s = await expectFresh(dir);
    try {
      for (const [table, values] of [['app.t', acked], ['app.u', ackedU]] as const) {
        const [rows] = await sql(s, `SELECT v FROM ${table}`);
        const present = new Set((rows as Array<{ v: string }>).map((r) => r.v));
        assert.deepEqual(values.filter((v) => !present.has(v)), [], `acknowledged rows of ${table} missing`);
      }
    } finally {
      assert.equal(await s.stop(), 0);
    }
  });
});

const DDL_SETUP = [
  'CREATE DATABASE IF NOT EXISTS app',
  'CREATE TABLE IF NOT EXISTS app.t (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(200)) ENGINE=InnoDB',
  'CREATE TABLE IF NOT EXISTS app.a (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(200)) ENGINE=InnoDB',
  'CREATE TABLE IF NOT EXISTS app.b (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(200)) ENGINE=InnoDB',
  'CREATE TABLE IF NOT EXISTS app.c (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(200)) ENGINE=InnoDB',
  'CREATE TABLE IF NOT EXISTS app.d (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(200)) ENGINE=InnoDB',
  "INSERT INTO app.a (v) SELECT REPEAT('a', 200) FROM app.seq_1_to_200",
  "INSERT INTO app.b (v) SELECT REPEAT('b', 200) FROM app.seq_1_to_200",
  "INSERT INTO app.c (v) SELECT REPEAT('c', 200) FROM app.seq_1_to_200",
  "INSERT INTO app.d (v) SELECT REPEAT('d', 200) FROM app.seq_1_to_200",
];

const DDL = (round: number) => [
  'TRUNCATE TABLE app.a',
  "INSERT INTO app.a (v) SELECT REPEAT('x', 200) FROM app.seq_1_to_50",
  'OPTIMIZE TABLE app.b',
  `CREATE DATABASE app_${round}`,
  `CREATE TABLE app_${round}.n (id INT PRIMARY KEY) ENGINE=InnoDB`,
  `INSERT INTO app_${round}.n SELECT seq FROM app.seq_1_to_100`,
  'DROP TABLE app.c',
  'RENAME TABLE app.d TO app.d2, app.d2 TO app.d',
  'ALTER TABLE app.b ADD COLUMN IF NOT EXISTS w INT',
];

test('no false alarm: DDL followed by a clean stop, and DDL followed by kill -9, then start → fresh', async (t) => {
  const tmp = tempDir('perfile-ddl');
  t.after(() => tmp.remove());
  const dir = path.join(tmp.path, 'stack');
  t.after(() => removeStackVolatile(dir));
  let s = await startStack(dir, [], SWEEP_ENV);
  await sql(s, ...DDL_SETUP);
  await sleep(2000); // a sweep with every table in it is sealed
  await sql(s, ...DDL(1));
  assert.equal(await s.stop(), 0);

  s = await expectFresh(dir);
  await sql(s, ...DDL_SETUP);
  await sleep(2000);
  const load = writeLoad(s, 2);
  await sql(s, ...DDL(2));
  await crash(s);
  await load.stop();

  s = await expectFresh(dir);
  await sql(s, ...DDL_SETUP);
  await sleep(2000);
  await sql(s, ...DDL(3));
  await crash(s, false); // mariadbd only: the proxy's clean stop then sweeps the stopped files exactly
  s = await expectFresh(dir);
  assert.equal(await s.stop(), 0);
});

test('no false alarm: seeded crash/restart loop (kill -9 of mariadbd under write load and DDL), every acknowledged row present after each restart', async (t) => {
  const cycles = Number(process.env.CDBP_PERFILE_CRASH_CYCLES ?? '4');
  const seed = Number(process.env.CDBP_PERFILE_SEED ?? '22');
  const rnd = prng(seed);
  const tmp = tempDir('perfile-loop');
  t.after(() => tmp.remove());
  const dir = path.join(tmp.path, 'stack');
  t.after(() => removeStackVolatile(dir));
  let s = await startStack(dir, [], SWEEP_ENV);
  await sql(s, ...DDL_SETUP, 'SET GLOBAL innodb_max_dirty_pages_pct = 0');
  const acked: string[] = [];
  for (let i = 0; i < cycles; i++) {
    const load = writeLoad(s, 3);
    const ddl = rnd() < 0.5 ? DDL(100 + i) : [];
    const wait = 300 + Math.floor(rnd() * 2500);
    const alsoProxy = rnd() < 0.7;
    await sleep(wait / 2);
    try { await sql(s, ...ddl); } catch { /* a DDL cut by the crash is fine */ }
    await sleep(wait / 2);
    await crash(s, alsoProxy);
    acked.push(...await load.stop());
    try {
      s = await expectFresh(dir);
      const [rows] = await sql(s, 'SELECT v FROM app.t');
      const present = new Set((rows as Array<{ v: string }>).map((r) => r.v));
      assert.deepEqual(acked.filter((v) => !present.has(v)), [], 'every acknowledged row is present');
    } catch (e) {
      throw new Error(`cycle ${i} (seed ${seed}, wait ${wait} ms, ddl ${ddl.length > 0}, proxy killed ${alsoProxy}): ${(e as Error).message}`);
    }
    await sql(s, ...DDL_SETUP, 'SET GLOBAL innodb_max_dirty_pages_pct = 0');
  }
  assert.equal(await s.stop(), 0);
});
