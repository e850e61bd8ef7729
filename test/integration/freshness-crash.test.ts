/**
 * Crash test of the strict seal path (issue 17): under a write load, `kill -9` the proxy, then the CAS,
 * at seeded random points, again and again (and mariadbd with every 10th proxy kill). After every
 * restart the proxy must start verified (a false rollback/tamper/fork alarm would stop it), and at the
 * end every write whose OK reached a client must be in the database.
 *
 * A light process set keeps the loop fast: one private MariaDB (kept running, no keyring), a real
 * `cdbp cas` and a real `cdbp proxy` in front of the MariaDB socket; only the two killed processes restart.
 * CDBP_CRASH_KILLS (default 50 of each) and CDBP_CRASH_SEED pick the schedule.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { startPrivateMariadb } from '../support/mariadb.ts';
import { startTestCas } from '../support/cas.ts';
import { applyProxyPolicy } from '../support/proxy-process.ts';
import { tempDir } from '../support/tmp.ts';
import { freePort } from '../../src/kernel/net.ts';
import { buildNativeDataPlane } from '../../cli/native-build.ts';
import { prng } from '../support/prng.ts';

const KILLS = Number(process.env.CDBP_CRASH_KILLS ?? 50);
const SEED = Number(process.env.CDBP_CRASH_SEED ?? 1717);
const SERVICE = 'crash';
const CLI = path.resolve(import.meta.dirname, '..', '..', 'bin', 'cdbp.js');

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const WARM = path.resolve(import.meta.dirname, '..', 'support', 'warm-role.ts');

/** One active process of a role and a warm spare (test/support/warm-role.ts) that starts the moment it is needed. */
class WarmRole {
  private spare: ChildProcess | undefined;
  private active: ChildProcess | undefined;
  output = '';
  constructor(private readonly role: 'cas' | 'proxy', private readonly args: string[], private readonly env: Record<string, string>) {
    this.spare = this.spawn();
  }

  private spawn(): ChildProcess {
    const p = spawn(process.execPath, ['--import', 'tsx', WARM, this.role, ...this.args], {
      stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, ...this.env },
    });
    const keep = (d: Buffer) => { if (p === this.active) this.output = (this.output + d.toString()).slice(-20_000); };
    p.stdout!.on('data', keep);
    p.stderr!.on('data', keep);
    return p;
  }

  go(): ChildProcess {
    const p = this.spare ?? this.spawn();
    this.active = p;
    this.output = '';
    p.stdin!.write('go\n');
    this.spare = this.spawn();
    return p;
  }

  async kill(): Promise<void> {
    const p = this.active;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const gone = new Promise((r) => p.once('exit', r));
    p.kill('SIGKILL');
    await gone;
  }

  async close(): Promise<void> {
    await this.kill();
    const s = this.spare;
    this.spare = undefined;
    if (s && s.exitCode === null) {
      const gone = new Promise((r) => s.once('exit', r));
      s.kill('SIGKILL');
      await gone;
    }
  }
}

test(`kill -9 of the proxy and of the CAS at ${KILLS}+${KILLS} seeded random points under write load: no acknowledged write lost, no false alarm`, { timeout: 600_000 }, async (t) => {
  const started = Date.now();
  // Build the native data plane before the policy measures the code (a build at proxy start would
  // change the measured tree after the policy was signed), as `cdbp up` does.
  buildNativeDataPlane();
  const tmp = tempDir('fresh-crash');
  t.after(() => tmp.remove());
  const rand = prng(SEED);
  const db = await startPrivateMariadb({ dir: path.join(tmp.path, 'mariadb') });
  t.after(() => db.stop());
  await db.rootQuery('CREATE DATABASE app; CREATE TABLE app.t (v VARCHAR(64) PRIMARY KEY) ENGINE=InnoDB');
  const casPort = await freePort();
  const casDir = path.join(tmp.path, 'cas');
  // The first start binds the policy owner (test/support/cas.ts); later starts are warm spares.
  const first = await startTestCas({ root: tmp.path, dir: casDir, extraArgs: ['--port', String(casPort)] });
  await applyProxyPolicy(first, { service: SERVICE });
  const casUrl = first.url;
  const platformKeyFile = first.platformKeyFile;
  assert.equal(await first.stop(), 0);
  const cas = new WarmRole('cas', ['--dir', casDir, '--port', String(casPort), '--allow-simulated', '--platform-public-key', `${platformKeyFile}.pub`],
    { CDBP_LOG_LEVEL: 'warn' });
  t.after(() => cas.close());
  const mysqlPort = await freePort();
  const opsPort = await freePort();
  const opsUrl = `http://127.0.0.1:${opsPort}`;
  const proxy = new WarmRole('proxy', [], {
    CDBP_LOG_LEVEL: 'info', CDBP_CAS_URL: casUrl, CDBP_CAS_CA_FILE: path.join(casDir, 'ca.pem'),
    CDBP_SERVICE: SERVICE, CDBP_TEE_MODE: 'simulated', CDBP_ALLOW_SIMULATED: '1', CDBP_PLATFORM_KEY_FILE: platformKeyFile,
    CDBP_MYSQL_HOST: '127.0.0.1', CDBP_MYSQL_PORT: String(mysqlPort), CDBP_OPS_PORT: String(opsPort), CDBP_ADMIN_PORT: '-1',
    CDBP_BACKEND_SOCKET: db.server.socket, CDBP_UNTRUSTED_DIR: path.join(tmp.path, 'untrusted'),
    CDBP_FRESHNESS: 'strict', CDBP_HOLD_TIMEOUT_MS: '30000', CDBP_DRAIN_DELAY_MS: '0',
  });
  t.after(() => proxy.close());
  const startMs = { cas: [] as number[], proxy: [] as number[] };
  const casReady = async (): Promise<void> => {
    const t0 = Date.now();
    const p = cas.go();
    try {
      await waitCas(p);
    } finally {
      startMs.cas.push(Date.now() - t0);
    }
  };
  const waitCas = async (p: ChildProcess): Promise<void> => {
    for (const deadline = Date.now() + 120_000; ;) {
      assert.equal(p.exitCode, null, `CAS exited during start-up (a false tamper alarm?):\n${cas.output}`);
      try {
        if ((JSON.parse(readFileSync(path.join(casDir, 'cas-ready.json'), 'utf8')) as { pid: number }).pid === p.pid) return;
      } catch { /* not yet */ }
      assert.ok(Date.now() < deadline, `CAS not ready:\n${cas.output}`);
      await sleep(10);
    }
  };
  const proxyReady = async (): Promise<void> => {
    const t0 = Date.now();
    const p = proxy.go();
    try {
      await waitProxy(p);
    } finally {
      startMs.proxy.push(Date.now() - t0);
    }
  };
  const waitProxy = async (p: ChildProcess): Promise<void> => {
    for (const deadline = Date.now() + 120_000; ;) {
      assert.equal(p.exitCode, null, `proxy exited during start-up (a false alarm?):\n${proxy.output}`);
      const r = await fetch(`${opsUrl}/readyz`).catch(() => undefined);
      if (r?.status === 200) return;
      assert.doesNotMatch(proxy.output, /start-up failed/, `proxy start-up failed (a false alarm?):\n${proxy.output}`);
      assert.ok(Date.now() < deadline, `proxy not ready:\n${proxy.output}`);
      await sleep(10);
    }
  };
  await casReady();
  await proxyReady();
  const caPem = readFileSync(path.join(casDir, 'ca.pem'), 'utf8');

  // The load: writers through the proxy, in their own process (test/support/crash-writer.ts).
  const acked: string[] = [];
  const caFile = path.join(tmp.path, 'cas-ca.pem');
  writeFileSync(caFile, caPem);
  const load = spawn(process.execPath, ['--import', 'tsx', path.resolve(import.meta.dirname, '..', 'support', 'crash-writer.ts'),
    String(mysqlPort), db.user, db.password, caFile, '4'], { stdio: ['pipe', 'pipe', 'pipe'] });
  let partial = '';
  load.stdout!.on('data', (d: Buffer) => {
    const lines = (partial + d.toString()).split('\n');
    partial = lines.pop()!;
    acked.push(...lines);
  });
  let loadErr = '';
  load.stderr!.on('data', (d: Buffer) => { loadErr += d.toString(); });
  const loadDone = new Promise((r) => load.once('exit', r));
  t.after(() => { if (load.exitCode === null) load.kill('SIGKILL'); });

  let mariadbKills = 0;
  for (let k = 0; k < KILLS; k++) {
    const before = acked.length;
    await sleep(30 + rand() * 250);
    await proxy.kill();
    if (k % 10 === 9) {
      // Every 10th time the database dies with the proxy: positions sealed must not be ahead of it.
      process.kill(db.server.pid!, 'SIGKILL');
      await db.server.whenExited().catch(() => undefined);
      await db.server.start();
      mariadbKills++;
    }
    await proxyReady();
    await sleep(30 + rand() * 250);
    await cas.kill();
    await casReady();
    // Keep going only once writes flow again (held acks are released by the restarted CAS).
    for (const deadline = Date.now() + 30_000; acked.length <= before;) {
      assert.ok(Date.now() < deadline, `no write acknowledged after kill ${k + 1}:\n${proxy.output}`);
      await sleep(20);
    }
  }
  load.stdin!.end();
  await loadDone;
  if (process.env.CDBP_CRASH_DEBUG) t.diagnostic(proxy.output);

  const st = await (await fetch(`${opsUrl}/v1/status`)).json() as { freshness: { verified: boolean; violation?: unknown } };
  assert.equal(st.freshness.verified, true, JSON.stringify(st.freshness));
  const present = new Set((await db.rootQuery('SELECT v FROM app.t') as Array<{ v: string }>).map((r) => r.v));
  const lost = acked.filter((v) => !present.has(v));
  assert.deepEqual(lost, [], `${lost.length} of ${acked.length} acknowledged writes lost`);
  assert.ok(acked.length > KILLS, `only ${acked.length} writes acknowledged`);
  const audit = readFileSync(path.join(casDir, 'audit.log'), 'utf8');
  assert.doesNotMatch(audit, /"event":"freshness.alarm"/, 'no rollback, tamper or fork alarm reached the CAS');
  t.diagnostic(`${KILLS} proxy kills, ${KILLS} CAS kills, ${mariadbKills} mariadbd kills; ${acked.length} writes acknowledged, ${/failures (\d+)/.exec(loadErr)?.[1] ?? '?'} failed (cut by a crash); ${((Date.now() - started) / 1000).toFixed(1)} s; `
    + `restart to ready median: CAS ${median(startMs.cas)} ms, proxy ${median(startMs.proxy)} ms`);
});
