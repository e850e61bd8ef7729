/**
 * Issue 22 after crashes: kill -9 of mariadbd (and the proxy) under write load. The inventory sealed by
 * the last background sweep still catches a table file put back to an older copy; legitimate DDL
 * (TRUNCATE, OPTIMIZE, CREATE DATABASE, DROP TABLE, RENAME) never raises a false alarm, after a clean stop
 * or a crash; and a seeded loop of crash/restart cycles under write load never does either
 * (CDBP_PERFILE_CRASH_CYCLES raises its count; the default keeps CI time modest).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, existsSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { startStack, expectStackFailure, connectThroughProxy, queryThroughProxy, removeStackVolatile, type RunningStack } from '../support/stack.ts';
import { tempDir } from '../support/tmp.ts';
import { prng } from '../support/prng.ts';

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

async function expectFresh(dir: string): Promise<RunningStack> {
  const at = logSize(dir);
  const s = await startStack(dir, [], SWEEP_ENV);
  const log = readFileSync(path.join(dir, 'run', 'proxy.log')).subarray(at).toString('utf8');
  assert.doesNotMatch(log, /freshness violation/, 'no alarm');
  const st = await status(s);
  assert.equal(st.freshness.verified, true);
  return s;
}

test('kill -9 under write load: one table file put back to a copy older than the last sweep is refused offline', async (t) => {
  const tmp = tempDir('perfile-kill');
  t.after(() => tmp.remove());
  const dir = path.join(tmp.path, 'stack');
  t.after(() => removeStackVolatile(dir));
  const ibd = path.join(dir, 'untrusted', 'mariadb', 'app', 't.ibd');
  let s = await startStack(dir, [], SWEEP_ENV);
  await sql(s, 'CREATE DATABASE app', 'CREATE TABLE app.t (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(200)) ENGINE=InnoDB',
    "INSERT INTO app.t (v) SELECT REPEAT('a', 200) FROM app.seq_1_to_300");
  assert.equal(await s.stop(), 0);
  cpSync(ibd, path.join(tmp.path, 't.ibd.old'));

  s = await startStack(dir, [], SWEEP_ENV);
  // Keep the page cleaner flushing so the checkpoint (and with it the durable witnesses) moves under load.
  await sql(s, 'SET GLOBAL innodb_max_dirty_pages_pct_lwm = 0.001', 'SET GLOBAL innodb_max_dirty_pages_pct = 0');
  const load = writeLoad(s, 4);
  const firstSweep = (await status(s)).freshness.dataFiles.lastSweepAt;
  await sleep(4000);
  // A sweep after the load began was sealed into a counted epoch (witnesses newer than the old copy).
  const deadline = Date.now() + 20_000;
  for (;;) {
    const st = await status(s);
    if (st.freshness.dataFiles.lastSweepAt !== firstSweep && st.freshness.position && st.freshness.lastSealAt > st.freshness.dataFiles.lastSweepAt) break;
    assert.ok(Date.now() < deadline, `no sweep sealed: ${JSON.stringify(st.freshness)}`);
    await sleep(200);
  }
  await crash(s);
  const acked = await load.stop();
  assert.ok(acked.length > 20, `writers got ${acked.length} acknowledgments`);
  cpSync(ibd, path.join(tmp.path, 't.ibd.newest'));

  cpSync(path.join(tmp.path, 't.ibd.old'), ibd);
  const at = logSize(dir);
  const fail = await expectStackFailure(dir, [], SWEEP_ENV);
  assert.equal(fail.code, 1, fail.output);
  assert.match(fail.output, /ROLLBACK_DETECTED: .*data file app\/t\.ibd rolled back: page \d+ carries LSN \d+, behind the \d+ the sealed inventory saw/);
  const log = readFileSync(path.join(dir, 'run', 'proxy.log')).subarray(at).toString('utf8');
  assert.doesNotMatch(log, /keyring ready|keyring request|mariadbd started/, 'refused before the keyring released any key');

  // The newest file back: the crash left nothing to alarm about, and every acknowledged row is there.
  cpSync(path.join(tmp.path, 't.ibd.newest'), ibd);
  s = await expectFresh(dir);
  try {
    const [rows] = await sql(s, 'SELECT v FROM app.t');
    const present = new Set((rows as Array<{ v: string }>).map((r) => r.v));
    assert.deepEqual(acked.filter((v) => !present.has(v)), []);
  } finally {
    assert.equal(await s.stop(), 0);
  }
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

test('no false alarm: seeded crash/restart loop (kill -9 of mariadbd under write load and DDL)', async (t) => {
  const cycles = Number(process.env.CDBP_PERFILE_CRASH_CYCLES ?? '4');
  const seed = Number(process.env.CDBP_PERFILE_SEED ?? '22');
  const rnd = prng(seed);
  const tmp = tempDir('perfile-loop');
  t.after(() => tmp.remove());
  const dir = path.join(tmp.path, 'stack');
  t.after(() => removeStackVolatile(dir));
  let s = await startStack(dir, [], SWEEP_ENV);
  await sql(s, ...DDL_SETUP, 'SET GLOBAL innodb_max_dirty_pages_pct = 0');
  for (let i = 0; i < cycles; i++) {
    const load = writeLoad(s, 3);
    const ddl = rnd() < 0.5 ? DDL(100 + i) : [];
    const wait = 300 + Math.floor(rnd() * 2500);
    const alsoProxy = rnd() < 0.7;
    await sleep(wait / 2);
    try { await sql(s, ...ddl); } catch { /* a DDL cut by the crash is fine */ }
    await sleep(wait / 2);
    await crash(s, alsoProxy);
    await load.stop();
    try {
      s = await expectFresh(dir);
    } catch (e) {
      throw new Error(`cycle ${i} (seed ${seed}, wait ${wait} ms, ddl ${ddl.length > 0}, proxy killed ${alsoProxy}): ${(e as Error).message}`);
    }
    await sql(s, ...DDL_SETUP, 'SET GLOBAL innodb_max_dirty_pages_pct = 0');
  }
  assert.equal(await s.stop(), 0);
});
