/**
 * sysbench 1.0.20 for the benchmarks: like test/support/sysbench.ts (whose PEM layout it reuses: sysbench
 * 1.0 loads cacert.pem/client-cert.pem/client-key.pem from its working directory), plus the latency
 * histogram, from which p50/p95/p99 are read (1.0.x prints only one --percentile).
 */
import { execFile } from 'node:child_process';
import { writeFileSync, existsSync } from 'node:fs';
import path from 'node:path';
import { findBinary } from '../../src/kernel/binaries.ts';
import { parseSysbench, type SysbenchTarget } from '../../test/support/sysbench.ts';
import { makeTestPki } from '../../test/support/test-pki.ts';
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

function writePems(t: SysbenchTarget): void {
  if (!t.caPem) return;
  writeFileSync(path.join(t.cwd, 'cacert.pem'), t.caPem);
  if (t.client) {
    writeFileSync(path.join(t.cwd, 'client-cert.pem'), t.client.certPem);
    writeFileSync(path.join(t.cwd, 'client-key.pem'), t.client.keyPem, { mode: 0o600 });
  } else if (!existsSync(path.join(t.cwd, 'client-cert.pem'))) {
    const clientPki = makeTestPki({ hosts: ['sysbench-client'], ips: [] });
    writeFileSync(path.join(t.cwd, 'client-cert.pem'), clientPki.certPem);
    writeFileSync(path.join(t.cwd, 'client-key.pem'), clientPki.keyPem, { mode: 0o600 });
  }
}

function args(t: SysbenchTarget): string[] {
  return [
    '--db-driver=mysql', `--mysql-host=${t.host}`, `--mysql-port=${t.port}`, `--mysql-user=${t.user}`,
    `--mysql-password=${t.password}`, `--mysql-db=${t.db}`, `--tables=${t.tables ?? 1}`, `--table-size=${t.tableSize ?? 10000}`,
    ...(t.caPem ? ['--mysql-ssl=on'] : []),
  ];
}

function sysbench(t: SysbenchTarget, argv: string[], timeoutMs: number): Promise<string> {
  writePems(t);
  return new Promise((resolve, reject) => {
    execFile(findBinary('sysbench'), argv, { cwd: t.cwd, timeout: timeoutMs, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`sysbench ${argv[0]} ${argv.at(-1)} failed: ${(stderr || stdout || err.message).slice(0, 2000)}`));
      else resolve(stdout);
    });
  });
}

export async function prepare(t: SysbenchTarget, test = 'oltp_read_write'): Promise<void> {
  await sysbench(t, [test, ...args(t), 'prepare'], 600_000);
}

/** Latency histogram lines: `       0.120 |****     1234` (value in ms, count). */
export function parseHistogram(raw: string): Array<[number, number]> {
  const bins: Array<[number, number]> = [];
  for (const m of raw.matchAll(/^\s*([\d.]+)\s+\|\**\s+(\d+)\s*$/gm)) bins.push([Number(m[1]), Number(m[2])]);
  return bins;
}

export async function runSysbench(t: SysbenchTarget, test: string, o: { threads: number; durationS: number }): Promise<SysbenchRun> {
  const raw = await sysbench(t, [test, ...args(t), `--threads=${o.threads}`, `--time=${o.durationS}`,
    '--report-interval=0', '--percentile=95', '--histogram=on', 'run'], (o.durationS + 60) * 1000);
  const r = parseSysbench(raw);
  const bins = parseHistogram(raw);
  return {
    tps: r.tps, qps: r.qps, queries: r.queries, transactions: r.transactions, errors: r.errors, avgMs: r.latencyAvgMs,
    p50Ms: histogramQuantile(bins, 0.5), p95Ms: r.latencyP95Ms, p99Ms: histogramQuantile(bins, 0.99),
  };
}
