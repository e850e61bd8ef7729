/**
 * `EncryptedDirectory` on gocryptfs (2.3, Debian): a FUSE file system that stores every file as
 * AES-256-GCM blocks of 4 KiB (authenticated, random 128-bit nonces, file names EME-encrypted).
 *
 * Key handling: the 32-byte storage secret, hex-encoded, is the gocryptfs *password*, written to the
 * child's stdin (a pipe; gocryptfs reads the password from stdin when stdin is not a terminal) and then
 * closed. It is never in a file, the environment, argv or a log. On first use `gocryptfs -init` draws a
 * random master key and stores it in `gocryptfs.conf`, wrapped (AES-GCM) by scrypt(password): with a
 * 256-bit random password the wrap is as strong as the key, which is why a low scrypt cost (logN 10) is
 * fine, and why a wrong key fails loudly at mount time ("Password incorrect", exit 12) instead of
 * showing an empty directory. The master key then lives in the gocryptfs process (in the TEE) only.
 *
 * The process runs in the foreground as our child, started with `setpriv --pdeathsig KILL` so it dies
 * with us. Caveat (observed): running as root for another user's files, gocryptfs switches its threads'
 * file-system credentials, and Linux clears the parent-death signal of a thread whose credentials change,
 * so an orphaned gocryptfs can outlive a killed proxy. Either way the next mount() clears whatever is left
 * at the mount point, dead (ENOTCONN) or alive (`fusermount3 -u -z`), and never reuses it.
 * A mount that disappears while in use (unmounted from outside, child died, something mounted over it)
 * is noticed by the child's exit or by polling /proc/self/mountinfo, and reported once via onLost.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chownSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { CdbpError, isCdbpError } from '../kernel/errors.ts';
import { findBinary } from '../kernel/binaries.ts';
import type { Logger } from '../kernel/log.ts';
import type { EncryptedDirectory, EncryptedState, StorageFailureReason, StorageHealth, StorageKey } from './types.ts';
import { mountsAt, readMountinfo } from './mountinfo.ts';

const SETPRIV = '/usr/bin/setpriv';
const FUSE_CONF = '/etc/fuse.conf';

/** True when /etc/fuse.conf lets a non-root mount use allow_other. */
function userAllowOther(): boolean {
  try {
    return readFileSync(FUSE_CONF, 'utf8').split('\n').some((l) => l.trim() === 'user_allow_other');
  } catch {
    return false;
  }
}

export interface GocryptfsOptions {
  /** Ciphertext directory on the untrusted volume. */
  encryptedPath: string;
  /** Mount point (an empty directory; the plaintext appears here). */
  plaintextPath: string;
  /** OS user that will use the plaintext (PostgreSQL's): owns the plaintext root. */
  owner?: { uid: number; gid: number };
  log?: Logger;
  /** scrypt cost for -init (default 10: the password is a 256-bit random secret, not a human's). */
  scryptLogN?: number;
  /** How often the mount is checked in /proc/self/mountinfo while mounted (default 1000 ms). */
  healthIntervalMs?: number;
  mountTimeoutMs?: number;
  /** Where to read mountinfo (tests). */
  mountinfoFile?: string;
}

/** gocryptfs exit codes (internal/exitcodes/exitcodes.go, 2.3). */
const EXIT_MOUNTPOINT = 10;
const EXIT_PASSWORD_INCORRECT = 12;
const CONF = 'gocryptfs.conf';

function storageError(reason: StorageFailureReason, message: string, details: Record<string, unknown> = {}): CdbpError {
  return new CdbpError(reason === 'wrong_key' ? 'STORAGE_KEY_INVALID' : 'STORAGE_UNAVAILABLE', message, { details: { reason, ...details } });
}

function tool(name: string, pkg: string): string {
  try {
    return findBinary(name);
  } catch (e) {
    if (isCdbpError(e, 'BINARY_MISSING')) {
      throw storageError('tool_missing', `${name} not found: install the Debian package ${pkg} (apt-get install ${pkg})`, { binary: name, package: pkg });
    }
    throw e;
  }
}

export class GocryptfsDirectory implements EncryptedDirectory {
  readonly kind = 'gocryptfs';
  readonly encryptedPath: string;
  readonly plaintextPath: string;
  private child: ChildProcess | undefined;
  private mounted = false;
  private unmounting = false;
  private lostReason: string | null = null;
  private keyVersion: number | null = null;
  private timer: NodeJS.Timeout | undefined;
  private readonly listeners: Array<(reason: string) => void> = [];
  private output: string[] = [];

  constructor(private readonly o: GocryptfsOptions) {
    this.encryptedPath = path.resolve(o.encryptedPath);
    this.plaintextPath = path.resolve(o.plaintextPath);
  }

  state(): EncryptedState {
    if (!existsSync(this.encryptedPath)) return 'empty';
    const entries = readdirSync(this.encryptedPath);
    if (entries.length === 0) return 'empty';
    return entries.includes(CONF) ? 'initialized' : 'foreign';
  }

  isMounted(): boolean {
    return this.mounted;
  }

  /** Checks the mount now (cheap: one read of mountinfo), so a caller never sees a stale "mounted". */
  health(): StorageHealth {
    this.check();
    return {
      kind: this.kind, mounted: this.mounted, reason: this.lostReason,
      encryptedPath: this.encryptedPath, plaintextPath: this.plaintextPath, keyVersion: this.mounted ? this.keyVersion : null,
    };
  }

  onLost(listener: (reason: string) => void): void {
    this.listeners.push(listener);
  }

  async mount(key: StorageKey, o: { create?: boolean } = {}): Promise<string> {
    if (this.mounted) throw storageError('mount_failed', `${this.plaintextPath} is already mounted by this process`);
    if (key.secret.length !== 32) throw storageError('wrong_key', 'a storage key must be 32 bytes');
    const gocryptfs = tool('gocryptfs', 'gocryptfs');
    tool('fusermount3', 'fuse3');
    if (!existsSync('/dev/fuse')) {
      throw storageError('fuse_unavailable', '/dev/fuse does not exist: the encrypted directory needs FUSE (containers: --device /dev/fuse --cap-add SYS_ADMIN)');
    }
    this.lostReason = null;
    this.clearStaleMount();
    mkdirSync(this.plaintextPath, { recursive: true, mode: 0o700 });
    if (readdirSync(this.plaintextPath).length > 0) {
      // Something wrote into the bare mount point: plaintext on the disk, or a process that ran without the mount.
      throw storageError('mountpoint_not_empty',
        `mount point ${this.plaintextPath} is not empty: refusing to mount over files written outside the encrypted directory (inspect and remove them)`);
    }
    const state = this.state();
    if (state === 'foreign') {
      const pg = existsSync(path.join(this.encryptedPath, 'PG_VERSION'));
      throw storageError('foreign_content', pg
        ? `${this.encryptedPath} holds a plaintext PostgreSQL cluster, not an encrypted directory: migrate it (docs/PG-AT-REST.md) or set CDBP_PG_ENCRYPTION=off`
        : `${this.encryptedPath} is not an encrypted directory (no ${CONF}) and not empty: refusing to use it`);
    }
    if (state === 'empty') {
      if (!o.create) throw storageError('missing', `encrypted directory ${this.encryptedPath} is missing or empty`);
      await this.init(gocryptfs, key);
    }
    await this.startMount(gocryptfs, key);
    return this.plaintextPath;
  }

  private async init(gocryptfs: string, key: StorageKey): Promise<void> {
    mkdirSync(this.encryptedPath, { recursive: true, mode: 0o700 });
    const r = await this.run(gocryptfs, ['-init', '-q', '-scryptn', String(this.o.scryptLogN ?? 10), '--', this.encryptedPath], key);
    if (r.code !== 0) throw storageError('mount_failed', `gocryptfs -init failed (exit ${r.code}): ${r.output}`);
    this.o.log?.info({ dir: this.encryptedPath, keyVersion: key.version }, 'encrypted directory created');
  }

  /** Runs gocryptfs to completion with the password on stdin. */
  private run(bin: string, args: string[], key: StorageKey): Promise<{ code: number | null; output: string }> {
    return new Promise((resolve) => {
      const child = spawn(bin, args, { stdio: ['pipe', 'pipe', 'pipe'], env: childEnv() });
      let output = '';
      child.stdout.on('data', (d) => { output += d; });
      child.stderr.on('data', (d) => { output += d; });
      child.stdin.on('error', () => undefined);
      child.stdin.end(key.secret.toString('hex'));
      child.on('error', (e) => resolve({ code: -1, output: e.message }));
      child.on('close', (code) => resolve({ code, output: oneLine(output) }));
    });
  }

  private startMount(gocryptfs: string, key: StorageKey): Promise<void> {
    const root = process.getuid?.() === 0;
    const args = [
      '-fg', '-nosyslog', '-nosuid', '-nodev', '-noexec',
      // PostgreSQL runs as its own OS user while we (root) read the files too; default_permissions still applies.
      ...(root && this.o.owner ? ['-allow_other'] : []),
      '--', this.encryptedPath, this.plaintextPath,
    ];
    const serveAs = root && this.o.owner ? this.serveAsOwner(this.o.owner) : undefined;
    // Dies with us: a crashed proxy must not leave a live mount serving plaintext.
    const setpriv = existsSync(SETPRIV) ? SETPRIV : undefined;
    const asUser = serveAs ? [`--reuid=${serveAs.uid}`, `--regid=${serveAs.gid}`, '--clear-groups'] : [];
    const [bin, argv] = setpriv ? [setpriv, ['--pdeathsig', 'KILL', ...asUser, '--', gocryptfs, ...args]] : [gocryptfs, args];
    this.output = [];
    return new Promise((resolve, reject) => {
      const child = spawn(bin, argv, { stdio: ['pipe', 'pipe', 'pipe'], env: childEnv() });
      this.child = child;
      let settled = false;
      const timeout = setTimeout(() => {
        if (settled) return;
        settled = true;
        child.kill('SIGKILL');
        reject(storageError('mount_failed', `gocryptfs did not report a mount within ${this.o.mountTimeoutMs ?? 30_000} ms: ${this.outputTail()}`));
      }, this.o.mountTimeoutMs ?? 30_000);
      const onData = (d: Buffer) => {
        for (const line of String(d).split('\n')) if (line.trim()) this.output.push(line.trim());
        if (this.output.length > 50) this.output.splice(0, this.output.length - 50);
        if (!settled && String(d).includes('Filesystem mounted and ready')) {
          settled = true;
          clearTimeout(timeout);
          try {
            this.verifyTopMount();
            this.afterMount(key);
            resolve();
          } catch (e) {
            child.kill('SIGTERM');
            reject(e);
          }
        }
      };
      child.stdout.on('data', onData);
      child.stderr.on('data', onData);
      child.stdin.on('error', () => undefined);
      child.stdin.end(key.secret.toString('hex'));
      child.on('error', (e) => {
        if (settled) return;
        settled = true;
        clearTimeout(timeout);
        reject(storageError('mount_failed', `gocryptfs could not be started: ${e.message}`));
      });
      child.on('exit', (code, signal) => {
        this.child = undefined;
        if (!settled) {
          settled = true;
          clearTimeout(timeout);
          if (code === EXIT_PASSWORD_INCORRECT) {
            reject(storageError('wrong_key', `encrypted directory ${this.encryptedPath} does not open with key version ${key.version}`, { keyVersion: key.version }));
          } else if (code === EXIT_MOUNTPOINT) {
            reject(storageError('mount_failed', `gocryptfs refused the mount point: ${this.outputTail()}`));
          } else {
            reject(storageError('mount_failed', `gocryptfs exited (${signal ?? `code ${code}`}) before mounting: ${this.outputTail()}`));
          }
          return;
        }
        if (this.mounted && !this.unmounting) this.lose(`gocryptfs exited (${signal ?? `code ${code}`}): the encrypted directory is no longer mounted`);
      });
    });
  }

  /**
   * gocryptfs 2.3 (Debian 12) serving a mount as root with -allow_other answers some creates and mkdirs
   * EPERM at random (it creates files as the calling user by switching credentials per thread:
   * rfjakob/gocryptfs#892 and #893; in CI PostgreSQL failed "could not create file" and "cannot create
   * temporary subdirectory" under load). Served as the database's own OS user instead, it creates
   * everything as that user and switches nothing; root (this proxy) still reads through -allow_other,
   * which a non-root mount may set only where /etc/fuse.conf says `user_allow_other`. Otherwise, or if
   * the owner cannot reach both directories, the mount stays root's (and the race stays possible).
   */
  private serveAsOwner(owner: { uid: number; gid: number }): { uid: number; gid: number } | undefined {
    if (!userAllowOther() || !existsSync(SETPRIV)) {
      this.o.log?.warn({ fuseConf: FUSE_CONF }, 'encrypted directory served by root: gocryptfs 2.3 may then refuse some file creations (EPERM); set user_allow_other in /etc/fuse.conf so it runs as the database user');
      return undefined;
    }
    const chown = spawnSync('chown', ['-R', `${owner.uid}:${owner.gid}`, this.encryptedPath, this.plaintextPath], { encoding: 'utf8' });
    const reach = spawnSync(SETPRIV, [`--reuid=${owner.uid}`, `--regid=${owner.gid}`, '--clear-groups', '--', 'test', '-w', this.encryptedPath, '-a', '-w', this.plaintextPath, '-a', '-r', '/dev/fuse', '-a', '-w', '/dev/fuse'], { encoding: 'utf8' });
    if (chown.status !== 0 || reach.status !== 0) {
      this.o.log?.warn({ encryptedPath: this.encryptedPath, mountPoint: this.plaintextPath }, 'encrypted directory served by root: the database user cannot reach both directories or /dev/fuse');
      return undefined;
    }
    return owner;
  }

  private afterMount(key: StorageKey): void {
    this.mounted = true;
    this.keyVersion = key.version;
    if (this.o.owner) chownSync(this.plaintextPath, this.o.owner.uid, this.o.owner.gid);
    this.timer = setInterval(() => this.check(), this.o.healthIntervalMs ?? 1000);
    this.timer.unref();
    this.o.log?.info({ dir: this.encryptedPath, mountPoint: this.plaintextPath, keyVersion: key.version, pid: this.child?.pid }, 'encrypted directory mounted');
  }

  /** The mount point must show our gocryptfs on top (nothing mounted over it, not a stale entry). */
  private verifyTopMount(): void {
    const top = mountsAt(readMountinfo(this.o.mountinfoFile), this.plaintextPath).at(-1);
    if (!top) throw storageError('mount_lost', `${this.plaintextPath} is not a mount point`);
    if (top.fsType !== 'fuse.gocryptfs' || top.source !== this.encryptedPath) {
      throw storageError('mount_lost', `${this.plaintextPath} shows ${top.fsType} from ${top.source}, not gocryptfs from ${this.encryptedPath}`);
    }
  }

  private probeErrorLogged = false;

  private check(): void {
    if (!this.mounted || this.unmounting) return;
    try {
      this.verifyTopMount();
      statSync(this.plaintextPath);
    } catch (e) {
      if (isCdbpError(e)) return this.lose(e.message);
      const code = (e as NodeJS.ErrnoException).code;
      // Only a server that stopped answering means the mount is gone (ENOTCONN: the FUSE server died;
      // ENOENT/ENOTDIR: nothing of ours there). Any other answer (EACCES seen in containers with reduced
      // capabilities while PostgreSQL creates files) came from a live gocryptfs, which mountinfo shows on top.
      if (code === 'ENOTCONN' || code === 'ECONNABORTED' || code === 'ENOENT' || code === 'ENOTDIR' || code === 'EIO') {
        return this.lose(`mount point unusable: ${(e as Error).message}`);
      }
      if (!this.probeErrorLogged) this.o.log?.warn({ mountPoint: this.plaintextPath, code }, 'encrypted directory answered a health probe with an error; the mount is still ours (logged once)');
      this.probeErrorLogged = true;
    }
  }

  private lose(reason: string): void {
    if (!this.mounted) return;
    this.mounted = false;
    this.lostReason = reason;
    if (this.timer) clearInterval(this.timer);
    this.o.log?.error({ dir: this.encryptedPath, mountPoint: this.plaintextPath, reason }, 'encrypted directory lost');
    for (const l of this.listeners) {
      try { l(reason); } catch { /* a listener's failure must not stop the others */ }
    }
  }

  /**
   * A mount left at our mount point by a previous (crashed) run: dead (ENOTCONN) or alive, we did not make
   * it in this process, so we cannot trust it. Detach it lazily; open files of a dead process go with it.
   */
  private clearStaleMount(): void {
    const stale = mountsAt(readMountinfo(this.o.mountinfoFile), this.plaintextPath);
    if (stale.length === 0) return;
    this.o.log?.warn({ mountPoint: this.plaintextPath, mounts: stale.map((m) => `${m.fsType} ${m.source}`) }, 'clearing a stale mount left by a previous run');
    for (let i = 0; i < stale.length; i++) {
      const r = spawnSync(tool('fusermount3', 'fuse3'), ['-u', '-z', this.plaintextPath], { encoding: 'utf8', env: childEnv() });
      if (r.status !== 0 && process.getuid?.() === 0) spawnSync('umount', ['-l', this.plaintextPath], { env: childEnv() });
    }
    if (mountsAt(readMountinfo(this.o.mountinfoFile), this.plaintextPath).length > 0) {
      throw storageError('unmount_failed', `a stale mount at ${this.plaintextPath} could not be removed (fusermount3 -u -z ${this.plaintextPath})`);
    }
  }

  async unmount(timeoutMs = 15_000): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    const child = this.child;
    if (!child && !this.mounted) return;
    this.unmounting = true;
    try {
      const exited = child ? new Promise<void>((r) => { if (child.exitCode !== null || child.signalCode !== null) r(); else child.once('exit', () => r()); }) : Promise.resolve();
      const deadline = Date.now() + timeoutMs;
      // A plain unmount fails with EBUSY while files are open; retry briefly, then detach lazily.
      for (;;) {
        if (mountsAt(readMountinfo(this.o.mountinfoFile), this.plaintextPath).length === 0) break;
        const r = spawnSync(tool('fusermount3', 'fuse3'), ['-u', this.plaintextPath], { encoding: 'utf8', env: childEnv() });
        if (r.status === 0) break;
        if (Date.now() > deadline - 5000) {
          this.o.log?.warn({ mountPoint: this.plaintextPath, err: oneLine(r.stderr ?? '') }, 'unmount busy: detaching lazily');
          spawnSync(tool('fusermount3', 'fuse3'), ['-u', '-z', this.plaintextPath], { env: childEnv() });
          break;
        }
        await new Promise((r2) => setTimeout(r2, 200));
      }
      const timer = setTimeout(() => child?.kill('SIGKILL'), Math.max(1000, deadline - Date.now()));
      await exited;
      clearTimeout(timer);
      if (this.mounted) this.o.log?.info({ mountPoint: this.plaintextPath }, 'encrypted directory unmounted');
      this.mounted = false;
      this.keyVersion = null;
    } finally {
      this.unmounting = false;
    }
  }

  private outputTail(): string {
    return this.output.slice(-6).join(' | ') || '(no output)';
  }
}

function childEnv(): NodeJS.ProcessEnv {
  return { PATH: process.env.PATH ?? '/usr/bin:/bin', LANG: 'C', LC_ALL: 'C' };
}

function oneLine(s: string): string {
  return s.trim().split('\n').slice(-6).join(' | ');
}
