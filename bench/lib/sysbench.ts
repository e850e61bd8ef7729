/**
 * sysbench 1.0.20 for the benchmarks: like test/support/sysbench.ts (whose PEM layout it reuses: sysbench
 * 1.0 loads cacert.pem/client-cert.pem/client-key.pem from its working directory), plus the latency
 * histogram, from which p50/p95/p99 are read (1.0.x prints only one --percentile).
 */
import { commonArgs, parseSysbench, sysbench, type SysbenchTarget } from '../../test/support/sysbench.ts';
import { histogramQuantile } from './common.ts';

export type { SysbenchTarget } from '../../test/support/sysbench.ts';

export interface SysbenchRun {
  tps: number;
  qps: number;
  queries: number;
  transactions: number;
  errors: number;
  avgMs: number;
  p50Ms: number;
  p95Ms: number;
  p99Ms: number;
}

export async function prepare(t: SysbenchTarget, test = 'oltp_read_write'): Promise<void> {
  await sysbench(t, [test, ...commonArgs(t), 'prepare'], 600_000);
}

/** Latency histogram lines: `       0.120 |****     1234` (value in ms, count). */
export function parseHistogram(raw: string): Array<[number, number]> {
  const bins: Array<[number, number]> = [];
  for (const m of raw.matchAll(/^\s*([\d.]+)\s+\|\**\s+(\d+)\s*$/gm)) bins.push([Number(m[1]), Number(m[2])]);
  return bins;
}

export async function runSysbench(t: SysbenchTarget, test: string, o: { threads: number; durationS: number }): Promise<SysbenchRun> {
  const raw = await sysbench(t, [test, ...commonArgs(t), `--threads=${o.threads}`, `--time=${o.durationS}`,
    '--report-interval=0', '--percentile=95', '--histogram=on', 'run'], (o.durationS + 60) * 1000);
  const r = parseSysbench(raw);
  const bins = parseHistogram(raw);
  return {
    tps: r.tps, qps: r.qps, queries: r.queries, transactions: r.transactions, errors: r.errors, avgMs: r.latencyAvgMs,
    p50Ms: histogramQuantile(bins, 0.5), p95Ms: r.latencyP95Ms, p99Ms: histogramQuantile(bins, 0.99),
  };
}
