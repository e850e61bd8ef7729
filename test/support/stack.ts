/**
 * Drives `cdbp up` as a user would: a child process in its own process group, waiting for its
 * "ready" line (or its exit), stopped with SIGINT like Ctrl-C. Reused by the stack and freshness tests.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import mariadb, { type Connection, type ConnectionConfig } from 'mariadb';
import { volatileDir, type StackFile } from '../../cli/commands/up.ts';

export const CLI = fileURLToPath(new URL('../../bin/cdbp.js', import.meta.url));

export interface RunningStack {
  dir: string;
  stack: StackFile;
  proc: ChildProcess;
  output(): string;
  /** SIGINT to the whole process group (what a terminal's Ctrl-C does); resolves with the exit code. */
  stop(): Promise<number | null>;
}

export interface StackExit {
  code: number | null;
  output: string;
}

/** Removes the tmpfs dir `cdbp up` keeps for DIR (Aria log, temp tables): tests call it when done. */
export function removeStackVolatile(dir: string): void {
  rmSync(volatileDir(dir), { recursive: true, force: true });
}

/** Starts `cdbp up --dir DIR`; resolves when ready, rejects (with the output) if it exits first. */
export function startStack(dir: string, args: string[] = [], env: Record<string, string> = {}, timeoutMs = 120_000): Promise<RunningStack> {
  const { proc, output, exited } = spawnUp(dir, args, env);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      try { process.kill(-proc.pid!, 'SIGKILL'); } catch { /* gone */ }
      reject(new Error(`cdbp up not ready after ${timeoutMs} ms:\n${output()}`));
    }, timeoutMs);
    const onData = () => {
      if (/cdbp up: ready/.test(output())) {
        proc.stdout!.off('data', onData);
        clearTimeout(timer);
        const stack = JSON.parse(readFileSync(path.join(dir, 'stack.json'), 'utf8')) as StackFile;
        resolve({
          dir, stack, proc, output,
          stop: async () => {
            try { process.kill(-proc.pid!, 'SIGINT'); } catch { /* gone */ }
            return (await exited).code;
          },
        });
      }
    };
    proc.stdout!.on('data', onData);
    void exited.then((e) => {
      clearTimeout(timer);
      reject(Object.assign(new Error(`cdbp up exited (${e.code}) before ready:\n${e.output}`), { exit: e }));
    });
  });
}

/** Runs `cdbp up` expecting it to fail; resolves with its exit code and output. */
export async function expectStackFailure(dir: string, args: string[] = [], env: Record<string, string> = {}): Promise<StackExit> {
  try {
    const s = await startStack(dir, args, env);
    await s.stop();
    throw new Error(`cdbp up became ready but was expected to fail:\n${s.output()}`);
  } catch (e) {
    const exit = (e as { exit?: StackExit }).exit;
    if (!exit) throw e;
    return exit;
  }
}

function spawnUp(dir: string, args: string[], env: Record<string, string>) {
  const proc = spawn(process.execPath, [CLI, 'up', '--dir', dir, ...args], {
    detached: true, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env },
  });
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
  proc.stderr!.on('data', (d: Buffer) => { out += d.toString(); });
  const exited = new Promise<StackExit>((resolve) => proc.once('exit', (code) => resolve({ code, output: out })));
  return { proc, output: () => out, exited };
}

/** A TLS connection through the stack's proxy with the stack's admin account, verifying the CAS CA. */
export function connectThroughProxy(stack: StackFile, extra: Partial<ConnectionConfig> = {}): Promise<Connection> {
  return mariadb.createConnection({
    host: stack.mysql.host, port: stack.mysql.port, user: stack.admin.user, password: stack.admin.password,
    ssl: { ca: readFileSync(stack.caFile), rejectUnauthorized: true }, connectTimeout: 10_000, ...extra,
  });
}

/** True if a process with this pid exists and is not a zombie (an orphan killed -9 waits for init to reap it). */
export function alive(pid: number | null | undefined): boolean {
  if (!pid) return false;
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    return !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'));
  } catch {
    return false;
  }
}

/** Runs statements in order on one connection through the stack's proxy; returns each result. */
export async function queryThroughProxy(s: RunningStack, ...statements: string[]): Promise<any[]> {
  const conn = await connectThroughProxy(s.stack);
  try {
    const out = [];
    for (const q of statements) out.push(await conn.query(q));
    return out;
  } finally {
    await conn.end();
  }
}
