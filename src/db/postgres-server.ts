import { spawn } from 'node:child_process';
import { chownSync, closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync, appendFileSync } from 'node:fs';
import path from 'node:path';
import { once } from 'node:events';
import { ServerProcess, logTail } from './server-process.ts';
import { findBinary } from '../kernel/binaries.ts';
import { CdbpError } from '../kernel/errors.ts';

/** util-linux; sets the parent-death signal, then execs the server (see dieWithParent). */
const SETPRIV = '/usr/bin/setpriv';

/**
 * A private PostgreSQL (the machine's binaries, own datadir, unix socket dir, port, pg_hba lines),
 * never the system service. Used by the test harness, the PG benchmark and later the proxy's
 * managed mode.
 *
 * PostgreSQL refuses to run as root, so when we are root every PostgreSQL binary runs as an
 * unprivileged OS user (default `postgres`) and the instance directory is chowned to it.
 */
export type PgAuthMethod = 'trust' | 'password' | 'md5' | 'scram-sha-256' | 'reject';

/**
 * postgresql.conf lines for a data directory on the gocryptfs mount (`onFuse`): no work that has several
 * processes create one shared temporary directory at once — parallel index builds
 * (max_parallel_maintenance_workers) and parallel hash joins' shared spill files (enable_parallel_hash; a
 * parallel query still runs, each worker hashing on its own). The cost is parallelism on index builds and
 * hash joins inside a sidecar that usually has few cores anyway.
 */
export const FUSE_SAFE_CONFIG = ['max_parallel_maintenance_workers = 0', 'enable_parallel_hash = off'];

export interface PostgresServerOptions {
  /** Instance directory: holds the datadir, socket dir, log and TLS files unless given separately. */
  dir: string;
  datadir?: string;
  /** Directory for the unix socket `.s.PGSQL.<port>`. */
  socketDir?: string;
  /** Port number (also names the unix socket). */
  port: number;
  /** Also listen on 127.0.0.1:port (otherwise unix socket only). */
  tcp?: boolean;
  /** Bootstrap superuser; it authenticates with `trust` over the unix socket only. */
  superuser?: string;
  /**
   * pg_hba.conf lines after the superuser's local trust line, e.g.
   * `local all app scram-sha-256`, `hostssl all all 127.0.0.1/32 md5`. Default: scram everywhere.
   */
  hba?: string[];
  /** `ssl = on` with this identity (PEM strings; written to files readable only by the server user). */
  tls?: { certPem: string; keyPem: string };
  /** Hash used for new passwords; md5 is needed to test md5 auth with stored md5 secrets. */
  passwordEncryption?: 'scram-sha-256' | 'md5';
  /** Extra postgresql.conf lines (e.g. `fsync = off` for throwaway test instances). */
  extraConfig?: string[];
  /** OS user that runs PostgreSQL when we are root (default `postgres`). Ignored when not root. */
  runAsUser?: string;
  /** initdb --no-sync: for throwaway test instances only. */
  initNoSync?: boolean;
  /**
   * The data directory is on the gocryptfs mount (encryption at rest). Backends creating the same
   * temporary directory at once (a parallel CREATE INDEX's shared fileset, a parallel hash join's spill,
   * the first temp file ever) were answered EPERM by a root-served mount (gocryptfs#892/#893, see
   * src/storage/gocryptfs.ts serveAsOwner), and PostgreSQL failed the statement: FUSE_SAFE_CONFIG keeps
   * that work from happening at all, wherever the mount runs.
   */
  onFuse?: boolean;
  startTimeoutMs?: number;
  /**
   * The postmaster gets SIGQUIT (immediate shutdown) when this process dies (`setpriv --pdeathsig`), so a
   * killed supervisor leaves no server running on (and holding open) an encrypted mount it can no longer watch.
   */
  dieWithParent?: boolean;
}

/** uid/gid of a local account, read from /etc/passwd (no native addon, no `id` subprocess). */
export function lookupOsUser(name: string, passwd = readFileSync('/etc/passwd', 'utf8')): { uid: number; gid: number } {
  for (const line of passwd.split('\n')) {
    const f = line.split(':');
    if (f[0] === name && f.length >= 4) return { uid: Number(f[2]), gid: Number(f[3]) };
  }
  throw new CdbpError('CONFIG_INVALID', `OS user ${name} does not exist (PostgreSQL must not run as root)`);
}

export class PostgresServer {
  readonly dir: string;
  readonly datadir: string;
  readonly socketDir: string;
  readonly port: number;
  readonly superuser: string;
  readonly logFile: string;
  private readonly proc = new ServerProcess('SIGINT');
  private readonly opts: PostgresServerOptions;
  private readonly owner: { uid: number; gid: number } | undefined;

  constructor(opts: PostgresServerOptions) {
    this.opts = opts;
    this.dir = path.resolve(opts.dir);
    this.datadir = path.resolve(opts.datadir ?? path.join(this.dir, 'data'));
    this.socketDir = path.resolve(opts.socketDir ?? path.join(this.dir, 'run'));
    this.port = opts.port;
    this.superuser = opts.superuser ?? 'postgres';
    this.logFile = path.join(this.dir, 'postgres.log');
    this.owner = process.getuid?.() === 0 ? lookupOsUser(opts.runAsUser ?? 'postgres') : undefined;
  }

  /** Path of the unix socket clients (and the proxy) connect to. */
  get socketPath(): string {
    return path.join(this.socketDir, `.s.PGSQL.${this.port}`);
  }

  get pid(): number | undefined {
    return this.proc.pid;
  }

  get running(): boolean {
    return this.proc.running;
  }

  isInitialized(): boolean {
    return existsSync(path.join(this.datadir, 'PG_VERSION'));
  }

  /** Runs initdb once (idempotent). */
  async initialize(): Promise<void> {
    this.prepareDirs();
    if (this.isInitialized()) return;
    const initdb = findBinary('initdb');
    findBinary('postgres');
    const logPath = path.join(this.dir, 'initdb.log');
    await this.runAsOwner(initdb, [
      '-D', this.datadir, '-U', this.superuser, '--auth=trust', '-E', 'UTF8', '--locale=C', '--no-instructions',
      ...(this.opts.initNoSync ? ['--no-sync'] : []),
    ], logPath, 'initdb');
    // Our settings live in their own file, rewritten at each start; the stock file just includes it.
    appendFileSync(path.join(this.datadir, 'postgresql.conf'), "\ninclude_if_exists = 'cdbp.conf'\n");
  }

  /** Writes cdbp.conf, pg_hba.conf and the TLS files from the options (called by start()). */
  writeConfig(): void {
    this.prepareDirs();
    const lines = [
      `port = ${this.port}`,
      `listen_addresses = '${this.opts.tcp ? '127.0.0.1' : ''}'`,
      `unix_socket_directories = '${this.socketDir}'`,
      `password_encryption = '${this.opts.passwordEncryption ?? 'scram-sha-256'}'`,
      'max_connections = 300',
      'shared_buffers = 128MB',
      `hba_file = '${path.join(this.datadir, 'pg_hba.conf')}'`,
    ];
    if (this.opts.tls) {
      const certFile = path.join(this.dir, 'server.crt');
      const keyFile = path.join(this.dir, 'server.key');
      this.writeOwned(certFile, this.opts.tls.certPem, 0o644);
      // PostgreSQL insists the key is 0600 and owned by the server user.
      this.writeOwned(keyFile, this.opts.tls.keyPem, 0o600);
      lines.push('ssl = on', `ssl_cert_file = '${certFile}'`, `ssl_key_file = '${keyFile}'`);
    } else {
      lines.push('ssl = off');
    }
    if (this.opts.onFuse) lines.push(...FUSE_SAFE_CONFIG);
    lines.push(...(this.opts.extraConfig ?? []), '');
    this.writeOwned(path.join(this.datadir, 'cdbp.conf'), lines.join('\n'), 0o600);
    const hba = [
      `local all ${this.superuser} trust`,
      ...(this.opts.hba ?? ['local all all scram-sha-256', 'host all all 127.0.0.1/32 scram-sha-256']),
      '',
    ];
    this.writeOwned(path.join(this.datadir, 'pg_hba.conf'), hba.join('\n'), 0o600);
  }

  async start(): Promise<void> {
    if (this.running) return;
    if (!this.isInitialized()) await this.initialize();
    this.writeConfig();
    const postgres = findBinary('postgres');
    const logFd = openSync(this.logFile, 'a');
    const [bin, args] = this.opts.dieWithParent && existsSync(SETPRIV)
      ? [SETPRIV, ['--pdeathsig', 'QUIT', '--', postgres, '-D', this.datadir]]
      : [postgres, ['-D', this.datadir]];
    try {
      this.proc.spawn(bin, args, {
        stdio: ['ignore', logFd, logFd],
        env: this.childEnv(),
        ...(this.owner ?? {}),
      });
    } finally {
      closeSync(logFd);
    }
    try {
      await this.waitReady(this.opts.startTimeoutMs ?? 60_000);
    } catch (e) {
      await this.stop();
      throw new CdbpError('CHILD_FAILED', `postgres did not start: ${logTail(this.logFile)}`, { cause: e });
    }
  }

  whenExited(): Promise<number | null> {
    return this.proc.whenExited();
  }

  /** Fast shutdown (SIGINT: roll back sessions, checkpoint), escalating to SIGKILL after timeoutMs. */
  async stop(timeoutMs = 30_000): Promise<void> {
    await this.proc.stop(timeoutMs);
  }

  /** Simulates a crash (no checkpoint). */
  async kill(): Promise<void> {
    await this.proc.kill();
  }

  logTail(lines = 8): string {
    return logTail(this.logFile, lines);
  }

  /** Runs pg_controldata on the datadir (server may be stopped) and returns its raw text. */
  async controlData(): Promise<string> {
    const out = path.join(this.dir, 'controldata.txt');
    await this.runAsOwner(findBinary('pg_controldata'), ['-D', this.datadir], out, 'pg_controldata');
    return readFileSync(out, 'utf8');
  }

  /** The durable position recorded by the last checkpoint (works while the server is down). */
  async latestCheckpointLsn(): Promise<bigint> {
    return latestCheckpointLsn(await this.controlData());
  }

  private async waitReady(timeoutMs: number): Promise<void> {
    // postmaster.pid line 8 turns to "ready" once connections are accepted (PG >= 10). Reading it
    // avoids racing "the database system is starting up" on a socket that already listens. Line 1 must
    // name *this* postmaster: after a kill -9 the dead one's file (and socket) still say "ready" until the
    // new one replaces them (a start that believed it got ECONNREFUSED in the crash loop).
    const pidFile = path.join(this.datadir, 'postmaster.pid');
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (!this.running) throw new Error('postgres exited during start');
      try {
        const lines = readFileSync(pidFile, 'utf8').split('\n');
        if (Number(lines[0]) === this.pid && lines[7]?.trim() === 'ready' && existsSync(this.socketPath)) return;
      } catch {
        // not written yet
      }
      if (Date.now() > deadline) throw new Error(`not ready after ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  private prepareDirs(): void {
    // On FUSE, base/pgsql_tmp exists before any backend could race to create it (kept across restarts:
    // PostgreSQL empties it at start but does not remove it).
    const tempDir = this.opts.onFuse && this.isInitialized() ? [path.join(this.datadir, 'base', 'pgsql_tmp')] : [];
    for (const d of [this.dir, this.datadir, this.socketDir, ...tempDir]) {
      mkdirSync(d, { recursive: true, mode: 0o700 });
      if (this.owner) chownSync(d, this.owner.uid, this.owner.gid);
    }
  }

  private writeOwned(file: string, content: string, mode: number): void {
    rmSync(file, { force: true });
    writeFileSync(file, content, { mode });
    if (this.owner) chownSync(file, this.owner.uid, this.owner.gid);
  }

  private childEnv(): NodeJS.ProcessEnv {
    // A minimal environment: nothing of ours (tokens, passwords) leaks into the server's environ.
    return { PATH: process.env.PATH ?? '/usr/bin:/bin', LANG: 'C', LC_ALL: 'C', TZ: 'UTC' };
  }

  private async runAsOwner(bin: string, args: string[], logPath: string, what: string): Promise<void> {
    const fd = openSync(logPath, 'w');
    try {
      const child = spawn(bin, args, { stdio: ['ignore', fd, fd], env: this.childEnv(), cwd: this.dir, ...(this.owner ?? {}) });
      const [code] = (await once(child, 'exit')) as [number | null];
      if (code !== 0) throw new CdbpError('CHILD_FAILED', `${what} failed (exit ${code}): ${logTail(logPath)}`);
    } finally {
      closeSync(fd);
    }
  }
}

// ---- durable position (for the freshness guard) -------------------------------------------------

/**
 * SQL returning the WAL position known to be flushed to disk, as text `X/Y`. The flush position (not
 * the insert position of pg_current_wal_lsn()) is what survives a crash, so it is what a seal covers.
 */
export const CURRENT_WAL_FLUSH_LSN_SQL = 'SELECT pg_current_wal_flush_lsn()::text AS lsn';
/** The current write (insert) position; ≥ the flush position. */
export const CURRENT_WAL_LSN_SQL = 'SELECT pg_current_wal_lsn()::text AS lsn';

/** Parses `pg_controldata` output into its "key: value" pairs. */
export function parseControlData(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of text.split('\n')) {
    const i = line.indexOf(':');
    if (i <= 0) continue;
    out.set(line.slice(0, i).trim(), line.slice(i + 1).trim());
  }
  return out;
}

/** "Latest checkpoint location" from pg_controldata output, as a 64-bit LSN. */
export function latestCheckpointLsn(controlDataText: string): bigint {
  const v = parseControlData(controlDataText).get('Latest checkpoint location');
  if (v === undefined) throw new CdbpError('PROTOCOL_VIOLATION', 'pg_controldata output has no "Latest checkpoint location"');
  return parseLsn(v);
}

/** `16/B374D848` → 0x16B374D848n. Throws on anything else. */
export function parseLsn(text: string): bigint {
  const m = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/.exec(text.trim());
  if (!m) throw new CdbpError('PROTOCOL_VIOLATION', `not a PostgreSQL LSN: ${JSON.stringify(text.slice(0, 40))}`);
  return (BigInt(`0x${m[1]}`) << 32n) | BigInt(`0x${m[2]}`);
}

export function formatLsn(lsn: bigint): string {
  return `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffffffffn).toString(16).toUpperCase()}`;
}

