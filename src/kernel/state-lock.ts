/**
 * One process per state directory (issue 16, item 4: two `cdbp up` on one directory appended to one CAS
 * audit log and stopped each other's mariadbd).
 *
 * The lock is a unix socket in Linux's *abstract* namespace, named after the directory's device and
 * inode (and a scope, so two roles may share a directory for different things):
 *
 *   - held by an open file descriptor, so the kernel releases it when the holder dies in any way
 *     (kill -9, OOM, power loss of a container): a killed holder never blocks a restart;
 *   - taken by one atomic bind(): the second bind gets EADDRINUSE, there is no "stale lock" to judge and
 *     remove, so no race between two processes cleaning up the same stale lock;
 *   - not a PID: nothing is inferred from a PID, so PID reuse cannot make a dead holder look alive (the
 *     trap of PID files) or a live one look dead. The PID is only *reported*: the holder answers a
 *     connection on the socket with its pid, role and start time, so the refusal can name it;
 *   - no file is left in the directory, and listening sockets are close-on-exec, so a child (mariadbd)
 *     never inherits the lock.
 *
 * Limit: abstract sockets are per network namespace. Two processes in different network namespaces
 * (e.g. two containers that mount the same volume) do not see each other's lock; the compose layout gives
 * each role its own volume.
 */
import net from 'node:net';
import { mkdirSync, statSync, realpathSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { CdbpError } from './errors.ts';

export interface StateLock {
  /** The directory (real path) this lock covers. */
  readonly dir: string;
  release(): Promise<void>;
}

export interface LockHolder {
  pid: number;
  role: string;
  since: string;
}

/** The abstract socket name for (directory, scope): stable across paths that reach the same inode. */
export function lockName(dir: string, scope: string): string {
  const st = statSync(dir);
  const id = createHash('sha256').update(`${st.dev}:${st.ino}:${scope}`).digest('hex').slice(0, 40);
  return `\0cdbp-state-lock/${id}`;
}

/**
 * Takes the exclusive lock on `dir` for `scope` (created 0700 if missing), or throws STATE_LOCKED naming
 * the holder. The lock lives until release() or the process's end; it does not keep the event loop alive.
 */
export async function lockStateDir(dir: string, o: { role: string; scope?: string }): Promise<StateLock> {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const real = realpathSync(dir);
  const name = lockName(real, o.scope ?? o.role);
  const me: LockHolder = { pid: process.pid, role: o.role, since: new Date().toISOString() };
  const server = net.createServer((c) => {
    c.on('error', () => undefined);
    c.end(JSON.stringify(me));
  });
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(name, () => { server.off('error', reject); resolve(); });
    });
  } catch (e) {
    if ((e as { code?: string }).code !== 'EADDRINUSE') {
      throw new CdbpError('INTERNAL', `cannot lock ${real}: ${(e as Error).message}`, { cause: e });
    }
    const holder = await askHolder(name);
    throw new CdbpError('STATE_LOCKED', holder
      ? `${real} is in use by ${holder.role} (pid ${holder.pid}, since ${holder.since}): stop it first (one process per state directory)`
      : `${real} is in use by another process (it did not say who: it may be stopped or frozen): stop it first`,
    { details: { dir: real, ...(holder ? { holderPid: holder.pid, holderRole: holder.role } : {}) } });
  }
  server.unref();
  return {
    dir: real,
    release: () => new Promise<void>((r) => server.close(() => r())),
  };
}

/**
 * Who holds the lock on (`dir`, `scope`) now, without taking it: undefined if it is free (or `dir` does
 * not exist). A holder that does not describe itself within a second is reported with pid 0.
 */
export async function stateLockHolder(dir: string, scope: string): Promise<LockHolder | undefined> {
  let name: string;
  try {
    name = lockName(realpathSync(dir), scope);
  } catch {
    return undefined;
  }
  const held = await new Promise<boolean>((resolve) => {
    const c = net.connect(name);
    c.once('connect', () => { c.destroy(); resolve(true); });
    c.once('error', () => resolve(false));
  });
  if (!held) return undefined;
  return (await askHolder(name)) ?? { pid: 0, role: 'unknown', since: '' };
}

/** The holder's self-description, or undefined if it does not answer within a second. */
function askHolder(name: string): Promise<LockHolder | undefined> {
  return new Promise((resolve) => {
    let data = '';
    const c = net.connect(name);
    const done = (h: LockHolder | undefined) => { clearTimeout(t); c.destroy(); resolve(h); };
    const t = setTimeout(() => done(undefined), 1000);
    c.on('data', (d: Buffer) => { data += d.toString(); if (data.length > 4096) done(undefined); });
    c.on('end', () => {
      try {
        const h = JSON.parse(data) as LockHolder;
        done(Number.isInteger(h.pid) ? h : undefined);
      } catch {
        done(undefined);
      }
    });
    c.on('error', () => done(undefined));
  });
}
