import { spawn } from 'node:child_process';
import { chownSync, copyFileSync, fsyncSync, lchownSync, readlinkSync, symlinkSync, existsSync, lstatSync, statSync, mkdirSync, readdirSync, readFileSync, writeFileSync, openSync, closeSync, rmSync } from 'node:fs';
import path from 'node:path';
import { once } from 'node:events';
import { ServerProcess, logTail } from './server-process.ts';
import { findBinary } from '../kernel/binaries.ts';
import { CdbpError } from '../kernel/errors.ts';
import { waitForListen } from '../kernel/net.ts';
import { lookupOsUser } from './postgres-server.ts';

/**
 * A private mariadbd: own datadir, socket, pid file and (optional) TCP port, never the system service.
 * Used by `cdbp up`/`cdbp proxy --manage-mariadb` and by the test harness. It knows nothing of keys:
 * the caller passes extra `[mariadbd]` lines (e.g. the keyring plugin config) and extra environment
 * (e.g. VAULT_TOKEN, which therefore never lands in a file).
 */
/** A dedicated undo tablespace's file name in the datadir (innodb_undo_directory is left at the datadir). */
export const UNDO_TABLESPACE_FILE = /^undo\d{3}$/;

export interface MariadbServerOptions {
  /** Instance directory: holds my.cnf, the socket, pid and error log unless given separately. */
  dir: string;
  datadir?: string;
  tmpdir?: string;
  socket?: string;
  /** TCP port on 127.0.0.1; omit for socket-only (skip-networking). */
  port?: number;
  /** Extra option lines for the [mariadbd] group. */
  extraConfig?: string[];
  /** Extra environment for mariadbd and mariadb-install-db (e.g. VAULT_TOKEN). */
  env?: Record<string, string>;
  /**
   * OS user that runs mariadbd and mariadb-install-db when we are root (default `mysql`): they are
   * spawned with its uid/gid, so mariadbd never holds root (SELECT … INTO OUTFILE, a plugin or a bug
   * act as that user only). `'root'` keeps the old behaviour (mariadbd as root). Ignored when not root.
   */
  runAsUser?: string;
  /** Error log path; default `<dir>/mariadb.err`. The hardened server keeps it on tmpfs (it can hold SQL). */
  errorLog?: string;
  /**
   * Memory-backed directory of the Aria log (`aria-log-dir-path`), when it is not the datadir. Its
   * control file `aria_log_control` is kept in the datadir instead (a symlink points there): it holds
   * the Aria UUID, and a new UUID makes Aria "zerofill" every table as moved, which breaks encrypted
   * Aria tables such as mysql.proc (issue 21 item 7; docs/KEYRING.md).
   */
  ariaLogDir?: string;
  /**
   * More directories mariadbd must own (created 0700 and chowned to `runAsUser`): the Aria log dir, the
   * volatile dirs of the hardening config.
   */
  ownedDirs?: string[];
  /**
   * Dedicated undo tablespaces (`undo001`…) for a datadir created by `initialize()`. MariaDB 10.11 fixes
   * the count when the datadir is created, so an existing datadir keeps the count it was created with
   * (counted from its files: an older volume with its undo logs in ibdata1 keeps starting). Unset: the
   * server's default (0 in 10.11: undo logs in the system tablespace).
   */
  undoTablespaces?: number;
  startTimeoutMs?: number;
}

export class MariadbServer {
  readonly dir: string;
  readonly datadir: string;
  readonly tmpdir: string;
  readonly socket: string;
  readonly port: number | undefined;
  readonly cnfPath: string;
  readonly errorLog: string;
  readonly pidFile: string;
  private readonly proc = new ServerProcess('SIGTERM');
  private readonly opts: MariadbServerOptions;
  /** uid/gid mariadbd runs as; undefined when it runs as whoever we are. */
  readonly owner: { uid: number; gid: number } | undefined;
  private startLogOffset = 0;

  constructor(opts: MariadbServerOptions) {
    this.opts = opts;
    this.dir = path.resolve(opts.dir);
    this.datadir = path.resolve(opts.datadir ?? path.join(this.dir, 'data'));
    this.tmpdir = path.resolve(opts.tmpdir ?? path.join(this.dir, 'tmp'));
    this.socket = path.resolve(opts.socket ?? path.join(this.dir, 'mariadb.sock'));
    this.port = opts.port;
    this.cnfPath = path.join(this.dir, 'my.cnf');
    this.errorLog = path.resolve(opts.errorLog ?? path.join(this.dir, 'mariadb.err'));
    this.pidFile = path.join(this.dir, 'mariadb.pid');
    const runAs = opts.runAsUser ?? 'mysql';
    this.owner = process.getuid?.() === 0 && runAs !== 'root' ? mariadbOwner(runAs) : undefined;
  }

  get pid(): number | undefined {
    return this.proc.pid;
  }

  get running(): boolean {
    return this.proc.running;
  }

  /**
   * mariadbd gets a minimal environment: the proxy's own (CDBP_* settings, possibly a monitor password)
   * would be readable from /proc/<pid>/environ of a server that is not in a TEE.
   */
  private childEnv(): NodeJS.ProcessEnv {
    const keep = ['PATH', 'LANG', 'LC_ALL', 'TZ'];
    const base = Object.fromEntries(keep.filter((k) => process.env[k] !== undefined).map((k) => [k, process.env[k]]));
    return { ...base, ...this.opts.env };
  }

  /** True when the datadir already holds a database (so start() resumes it). */
  isInitialized(): boolean {
    return existsSync(path.join(this.datadir, 'mysql'));
  }

  writeConfig(): void {
    this.prepareDirs();
    const lines = [
      '[mariadbd]',
      // Spawned as the owner already (spawnOptions): `user=` would only add a warning. As root it is required.
      ...(this.owner || process.getuid?.() !== 0 ? [] : ['user=root']),
      `datadir=${this.datadir}`,
      `socket=${this.socket}`,
      `pid-file=${this.pidFile}`,
      `log-error=${this.errorLog}`,
      `tmpdir=${this.tmpdir}`,
      ...(this.port !== undefined ? ['bind-address=127.0.0.1', `port=${this.port}`] : ['skip-networking']),
      // An OK is sent only once the commit is on disk: strict freshness relies on it (docs/FRESHNESS.md).
      'innodb_flush_log_at_trx_commit=1',
      'innodb_buffer_pool_size=128M',
      'innodb_log_file_size=48M',
      'max_connections=2000',
      'max_allowed_packet=1G',
      'skip-name-resolve',
      ...this.undoTablespacesConfig(),
      ...(this.opts.extraConfig ?? []),
      '',
    ];
    // Root-owned and readable by mariadbd's group only: mariadbd must not be able to rewrite its own options.
    rmSync(this.cnfPath, { force: true });
    writeFileSync(this.cnfPath, lines.join('\n'), { mode: this.owner ? 0o640 : 0o600 });
    if (this.owner) chownSync(this.cnfPath, 0, this.owner.gid);
  }

  /** See `undoTablespaces`. */
  private undoTablespacesConfig(): string[] {
    if (this.opts.undoTablespaces === undefined) return [];
    const count = this.isInitialized()
      ? readdirSync(this.datadir).filter((f) => UNDO_TABLESPACE_FILE.test(f)).length
      : this.opts.undoTablespaces;
    return [`innodb_undo_tablespaces=${count}`];
  }

  /**
   * Creates the directories mariadbd writes to and, when it runs as another user, hands them over: the
   * instance dir (socket, pid, logs), the tmpdir and `ownedDirs` themselves, the datadir recursively (a
   * datadir restored or edited by root, e.g. a backup copy, would otherwise hold files mariadbd cannot open).
   */
  private prepareDirs(): void {
    // Parents first: a parent handed over makes its children reachable.
    const dirs = [...new Set([this.dir, this.datadir, this.tmpdir, path.dirname(this.errorLog), ...(this.opts.ownedDirs ?? []).map((d) => path.resolve(d))])]
      .sort((a, b) => a.split(path.sep).length - b.split(path.sep).length);
    for (const d of dirs) mkdirSync(d, { recursive: true, mode: 0o700 });
    if (!this.owner) return;
    const { uid, gid } = this.owner;
    for (const d of dirs) {
      assertReachable(d, this.owner, this.opts.runAsUser ?? 'mysql');
      chownSync(d, uid, gid);
    }
    chownTree(this.datadir, uid, gid);
  }

  /** See `ariaLogDir`. Called before every start and after install-db (which creates the control file). */
  private pinAriaControlFile(): void {
    if (!this.opts.ariaLogDir) return;
    pinAriaControlFile(path.resolve(this.opts.ariaLogDir), this.datadir, this.owner);
  }

  /** Spawn options that run a MariaDB binary as the owner (no supplementary groups: libuv drops them). */
  private spawnOptions(): { uid?: number; gid?: number } {
    return this.owner ? { uid: this.owner.uid, gid: this.owner.gid } : {};
  }

  /** Creates the system tables on first run. The keyring (if configured) must already serve keys. */
  async initialize(): Promise<void> {
    this.writeConfig();
    if (this.isInitialized()) return;
    const installDb = findBinary('mariadb-install-db');
    findBinary('mariadbd');
    const logFd = openSync(path.join(this.dir, 'install-db.log'), 'w');
    try {
      const child = spawn(installDb, [
        `--defaults-file=${this.cnfPath}`,
        `--datadir=${this.datadir}`,
        '--auth-root-authentication-method=socket',
        '--skip-test-db',
      ], { stdio: ['ignore', logFd, logFd], env: this.childEnv(), cwd: this.dir, ...this.spawnOptions() });
      const [code] = (await once(child, 'exit')) as [number | null];
      if (code !== 0) {
        throw new CdbpError('CHILD_FAILED',
          `mariadb-install-db failed (exit ${code}): ${logTail(path.join(this.dir, 'install-db.log'))}`);
      }
      this.pinAriaControlFile();
    } finally {
      closeSync(logFd);
    }
  }

  async start(): Promise<void> {
    if (this.running) return;
    await this.stopLeftover();
    this.writeConfig();
    this.pinAriaControlFile();
    const mariadbd = findBinary('mariadbd');
    this.startLogOffset = existsSync(this.errorLog) ? statSync(this.errorLog).size : 0;
    this.proc.spawn(mariadbd, [`--defaults-file=${this.cnfPath}`], {
      stdio: ['ignore', 'ignore', 'ignore'],
      env: this.childEnv(),
      cwd: this.dir,
      ...this.spawnOptions(),
    });
    try {
      await waitForListen({ path: this.socket }, this.opts.startTimeoutMs ?? 60_000, () => this.running);
    } catch (e) {
      await this.stop();
      throw new CdbpError('CHILD_FAILED', `mariadbd did not start: ${logTail(this.errorLog)}`, { cause: e });
    }
  }

  /** What mariadbd wrote to its error log since the last `start()` began (why it refused to start, say). */
  startLog(maxBytes = 64 * 1024): string {
    try {
      const all = readFileSync(this.errorLog);
      return all.subarray(Math.max(this.startLogOffset, all.length - maxBytes)).toString('utf8');
    } catch {
      return '';
    }
  }

  /**
   * A mariadbd of this instance left running by a supervisor that was killed (kill -9 of the proxy)
   * would hold the datadir lock: stop it cleanly. Only a process whose command line names our my.cnf
   * is touched.
   */
  async stopLeftover(timeoutMs = 60_000): Promise<number | undefined> {
    let pid: number;
    try {
      pid = Number(readFileSync(this.pidFile, 'utf8').trim());
      if (!Number.isInteger(pid) || pid <= 0) return undefined;
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      if (!cmdline.includes('mariadbd') || !cmdline.includes(this.cnfPath)) return undefined;
    } catch {
      return undefined;
    }
    process.kill(pid, 'SIGTERM');
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        process.kill(pid, 0);
      } catch {
        return pid;
      }
      if (Date.now() > deadline) {
        process.kill(pid, 'SIGKILL');
        return pid;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** Resolves with the exit code when mariadbd exits (for supervisors). */
  whenExited(): Promise<number | null> {
    return this.proc.whenExited();
  }

  /** Clean shutdown (SIGTERM), escalating to SIGKILL after `timeoutMs`. */
  async stop(timeoutMs = 60_000): Promise<void> {
    await this.proc.stop(timeoutMs);
  }

  /** Simulates a crash. */
  async kill(): Promise<void> {
    await this.proc.kill();
  }

  /**
   * The last lines of the error log for the proxy's own log, without SQL: a crashing mariadbd prints the
   * query it was running ("Query (0x…): …"), which must not travel into logs that reach a disk.
   */
  errorLogTail(lines = 8): string {
    let text: string;
    try {
      text = readFileSync(this.errorLog, 'utf8');
    } catch {
      return logTail(this.errorLog, lines);
    }
    return redactErrorLog(text).trim().split('\n').slice(-lines).join(' | ');
  }

  /** Lists every regular file under the datadir and tmpdir (for at-rest checks). */
  dataFiles(): string[] {
    return [...walk(this.datadir), ...walk(this.tmpdir)];
  }
}

function mariadbOwner(name: string): { uid: number; gid: number } {
  try {
    return lookupOsUser(name);
  } catch {
    throw new CdbpError('CONFIG_INVALID',
      `OS user ${name} does not exist: mariadbd does not run as root (install the Debian package mariadb-server, which creates it, or set runAsUser)`);
  }
}

/** Drops the SQL a crash report prints ("Query (0x…): <SQL>", possibly over several lines, up to "Connection ID"). */
export function redactErrorLog(text: string): string {
  const out: string[] = [];
  let inQuery = false;
  for (const line of text.split('\n')) {
    if (/^Query \([0-9a-fx]+\):/i.test(line)) {
      out.push('Query (…): [redacted]');
      inQuery = true;
      continue;
    }
    if (inQuery && !/^Connection ID \(thread ID\):/.test(line)) continue;
    inQuery = false;
    out.push(line);
  }
  return out.join('\n');
}

export const ARIA_CONTROL_FILE = 'aria_log_control';

/**
 * Keeps Aria's control file in the datadir and leaves a symlink to it in the (memory-backed) Aria log
 * dir, so the Aria UUID survives the loss of that dir. A real control file found in the log dir (first
 * start after install-db, or after an upgrade from the layout without the link) is the current one: it
 * is moved into the datadir.
 */
export function pinAriaControlFile(ariaLogDir: string, datadir: string, owner?: { uid: number; gid: number }): void {
  const link = path.join(ariaLogDir, ARIA_CONTROL_FILE);
  const target = path.join(datadir, ARIA_CONTROL_FILE);
  if (path.resolve(ariaLogDir) === path.resolve(datadir)) return;
  let st: ReturnType<typeof lstatSync> | undefined;
  try {
    st = lstatSync(link);
  } catch {
    st = undefined;
  }
  if (st?.isSymbolicLink()) {
    if (readlinkSync(link) === target) return;
    rmSync(link, { force: true });
  } else if (st?.isFile()) {
    copyFileSync(link, target);
    fsyncPath(target);
    rmSync(link, { force: true });
  }
  if (!existsSync(target)) return; // install-db has not run yet: Aria creates the file, we move it afterwards
  if (owner) chownSync(target, owner.uid, owner.gid);
  mkdirSync(ariaLogDir, { recursive: true, mode: 0o700 });
  symlinkSync(target, link);
  if (owner) lchownSync(link, owner.uid, owner.gid);
}

function fsyncPath(p: string): void {
  const fd = openSync(p, 'r+');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Every ancestor of `dir` must let the owner through; say which one does not instead of a cryptic start failure. */
function assertReachable(dir: string, owner: { uid: number; gid: number }, name: string): void {
  for (let d = path.dirname(dir); ; d = path.dirname(d)) {
    const st = statSync(d);
    const bits = st.uid === owner.uid ? 0o100 : st.gid === owner.gid ? 0o010 : 0o001;
    if ((st.mode & bits) === 0) {
      throw new CdbpError('CONFIG_INVALID',
        `mariadbd runs as the OS user ${name} and cannot reach ${dir}: ${d} is not traversable for it (chmod o+x ${d}, or choose another directory)`);
    }
    if (d === path.dirname(d)) return;
  }
}

/** chown -R without following symlinks (lchown for links). */
function chownTree(dir: string, uid: number, gid: number): void {
  if (!existsSync(dir)) return;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name);
    if (entry.isDirectory()) {
      chownSync(p, uid, gid);
      chownTree(p, uid, gid);
    } else if (!entry.isSymbolicLink()) {
      const st = lstatSync(p);
      if (st.uid !== uid || st.gid !== gid) chownSync(p, uid, gid);
    }
  }
}

function walk(dir: string): string[] {
  if (!existsSync(dir)) return [];
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name);
    if (entry.isDirectory()) out.push(...walk(p));
    else if (entry.isFile()) out.push(p);
  }
  return out;
}

