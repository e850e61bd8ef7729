/**
 * sysbench through the proxy vs direct TLS to the same MariaDB, alternating A/B within each cell
 * (test × threads) and swapping the order every round, so drift on a shared machine hits both arms.
 * The proxy runs as its own process (bench/proxy-runner.ts) over MariaDB's unix socket.
 */
import path from 'node:path';
import { mkdirSync } from 'node:fs';
import { scenario, median, spread, round, fmt, REPO, type ScenarioResult } from '../lib/common.ts';
import { startTlsMariadb } from '../lib/mariadb-tls.ts';
import { spawnProxyOrStop } from '../lib/proxy-process.ts';
import { prepare, runSysbench, type SysbenchRun } from '../lib/sysbench.ts';

export interface MysqlOptions {
  tests: string[];
  threads: number[];
  durationS: number;
  rounds: number;
  tableSize: number;
  tables: number;
  /** Write a V8 CPU profile of the proxy process into bench/results/profiles. */
  profile?: boolean;
  log?: (line: string) => void;
}

export type MysqlArm = 'direct' | 'proxy';
export interface MysqlRun extends SysbenchRun { arm: MysqlArm; test: string; threads: number; round: number; proxyCpuUsPerQuery?: number }
export interface MysqlCell {
  test: string;
  threads: number;
  directTps: number;
  proxyTps: number;
  ratio: number;
  directSpread: number;
  proxySpread: number;
  direct: { p50Ms: number; p95Ms: number; p99Ms: number };
  proxy: { p50Ms: number; p95Ms: number; p99Ms: number };
  addedP50Ms: number;
  addedP99Ms: number;
  proxyCpuUsPerQuery: number;
}

export function runMysql(o: MysqlOptions): Promise<ScenarioResult<MysqlCell[], MysqlRun>> {
  const log = o.log ?? (() => undefined);
  return scenario('mysql', { ...o, log: undefined }, async ({ notes }) => {
    const m = await startTlsMariadb(['thread_handling=one-thread-per-connection']);
    const runs: MysqlRun[] = [];
    const profileDir = o.profile ? path.join(REPO, 'bench', 'results', 'profiles') : undefined;
    if (profileDir) mkdirSync(profileDir, { recursive: true });
    const proxy = await spawnProxyOrStop(m, {
      engine: 'mysql', backend: { socket: m.db.server.socket }, tls: { keyPem: m.pki.keyPem, certPem: m.pki.certPem },
      maxConnections: 2000, ...(profileDir ? { cpuProfDir: profileDir } : {}),
    });
    try {
      await m.db.rootQuery('CREATE DATABASE IF NOT EXISTS sbtest');
      const direct = {
        host: '127.0.0.1', port: m.db.server.port!, user: m.db.user, password: m.db.password, db: 'sbtest', caPem: m.pki.caPem,
        client: { certPem: m.pki.certPem, keyPem: m.pki.keyPem }, cwd: m.work.path, tables: o.tables, tableSize: o.tableSize,
      };
      const viaProxy = { ...direct, port: proxy.port };
      log(`mysql: sysbench prepare (${o.tables} × ${o.tableSize} rows)`);
      await prepare(direct);
      for (let r = 1; r <= o.rounds; r++) {
        for (const test of o.tests) {
          for (const threads of o.threads) {
            const order: MysqlArm[] = r % 2 === 1 ? ['direct', 'proxy'] : ['proxy', 'direct'];
            for (const arm of order) {
              const before = arm === 'proxy' ? (await proxy.stats()).cpuUs : 0;
              const res = await runSysbench(arm === 'proxy' ? viaProxy : direct, test, { threads, durationS: o.durationS });
              const row: MysqlRun = { arm, test, threads, round: r, ...res };
              if (arm === 'proxy' && res.queries > 0) row.proxyCpuUsPerQuery = round(((await proxy.stats()).cpuUs - before) / res.queries, 1);
              runs.push(row);
              log(`mysql r${r} ${test} t=${threads} ${arm.padEnd(6)} tps=${res.tps.toFixed(1)} p50=${res.p50Ms} p99=${res.p99Ms}ms${row.proxyCpuUsPerQuery !== undefined ? ` proxyCPU=${row.proxyCpuUsPerQuery}µs/q` : ''}`);
            }
          }
        }
      }
    } finally {
      await proxy.stop();
      await m.stop();
    }
    if (profileDir) notes.push(`V8 CPU profile of the proxy process written to ${path.relative(REPO, profileDir)}/ (not committed).`);
    return { summary: summarizeMysql(runs), runs };
  });
}

export function summarizeMysql(runs: MysqlRun[]): MysqlCell[] {
  const cells: MysqlCell[] = [];
  for (const test of [...new Set(runs.map((r) => r.test))]) {
    for (const threads of [...new Set(runs.map((r) => r.threads))]) {
      const pick = (arm: MysqlArm) => runs.filter((r) => r.test === test && r.threads === threads && r.arm === arm);
      const d = pick('direct');
      const p = pick('proxy');
      if (d.length === 0 || p.length === 0) continue;
      const lat = (rs: MysqlRun[]) => ({ p50Ms: median(rs.map((r) => r.p50Ms)), p95Ms: median(rs.map((r) => r.p95Ms)), p99Ms: median(rs.map((r) => r.p99Ms)) });
      const directTps = median(d.map((r) => r.tps));
      const proxyTps = median(p.map((r) => r.tps));
      const dl = lat(d);
      const pl = lat(p);
      cells.push({
        test, threads, directTps: round(directTps, 1), proxyTps: round(proxyTps, 1), ratio: round(proxyTps / directTps, 3),
        directSpread: round(spread(d.map((r) => r.tps)), 3), proxySpread: round(spread(p.map((r) => r.tps)), 3),
        direct: dl, proxy: pl, addedP50Ms: round(pl.p50Ms - dl.p50Ms, 3), addedP99Ms: round(pl.p99Ms - dl.p99Ms, 3),
        proxyCpuUsPerQuery: round(median(p.map((r) => r.proxyCpuUsPerQuery ?? NaN).filter(Number.isFinite)), 1),
      });
    }
  }
  return cells;
}

export function renderMysql(r: ScenarioResult<MysqlCell[], MysqlRun>): string[] {
  const c = r.config as unknown as MysqlOptions;
  return [
    `sysbench (${c.tables} tables × ${c.tableSize} rows, \`--mysql-ssl=on\`), ${c.durationS} s per arm, ${c.rounds} rounds, A/B order swapped every round.`,
    'direct = sysbench → MariaDB TCP+TLS; proxy = sysbench → proxy (own process, TLS) → MariaDB unix socket. tps = median over rounds;',
    'spread = (max−min)/median across rounds; latencies in ms from sysbench\'s histogram (median over rounds); added = proxy − direct.',
    '',
    '| test | threads | direct tps | proxy tps | proxy/direct | spread d / p | p50 d / p | p95 d / p | p99 d / p | added p50 | proxy CPU µs/query |',
    '|---|---:|---:|---:|---:|---|---|---|---|---:|---:|',
    ...r.summary.map((x) => `| ${x.test} | ${x.threads} | ${fmt(x.directTps, 0)} | ${fmt(x.proxyTps, 0)} | **${fmt(x.ratio)}** | ${pct(x.directSpread)} / ${pct(x.proxySpread)} | ${fmt(x.direct.p50Ms)} / ${fmt(x.proxy.p50Ms)} | ${fmt(x.direct.p95Ms)} / ${fmt(x.proxy.p95Ms)} | ${fmt(x.direct.p99Ms)} / ${fmt(x.proxy.p99Ms)} | ${fmt(x.addedP50Ms, 3)} | ${fmt(x.proxyCpuUsPerQuery, 1)} |`),
  ];
}

const pct = (x: number) => `${(x * 100).toFixed(0)}%`;
