/**
 * Connection storm: N concurrent loops, each doing TLS connect (verified against the CA) + authenticate +
 * `SELECT 1` + close, as fast as it can, through the proxy vs directly to MariaDB's TLS port. The loops run
 * in this process with the mariadb connector (so client cost is identical for both arms); the proxy runs as
 * its own process. A/B order swapped every round.
 */
import mariadb from 'mariadb';
import { scenario, median, quantile, spread, round, fmt, type ScenarioResult } from '../lib/common.ts';
import { startTlsMariadb } from '../lib/mariadb-tls.ts';
import { spawnProxyOrStop } from '../lib/proxy-process.ts';

export interface StormOptions { concurrency: number[]; durationS: number; rounds: number; log?: (line: string) => void }
export type StormArm = 'direct' | 'proxy';
export interface StormRun { arm: StormArm; concurrency: number; round: number; connections: number; perSecond: number; errors: number; p50Ms: number; p99Ms: number; proxyCpuUsPerConnection?: number }
export interface StormCell { concurrency: number; directPerSecond: number; proxyPerSecond: number; ratio: number; direct: { p50Ms: number; p99Ms: number }; proxy: { p50Ms: number; p99Ms: number }; spread: { direct: number; proxy: number }; proxyCpuUsPerConnection: number; errors: number }

export interface StormTarget { host: string; port: number; user: string; password: string; caPem: string }

/** Runs `concurrency` connect/SELECT 1/close loops for `durationS`; returns count, rate and latency. */
export async function storm(t: StormTarget, concurrency: number, durationS: number): Promise<Omit<StormRun, 'arm' | 'round' | 'concurrency'>> {
  const latencies: number[] = [];
  let errors = 0;
  let firstError: Error | undefined;
  const end = performance.now() + durationS * 1000;
  const t0 = performance.now();
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (performance.now() < end) {
      const s = performance.now();
      try {
        const conn = await mariadb.createConnection({
          host: t.host, port: t.port, user: t.user, password: t.password, ssl: { ca: t.caPem, rejectUnauthorized: true }, connectTimeout: 10_000,
        });
        try {
          await conn.query('SELECT 1');
        } finally {
          await conn.end();
        }
        latencies.push(performance.now() - s);
      } catch (e) {
        errors++;
        firstError ??= e as Error;
      }
    }
  }));
  const elapsed = (performance.now() - t0) / 1000;
  if (latencies.length === 0 && firstError) throw firstError;
  latencies.sort((a, b) => a - b);
  return {
    connections: latencies.length, perSecond: round(latencies.length / elapsed, 1), errors,
    p50Ms: round(quantile(latencies, 0.5), 2), p99Ms: round(quantile(latencies, 0.99), 2),
  };
}

export function runStorm(o: StormOptions): Promise<ScenarioResult<StormCell[], StormRun>> {
  const log = o.log ?? (() => undefined);
  return scenario('storm', { ...o, log: undefined }, async () => {
    const m = await startTlsMariadb(['thread_handling=one-thread-per-connection', 'max_connect_errors=1000000000']);
    const runs: StormRun[] = [];
    const proxy = await spawnProxyOrStop(m, {
      engine: 'mysql', backend: { socket: m.db.server.socket }, tls: { keyPem: m.pki.keyPem, certPem: m.pki.certPem }, maxConnections: 2000,
    });
    try {
      const direct: StormTarget = { host: '127.0.0.1', port: m.db.server.port!, user: m.db.user, password: m.db.password, caPem: m.pki.caPem };
      const viaProxy = { ...direct, port: proxy.port };
      for (let r = 1; r <= o.rounds; r++) {
        for (const concurrency of o.concurrency) {
          const order: StormArm[] = r % 2 === 1 ? ['direct', 'proxy'] : ['proxy', 'direct'];
          for (const arm of order) {
            const before = arm === 'proxy' ? (await proxy.stats()).cpuUs : 0;
            const s = await storm(arm === 'proxy' ? viaProxy : direct, concurrency, o.durationS);
            const row: StormRun = { arm, concurrency, round: r, ...s };
            if (arm === 'proxy' && s.connections > 0) row.proxyCpuUsPerConnection = round(((await proxy.stats()).cpuUs - before) / s.connections, 0);
            runs.push(row);
            log(`storm r${r} c=${concurrency} ${arm.padEnd(6)} ${s.perSecond} conn/s p50=${s.p50Ms} p99=${s.p99Ms}ms errors=${s.errors}`);
          }
        }
      }
    } finally {
      await proxy.stop();
      await m.stop();
    }
    return { summary: summarizeStorm(runs), runs };
  });
}

export function summarizeStorm(runs: StormRun[]): StormCell[] {
  return [...new Set(runs.map((r) => r.concurrency))].map((concurrency) => {
    const d = runs.filter((r) => r.concurrency === concurrency && r.arm === 'direct');
    const p = runs.filter((r) => r.concurrency === concurrency && r.arm === 'proxy');
    const dps = median(d.map((r) => r.perSecond));
    const pps = median(p.map((r) => r.perSecond));
    return {
      concurrency, directPerSecond: round(dps, 1), proxyPerSecond: round(pps, 1), ratio: round(pps / dps, 3),
      direct: { p50Ms: median(d.map((r) => r.p50Ms)), p99Ms: median(d.map((r) => r.p99Ms)) },
      proxy: { p50Ms: median(p.map((r) => r.p50Ms)), p99Ms: median(p.map((r) => r.p99Ms)) },
      spread: { direct: round(spread(d.map((r) => r.perSecond)), 3), proxy: round(spread(p.map((r) => r.perSecond)), 3) },
      proxyCpuUsPerConnection: round(median(p.map((r) => r.proxyCpuUsPerConnection ?? NaN).filter(Number.isFinite)), 0),
      errors: [...d, ...p].reduce((a, r) => a + r.errors, 0),
    };
  });
}

export function renderStorm(r: ScenarioResult<StormCell[], StormRun>): string[] {
  const c = r.config as unknown as StormOptions;
  return [
    `Each loop: TLS connect (CA-verified) + authenticate + \`SELECT 1\` + close with the mariadb connector (Node, in the bench process), ${c.durationS} s per arm, ${c.rounds} rounds.`,
    'The client side (Node + TLS handshake) shares the 2 cores with MariaDB and the proxy, so absolute rates are low; the ratio is the figure.',
    '',
    '| loops | direct conn/s | proxy conn/s | proxy/direct | p50 ms d / p | p99 ms d / p | spread d / p | proxy CPU µs/conn | errors |',
    '|---:|---:|---:|---:|---|---|---|---:|---:|',
    ...r.summary.map((x) => `| ${x.concurrency} | ${fmt(x.directPerSecond, 1)} | ${fmt(x.proxyPerSecond, 1)} | **${fmt(x.ratio)}** | ${fmt(x.direct.p50Ms)} / ${fmt(x.proxy.p50Ms)} | ${fmt(x.direct.p99Ms)} / ${fmt(x.proxy.p99Ms)} | ${(x.spread.direct * 100).toFixed(0)}% / ${(x.spread.proxy * 100).toFixed(0)}% | ${fmt(x.proxyCpuUsPerConnection, 0)} | ${x.errors} |`),
  ];
}
