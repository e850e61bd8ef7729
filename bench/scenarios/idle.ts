/**
 * Scale: the proxy process's RSS and CPU while it holds N idle TLS client connections (each with its real
 * backend connection to MariaDB), and the latency an active client sees meanwhile — through the proxy and
 * directly. N = 0 is the baseline. Connections are opened with the mariadb connector from this process;
 * the proxy is its own process (bench/proxy-runner.ts, `ulimit -n` raised).
 */
import { readFileSync } from 'node:fs';
import mariadb, { type Connection } from 'mariadb';
import { scenario, quantile, round, fmt, type ScenarioResult } from '../lib/common.ts';
import { startTlsMariadb } from '../lib/mariadb-tls.ts';
import { spawnProxyOrStop } from '../lib/proxy-process.ts';

export interface IdleOptions {
  counts: number[];
  /** Seconds of the active client's SELECT 1 loop per arm (proxy, direct) at each step. */
  activeS: number;
  /** Seconds of pure idling over which the proxy's CPU is measured. */
  idleS: number;
  openConcurrency: number;
  threadHandling: 'one-thread-per-connection' | 'pool-of-threads';
  log?: (line: string) => void;
}
export interface IdleRow {
  idle: number;
  openSeconds: number;
  openPerSecond: number;
  proxyRssMB: number;
  proxyHeapMB: number;
  /** RSS growth over the baseline per idle connection, KiB (0 below 200 connections: RSS noise dominates). */
  rssPerConnKiB: number;
  proxyIdleCpuPct: number;
  mariadbRssMB: number;
  active: { proxy: { p50Ms: number; p99Ms: number; qps: number }; direct: { p50Ms: number; p99Ms: number; qps: number } };
}

interface Target { host: string; port: number; user: string; password: string; caPem: string }
const connect = (t: Target): Promise<Connection> => mariadb.createConnection({
  host: t.host, port: t.port, user: t.user, password: t.password, ssl: { ca: t.caPem, rejectUnauthorized: true }, connectTimeout: 60_000,
});

async function activeLoop(t: Target, seconds: number): Promise<{ p50Ms: number; p99Ms: number; qps: number }> {
  const conn = await connect(t);
  const lat: number[] = [];
  try {
    const end = performance.now() + seconds * 1000;
    while (performance.now() < end) {
      const s = performance.now();
      await conn.query('SELECT 1');
      lat.push(performance.now() - s);
    }
  } finally {
    await conn.end();
  }
  const n = lat.length;
  lat.sort((a, b) => a - b);
  return { p50Ms: round(quantile(lat, 0.5), 3), p99Ms: round(quantile(lat, 0.99), 3), qps: round(n / seconds, 0) };
}

function rssOfPid(pid: number | undefined): number {
  try {
    const kb = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]);
    return round(kb / 1024, 1);
  } catch {
    return NaN;
  }
}

export function runIdle(o: IdleOptions): Promise<ScenarioResult<IdleRow[], IdleRow>> {
  const log = o.log ?? (() => undefined);
  return scenario('idle', { ...o, log: undefined }, async ({ notes, unmeasured }) => {
    const max = Math.max(0, ...o.counts);
    const m = await startTlsMariadb([`thread_handling=${o.threadHandling}`, `max_connections=${max + 200}`, 'max_connect_errors=1000000000',
      ...(o.threadHandling === 'pool-of-threads' ? ['thread_pool_max_threads=2000'] : [])]);
    const proxy = await spawnProxyOrStop(m, {
      engine: 'mysql', backend: { socket: m.db.server.socket }, tls: { keyPem: m.pki.keyPem, certPem: m.pki.certPem },
      maxConnections: max + 200, nofile: 4 * max + 1000,
    });
    const held: Connection[] = [];
    const rows: IdleRow[] = [];
    try {
      const direct: Target = { host: '127.0.0.1', port: m.db.server.port!, user: m.db.user, password: m.db.password, caPem: m.pki.caPem };
      const viaProxy = { ...direct, port: proxy.port };
      let baseRss = NaN;
      // Warm both paths (JIT, TLS session machinery) so the N = 0 baseline is not a cold start.
      await activeLoop(viaProxy, 1);
      await activeLoop(direct, 1);
      for (const target of [0, ...o.counts]) {
        const t0 = performance.now();
        const want = target - held.length;
        let failures = 0;
        let firstError = '';
        let next = 0;
        await Promise.all(Array.from({ length: Math.min(o.openConcurrency, Math.max(0, want)) }, async () => {
          while (next < want) {
            next++;
            try {
              held.push(await connect(viaProxy));
            } catch (e) {
              failures++;
              firstError ||= (e as Error).message;
            }
          }
        }));
        const openSeconds = (performance.now() - t0) / 1000;
        if (failures > 0) {
          unmeasured.push(`${target} idle connections: ${failures} of ${want} failed to open (${firstError}); the row below is for ${held.length}.`);
        }
        await new Promise((r) => setTimeout(r, 1000));
        const s0 = await proxy.stats();
        await new Promise((r) => setTimeout(r, o.idleS * 1000));
        const s1 = await proxy.stats();
        const idleCpuPct = ((s1.cpuUs - s0.cpuUs) / (o.idleS * 1e6)) * 100;
        if (target === 0) baseRss = s1.rss;
        const active = { proxy: await activeLoop(viaProxy, o.activeS), direct: await activeLoop(direct, o.activeS) };
        const row: IdleRow = {
          idle: held.length, openSeconds: round(openSeconds, 1), openPerSecond: want > 0 ? round(want / openSeconds, 0) : 0,
          proxyRssMB: round(s1.rss / 2 ** 20, 1), proxyHeapMB: round(s1.heapUsed / 2 ** 20, 1),
          rssPerConnKiB: held.length >= 200 ? round((s1.rss - baseRss) / held.length / 1024, 1) : 0,
          proxyIdleCpuPct: round(idleCpuPct, 2), mariadbRssMB: rssOfPid(m.db.server.pid), active,
        };
        rows.push(row);
        log(`idle ${row.idle}: proxy RSS ${row.proxyRssMB} MB (${row.rssPerConnKiB} KiB/conn), idle CPU ${row.proxyIdleCpuPct}%, active p99 proxy ${active.proxy.p99Ms} ms / direct ${active.direct.p99Ms} ms, MariaDB RSS ${row.mariadbRssMB} MB`);
      }
      notes.push(`MariaDB thread_handling=${o.threadHandling}; every idle client holds one real MariaDB connection through the proxy.`);
    } finally {
      await Promise.all(held.map((c) => c.end().catch(() => c.destroy())));
      await proxy.stop();
      await m.stop();
    }
    return { summary: rows, runs: rows };
  });
}

export function renderIdle(r: ScenarioResult<IdleRow[], IdleRow>): string[] {
  const c = r.config as unknown as IdleOptions;
  return [
    `Idle TLS connections held through the proxy (each with its MariaDB connection; thread_handling=${c.threadHandling}), opened ${c.openConcurrency} at a time.`,
    `Proxy RSS/heap read in the proxy process; idle CPU over ${c.idleS} s with no traffic; then one active client runs \`SELECT 1\` in a loop for ${c.activeS} s`,
    'through the proxy and then directly (TLS) — latencies from the client (Node mariadb connector), so they include client overhead.',
    '',
    '| idle conns | proxy RSS MB | KiB per conn | proxy heap MB | proxy idle CPU % | open rate conn/s | active p50 / p99 ms via proxy | active p50 / p99 ms direct | MariaDB RSS MB |',
    '|---:|---:|---:|---:|---:|---:|---|---|---:|',
    ...r.summary.map((x) => `| ${x.idle} | **${fmt(x.proxyRssMB, 1)}** | ${x.idle >= 200 ? fmt(x.rssPerConnKiB, 1) : '–'} | ${fmt(x.proxyHeapMB, 1)} | ${fmt(x.proxyIdleCpuPct, 2)} | ${x.openPerSecond || '–'} | ${fmt(x.active.proxy.p50Ms, 3)} / ${fmt(x.active.proxy.p99Ms, 3)} | ${fmt(x.active.direct.p50Ms, 3)} / ${fmt(x.active.direct.p99Ms, 3)} | ${fmt(x.mariadbRssMB, 0)} |`),
  ];
}
