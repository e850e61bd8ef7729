/**
 * Shared pieces of the benchmark harness: statistics, machine/version facts, load average, and the
 * result shape every scenario returns (so run.ts and the smoke test treat all scenarios alike).
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { fsyncSync, openSync, closeSync, writeSync, unlinkSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { findBinary } from '../../src/kernel/binaries.ts';

const run = promisify(execFile);

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

export interface LoadSample { at: string; load1: number; load5: number }

export function loadNow(): LoadSample {
  const [l1, l5] = os.loadavg();
  return { at: new Date().toISOString(), load1: Number(l1!.toFixed(2)), load5: Number(l5!.toFixed(2)) };
}

/** What every scenario hands back. `unmeasured` lists what could not be measured, instead of a number. */
export interface ScenarioResult<S = unknown, R = unknown> {
  scenario: string;
  startedAt: string;
  seconds: number;
  config: Record<string, unknown>;
  loadBefore: LoadSample;
  loadAfter: LoadSample;
  summary: S;
  runs: R[];
  notes: string[];
  unmeasured: string[];
}

/** Runs `body` with timing and load-average bookkeeping around it. */
export async function scenario<S, R>(name: string, config: Record<string, unknown>,
  body: (ctx: { notes: string[]; unmeasured: string[] }) => Promise<{ summary: S; runs: R[] }>): Promise<ScenarioResult<S, R>> {
  const startedAt = new Date();
  const loadBefore = loadNow();
  const notes: string[] = [];
  const unmeasured: string[] = [];
  const { summary, runs } = await body({ notes, unmeasured });
  return {
    scenario: name, startedAt: startedAt.toISOString(), seconds: Number(((Date.now() - startedAt.getTime()) / 1000).toFixed(1)),
    config, loadBefore, loadAfter: loadNow(), summary, runs, notes, unmeasured,
  };
}

export function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Nearest-rank quantile of an ascending array. */
/** Runs `fn` over `items` with at most `width` in flight. */
export async function pool<T>(items: T[], width: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < items.length) await fn(items[next++]!);
  }));
}

export function quantile(sorted: number[], q: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!;
}

/** (max - min) / median: how far the rounds of one arm disagree. */
export function spread(xs: number[]): number {
  return xs.length < 2 ? 0 : (Math.max(...xs) - Math.min(...xs)) / median(xs);
}

/** Quantile from a histogram given as (upper value, count) pairs in ascending value order. */
export function histogramQuantile(bins: Array<[number, number]>, q: number): number {
  const total = bins.reduce((a, [, c]) => a + c, 0);
  if (total === 0) return NaN;
  const rank = Math.ceil(q * total);
  let seen = 0;
  for (const [v, c] of bins) {
    seen += c;
    if (seen >= rank) return v;
  }
  return bins.at(-1)![0];
}

export function round(x: number, digits = 2): number {
  return Number.isFinite(x) ? Number(x.toFixed(digits)) : x;
}

export interface Machine { cores: number; cpuModel: string; memGiB: number; kernel: string; hostname: string }

export function machine(): Machine {
  return {
    cores: os.cpus().length, cpuModel: os.cpus()[0]?.model?.trim() ?? 'unknown', memGiB: round(os.totalmem() / 2 ** 30, 1),
    kernel: os.release(), hostname: os.hostname(),
  };
}

async function firstLine(bin: string, args: string[]): Promise<string> {
  try {
    const { stdout, stderr } = await run(findBinary(bin), args);
    return (stdout || stderr).split('\n')[0]!.trim();
  } catch (e) {
    return `unavailable (${(e as Error).message.split('\n')[0]})`;
  }
}

export async function versions(): Promise<Record<string, string>> {
  const [mariadb, postgres, pgbench, pgbouncer, sysbench] = await Promise.all([
    firstLine('mariadbd', ['--version']), firstLine('postgres', ['--version']), firstLine('pgbench', ['--version']),
    firstLine('pgbouncer', ['--version']), firstLine('sysbench', ['--version']),
  ]);
  return { node: process.version, mariadb, postgres, pgbench, pgbouncer, sysbench };
}

/** Median latency of a 4 KiB write + fsync in `dir` (what a CAS counter advance pays per fsync). */
export function fsyncLatencyMs(dir: string, samples = 50): number {
  const file = path.join(dir, `fsync-probe-${process.pid}`);
  const fd = openSync(file, 'w');
  const buf = Buffer.alloc(4096, 1);
  const times: number[] = [];
  try {
    for (let i = 0; i < samples; i++) {
      const t = performance.now();
      writeSync(fd, buf, 0, buf.length, 0);
      fsyncSync(fd);
      times.push(performance.now() - t);
    }
  } finally {
    closeSync(fd);
    unlinkSync(file);
  }
  return round(median(times), 3);
}

/**
 * Median latency of a durable replace (tmp write → fsync → rename → fsync dir, src/crypto/atomic-file.ts),
 * what the proxy's record store and the CAS's state pay per counter advance. Unlike an in-place fsync,
 * the rename makes ext4 commit its journal.
 */
export async function durableReplaceMs(dir: string, samples = 30): Promise<number> {
  const { writeFileDurable } = await import('../../src/crypto/atomic-file.ts');
  const file = path.join(dir, `durable-probe-${process.pid}`);
  const data = Buffer.alloc(512, 7);
  const times: number[] = [];
  for (let i = 0; i < samples; i++) {
    const t = performance.now();
    await writeFileDurable(file, data);
    times.push(performance.now() - t);
  }
  unlinkSync(file);
  return round(median(times), 3);
}

/** Awaits a child's exit (or resolves at once if it already exited). */
export function exited(child: { exitCode: number | null; signalCode: string | null; once(ev: 'exit', cb: () => void): unknown }): Promise<void> {
  return new Promise((resolve) => (child.exitCode !== null || child.signalCode !== null ? resolve() : child.once('exit', () => resolve())));
}

export function fmt(x: number | undefined, digits = 2): string {
  return x === undefined || !Number.isFinite(x) ? 'n/a' : x.toFixed(digits);
}
