/**
 * Issue 16, item 4: one process per state directory, with real processes.
 *
 *   - a second `cdbp cas` on one dir exits at once naming the first's pid; after kill -9 of the first,
 *     a new one starts (the kernel released the lock) and its audit log verifies;
 *   - a second `cdbp proxy` for the same service on one untrusted volume exits at once;
 *   - a second `cdbp up` on one DIR exits at once, touching nothing (the first keeps serving); after
 *     kill -9 of the whole first stack (up, CAS, proxy, mariadbd), `cdbp up` on DIR starts again with the data.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { tempDir } from '../support/tmp.ts';
import { startTestCas, runCdbp } from '../support/cas.ts';
import { applyProxyPolicy, startProxyProcess } from '../support/proxy-process.ts';
import { startStack, connectThroughProxy, removeStackVolatile, alive, CLI } from '../support/stack.ts';
import { lockStateDir } from '../../src/kernel/state-lock.ts';

const tmp = tempDir('ops-lock');
after(() => tmp.remove());

/** Runs `cdbp ...` to its exit; resolves with code, output and how long it took. */
async function runTimed(args: string[], env: NodeJS.ProcessEnv = {}) {
  const t0 = Date.now();
  const r = await runCdbp(args, env, 60_000);
  return { ...r, ms: Date.now() - t0 };
}

test('state lock: the kernel frees it with its holder; a second taker is refused with the holder named', async () => {
  const dir = path.join(tmp.path, 'unit');
  const lock = await lockStateDir(dir, { role: 'test holder', scope: 'data' });
  await assert.rejects(lockStateDir(dir, { role: 'second', scope: 'data' }), (e: any) => {
    assert.equal(e.code, 'STATE_LOCKED');
    assert.match(e.message, new RegExp(`in use by test holder \\(pid ${process.pid}, since `));
    return true;
  });
  // Another scope on the same directory is another lock.
  const other = await lockStateDir(dir, { role: 'x', scope: 'other' });
  await other.release();
  await lock.release();
  const again = await lockStateDir(dir, { role: 'third', scope: 'data' });
  await again.release();
});

test('cdbp cas: a second on one dir exits at once naming the first; kill -9 of the first does not block a restart', async () => {
  const root = path.join(tmp.path, 'cas');
  const first = await startTestCas({ root });
  const second = await runTimed(['cas', '--dir', first.dir, '--port', '0', '--allow-simulated', '--platform-public-key', first.platformPublicKeyFile]);
  assert.equal(second.code, 1, second.output);
  assert.match(second.output, new RegExp(`STATE_LOCKED: .* is in use by cdbp cas \\(pid ${first.proc.pid}, since `));
  assert.ok(second.ms < 45_000, `exited at once (${second.ms} ms)`);
  assert.doesNotMatch(second.output, /listening/);
  assert.equal(JSON.parse(readFileSync(path.join(first.dir, 'cas-ready.json'), 'utf8')).pid, first.proc.pid, 'the first CAS is untouched');

  first.proc.kill('SIGKILL');
  await new Promise((r) => first.proc.once('exit', r));
  const third = await startTestCas({ root });
  try {
    const verify = await runTimed(['cas', 'audit', 'verify', '--dir', third.dir]);
    assert.equal(verify.code, 0, verify.output);
  } finally {
    await third.stop();
  }
});

test('cdbp proxy: a second for the same service on one volume exits at once', async () => {
  const root = path.join(tmp.path, 'proxy');
  const cas = await startTestCas({ root: path.join(root, 'cas-root') });
  try {
    await applyProxyPolicy(cas, { service: 'mariadb' });
    // The lock is taken before anything else: the first need not be ready to hold it.
    const first = await startProxyProcess({ root, cas, waitFor: 'ops' });
    try {
      const t0 = Date.now();
      const second = await startProxyProcess({ root, cas, waitFor: 'none' });
      const code = await second.exited;
      assert.equal(code, 1, second.output());
      // At once: before the ops API, before attesting (the time bound is loose: a loaded CI box loads tsx slowly).
      assert.ok(Date.now() - t0 < 45_000);
      assert.doesNotMatch(second.output(), /attesting|ops API/);
      assert.match(second.output(), new RegExp(`STATE_LOCKED: .* is in use by cdbp proxy \\(mariadb\\) \\(pid ${first.pid}, `));
      assert.equal((await first.get('/livez')).status, 200, 'the first proxy is unharmed');
      assert.equal(first.exitCode(), undefined);
    } finally {
      await first.kill();
    }
  } finally {
    await cas.stop();
  }
});

test('cdbp up: a second on one DIR exits at once and touches nothing; after kill -9 of everything, up starts again', async (t) => {
  const dir = path.join(tmp.path, 'stack');
  t.after(() => removeStackVolatile(dir));
  const first = await startStack(dir);
  const pids: number[] = [];
  try {
    const conn = await connectThroughProxy(first.stack);
    await conn.query('CREATE DATABASE app');
    await conn.query('CREATE TABLE app.t (v INT PRIMARY KEY) ENGINE=InnoDB');
    await conn.query('INSERT INTO app.t VALUES (1)');
    await conn.end();

    const t0 = Date.now();
    const second = spawnSync(process.execPath, [CLI, 'up', '--dir', dir], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(second.status, 1, second.stdout + second.stderr);
    assert.match(second.stderr, new RegExp(`STATE_LOCKED: .* is in use by cdbp up \\(pid ${first.proc.pid}, since `));
    assert.ok(Date.now() - t0 < 45_000, 'at once');
    assert.doesNotMatch(second.stdout, /starting the CAS|stopped a leftover mariadbd/, 'the second touched nothing');
    const check = await connectThroughProxy(first.stack);
    assert.deepEqual((await check.query('SELECT v FROM app.t')).map((r: any) => r.v), [1], 'the first stack still serves');
    await check.end();

    // kill -9 the whole stack at once (a host crash, as far as locks go): nothing runs a cleanup.
    const tree = spawnSync('pgrep', ['-f', dir], { encoding: 'utf8' }).stdout.trim().split('\n').filter(Boolean).map(Number);
    pids.push(first.proc.pid!, ...descendants(first.proc.pid!), ...tree, first.stack.mariadb.pid ?? 0);
    for (const pid of pids) {
      try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    }
    const deadline = Date.now() + 20_000;
    while (pids.some(alive) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    assert.ok(!pids.some(alive), 'all killed');
  } catch (e) {
    await first.stop();
    throw e;
  }

  const again = await startStack(dir);
  let third: Awaited<ReturnType<typeof startStack>> | undefined;
  try {
    const conn = await connectThroughProxy(again.stack);
    assert.deepEqual((await conn.query('SELECT v FROM app.t')).map((r: any) => r.v), [1], 'the data is back');
    await conn.query('INSERT INTO app.t VALUES (2)');
    await conn.end();

    // kill -9 of `up` alone: its proxy outlives it for a moment (and holds the volume) while it stops on
    // its own. The next `up` stops that leftover proxy before starting its own instead of failing on it.
    const leftover = descendants(again.proc.pid!);
    process.kill(again.proc.pid!, 'SIGKILL');
    // Straight away: the orphans are still up (each stops on its own within a few seconds).
    third = await startStack(dir);
    assert.doesNotMatch(third.output(), /STATE_LOCKED/, third.output());
    assert.ok(!leftover.some(alive), 'the leftover proxy and its database are gone');
    const c3 = await connectThroughProxy(third.stack);
    assert.deepEqual((await c3.query('SELECT v FROM app.t ORDER BY v')).map((r: any) => r.v), [1, 2], 'the acknowledged write survived');
    await c3.end();
  } finally {
    if (third) assert.equal(await third.stop(), 0, third.output());
    else await again.stop();
  }
});

/** Every live descendant of `pid` (its children run in their own process groups, so -pgid misses them). */
function descendants(pid: number): number[] {
  const kids = spawnSync('pgrep', ['-P', String(pid)], { encoding: 'utf8' }).stdout.trim().split('\n').filter(Boolean).map(Number);
  return kids.flatMap((k) => [k, ...descendants(k)]);
}

