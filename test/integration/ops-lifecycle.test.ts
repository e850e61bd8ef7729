/**
 * The proxy's lifecycle as an operator sees it, with the real binary: a CAS process, `cdbp proxy`
 * supervising its own MariaDB, probes polled over HTTP.
 *   - start-up: /readyz goes 503 → 200 (never back), /startupz follows; `cdbp status` prints it;
 *   - SIGTERM: /readyz flips to 503 at once while the MySQL port still accepts during the drain delay,
 *     then the process exits 0 and no mariadbd is left;
 *   - a second signal forces exit (1) and the mariadbd still goes away;
 *   - a rolled-back volume keeps the proxy at 503 with the rollback reason in /v1/status, no MySQL
 *     listener and no mariadbd left running.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, rmSync } from 'node:fs';
import path from 'node:path';
import { tempDir } from '../support/tmp.ts';
import { startTestCas, runCdbp, type TestCas } from '../support/cas.ts';
import { applyProxyPolicy, startProxyProcess, type TestProxy } from '../support/proxy-process.ts';
import { parsePrometheus } from '../support/prometheus.ts';

const tmp = tempDir('ops-lifecycle');
let cas: TestCas;
const running: TestProxy[] = [];
const USER = { user: 'app', password: 'app-pw-lifecycle' };

before(async () => {
  cas = await startTestCas({ root: tmp.path });
  await applyProxyPolicy(cas, { service: 'mariadb' });
});

after(async () => {
  for (const p of running) await p.kill();
  await cas?.stop();
  tmp.remove();
});

async function start(env: Record<string, string> = {}, onReadyz?: (code: number, body: { state?: string }) => void, waitFor: 'ready' | 'ops' = 'ready') {
  const p = await startProxyProcess({ root: tmp.path, cas, env, waitFor, ...(onReadyz ? { onReadyz } : {}) });
  running.push(p);
  return p;
}

async function waitGone(pid: number | undefined, timeoutMs = 30_000): Promise<boolean> {
  if (pid === undefined) return true;
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try { process.kill(pid, 0); } catch { return true; }
    await new Promise((r) => setTimeout(r, 100));
  }
  return false;
}

test('start-up: readiness goes 503 → 200 and stays; startupz and `cdbp status` agree', async () => {
  const seen: Array<{ code: number; state: string }> = [];
  const p = await start({ CDBP_DRAIN_DELAY_MS: '3000', CDBP_DRAIN_TIMEOUT_MS: '2000' }, (code, body) => {
    const last = seen.at(-1);
    if (!last || last.code !== code || last.state !== body.state) seen.push({ code, state: body.state ?? '?' });
  });
  // Recorded sequence, e.g. 503 starting_backend → 200 ready (earlier states pass quickly).
  assert.ok(seen.length >= 2, `sequence ${JSON.stringify(seen)}`);
  assert.equal(seen[0]!.code, 503, JSON.stringify(seen));
  assert.notEqual(seen[0]!.state, 'ready');
  assert.deepEqual(seen.at(-1), { code: 200, state: 'ready' });
  assert.equal(seen.findIndex((s) => s.code === 200), seen.length - 1, 'no 200 before the end of start-up');
  assert.equal((await p.get('/startupz')).status, 200);
  const status = (await p.get('/v1/status')).body;
  assert.deepEqual(status.lifecycle.history.map((h: { state: string }) => h.state),
    ['starting', 'attesting', 'provisioned', 'verifying', 'starting_backend', 'ready']);
  // What the CAS attested, everywhere the mode shows (status, metrics, start-up log): simulated says so.
  assert.deepEqual(status.attestation, { tee: 'simulated', tcbStatus: 'simulated', simulated: true });
  assert.equal(parsePrometheus((await p.get('/metrics')).text).value('cdbp_tee_info', { tee: 'simulated', tcb_status: 'simulated' }), 1);
  assert.match(p.output(), /attested as simulated, TCB simulated/);

  const cli = await runCdbp(['status', '--url', p.opsUrl]);
  assert.equal(cli.code, 0, cli.output);
  assert.match(cli.output, /^proxy \S+ {2}READY {2}\(ready since /m);
  assert.match(cli.output, /TEE mode: +simulated +<-- SIMULATED/);
  assert.match(cli.output, /freshness: +strict, verified, epoch \d+/);
  assert.match(cli.output, new RegExp(`mysql: +127\\.0\\.0\\.1:${p.mysql.port}`));

  await p.createUser(USER.user, USER.password);
  const conn = await p.connect(USER);
  await conn.query('CREATE DATABASE IF NOT EXISTS app');
  await conn.query('CREATE TABLE IF NOT EXISTS app.t (id INT PRIMARY KEY AUTO_INCREMENT, v VARCHAR(20))');
  await conn.end();
});

test('SIGTERM: 503 at once, MySQL port still accepts during the drain delay, exit 0, no mariadbd left', async () => {
  const p = running.at(-1)!;
  const mariadbPid = p.mariadbPid();
  assert.ok(mariadbPid, 'the managed mariadbd runs');
  const session = await p.connect(USER);
  // The drain timeout (2 s) ends a session that stays open: the connector reports it as an error event.
  let sessionEnded: string | undefined;
  session.on('error', (e: Error & { code?: string }) => { sessionEnded = e.code ?? e.message; });
  p.proc.kill('SIGTERM');
  const t0 = Date.now();
  await p.waitReadyz(503, 2500);
  const readyz = (await p.get('/readyz')).body;
  assert.equal(readyz.state, 'draining');
  assert.ok(readyz.reasons.includes('draining'), JSON.stringify(readyz));
  // Still inside the 3 s drain delay: a brand-new client gets in and is served.
  const late = await p.connect(USER);
  assert.deepEqual(await late.query('SELECT 1 AS one'), [{ one: 1 }]);
  assert.ok(Date.now() - t0 < 3000, 'connected within the drain delay');
  await late.end();
  // The open session keeps working until the listeners close and the drain timeout ends it.
  assert.deepEqual(await session.query('SELECT 2 AS two'), [{ two: 2 }]);
  const code = await p.exited;
  assert.equal(code, 0, p.output().slice(-3000));
  assert.equal(sessionEnded, 'ER_SOCKET_UNEXPECTED_CLOSE', 'the idle session was closed by the drain timeout');
  session.destroy();
  assert.ok(Date.now() - t0 >= 3000, 'the drain delay was honoured');
  assert.ok(await waitGone(mariadbPid, 5000), 'mariadbd stopped with the proxy');
  assert.equal(p.mariadbPid(), undefined);
  assert.match(p.output(), /"msg":"lifecycle: draining"[\s\S]*"msg":"lifecycle: stopped"/);
});

test('a second signal forces exit, and the mariadbd still stops', async () => {
  const p = await start({ CDBP_DRAIN_DELAY_MS: '60000' });
  const mariadbPid = p.mariadbPid();
  assert.ok(mariadbPid);
  p.proc.kill('SIGTERM');
  await p.waitReadyz(503, 5000);
  p.proc.kill('SIGTERM');
  const code = await p.exited;
  assert.equal(code, 1, 'forced exit is not a clean one');
  assert.match(p.output(), /second signal: forcing exit/);
  assert.ok(await waitGone(mariadbPid), 'mariadbd was told to stop');
});

test('rollback: a rolled-back volume keeps the proxy 503 with the reason and no MySQL listener', async () => {
  // The freshness record on the volume is only a cache of what the CAS anchors (docs/FRESHNESS.md), so the
  // attack is the whole volume put back: a copy taken after a clean stop, then writes advance the epoch.
  const p0 = await start();
  assert.equal(await p0.stop(), 0);
  const aside = path.join(tmp.path, 'volume-old');
  cpSync(p0.dirs.untrusted, aside, { recursive: true });
  const p1 = await start();
  const epochBefore = (await p1.get('/v1/status')).body.freshness.epoch as number;
  const conn = await p1.connect(USER);
  for (let i = 0; i < 3; i++) await conn.query('INSERT INTO app.t (v) VALUES (?)', [`row${i}`]);
  await conn.end();
  const epochAfter = (await p1.get('/v1/status')).body.freshness.epoch as number;
  assert.ok(epochAfter > epochBefore, `epoch advanced (${epochBefore} → ${epochAfter})`);
  assert.equal(await p1.stop(), 0);

  // The adversary puts the old volume back (record and data directory).
  rmSync(p1.dirs.untrusted, { recursive: true, force: true });
  cpSync(aside, p1.dirs.untrusted, { recursive: true });
  const p2 = await start({}, undefined, 'ops');
  const deadline = Date.now() + 30_000;
  let status: any;
  for (;;) {
    status = (await p2.get('/v1/status')).body;
    if (status.lifecycle.state === 'failed' || Date.now() > deadline) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.equal(status.lifecycle.state, 'failed', JSON.stringify(status));
  assert.equal(status.lifecycle.reason.code, 'ROLLBACK_DETECTED');
  assert.equal(status.ready, false);
  assert.ok(status.reasons.some((r: string) => /rollback/i.test(r)), JSON.stringify(status.reasons));
  assert.equal(status.freshness.violation.kind, 'rollback');
  const readyz = await p2.get('/readyz');
  assert.equal(readyz.status, 503);
  assert.ok(readyz.body.reasons.some((r: string) => /ROLLBACK_DETECTED/.test(r)));
  assert.equal(status.listeners.mysql, null, 'no MySQL listener on a rolled-back volume');
  assert.ok(await waitGone(p2.mariadbPid(), 30_000), 'no mariadbd runs on the rolled-back volume');
  const cli = await runCdbp(['status', '--url', p2.opsUrl]);
  assert.equal(cli.code, 1);
  assert.match(cli.output, /NOT READY/);
  assert.match(cli.output, /VIOLATION: +rollback/);
  assert.equal(await p2.stop(), 0);
});
