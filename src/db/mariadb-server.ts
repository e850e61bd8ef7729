import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync, openSync, closeSync } from 'node:fs';
import path from 'node:path';
import { once } from 'node:events';
import { ServerProcess, logTail } from './server-process.ts';
import { findBinary } from '../kernel/binaries.ts';
import { CdbpError } from '../kernel/errors.ts';
import { waitForListen } from '../kernel/net.ts';

/**
 * A private mariadbd: own datadir, socket, pid file and (optional) TCP port, never the system service.
 * Used by `cdbp up`/`cdbp proxy --manage-mariadb` and by the test harness. It knows nothing of keys:
 * the caller passes extra `[mariadbd]` lines (e.g. the keyring plugin config) and extra environment
 * (e.g. VAULT_TOKEN, which therefore never lands in a file).
 */
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

  constructor(opts: MariadbServerOptions) {
    this.opts = opts;
    this.dir = path.resolve(opts.dir);
    this.datadir = path.resolve(opts.datadir ?? path.join(this.dir, 'data'));
    this.tmpdir = path.resolve(opts.tmpdir ?? path.join(this.dir, 'tmp'));
    this.socket = path.resolve(opts.socket ?? path.join(this.dir, 'mariadb.sock'));
    this.port = opts.port;
    this.cnfPath = path.join(this.dir, 'my.cnf');
    this.errorLog = path.join(this.dir, 'mariadb.err');
    this.pidFile = path.join(this.dir, 'mariadb.pid');
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
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    mkdirSync(this.datadir, { recursive: true, mode: 0o700 });
    mkdirSync(this.tmpdir, { recursive: true, mode: 0o700 });
    const lines = [
      '[mariadbd]',
      'user=root',
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
      ...(this.opts.extraConfig ?? []),
      '',
    ];
    writeFileSync(this.cnfPath, lines.join('\n'), { mode: 0o600 });
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
      ], { stdio: ['ignore', logFd, logFd], env: this.childEnv() });
      const [code] = (await once(child, 'exit')) as [number | null];
      if (code !== 0) {
        throw new CdbpError('CHILD_FAILED',
          `mariadb-install-db failed (exit ${code}): ${logTail(path.join(this.dir, 'install-db.log'))}`);
      }
    } finally {
      closeSync(logFd);
    }
  }

  async start(): Promise<void> {
    if (this.running) return;
    await this.stopLeftover();
    this.writeConfig();
    const mariadbd = findBinary('mariadbd');
    this.proc.spawn(mariadbd, [`--defaults-file=${this.cnfPath}`], {
      stdio: ['ignore', 'ignore', 'ignore'],
      env: this.childEnv(),
    });
    try {
      await waitForListen({ path: this.socket }, this.opts.startTimeoutMs ?? 60_000, () => this.running);
    } catch (e) {
      await this.stop();
      throw new CdbpError('CHILD_FAILED', `mariadbd did not start: ${logTail(this.errorLog)}`, { cause: e });
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

  errorLogTail(lines = 8): string {
    return logTail(this.errorLog, lines);
  }

  /** Lists every regular file under the datadir and tmpdir (for at-rest checks). */
  dataFiles(): string[] {
    return [...walk(this.datadir), ...walk(this.tmpdir)];
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

