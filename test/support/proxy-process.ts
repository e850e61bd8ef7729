/**
 * Spawns a real `cdbp proxy` process (node bin/cdbp.js proxy) for black-box tests: simulated TEE,
 * attesting to a real CAS (test/support/cas.ts), supervising its own private MariaDB
 * (CDBP_MANAGE_MARIADB=1, as `cdbp up` runs it). Reusable by any test that needs the whole stack.
 *
 *   const cas = await startTestCas({ root });
 *   await applyProxyPolicy(cas, { service: 'mariadb' });          // or applyTestPolicy / ensureServicePolicy
 *   const proxy = await startProxyProcess({ root, cas });          // resolves once /readyz is 200
 *   const conn = await proxy.connect({ user, password });         // mariadb connector over TLS, CA-verified
 *   await proxy.stop();                                           // SIGTERM, exit code, no mariadbd left
 *
 * Layout under `root` (stable across restarts, so a second start resumes the same database):
 *   root/untrusted/            sealed freshness record(s) + mariadb/ datadir (what an adversary controls)
 *   root/run/mariadb/          my.cnf, socket, pid file, error log
 *   root/volatile/             Aria log + temp tables (a tmpfs in production; a plain dir here)
 *   root/proxy-<n>.log         this process's output (also in output())
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import mariadb, { type Connection } from 'mariadb';
import { freePort } from '../../src/kernel/net.ts';
import { MariadbServer } from '../../src/db/mariadb-server.ts';
import { applyTestPolicy, type TestCas } from './cas.ts';
import type { SigningKeyPair } from '../../src/crypto/ed25519.ts';
import type { BuildPolicyOptions } from '../../src/provisioning/policy.ts';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

export interface StartProxyOptions {
  /** The test's temp dir; the layout above is created inside it. */
  root: string;
  cas: Pick<TestCas, 'url' | 'caFile' | 'caPem' | 'platformKeyFile'>;
  /** Policy service name (default 'mariadb'). */
  service?: string;
  /** Extra/overriding CDBP_* environment (e.g. CDBP_DRAIN_DELAY_MS, CDBP_FRESHNESS). */
  env?: Record<string, string>;
  /** Serve the loopback admin API (drain/quit/renew) on a free port (default true). */
  admin?: boolean;
  /** Resolve when: 'ready' (/readyz 200, default), 'ops' (ops port answers), 'none' (just spawned). */
  waitFor?: 'ready' | 'ops' | 'none';
  timeoutMs?: number;
  /** Called with every /readyz status code seen while waiting (to record the start-up sequence). */
  onReadyz?: (code: number, body: { state?: string; reasons?: string[] }) => void;
}

export interface TestProxy {
  proc: ChildProcess;
  pid: number;
  opsUrl: string;
  /** Loopback admin API base URL, or undefined when started with admin: false. */
  adminUrl: string | undefined;
  mysql: { host: string; port: number };
  caPem: string;
  dirs: { root: string; untrusted: string; datadir: string; mariadbRunDir: string };
  /** The sealed freshness record of this service on the untrusted volume. */
  freshnessRecordFile: string;
  /** The managed mariadbd's unix socket (direct access for test setup, bypassing the proxy). */
  backendSocket: string;
  output(): string;
  /** Exit code once exited; undefined while running. */
  exitCode(): number | null | undefined;
  exited: Promise<number | null>;
  /** GET on the ops port: status code and parsed JSON (or text for /metrics). */
  get(pathname: string): Promise<{ status: number; body: any; text: string }>;
  /** POST on the admin port. */
  admin(action: 'drain' | 'quit' | 'renew'): Promise<{ status: number; body: any }>;
  /** Polls /readyz until `code` (default 200); rejects with the output on timeout or exit. */
  waitReadyz(code?: number, timeoutMs?: number): Promise<void>;
  /** Opens a mariadb connector connection through the proxy with TLS verified against the CAS CA. */
  connect(o: { user: string; password: string; database?: string }): Promise<Connection>;
  /** Creates (or resets) a password account via the backend socket, bypassing the proxy. */
  createUser(user: string, password: string): Promise<void>;
  /** The pid in the managed mariadbd's pid file, if that process is alive. */
  mariadbPid(): number | undefined;
  /** SIGTERM (or `signal`) and wait for exit; SIGKILL after timeoutMs; resolves with the exit code. */
  stop(o?: { signal?: NodeJS.Signals; timeoutMs?: number }): Promise<number | null>;
  /** SIGKILL the proxy and stop any mariadbd it left behind (cleanup for failed tests). */
  kill(): Promise<void>;
}

let counter = 0;

/** Applies a policy fit for a local proxy: simulated mode, this build's measurement, localhost names. */
export async function applyProxyPolicy(cas: Pick<TestCas, 'url' | 'caPem'>,
  o: Partial<BuildPolicyOptions> & { service?: string; owner?: SigningKeyPair } = {}): Promise<{ owner: SigningKeyPair }> {
  const { owner } = await applyTestPolicy(cas, {
    dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'],
    dbKeys: [{ id: 1, versions: [1] }, { id: 2, versions: [1] }],
    ...o, service: o.service ?? 'mariadb',
  });
  return { owner };
}

export async function startProxyProcess(o: StartProxyOptions): Promise<TestProxy> {
  const service = o.service ?? 'mariadb';
  const untrusted = path.join(o.root, 'untrusted');
  const datadir = path.join(untrusted, service);
  const mariadbRunDir = path.join(o.root, 'run', service);
  for (const d of [untrusted, mariadbRunDir, path.join(o.root, 'volatile')]) mkdirSync(d, { recursive: true, mode: 0o700 });
  // mariadbd runs as the `mysql` OS user (when we are root): it must be able to traverse to its dirs.
  for (const d of [o.root, untrusted, path.join(o.root, 'run')]) chmodSync(d, 0o711);
  const [mysqlPort, opsPort, adminPort] = [await freePort(), await freePort(), o.admin === false ? -1 : await freePort()];
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    CDBP_LOG_LEVEL: process.env.CDBP_LOG_LEVEL ?? 'info',
    CDBP_CAS_URL: o.cas.url, CDBP_CAS_CA_FILE: o.cas.caFile, CDBP_SERVICE: service,
    CDBP_TEE_MODE: 'simulated', CDBP_ALLOW_SIMULATED: '1', CDBP_PLATFORM_KEY_FILE: o.cas.platformKeyFile,
    CDBP_MYSQL_HOST: '127.0.0.1', CDBP_MYSQL_PORT: String(mysqlPort),
    CDBP_OPS_HOST: '127.0.0.1', CDBP_OPS_PORT: String(opsPort), CDBP_ADMIN_PORT: String(adminPort),
    CDBP_MANAGE_MARIADB: '1', CDBP_MARIADB_RUN_DIR: mariadbRunDir, CDBP_DATADIR: datadir,
    CDBP_UNTRUSTED_DIR: untrusted, CDBP_VOLATILE_DIR: path.join(o.root, 'volatile'),
    CDBP_DRAIN_DELAY_MS: '0',
    // If the test process dies, the proxy notices and shuts its mariadbd down.
    CDBP_PARENT_PID: String(process.pid),
    ...o.env,
  };
  const logFile = path.join(o.root, `proxy-${++counter}.log`);
  const proc = spawn(process.execPath, [path.join(REPO, 'bin', 'cdbp.js'), 'proxy'], { cwd: REPO, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const onData = (d: Buffer) => { out += d.toString(); };
  proc.stdout!.on('data', onData);
  proc.stderr!.on('data', onData);
  let code: number | null | undefined;
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (c, sig) => {
    code = c ?? (sig ? 128 : null);
    try { writeFileSync(logFile, out); } catch { /* root removed */ }
    resolve(code);
  }));
  const opsUrl = `http://127.0.0.1:${opsPort}`;
  const adminUrl = adminPort >= 0 ? `http://127.0.0.1:${adminPort}` : undefined;
  const managed = new MariadbServer({ dir: mariadbRunDir, datadir });

  const get = async (pathname: string) => {
    const res = await fetch(opsUrl + pathname, { signal: AbortSignal.timeout(5000) });
    const text = await res.text();
    let body: any = text;
    try { body = JSON.parse(text); } catch { /* /metrics is text */ }
    return { status: res.status, body, text };
  };

  const proxy: TestProxy = {
    proc, pid: proc.pid!, opsUrl, adminUrl,
    mysql: { host: '127.0.0.1', port: mysqlPort },
    caPem: o.cas.caPem,
    dirs: { root: o.root, untrusted, datadir, mariadbRunDir },
    freshnessRecordFile: path.join(untrusted, `freshness-${service}.sealed`),
    backendSocket: path.join(mariadbRunDir, 'mariadb.sock'),
    output: () => out,
    exitCode: () => code,
    exited,
    get,
    async admin(action) {
      if (!adminUrl) throw new Error('started without an admin port');
      // As `cdbp admin` does: the per-start token from its 0600 file, a JSON body, no Origin.
      const token = readFileSync(path.join(mariadbRunDir, 'admin.token'), 'utf8').trim();
      const res = await fetch(`${adminUrl}/v1/admin/${action}`, {
        method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: '{}',
        signal: AbortSignal.timeout(30_000),
      });
      return { status: res.status, body: await res.json() };
    },
    async waitReadyz(want = 200, timeoutMs = o.timeoutMs ?? 60_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        if (code !== undefined) throw new Error(`proxy exited (${code}) while waiting for /readyz ${want}:\n${out.slice(-4000)}`);
        try {
          const r = await get('/readyz');
          o.onReadyz?.(r.status, r.body);
          if (r.status === want) return;
        } catch { /* not listening yet */ }
        if (Date.now() > deadline) throw new Error(`/readyz not ${want} after ${timeoutMs} ms:\n${out.slice(-4000)}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    },
    connect({ user, password, database }) {
      return mariadb.createConnection({
        host: '127.0.0.1', port: mysqlPort, user, password, ...(database ? { database } : {}),
        ssl: { ca: o.cas.caPem, rejectUnauthorized: true }, connectTimeout: 10_000,
      });
    },
    async createUser(user, password) {
      const conn = await mariadb.createConnection({ socketPath: proxy.backendSocket, user: 'root' });
      try {
        await conn.query(`CREATE USER IF NOT EXISTS ?@'%' IDENTIFIED BY ?`, [user, password]);
        await conn.query(`ALTER USER ?@'%' IDENTIFIED BY ?`, [user, password]);
        await conn.query(`GRANT ALL PRIVILEGES ON *.* TO ?@'%'`, [user]);
      } finally {
        await conn.end();
      }
    },
    mariadbPid() {
      try {
        const pid = Number(readFileSync(managed.pidFile, 'utf8').trim());
        if (!Number.isInteger(pid) || pid <= 0) return undefined;
        process.kill(pid, 0);
        return existsSync(`/proc/${pid}`) && readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('mariadbd') ? pid : undefined;
      } catch {
        return undefined;
      }
    },
    async stop({ signal = 'SIGTERM', timeoutMs = 60_000 } = {}) {
      if (code !== undefined) return code;
      proc.kill(signal);
      const t = setTimeout(() => proc.kill('SIGKILL'), timeoutMs);
      const c = await exited;
      clearTimeout(t);
      return c;
    },
    async kill() {
      if (code === undefined) {
        proc.kill('SIGKILL');
        await exited;
      }
      await managed.stopLeftover(10_000);
    },
  };

  if (o.waitFor === 'none') return proxy;
  try {
    if (o.waitFor === 'ops') {
      const deadline = Date.now() + (o.timeoutMs ?? 60_000);
      for (;;) {
        if (code !== undefined) throw new Error(`proxy exited (${code}) before its ops port answered:\n${out.slice(-4000)}`);
        try { await get('/livez'); break; } catch { /* not yet */ }
        if (Date.now() > deadline) throw new Error(`ops port not up:\n${out.slice(-4000)}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    } else {
      await proxy.waitReadyz(200);
    }
  } catch (e) {
    await proxy.kill();
    throw e;
  }
  return proxy;
}
