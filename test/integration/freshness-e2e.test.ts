/**
 * Freshness against the adversary of issue 6, end to end: real `cdbp up` stacks (CAS, proxy, MariaDB),
 * the untrusted volume copied, restored, edited and forked as an attacker with root would.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { spawn, spawnSync } from 'node:child_process';
import path from 'node:path';
import { startStack, expectStackFailure, connectThroughProxy, alive, removeStackVolatile, CLI, type RunningStack } from '../support/stack.ts';
import { startTestCas, runCdbp } from '../support/cas.ts';
import { peekRecordHeader } from '../../proxy/freshness/record.ts';
import { freePort } from '../../src/kernel/net.ts';
import { tempDir } from '../support/tmp.ts';
import { volatileDir } from '../../cli/commands/up.ts';

const SERVICE = 'mariadb';
const recordFile = (untrusted: string) => path.join(untrusted, `freshness-${SERVICE}.sealed`);

/** The stack's tmpfs dir (Aria log, temp tables) is keyed by DIR; a restored volume starts with it empty, as after a reboot. */
function wipeVolatile(dir: string): void {
  rmSync(volatileDir(dir), { recursive: true, force: true });
}

function snapshot(untrusted: string, to: string): void {
  rmSync(to, { recursive: true, force: true });
  cpSync(untrusted, to, { recursive: true });
}

function restore(dir: string, untrusted: string, from: string): void {
  rmSync(untrusted, { recursive: true, force: true });
  cpSync(from, untrusted, { recursive: true });
  wipeVolatile(dir);
}

async function rows(s: RunningStack): Promise<string[]> {
  const conn = await connectThroughProxy(s.stack);
  try {
    return (await conn.query('SELECT v FROM app.t ORDER BY v')).map((r: { v: string }) => r.v);
  } finally {
    await conn.end();
  }
}

async function insert(s: RunningStack, v: string): Promise<void> {
  const conn = await connectThroughProxy(s.stack);
  try {
    await conn.query('INSERT INTO app.t (v) VALUES (?)', [v]);
  } finally {
    await conn.end();
  }
}

async function status(opsUrl: string): Promise<any> {
  return (await fetch(`${opsUrl}/v1/status`)).json();
}

function childrenOf(pid: number): Array<{ pid: number; cmd: string }> {
  const list = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  return list.map((p) => ({ pid: p, cmd: readFileSync(`/proc/${p}/cmdline`, 'utf8').replace(/\0/g, ' ') }));
}

function childPid(s: RunningStack, role: 'proxy' | 'cas'): number {
  const c = childrenOf(s.proc.pid!).find((ch) => ch.cmd.includes(` ${role}`));
  assert.ok(c, `no ${role} child of cdbp up`);
  return c.pid;
}

test('rolled-back volume, record or datadir and a forged record are refused; the real state starts; a restored backup needs cdbp recover', async (t) => {
  const tmp = tempDir('fresh');
  t.after(() => tmp.remove());
  const dir = path.join(tmp.path, 'stack');
  t.after(() => removeStackVolatile(dir));
  const untrusted = path.join(dir, 'untrusted');
  const snapA = path.join(tmp.path, 'snap-a');
  const snapB = path.join(tmp.path, 'snap-b');

  let s = await startStack(dir);
  const conn = await connectThroughProxy(s.stack);
  await conn.query('CREATE DATABASE app');
  await conn.query('CREATE TABLE app.t (v VARCHAR(64) PRIMARY KEY) ENGINE=InnoDB');
  await conn.end();
  await insert(s, 'a');
  assert.equal(await s.stop(), 0);
  snapshot(untrusted, snapA);

  s = await startStack(dir);
  await insert(s, 'b');
  assert.equal(await s.stop(), 0);
  snapshot(untrusted, snapB);

  // 1. The whole volume rolled back.
  restore(dir, untrusted, snapA);
  let fail = await expectStackFailure(dir);
  assert.equal(fail.code, 1);
  // (The CAS holds the sealed record and its position; the data behind it is the rollback.)
  assert.match(fail.output, /ROLLBACK_DETECTED: .*data directory rolled back under a fresh record: .*behind/);

  // 3. Only the datadir rolled back, under the fresh record.
  restore(dir, untrusted, snapB);
  rmSync(path.join(untrusted, 'mariadb'), { recursive: true });
  cpSync(path.join(snapA, 'mariadb'), path.join(untrusted, 'mariadb'), { recursive: true });
  fail = await expectStackFailure(dir);
  assert.match(fail.output, /ROLLBACK_DETECTED: .*rolled back under a fresh record/);

  // 5. One flipped byte in the record.
  restore(dir, untrusted, snapB);
  const rec = readFileSync(recordFile(untrusted));
  rec[rec.length - 5] = rec[rec.length - 5]! ^ 0x20;
  writeFileSync(recordFile(untrusted), rec);
  fail = await expectStackFailure(dir);
  assert.match(fail.output, /TAMPER_DETECTED: .*sealed freshness record rejected: freshness record failed authentication/);

  // 2. Only the sealed record rolled back: it is a cache now (the CAS keeps the record with the counter),
  // so the real, latest state still starts and has every row.
  restore(dir, untrusted, snapB);
  cpSync(recordFile(snapA), recordFile(untrusted));
  s = await startStack(dir);
  assert.deepEqual(await rows(s), ['a', 'b']);
  assert.equal(await s.stop(), 0);

  // 8. A legitimate restore of backup A: refused until the owner re-anchors the counter.
  restore(dir, untrusted, snapA);
  fail = await expectStackFailure(dir);
  assert.match(fail.output, /ROLLBACK_DETECTED/);
  const trusted = path.join(dir, 'trusted');
  const cas = await startTestCas({ root: tmp.path, dir: path.join(trusted, 'cas'), platformKeyFile: path.join(trusted, 'platform.key') });
  try {
    const r = await runCdbp(['recover', '--cas', cas.url, '--ca', cas.caFile, '--owner-key', path.join(trusted, 'owner.key'),
      '--service', SERVICE, '--record', recordFile(untrusted)]);
    assert.equal(r.code, 0, r.output);
    assert.match(r.output, new RegExp(`re-anchored to ${peekRecordHeader(readFileSync(recordFile(untrusted))).epoch}`));
  } finally {
    await cas.stop();
  }
  s = await startStack(dir);
  assert.deepEqual(await rows(s), ['a'], 'the restored backup is served');
  assert.equal(await s.stop(), 0);

  // The CAS audited the alarms and the recovery, and its chain verifies.
  const audit = readFileSync(path.join(trusted, 'cas', 'audit.log'), 'utf8');
  assert.match(audit, /"event":"counter.recover"[^\n]*"outcome":"ok"/);
  assert.match(audit, /"event":"freshness.alarm"[^\n]*"kind":"rollback"/);
  assert.match(audit, /"event":"freshness.alarm"[^\n]*"kind":"tamper"/);
  const verify = spawnSync(process.execPath, [CLI, 'cas', 'audit', 'verify', '--dir', path.join(trusted, 'cas')], { encoding: 'utf8' });
  assert.equal(verify.status, 0, verify.stdout + verify.stderr);
});

test('strict mode: after kill -9 of mariadbd and the proxy, every acknowledged write is there and the start is fresh', async (t) => {
  const tmp = tempDir('fresh-kill');
  t.after(() => tmp.remove());
  const dir = path.join(tmp.path, 'stack');
  t.after(() => removeStackVolatile(dir));
  let s = await startStack(dir);
  const setup = await connectThroughProxy(s.stack);
  await setup.query('CREATE DATABASE app');
  await setup.query('CREATE TABLE app.t (v VARCHAR(64) PRIMARY KEY) ENGINE=InnoDB');
  await setup.end();

  const acked: string[] = [];
  let stop = false;
  const writer = async (w: number) => {
    const c = await connectThroughProxy(s.stack);
    c.on('error', () => undefined);
    try {
      for (let i = 0; !stop; i++) {
        const v = `w${w}-${i}`;
        await c.query('INSERT INTO app.t (v) VALUES (?)', [v]);
        acked.push(v); // the OK reached the client
      }
    } catch {
      // the crash cut the connection: writes without an OK are allowed to be lost
    } finally {
      c.destroy();
    }
  };
  const writers = Array.from({ length: 6 }, (_, w) => writer(w));
  await new Promise((r) => setTimeout(r, 2500));
  const proxyPid = childPid(s, 'proxy');
  process.kill(s.stack.mariadb.pid!, 'SIGKILL');
  process.kill(proxyPid, 'SIGKILL');
  stop = true;
  await Promise.all(writers);
  assert.ok(acked.length > 20, `writers got ${acked.length} acknowledgments`);
  await s.stop();

  s = await startStack(dir);
  try {
    assert.match(s.output(), /cdbp up: ready/);
    const present = new Set(await rows(s));
    const lost = acked.filter((v) => !present.has(v));
    assert.deepEqual(lost, [], `${lost.length} of ${acked.length} acknowledged writes lost`);
    const st = await status(s.stack.ops.url);
    assert.equal(st.freshness.verified, true);
  } finally {
    assert.equal(await s.stop(), 0);
  }
});

test('CAS unreachable: reads are served, writes are held then failed with a clear error; they work again when it is back', async (t) => {
  const tmp = tempDir('fresh-cas');
  t.after(() => tmp.remove());
  const dir = path.join(tmp.path, 'stack');
  t.after(() => removeStackVolatile(dir));
  const s = await startStack(dir, [], { CDBP_HOLD_TIMEOUT_MS: '1500' });
  let casPid = 0;
  try {
    const c = await connectThroughProxy(s.stack);
    await c.query('CREATE DATABASE app');
    await c.query('CREATE TABLE app.t (v VARCHAR(64) PRIMARY KEY) ENGINE=InnoDB');
    await c.end();
    casPid = childPid(s, 'cas');
    process.kill(casPid, 'SIGSTOP');
    const reader = await connectThroughProxy(s.stack);
    assert.deepEqual((await reader.query('SELECT COUNT(*) AS n FROM app.t'))[0].n, 0n, 'reads are served');
    const w = await connectThroughProxy(s.stack);
    w.on('error', () => undefined); // the proxy closes the session after the refused acknowledgment
    const t0 = Date.now();
    await assert.rejects(w.query("INSERT INTO app.t (v) VALUES ('held')"), (e: any) => {
      assert.match(e.message, /could not be confirmed durable|rollback-proof|freshness/i);
      return true;
    });
    assert.ok(Date.now() - t0 >= 1400, 'the write was held up to the hold timeout first');
    assert.deepEqual((await reader.query('SELECT 1 AS one'))[0].one, 1, 'reads still served');
    await reader.end();
    w.destroy();
    process.kill(casPid, 'SIGCONT');
    casPid = 0;
    await insert(s, 'after');
    assert.ok((await rows(s)).includes('after'));
  } finally {
    if (casPid) process.kill(casPid, 'SIGCONT');
    assert.equal(await s.stop(), 0);
  }
});

test('crash in the middle of a seal (advance sent, CAS stopped, then everything killed): the next start is fresh, no alarm', async (t) => {
  const tmp = tempDir('fresh-advance');
  t.after(() => tmp.remove());
  const dir = path.join(tmp.path, 'stack');
  t.after(() => removeStackVolatile(dir));
  let s = await startStack(dir, [], { CDBP_HOLD_TIMEOUT_MS: '60000' });
  const c = await connectThroughProxy(s.stack);
  await c.query('CREATE DATABASE app');
  await c.query('CREATE TABLE app.t (v VARCHAR(64) PRIMARY KEY) ENGINE=InnoDB');
  await c.end();
  const casPid = childPid(s, 'cas');
  const proxyPid = childPid(s, 'proxy');
  process.kill(casPid, 'SIGSTOP');
  const w = await connectThroughProxy(s.stack);
  w.on('error', () => undefined);
  // Never acknowledged (the proxy dies holding it); a destroyed connector's promise may never settle.
  void w.query("INSERT INTO app.t (v) VALUES ('in-flight')").catch(() => undefined);
  // Wait until the proxy holds the write's OK while the CAS cannot count it.
  const deadline = Date.now() + 20_000;
  while ((await status(s.stack.ops.url)).freshness.writesHeld < 1) {
    assert.ok(Date.now() < deadline, 'the write was never held');
    await new Promise((r) => setTimeout(r, 50));
  }
  // Crash everything before the advance lands: the CAS dies with the request unprocessed.
  process.kill(casPid, 'SIGKILL');
  process.kill(proxyPid, 'SIGKILL');
  process.kill(s.stack.mariadb.pid!, 'SIGKILL');
  w.destroy();
  await s.stop();
  assert.equal(alive(s.stack.mariadb.pid), false);

  s = await startStack(dir);
  try {
    const log = readFileSync(path.join(dir, 'run', 'proxy.log'), 'utf8');
    assert.doesNotMatch(log, /freshness violation/);
    assert.equal((await status(s.stack.ops.url)).freshness.verified, true);
  } finally {
    assert.equal(await s.stop(), 0);
  }
});

test('a fork (second proxy on a copy of the volume) goes unready; the original keeps serving', async (t) => {
  const tmp = tempDir('fresh-fork');
  t.after(() => tmp.remove());
  const dir = path.join(tmp.path, 'stack');
  t.after(() => removeStackVolatile(dir));
  const copy = path.join(tmp.path, 'fork');
  let s = await startStack(dir);
  const c = await connectThroughProxy(s.stack);
  await c.query('CREATE DATABASE app');
  await c.query('CREATE TABLE app.t (v VARCHAR(64) PRIMARY KEY) ENGINE=InnoDB');
  await c.end();
  assert.equal(await s.stop(), 0);
  snapshot(path.join(dir, 'untrusted'), path.join(copy, 'untrusted'));
  s = await startStack(dir);
  const opsPort = await freePort();
  const forkProc = spawn(process.execPath, [CLI, 'proxy'], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: {
      ...process.env, CDBP_CAS_URL: s.stack.cas.url, CDBP_CAS_CA_FILE: s.stack.caFile, CDBP_SERVICE: SERVICE,
      CDBP_TEE_MODE: 'simulated', CDBP_ALLOW_SIMULATED: '1', CDBP_PLATFORM_KEY_FILE: path.join(dir, 'trusted', 'platform.key'),
      CDBP_MYSQL_PORT: String(await freePort()), CDBP_OPS_PORT: String(opsPort),
      CDBP_MANAGE_MARIADB: '1', CDBP_MARIADB_RUN_DIR: path.join(copy, 'run'), CDBP_DATADIR: path.join(copy, 'untrusted', 'mariadb'),
      CDBP_UNTRUSTED_DIR: path.join(copy, 'untrusted'), CDBP_VOLATILE_DIR: path.join(copy, 'volatile'), CDBP_DRAIN_DELAY_MS: '0',
    },
  });
  const forkOps = `http://127.0.0.1:${opsPort}`;
  try {
    // Wait for the fork to settle: ready (it raced the original) or already refused.
    let st: any;
    for (let i = 0; i < 300; i++) {
      st = await status(forkOps).catch(() => undefined);
      if (st && (st.lifecycle.state === 'ready' || st.lifecycle.state === 'failed')) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    if (st.lifecycle.state === 'ready') {
      // Both believe they are fresh; the original writes first and wins the counter.
      await insert(s, 'original');
      const fc = await import('mariadb').then((m) => m.default.createConnection({
        host: '127.0.0.1', port: st.listeners.mysql.port, user: s.stack.admin.user, password: s.stack.admin.password,
        ssl: { ca: readFileSync(s.stack.caFile) },
      }));
      fc.on('error', () => undefined);
      await assert.rejects(fc.query("INSERT INTO app.t (v) VALUES ('fork')"));
      fc.destroy();
      st = await status(forkOps);
    }
    assert.equal(st.ready, false);
    assert.match(JSON.stringify(st.reasons) + JSON.stringify(st.lifecycle), /fork|rolled back/);
    // The original is unaffected.
    await insert(s, 'still-original');
    assert.equal((await status(s.stack.ops.url)).ready, true);
  } finally {
    forkProc.kill('SIGTERM');
    await new Promise((r) => forkProc.once('exit', r));
    assert.equal(await s.stop(), 0);
  }
  assert.equal(existsSync(path.join(copy, 'run', 'mariadb.pid')) && alive(Number(readFileSync(path.join(copy, 'run', 'mariadb.pid'), 'utf8'))), false, 'fork mariadbd stopped');
});
