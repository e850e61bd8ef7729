/**
 * `cdbp up`: the embedded local stack in the foreground — the project's CAS, a private MariaDB and the
 * proxy, in simulated-TEE mode, laid out as they would be in a real deployment:
 *
 *   DIR/trusted/    what lives in TEEs or the CAS: CAS sealed state, owner key, simulated platform key
 *   DIR/untrusted/  the database volume an adversary controls: MariaDB datadir + sealed freshness record
 *   DIR/run/        runtime files (sockets, logs, generated my.cnf), non-secret
 *   DIR/stack.json  where to connect
 *
 * Each role runs as its own process (as it would in its own TEE); `up` only supervises them, prints
 * progress, and on SIGINT/SIGTERM stops every child cleanly. Running it again on DIR resumes the same
 * database.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, statSync, openSync, readFileSync, writeFileSync, copyFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { once } from 'node:events';
import { createHash } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import mariadb from 'mariadb';
import pg from 'pg';
import { parseFlags } from '../../src/kernel/args.ts';
import { CdbpError } from '../../src/kernel/errors.ts';
import { findBinary, requirePluginFile } from '../../src/kernel/binaries.ts';
import { freePort } from '../../src/kernel/net.ts';
import { lockStateDir, stateLockHolder } from '../../src/kernel/state-lock.ts';
import { generatePlatformKey } from '../../src/attestation/simulated.ts';
import { measureShippedCode } from '../../src/attestation/measurement.ts';
import { buildNativeDataPlane } from '../native-build.ts';
import { ensureOwnerKey, ensureServicePolicy } from '../local-policy.ts';
import { randomPassword } from '../proxy-role.ts';
import { MariadbServer } from '../../src/db/mariadb-server.ts';
import { startHaCas, type HaCas } from '../up-ha.ts';
import { recoverCounterOnMembers } from '../../src/cas-client/policy.ts';
import { loadOwnerKey } from '../../src/provisioning/policy.ts';
import { peekRecordHeader, recordDigest } from '../../proxy/freshness/record.ts';

const CLI = fileURLToPath(new URL('../../bin/cdbp.js', import.meta.url));

export interface StackFile {
  mysql: { host: string; port: number };
  ops: { url: string };
  cas: { url: string };
  caFile: string;
  admin: { user: string; password: string };
  /** The proxy's loopback admin API (`cdbp admin --dir DIR quit`): URL and its per-start token file (0600). */
  control: { url: string; tokenFile: string };
  mariadb: { socket: string; datadir: string; pid: number | null };
  untrustedDir: string;
  trustedDir: string;
  mode: 'simulated';
  freshness: string;
  postgres?: { host: string; port: number; user: string; password: string; datadir: string; socket: string; ops: { url: string } };
  /** `--ha`: every CAS member (the proxies count by majority) and etcd. */
  ha?: { casUrls: string[]; etcd: string[] };
}

export async function run(argv: string[]): Promise<number> {
  const { flags } = parseFlags(argv, ['postgres', 'ha', 'ha-recover'], ['dir', 'mysql-port', 'ops-port', 'cas-port', 'pg-port', 'freshness'], { maxPositionals: 0 });
  if (flags.help) {
    console.log(`usage: cdbp up [--dir DIR] [--mysql-port N] [--ops-port N] [--cas-port N] [--freshness strict|relaxed|off]
               [--postgres [--pg-port N]] [--ha [--ha-recover]]
Runs the CAS, a private MariaDB and the proxy (simulated TEE) in the foreground; with --postgres also a
private PostgreSQL behind a second proxy (one proxy per database). Ctrl-C stops all.
--ha: a replicated CAS instead (3 members over a 3-member etcd, docs/CAS.md). Its counters live only in
the members' memory, so after the stack stopped it reopens only with --ha-recover: as the owner, every
service's counter re-anchored to its volume as found (signed, audited).`);
    return 0;
  }
  const dir = path.resolve(String(flags.dir ?? '.cdbp'));
  const layout = {
    dir,
    trusted: path.join(dir, 'trusted'),
    untrusted: path.join(dir, 'untrusted'),
    run: path.join(dir, 'run'),
  };
  // trusted/ is private; DIR, untrusted/ and run/ are traversable (not listable) so that PostgreSQL,
  // which runs as its own OS user, can reach its datadir and socket dir below them.
  mkdirSync(layout.trusted, { recursive: true, mode: 0o700 });
  for (const d of [dir, layout.untrusted, layout.run]) {
    mkdirSync(d, { recursive: true });
    chmodSync(d, 0o711);
  }
  // One `cdbp up` per DIR, before anything is touched (a second one stopped the first's mariadbd and
  // appended to its CAS audit log). Held until this process ends; the kernel frees it if we are killed.
  await lockStateDir(dir, { role: 'cdbp up', scope: 'up' });
  const say = (msg: string) => console.log(`cdbp up: ${msg}`);

  // Preflight: one line naming the package, not a stack trace, for anything missing.
  findBinary('mariadbd');
  findBinary('mariadb-install-db');
  requirePluginFile('hashicorp_key_management.so');
  if (flags.postgres) {
    findBinary('postgres');
    findBinary('initdb');
    // Encrypted at rest by default (docs/PG-AT-REST.md): gocryptfs over FUSE.
    for (const [bin, pkg] of [['gocryptfs', 'gocryptfs'], ['fusermount3', 'fuse3']] as const) {
      try { findBinary(bin); } catch { throw new CdbpError('BINARY_MISSING', `${bin} not found: install the Debian package ${pkg} (PostgreSQL runs encrypted at rest)`); }
    }
    if (!existsSync('/dev/fuse')) throw new CdbpError('CONFIG_INVALID', '/dev/fuse is missing: PostgreSQL runs in a FUSE-encrypted directory (docs/PG-AT-REST.md)');
    assertTraversableByOthers(dir);
  }

  const stackFile = path.join(dir, 'stack.json');
  const previous = existsSync(stackFile) ? (JSON.parse(readFileSync(stackFile, 'utf8')) as Partial<StackFile>) : undefined;
  const children: Array<{ name: string; child: ChildProcess; log: string }> = [];
  let stopping = false;
  const mariadbPidFile = path.join(layout.run, 'mariadb', 'mariadb.pid');
  // Describes the proxy's managed instance just enough to find a mariadbd a killed proxy left behind.
  const managed = new MariadbServer({ dir: path.join(layout.run, 'mariadb'), datadir: path.join(layout.untrusted, 'mariadb') });
  const stopLeftover = async () => {
    const pid = await managed.stopLeftover();
    if (pid) say(`stopped a leftover mariadbd (pid ${pid})`);
  };
  // A proxy of an earlier `up` that was killed outlives it briefly (it stops on its own once it sees its
  // parent gone): let it finish its stop (it shuts its database down) before this run starts its own,
  // or the new proxy would find the volume locked by the old one.
  // Proxies first: their clean stop seals a last epoch in the old CAS.
  for (const [lockDir, scope, what] of [
    [layout.untrusted, 'proxy:mariadb', 'mariadb proxy'], [layout.untrusted, 'proxy:postgres', 'postgres proxy'],
    [path.join(layout.trusted, 'cas'), 'cas', 'CAS'],
    ...[1, 2, 3].map((i) => [path.join(layout.trusted, 'cas-ha', `m${i}`), 'cas', `CAS member ${i}`] as const),
  ] as const) {
    const pid = await stopLeftoverHolder(lockDir, scope, what);
    if (pid) say(`stopped a leftover ${what} (pid ${pid}) of an earlier cdbp up`);
  }
  await stopLeftover();

  let stopEtcd: (() => Promise<void>) | undefined;
  const stopAll = async (code: number): Promise<number> => {
    if (stopping) return code;
    stopping = true;
    say('stopping ...');
    // Proxy first (it drains clients, seals a final epoch and shuts mariadbd down), then the CAS.
    let clean = true;
    for (const { name, child } of [...children].reverse()) {
      if (child.exitCode !== null || child.signalCode !== null) {
        clean &&= child.exitCode === 0;
        continue;
      }
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
      const [exitCode] = (await once(child, 'exit')) as [number | null];
      clearTimeout(timer);
      clean &&= exitCode === 0;
      say(`${name} stopped`);
    }
    await stopLeftover();
    await stopEtcd?.();
    // After a clean shutdown MariaDB needs nothing from the tmpfs dir (Aria log, temp tables); after a
    // crash the Aria log is kept for recovery.
    if (clean) rmSync(volatileDir(dir), { recursive: true, force: true });
    return code;
  };

  let resolveSignal: (sig: string) => void = () => undefined;
  const signalled = new Promise<string>((r) => { resolveSignal = r; });
  process.on('SIGINT', () => resolveSignal('SIGINT'));
  process.on('SIGTERM', () => resolveSignal('SIGTERM'));

  /** `restartArgs`: restarted with these when it dies (a replicated CAS member rejoins as a new incarnation) instead of stopping the stack. */
  const startChild = (name: string, args: string[], env: Record<string, string>, restartArgs?: string[]) => {
    const log = path.join(layout.run, `${name}.log`);
    const fd = openSync(log, 'a');
    // Own process group: a terminal's Ctrl-C reaches only `up`, which then stops the children in order
    // (proxy drains and shuts mariadbd down before the CAS goes). CDBP_PARENT_PID makes a child exit
    // cleanly if `up` itself dies without stopping it.
    // Profiling (bench --profile): NODE_OPTIONS may not carry --cpu-prof, so it goes on the command line.
    const prof = process.env.CDBP_CPU_PROF_DIR ? ['--cpu-prof', `--cpu-prof-dir=${process.env.CDBP_CPU_PROF_DIR}`] : [];
    const child = spawn(process.execPath, [...prof, CLI, ...args], {
      stdio: ['ignore', fd, fd], detached: true,
      env: { ...process.env, ...env, CDBP_PARENT_PID: String(process.pid) },
    });
    const slot = children.findIndex((c) => c.name === name);
    // A restarted member keeps its place: the stop order stays proxies first, CAS members after them.
    if (slot >= 0) children[slot] = { name, child, log };
    else children.push({ name, child, log });
    child.on('exit', (code, sig) => {
      if (stopping) return;
      if (restartArgs) {
        say(`${name} exited (${sig ?? `code ${code}`}): restarting it; it rejoins the others as a new incarnation`);
        setTimeout(() => { if (!stopping) startChild(name, restartArgs, env, restartArgs); }, 1000).unref();
        return;
      }
      if (name === 'proxy' && code === 0) {
        // A clean exit of the proxy is a requested stop (`cdbp admin quit|drain`): stop the rest, exit 0.
        say('proxy stopped (admin request)');
        resolveSignal('SIGTERM');
        return;
      }
      say(`${name} exited unexpectedly (${sig ?? `code ${code}`}); last log lines:\n${tail(log, 12)}`);
      resolveSignal('child-exit');
    });
    return child;
  };

  try {
    // 1. The CAS, with a simulated platform key standing in for TEE hardware.
    const platformKey = path.join(layout.trusted, 'platform.key');
    if (!existsSync(platformKey)) await generatePlatformKey(platformKey);
    // The owner's key (a replicated CAS seals its owner allow-list at bootstrap).
    const ownerKey = path.join(layout.trusted, 'owner.key');
    await ensureOwnerKey(ownerKey);
    const caFile = path.join(dir, 'ca.pem');
    let casUrls: string[];
    let ha: HaCas | undefined;
    if (flags.ha) {
      ha = await startHaCas({
        trusted: layout.trusted, untrusted: layout.untrusted, run: layout.run, platformKey, ownerKeyFile: ownerKey, recover: Boolean(flags['ha-recover']),
        dirFlag: flags.dir ? ` --dir ${String(flags.dir)}` : '',
        startChild: (name, args, restartArgs) => { startChild(name, args, {}, restartArgs); },
        waitReady: (file, what) => waitFor(() => readJson<{ url: string; caFile: string }>(file), 60_000, signalled, what),
        say,
      });
      stopEtcd = ha.stopEtcd;
      casUrls = ha.urls;
      copyFileSync(ha.caFile, caFile);
    } else {
      say('starting the CAS (simulated TEE platform)');
      const casDir = path.join(layout.trusted, 'cas');
      rmSync(path.join(casDir, 'cas-ready.json'), { force: true });
      const casPort = flags['cas-port'] ? Number(flags['cas-port']) : await freePort();
      startChild('cas', ['cas', '--dir', casDir, '--port', String(casPort), '--allow-simulated',
        '--platform-public-key', `${platformKey}.pub`], {});
      const casReady = await waitFor(() => readJson<{ url: string; caFile: string }>(path.join(casDir, 'cas-ready.json')), 60_000, signalled, 'CAS');
      copyFileSync(casReady.caFile, caFile);
      say(`CAS ready at ${casReady.url}`);
      casUrls = [casReady.url];
    }

    // 2. The owner's policy for this build of the proxy (re-signed when the code's measurement changes).
    // The native data plane's binary is measured code: build it (if stale) before measuring, or the proxy's
    // own build step would change the code after the owner signed for it (a MEASUREMENT_MISMATCH at attest).
    const nativeBuild = buildNativeDataPlane();
    if (!nativeBuild.ok) say(`native data plane not built (the proxy will run the Node plane): ${nativeBuild.output.split('\n').pop()}`);
    const measurement = measureShippedCode();
    const applied = await ensureServicePolicy({
      casUrl: casUrls[0]!, caPem: readFileSync(caFile, 'utf8'), ownerKeyFile: ownerKey, service: 'mariadb', measurement,
    });
    say(`policy ${applied.changed ? 'applied' : 'unchanged'} (measurement ${measurement.slice(0, 16)}…)`);
    // A reopened replicated CAS lost every counter: the owner re-anchors each service to its volume as found
    // (PostgreSQL's below, once its policy is there).
    const reanchor = async (service: string): Promise<void> => {
      if (!ha?.reopened) return;
      const anchored = await reanchorToVolume({ casUrls, caPem: readFileSync(caFile, 'utf8'), ownerKeyFile: ownerKey, service, untrustedDir: layout.untrusted });
      say(anchored.firstStart ? `counter of ${service} re-anchored by the owner as never advanced: no record and no database on its volume (audited)`
        : `counter of ${service} re-anchored by the owner to its volume's sealed record (epoch ${anchored.value}; audited)`);
    };
    await reanchor('mariadb');

    // 3. The proxy: attests, verifies freshness, serves keys, starts MariaDB, opens the endpoint.
    const mysqlPort = flags['mysql-port'] ? Number(flags['mysql-port']) : previous?.mysql?.port ?? (await freePort());
    const opsPort = flags['ops-port'] ? Number(flags['ops-port']) : await freePort();
    const adminPort = await freePort();
    const freshness = String(flags.freshness ?? 'strict');
    const mariadbRunDir = path.join(layout.run, 'mariadb');
    const datadir = path.join(layout.untrusted, 'mariadb');
    startChild('proxy', ['proxy'], {
      CDBP_CAS_URL: casUrls.join(','), CDBP_CAS_CA_FILE: caFile, CDBP_SERVICE: 'mariadb',
      CDBP_TEE_MODE: 'simulated', CDBP_ALLOW_SIMULATED: '1', CDBP_PLATFORM_KEY_FILE: platformKey,
      CDBP_MYSQL_HOST: '127.0.0.1', CDBP_MYSQL_PORT: String(mysqlPort),
      CDBP_OPS_HOST: '127.0.0.1', CDBP_OPS_PORT: String(opsPort), CDBP_ADMIN_PORT: String(adminPort),
      CDBP_ADMIN_TOKEN_FILE: path.join(layout.run, 'admin.token'),
      CDBP_MANAGE_MARIADB: '1', CDBP_MARIADB_RUN_DIR: mariadbRunDir, CDBP_DATADIR: datadir,
      CDBP_UNTRUSTED_DIR: layout.untrusted, CDBP_VOLATILE_DIR: volatileDir(dir), CDBP_FRESHNESS: freshness, CDBP_DRAIN_DELAY_MS: '0',
    });
    const opsUrl = `http://127.0.0.1:${opsPort}`;
    const firstRun = !existsSync(path.join(datadir, 'mysql'));
    const status = await followProxy(opsUrl, say, signalled, firstRun);

    // 4. An admin account for the stack's user (first run creates it; later runs keep its password).
    const admin = { user: 'admin', password: previous?.admin?.password ?? randomPassword() };
    const socket = path.join(mariadbRunDir, 'mariadb.sock');
    await ensureAdmin(socket, admin);

    let postgres: StackFile['postgres'];
    if (flags.postgres) {
      await ensureServicePolicy({
        casUrl: casUrls[0]!, caPem: readFileSync(caFile, 'utf8'), ownerKeyFile: ownerKey, service: 'postgres', measurement,
      });
      await reanchor('postgres');
      const pgPort = flags['pg-port'] ? Number(flags['pg-port']) : previous?.postgres?.port ?? (await freePort());
      const pgOpsPort = await freePort();
      const pgRunDir = path.join(layout.run, 'postgres');
      const pgDatadir = path.join(layout.untrusted, 'postgres');
      say(`starting the PostgreSQL proxy${existsSync(path.join(pgDatadir, 'PG_VERSION')) ? '' : ' (initializing the database on first run)'}`);
      startChild('proxy-pg', ['proxy'], {
        CDBP_CAS_URL: casUrls.join(','), CDBP_CAS_CA_FILE: caFile, CDBP_SERVICE: 'postgres', CDBP_ENGINE: 'postgres',
        CDBP_TEE_MODE: 'simulated', CDBP_ALLOW_SIMULATED: '1', CDBP_PLATFORM_KEY_FILE: platformKey,
        CDBP_PG_HOST: '127.0.0.1', CDBP_PG_PORT: String(pgPort), CDBP_PG_BACKEND_PORT: String(await freePort()),
        CDBP_OPS_HOST: '127.0.0.1', CDBP_OPS_PORT: String(pgOpsPort),
        CDBP_MANAGE_POSTGRES: '1', CDBP_PG_RUN_DIR: pgRunDir, CDBP_DATADIR: pgDatadir,
        CDBP_UNTRUSTED_DIR: layout.untrusted, CDBP_FRESHNESS: freshness, CDBP_DRAIN_DELAY_MS: '0',
      });
      const pgStatus = await followProxy(`http://127.0.0.1:${pgOpsPort}`, () => undefined, signalled);
      const pgBackend = pgStatus.backend as { socket?: string };
      const pgAdmin = { user: 'admin', password: previous?.postgres?.password ?? randomPassword() };
      await ensurePgAdmin(path.dirname(pgBackend.socket ?? ''), Number(path.extname(pgBackend.socket ?? '.5432').slice(1)), pgAdmin);
      postgres = { host: '127.0.0.1', port: pgPort, user: pgAdmin.user, password: pgAdmin.password, datadir: pgDatadir, socket: pgBackend.socket ?? '', ops: { url: `http://127.0.0.1:${pgOpsPort}` } };
      say(`PostgreSQL ready (encrypted at rest: ${pgDatadir} holds ciphertext only): psql "host=127.0.0.1 port=${pgPort} user=admin dbname=postgres sslmode=verify-full sslrootcert=${caFile}"`);
    }

    const stack: StackFile = {
      mysql: { host: '127.0.0.1', port: mysqlPort },
      ops: { url: opsUrl },
      cas: { url: casUrls[0]! },
      caFile,
      admin,
      control: { url: `http://127.0.0.1:${adminPort}`, tokenFile: path.join(layout.run, 'admin.token') },
      mariadb: { socket, datadir, pid: (status.backend as { pid?: number } | undefined)?.pid ?? readPid(mariadbPidFile) },
      untrustedDir: layout.untrusted,
      trustedDir: layout.trusted,
      mode: 'simulated',
      freshness,
      ...(postgres ? { postgres } : {}),
      ...(ha ? { ha: { casUrls, etcd: ha.etcdEndpoints } } : {}),
    };
    writeFileSync(stackFile, JSON.stringify(stack, null, 2) + '\n', { mode: 0o600 });
    // The password stays in stack.json (0600); terminals and CI logs only see how to read it.
    say(`ready (SIMULATED TEE): mariadb --ssl-ca=${caFile} --ssl-verify-server-cert -h 127.0.0.1 -P ${mysqlPort} -u admin -p"$(jq -r .admin.password ${stackFile})"`);

    const why = await signalled;
    return await stopAll(why === 'child-exit' ? 1 : 0);
  } catch (e) {
    if (e instanceof SignalledError) return stopAll(0);
    const err = e instanceof CdbpError ? e : new CdbpError('INTERNAL', (e as Error).message, { cause: e });
    say(`failed: ${err.code}: ${err.message}`);
    await stopAll(1);
    throw err;
  }
}

class SignalledError extends Error {}

/**
 * The owner's re-anchoring of one service after its replicated CAS was reopened (until then its members
 * refuse the counter: COUNTER_UNANCHORED): to the sealed record the proxy left on the volume (`cdbp
 * recover --record`), on a majority of members; to "never advanced" (value 0) when the volume holds
 * neither a record nor a database (the service never started). `firstStart` tells which.
 */
async function reanchorToVolume(o: { casUrls: string[]; caPem: string; ownerKeyFile: string; service: string; untrustedDir: string }): Promise<{ value: number; firstStart: boolean }> {
  const file = path.join(o.untrustedDir, `freshness-${o.service}.sealed`);
  if (!existsSync(file)) {
    // "Never advanced" lets the proxy take any data directory for a first start: only a volume without
    // one may be anchored so.
    if (existsSync(path.join(o.untrustedDir, o.service))) {
      throw new CdbpError('HA_RECOVERY_REFUSED', `${o.service}: the volume holds a database but no sealed freshness record (${file}): not re-anchoring it to nothing`);
    }
    await recoverCounterOnMembers({ casUrls: o.casUrls, caPem: o.caPem, ownerKey: loadOwnerKey(o.ownerKeyFile), service: o.service, value: 0, digest: '' });
    return { value: 0, firstStart: true };
  }
  const bytes = readFileSync(file);
  const value = peekRecordHeader(bytes).epoch;
  await recoverCounterOnMembers({ casUrls: o.casUrls, caPem: o.caPem, ownerKey: loadOwnerKey(o.ownerKeyFile), service: o.service, value, digest: recordDigest(bytes) });
  return { value, firstStart: false };
}

/**
 * PostgreSQL refuses to run as root, so it runs as its own OS user, which must be able to reach its
 * datadir under DIR. Say which directory blocks it instead of letting initdb fail obscurely.
 */
function assertTraversableByOthers(dir: string): void {
  if (process.getuid?.() !== 0) return;
  for (let d = path.dirname(dir); ; d = path.dirname(d)) {
    if ((statSync(d).mode & 0o001) === 0) {
      throw new CdbpError('CONFIG_INVALID',
        `PostgreSQL runs as the postgres OS user and cannot reach ${dir}: ${d} is not traversable (chmod o+x ${d}, or use --dir elsewhere)`);
    }
    if (d === path.dirname(d)) return;
  }
}

/** Memory-backed runtime dir for this stack (tmpfs when /dev/shm exists), keyed by DIR. */
export function volatileDir(dir: string): string {
  const base = existsSync('/dev/shm') ? '/dev/shm' : path.join(dir, 'run');
  return path.join(base, `cdbp-${createHash('sha256').update(dir).digest('hex').slice(0, 12)}`);
}

/** Polls the proxy's status, printing each lifecycle step, until ready (or failed: then throws). */
async function followProxy(opsUrl: string, say: (m: string) => void, signalled: Promise<string>, firstRun = false): Promise<Record<string, unknown>> {
  const labels: Record<string, string> = {
    attesting: 'proxy attesting to the CAS',
    provisioned: 'proxy attested; TLS identity and keys provisioned',
    verifying: 'verifying freshness of the data volume',
    starting_backend: `freshness verified; keyring ready; ${firstRun ? 'initializing the database (first run) and starting MariaDB' : 'starting MariaDB'}`,
  };
  const seen = new Set<string>();
  return waitFor(async () => {
    const status = await fetchJson(`${opsUrl}/v1/status`);
    if (!status) return undefined;
    const lc = status.lifecycle as { state: string; reason?: { code: string; message: string }; history?: Array<{ state: string }> };
    for (const s of (lc.history ?? []).map((h) => h.state)) {
      if (!seen.has(s) && labels[s]) say(labels[s]!);
      seen.add(s);
    }
    // Per-file freshness (issue 22): the start-up check of the data files, once it has run.
    const files = (status.freshness as { dataFiles?: { verifyMs?: number | null; verifiedFiles?: number } } | null)?.dataFiles;
    if (typeof files?.verifyMs === 'number' && !seen.has('data-files')) {
      seen.add('data-files');
      say(`data files verified against the sealed inventory (${files.verifiedFiles ?? 0} files, ${files.verifyMs} ms)`);
    }
    if (lc.state === 'failed') throw new CdbpError((lc.reason?.code ?? 'INTERNAL') as never, `proxy failed: ${lc.reason?.message ?? 'unknown reason'}`);
    return lc.state === 'ready' ? status : undefined;
  }, 180_000, signalled, 'proxy');
}

async function waitFor<T>(probe: () => T | undefined | Promise<T | undefined>, timeoutMs: number, signalled: Promise<string>, what: string): Promise<T> {
  let interrupted = false;
  void signalled.then(() => { interrupted = true; });
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (interrupted) throw new SignalledError();
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new CdbpError('CHILD_FAILED', `${what} not ready after ${timeoutMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function fetchJson(url: string): Promise<Record<string, unknown> | undefined> {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
    return (await res.json()) as Record<string, unknown>;
  } catch {
    return undefined;
  }
}

function readJson<T>(file: string): T | undefined {
  try {
    return JSON.parse(readFileSync(file, 'utf8')) as T;
  } catch {
    return undefined;
  }
}

async function ensureAdmin(socket: string, admin: { user: string; password: string }): Promise<void> {
  const conn = await mariadb.createConnection({ socketPath: socket, user: 'root' });
  try {
    await conn.query(`CREATE USER IF NOT EXISTS ?@'%' IDENTIFIED BY ?`, [admin.user, admin.password]);
    await conn.query(`ALTER USER ?@'%' IDENTIFIED BY ?`, [admin.user, admin.password]);
    await conn.query(`GRANT ALL PRIVILEGES ON *.* TO ?@'%' WITH GRANT OPTION`, [admin.user]);
  } finally {
    await conn.end();
  }
}

async function ensurePgAdmin(socketDir: string, port: number, admin: { user: string; password: string }): Promise<void> {
  const client = new pg.Client({ host: socketDir, port, user: 'postgres', database: 'postgres' });
  await client.connect();
  try {
    const exists = await client.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [admin.user]);
    const ident = client.escapeIdentifier(admin.user);
    const literal = client.escapeLiteral(admin.password);
    await client.query(`${exists.rowCount ? 'ALTER' : 'CREATE'} ROLE ${ident} LOGIN SUPERUSER PASSWORD ${literal}`);
  } finally {
    await client.end();
  }
}

function readPid(file: string): number | null {
  try {
    const pid = Number(readFileSync(file, 'utf8').trim());
    return Number.isInteger(pid) && pid > 0 ? pid : null;
  } catch {
    return null;
  }
}

function tail(file: string, lines: number): string {
  try {
    return readFileSync(file, 'utf8').trim().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

/**
 * Stops the process that holds `scope`'s lock on `dir` (an orphan of a killed `up`: this run holds the
 * `up` lock, so no live `up` owns it): SIGTERM, up to 60 s for its clean stop, then SIGKILL. Returns its
 * pid, or undefined if none held the lock.
 */
async function stopLeftoverHolder(dir: string, scope: string, what: string): Promise<number | undefined> {
  const holder = await stateLockHolder(dir, scope);
  if (!holder) return undefined;
  const signalUntilFree = async (sig: NodeJS.Signals | undefined, ms: number) => {
    try { if (sig) process.kill(holder.pid, sig); } catch { /* already gone */ }
    const deadline = Date.now() + ms;
    while (Date.now() < deadline) {
      if (!(await stateLockHolder(dir, scope))) return true;
      await new Promise((r) => setTimeout(r, 200));
    }
    return false;
  };
  // A holder that does not say who it is is usually one in the middle of exiting: give it a moment.
  if (!holder.pid) {
    if (await signalUntilFree(undefined, 10_000)) return undefined;
    throw new CdbpError('STATE_LOCKED', `${dir} is held by a ${what} that does not answer: stop it first`);
  }
  if (await signalUntilFree('SIGTERM', 60_000)) return holder.pid;
  if (await signalUntilFree('SIGKILL', 10_000)) return holder.pid;
  throw new CdbpError('STATE_LOCKED', `${dir} is still held by the ${what} (pid ${holder.pid}) after SIGKILL`);
}
