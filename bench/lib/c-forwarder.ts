/**
 * The reference hop (bench/reference/forwarder.c): compiled on demand with `cc -O2` into a temp dir and
 * run as its own process, relaying 127.0.0.1:<port> to a unix socket. Its CPU is read from /proc, so
 * "CPU per query" means the same thing for it as for the proxy processes.
 */
import { execFile, execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { promisify } from 'node:util';
import { REPO, exited } from './common.ts';

const run = promisify(execFile);
export const FORWARDER_SOURCE = path.join(REPO, 'bench', 'reference', 'forwarder.c');

export interface CForwarder {
  port: number;
  pid: number;
  /** User + system CPU of the forwarder process so far, µs (clock-tick resolution, 10 ms on most kernels). */
  cpuUs(): number;
  stop(): Promise<void>;
}

/** Compiles the forwarder; resolves with the binary's path inside a fresh temp dir (removed by `remove`). */
export async function buildCForwarder(): Promise<{ bin: string; remove(): void }> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'cdbp-forwarder-'));
  const bin = path.join(dir, 'forwarder');
  try {
    await run(process.env.CC || 'cc', ['-O2', '-std=gnu11', '-Wall', '-Wextra', '-o', bin, FORWARDER_SOURCE]);
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`compiling ${path.relative(REPO, FORWARDER_SOURCE)} failed: ${((e as { stderr?: string }).stderr || (e as Error).message).trim().slice(0, 500)}`);
  }
  return { bin, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

let ticksPerSecond: number | undefined;
function clockTicks(): number {
  if (ticksPerSecond === undefined) {
    try { ticksPerSecond = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100; } catch { ticksPerSecond = 100; }
  }
  return ticksPerSecond;
}

/** utime + stime of a process from /proc/<pid>/stat, in µs. */
export function procCpuUs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the parenthesised command name (which may itself hold spaces): state is field 3, utime 14, stime 15.
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return ((Number(rest[11]) + Number(rest[12])) / clockTicks()) * 1e6;
}

/** Starts a built forwarder in front of `backendSocket`; it exits when we close its stdin (or when we die). */
export async function startCForwarder(bin: string, backendSocket: string): Promise<CForwarder> {
  const child = spawn(bin, [backendSocket], { stdio: ['pipe', 'pipe', 'inherit'] });
  child.on('error', () => undefined); // surfaces as the exit below
  const port = await new Promise<number>((resolve, reject) => {
    const lines = createInterface({ input: child.stdout! });
    const onExit = () => reject(new Error(`forwarder exited before listening (${child.exitCode ?? child.signalCode})`));
    child.once('exit', onExit);
    lines.once('line', (line) => {
      child.off('exit', onExit);
      const m = /^port (\d+)$/.exec(line);
      if (m) resolve(Number(m[1]));
      else reject(new Error(`forwarder said ${JSON.stringify(line)}`));
    });
  }).catch((e) => {
    child.kill('SIGKILL');
    throw e;
  });
  return {
    port,
    pid: child.pid!,
    cpuUs: () => procCpuUs(child.pid!),
    async stop() {
      child.stdin!.end();
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited(child);
      clearTimeout(timer);
    },
  };
}
