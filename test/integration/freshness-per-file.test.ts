/**
 * Issue 22 end to end: real `cdbp up` stacks (CAS, proxy, MariaDB with the key plugin); data files of the
 * untrusted volume put back, swapped, deleted or added as an attacker with root would, keeping the newest
 * redo log, binlog and sealed record. Each is refused with its reason, before the keyring serves a key.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, existsSync, readFileSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import { startStack, expectStackFailure, connectThroughProxy, queryThroughProxy, removeStackVolatile, type RunningStack } from '../support/stack.ts';
import { tempDir } from '../support/tmp.ts';
import { volatileDir } from '../../cli/commands/up.ts';

function restore(dir: string, untrusted: string, from: string): void {
  rmSync(untrusted, { recursive: true, force: true });
  cpSync(from, untrusted, { recursive: true });
  rmSync(volatileDir(dir), { recursive: true, force: true });
}

const sql = queryThroughProxy;

async function count(s: RunningStack, table: string): Promise<number> {
  const [r] = await sql(s, `SELECT COUNT(*) AS n FROM ${table}`);
  return Number(r[0].n);
}

/** Proxy log lines written by the next start (the log is appended across starts). */
function logSince(dir: string, offset: number): string {
  const file = path.join(dir, 'run', 'proxy.log');
  return existsSync(file) ? readFileSync(file).subarray(offset).toString('utf8') : '';
}
const logSize = (dir: string) => (existsSync(path.join(dir, 'run', 'proxy.log')) ? statSync(path.join(dir, 'run', 'proxy.log')).size : 0);

/** A start that must be refused for `reason`, offline: the keyring never started, so no key was served. */
async function expectRefusedOffline(dir: string, reason: RegExp): Promise<string> {
  const at = logSize(dir);
  const fail = await expectStackFailure(dir);
  assert.equal(fail.code, 1, fail.output);
  assert.match(fail.output, /ROLLBACK_DETECTED|TAMPER_DETECTED/);
  assert.match(fail.output, reason);
  const log = logSince(dir, at);
  assert.match(log, /freshness violation/);
  assert.doesNotMatch(log, /keyring ready|keyring request|mariadbd started/, 'the keyring released no key and mariadbd never started');
  return fail.output;
}

test('data files put back, swapped, deleted or added under the newest redo log and record are refused offline; the real state starts', async (t) => {
  const tmp = tempDir('perfile');
  t.after(() => tmp.remove());
  const dir = path.join(tmp.path, 'stack');
  t.after(() => removeStackVolatile(dir));
  const untrusted = path.join(dir, 'untrusted');
  const data = path.join(untrusted, 'mariadb');
  const snapA = path.join(tmp.path, 'snap-a');
  const snapB = path.join(tmp.path, 'snap-b');

  let s = await startStack(dir);
  await sql(s, 'CREATE DATABASE app', 'USE app',
    'CREATE TABLE app.t (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(200)) ENGINE=InnoDB',
    'CREATE TABLE app.u (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(200)) ENGINE=InnoDB',
    'CREATE TABLE app.gone (id INT PRIMARY KEY) ENGINE=InnoDB',
    "INSERT INTO app.t (v) SELECT REPEAT('a', 200) FROM seq_1_to_300",
    "INSERT INTO app.u (v) SELECT REPEAT('a', 200) FROM seq_1_to_300",
    'INSERT INTO app.gone SELECT seq FROM seq_1_to_10');
  assert.equal(await s.stop(), 0);
  assert.match(readFileSync(path.join(dir, 'run', 'proxy.log'), 'utf8'), /exact data-file inventory sealed after the clean stop/);
  cpSync(untrusted, snapA, { recursive: true });

  s = await startStack(dir);
  // Few writes, so the redo checkpoint alone would not show the rollback (docs/FRESHNESS.md "Open").
  for (let i = 0; i < 20; i++) await sql(s, "INSERT INTO app.t (v) VALUES ('b')", "INSERT INTO app.u (v) VALUES ('b')");
  await sql(s, 'DROP TABLE app.gone');
  assert.equal(await count(s, 'app.t'), 320);
  assert.equal(await s.stop(), 0);
  cpSync(untrusted, snapB, { recursive: true });

  await t.test('one table file put back', async () => {
    restore(dir, untrusted, snapB);
    cpSync(path.join(snapA, 'mariadb', 'app', 't.ibd'), path.join(data, 'app', 't.ibd'));
    await expectRefusedOffline(dir, /data file app\/t\.ibd rolled back: page \d+ carries LSN \d+, behind the \d+ the sealed inventory saw/);
  });

  await t.test('all InnoDB data files put back (newest redo log, binlog and record kept)', async () => {
    restore(dir, untrusted, snapB);
    for (const f of ['ibdata1', 'undo001', 'undo002', 'undo003', 'app/t.ibd', 'app/u.ibd', 'mysql/innodb_table_stats.ibd', 'mysql/innodb_index_stats.ibd']) {
      cpSync(path.join(snapA, 'mariadb', f), path.join(data, f));
    }
    await expectRefusedOffline(dir, /rolled back: page/);
  });

  await t.test('older ibdata1 alone (system tablespace: dictionary, change buffer)', async () => {
    restore(dir, untrusted, snapB);
    cpSync(path.join(snapA, 'mariadb', 'ibdata1'), path.join(data, 'ibdata1'));
    await expectRefusedOffline(dir, /data file ibdata1 rolled back/);
  });

  await t.test('older undo tablespaces alone (the managed server keeps its undo logs in undo001-003)', async () => {
    // Which undo tablespace the 20 commits used depends on the rollback segments they got: put back
    // each one that changed, one at a time.
    const changed = ['undo001', 'undo002', 'undo003']
      .filter((f) => !readFileSync(path.join(snapA, 'mariadb', f)).equals(readFileSync(path.join(snapB, 'mariadb', f))));
    assert.ok(changed.length > 0, 'the writes since snapshot A changed an undo tablespace');
    for (const f of changed) {
      restore(dir, untrusted, snapB);
      cpSync(path.join(snapA, 'mariadb', f), path.join(data, f));
      await expectRefusedOffline(dir, new RegExp(`data file ${f} rolled back`));
    }
  });

  await t.test('two tables\' files swapped', async () => {
    restore(dir, untrusted, snapB);
    renameSync(path.join(data, 'app', 't.ibd'), path.join(data, 'app', 'x.tmp'));
    renameSync(path.join(data, 'app', 'u.ibd'), path.join(data, 'app', 't.ibd'));
    renameSync(path.join(data, 'app', 'x.tmp'), path.join(data, 'app', 'u.ibd'));
    await expectRefusedOffline(dir, /data file app\/(t|u)\.ibd holds space id \d+, not \d+ .*files swapped/);
  });

  await t.test('a table file deleted', async () => {
    restore(dir, untrusted, snapB);
    rmSync(path.join(data, 'app', 'u.ibd'));
    await expectRefusedOffline(dir, /data file app\/u\.ibd \(space id \d+\) is missing/);
  });

  await t.test('a foreign file: a dropped table\'s old file put back', async () => {
    restore(dir, untrusted, snapB);
    cpSync(path.join(snapA, 'mariadb', 'app', 'gone.ibd'), path.join(data, 'app', 'gone.ibd'));
    cpSync(path.join(snapA, 'mariadb', 'app', 'gone.frm'), path.join(data, 'app', 'gone.frm'));
    await expectRefusedOffline(dir, /data file app\/gone\.ibd \(space id \d+\) is not in the sealed inventory .* a file from elsewhere/);
  });

  await t.test('a copy of a live table\'s file beside it', async () => {
    restore(dir, untrusted, snapB);
    cpSync(path.join(snapA, 'mariadb', 'app', 't.ibd'), path.join(data, 'app', 'copy.ibd'));
    await expectRefusedOffline(dir, /are the same tablespace \(space id \d+\)/);
  });

  await t.test('the inventory file edited or missing', async () => {
    restore(dir, untrusted, snapB);
    for (const f of readdirSync(untrusted)) {
      if (f.startsWith('inventory-')) rmSync(path.join(untrusted, f));
    }
    await expectRefusedOffline(dir, /ROLLBACK_DETECTED: .*data directory rolled back under a fresh record: the data-file inventory the sealed record references .* is missing/);
  });

  await t.test('the untouched volume starts, with every row', async () => {
    restore(dir, untrusted, snapB);
    s = await startStack(dir);
    try {
      assert.equal(await count(s, 'app.t'), 320);
      assert.equal(await count(s, 'app.u'), 320);
      const st = await (await fetch(`${s.stack.ops.url}/v1/status`)).json();
      assert.equal(st.freshness.verified, true);
      assert.equal(st.freshness.dataFiles.phase, 'running');
      assert.match(s.output(), /cdbp up: data files verified against the sealed inventory \(\d+ files, \d+ ms\)/, 'the progress line');
      assert.ok(st.freshness.dataFiles.verifiedFiles >= 5, JSON.stringify(st.freshness.dataFiles));
      assert.ok(typeof st.freshness.dataFiles.verifyMs === 'number');
      const metrics = await (await fetch(`${s.stack.ops.url}/metrics`)).text();
      assert.match(metrics, /cdbp_freshness_inventory_verify_seconds \d/);
      assert.match(metrics, /cdbp_freshness_violations_total 0|cdbp_freshness_violations_total\{/);
    } finally {
      assert.equal(await s.stop(), 0);
    }
  });
});
