/**
 * sysbench against the same MariaDB through several arms, interleaved within each cell (test × threads)
 * with the order rotated every round, so drift on a shared machine hits every arm alike:
 *
 *   direct     sysbench → MariaDB TCP+TLS (the baseline every ratio divides by)
 *   native     sysbench → proxy (own process, TLS, native data plane) → MariaDB unix socket
 *   node       the same proxy with its Node data plane
 *   native-gated / node-gated  the same with a pass-through ack gate: strict freshness's data path
 *              (response tracking, every write's acknowledgment held and released) without the seal
 *   plain      sysbench → MariaDB TCP without TLS                      (reference, --mysql-reference)
 *   c-forward  sysbench → bench/reference/forwarder.c → unix socket    (reference: one bare user-space hop)
 *
 * The reference arms price the physics: what one user-space hop costs on this machine with no TLS and no
 * logic (c-forward vs plain), against which the proxy's own cost can be read.
 */
import path from 'node:path';
import { mkdirSync } from 'node:fs';
import { scenario, median, spread, round, fmt, REPO, type ScenarioResult } from '../lib/common.ts';
import { startTlsMariadb } from '../lib/mariadb-tls.ts';
import { spawnProxy } from '../lib/proxy-process.ts';
import { buildCForwarder, startCForwarder } from '../lib/c-forwarder.ts';
import { prepare, runSysbench, type SysbenchRun, type SysbenchTarget } from '../lib/sysbench.ts';

export const MYSQL_ARMS = ['direct', 'native', 'node', 'native-gated', 'node-gated', 'plain', 'c-forward'] as const;
export type MysqlArm = (typeof MYSQL_ARMS)[number];
export const DEFAULT_MYSQL_ARMS: MysqlArm[] = ['direct', 'native', 'node'];
export const REFERENCE_ARMS: MysqlArm[] = ['plain', 'c-forward'];

export const ARM_DESCRIPTIONS: Record<MysqlArm, string> = {
  direct: 'sysbench → MariaDB TCP+TLS',
  native: 'sysbench → proxy (own process, TLS, native data plane) → MariaDB unix socket',
  node: 'sysbench → proxy (own process, TLS, Node data plane) → MariaDB unix socket',
  'native-gated': 'native, with a pass-through ack gate (strict freshness\'s response tracking and holds, no seal)',
  'node-gated': 'node, with a pass-through ack gate (strict freshness\'s response tracking and holds, no seal)',
  plain: 'sysbench → MariaDB TCP, no TLS (reference)',
  'c-forward': 'sysbench → minimal C epoll forwarder (bench/reference/forwarder.c, one thread, no TLS) → MariaDB unix socket (reference)',
};

export interface MysqlOptions {
  tests: string[];
  threads: number[];
  durationS: number;
  rounds: number;
  tableSize: number;
  tables: number;
  /** Arms to run (default DEFAULT_MYSQL_ARMS); `direct` is always added, every ratio divides by it. */
  arms?: MysqlArm[];
  /** Worker threads of the native data plane (default: the proxy's own default). */
  nativeWorkers?: number;
  /** Write V8 CPU profiles of the proxy processes into bench/results/profiles. */
  profile?: boolean;
  log?: (line: string) => void;
}

export interface MysqlRun extends SysbenchRun {
  arm: MysqlArm;
  test: string;
  threads: number;
  round: number;
  /** CPU of the hop's own process (proxy or forwarder) per query; absent for direct and plain. */
  hopCpuUsPerQuery?: number;
}

export interface MysqlArmCell {
  rounds: number;
  tps: number;
  /** (max−min)/median of tps across rounds. */
  spread: number;
  p50Ms: number;
  p95Ms: number;
  p99Ms: number;
  /** tps / direct tps. */
  vsDirect: number;
  addedP50Ms: number;
  addedP99Ms: number;
  hopCpuUsPerQuery?: number;
}

export interface MysqlCell {
  test: string;
  threads: number;
  arms: Partial<Record<MysqlArm, MysqlArmCell>>;
  /** The bare hop against its own no-TLS baseline: c-forward tps / plain tps, and its added p50. */
  cForwardVsPlain?: number;
  cForwardAddedP50Ms?: number;
}

/** direct first, then the others in MYSQL_ARMS order, without duplicates. */
export function normalizeArms(arms: readonly MysqlArm[] | undefined): MysqlArm[] {
  const wanted = new Set<MysqlArm>(['direct', ...(arms ?? DEFAULT_MYSQL_ARMS)]);
  for (const a of wanted) if (!MYSQL_ARMS.includes(a)) throw new Error(`unknown mysql arm ${a} (known: ${MYSQL_ARMS.join(', ')})`);
  return MYSQL_ARMS.filter((a) => wanted.has(a));
}

/** Round r's order: rotated by ⌊(r−1)/2⌋ and reversed on even rounds, so each pair of rounds balances positions. */
export function armOrder(arms: readonly MysqlArm[], r: number): MysqlArm[] {
  const k = Math.floor((r - 1) / 2) % arms.length;
  const rotated = [...arms.slice(k), ...arms.slice(0, k)];
  return r % 2 === 0 ? rotated.reverse() : rotated;
}

interface Hop { target: SysbenchTarget; cpuUs?: () => Promise<number> }

export function runMysql(o: MysqlOptions): Promise<ScenarioResult<MysqlCell[], MysqlRun>> {
  const log = o.log ?? (() => undefined);
  const arms = normalizeArms(o.arms);
  return scenario('mysql', { ...o, arms, log: undefined }, async ({ notes, unmeasured }) => {
    const m = await startTlsMariadb(['thread_handling=one-thread-per-connection']);
    const runs: MysqlRun[] = [];
    const profileDir = o.profile ? path.join(REPO, 'bench', 'results', 'profiles') : undefined;
    if (profileDir) mkdirSync(profileDir, { recursive: true });
    const stops: Array<() => Promise<unknown> | void> = [];
    try {
      const direct: SysbenchTarget = {
        host: '127.0.0.1', port: m.db.server.port!, user: m.db.user, password: m.db.password, db: 'sbtest', caPem: m.pki.caPem,
        client: { certPem: m.pki.certPem, keyPem: m.pki.keyPem }, cwd: m.work.path, tables: o.tables, tableSize: o.tableSize,
      };
      const { caPem: _ca, client: _cl, ...plain } = direct;
      const hops = new Map<MysqlArm, Hop>([['direct', { target: direct }]]);
      // An arm that cannot be set up (no native build, no C compiler) is reported as not measured; the rest still run.
      for (const arm of arms) {
        try {
          if (arm === 'native' || arm === 'node' || arm === 'native-gated' || arm === 'node-gated') {
            // With dataPlane 'native' the proxy refuses to start rather than fall back, so this arm is the native plane.
            const plane = arm.startsWith('native') ? 'native' : 'node';
            const proxy = await spawnProxy({
              engine: 'mysql', backend: { socket: m.db.server.socket }, tls: { keyPem: m.pki.keyPem, certPem: m.pki.certPem },
              maxConnections: 2000, dataPlane: plane, passThroughGate: arm.endsWith('-gated'),
              ...(plane === 'native' && o.nativeWorkers ? { nativeWorkers: o.nativeWorkers } : {}),
              ...(profileDir ? { cpuProfDir: profileDir } : {}),
            });
            stops.push(() => proxy.stop());
            hops.set(arm, { target: { ...direct, port: proxy.port }, cpuUs: async () => (await proxy.stats()).cpuUs });
          } else if (arm === 'plain') {
            hops.set(arm, { target: plain });
          } else if (arm === 'c-forward') {
            const built = await buildCForwarder();
            stops.push(() => built.remove());
            const fwd = await startCForwarder(built.bin, m.db.server.socket);
            stops.push(() => fwd.stop());
            hops.set(arm, { target: { ...plain, port: fwd.port }, cpuUs: async () => fwd.cpuUs() });
          }
        } catch (e) {
          unmeasured.push(`${arm} arm: ${(e as Error).message.split('\n')[0]}`);
          log(`mysql: ${arm} arm not measured: ${(e as Error).message.split('\n')[0]}`);
        }
      }
      const measured = arms.filter((a) => hops.has(a));
      await m.db.rootQuery('CREATE DATABASE IF NOT EXISTS sbtest');
      log(`mysql: arms ${measured.join(', ')}; sysbench prepare (${o.tables} × ${o.tableSize} rows)`);
      await prepare(direct);
      for (let r = 1; r <= o.rounds; r++) {
        for (const test of o.tests) {
          for (const threads of o.threads) {
            for (const arm of armOrder(measured, r)) {
              const hop = hops.get(arm)!;
              const before = hop.cpuUs ? await hop.cpuUs() : 0;
              const res = await runSysbench(hop.target, test, { threads, durationS: o.durationS });
              const row: MysqlRun = { arm, test, threads, round: r, ...res };
              if (hop.cpuUs && res.queries > 0) row.hopCpuUsPerQuery = round(((await hop.cpuUs()) - before) / res.queries, 1);
              runs.push(row);
              log(`mysql r${r} ${test} t=${threads} ${arm.padEnd(9)} tps=${res.tps.toFixed(1)} p50=${res.p50Ms} p99=${res.p99Ms}ms${row.hopCpuUsPerQuery !== undefined ? ` hopCPU=${row.hopCpuUsPerQuery}µs/q` : ''}`);
            }
          }
        }
      }
    } finally {
      for (const stop of stops.reverse()) await Promise.resolve(stop()).catch(() => undefined);
      await m.stop();
    }
    if (profileDir) notes.push(`V8 CPU profiles of the proxy processes written to ${path.relative(REPO, profileDir)}/ (not committed).`);
    return { summary: summarizeMysql(runs), runs };
  });
}

export function summarizeMysql(runs: MysqlRun[]): MysqlCell[] {
  const cells: MysqlCell[] = [];
  const lat = (rs: MysqlRun[]) => ({ p50Ms: median(rs.map((r) => r.p50Ms)), p95Ms: median(rs.map((r) => r.p95Ms)), p99Ms: median(rs.map((r) => r.p99Ms)) });
  for (const test of [...new Set(runs.map((r) => r.test))]) {
    for (const threads of [...new Set(runs.map((r) => r.threads))]) {
      const pick = (arm: MysqlArm) => runs.filter((r) => r.test === test && r.threads === threads && r.arm === arm);
      const d = pick('direct');
      if (d.length === 0) continue;
      const directTps = median(d.map((r) => r.tps));
      const dl = lat(d);
      const cell: MysqlCell = { test, threads, arms: {} };
      for (const arm of MYSQL_ARMS) {
        const rs = pick(arm);
        if (rs.length === 0) continue;
        const tps = median(rs.map((r) => r.tps));
        const l = lat(rs);
        const cpu = rs.map((r) => r.hopCpuUsPerQuery ?? NaN).filter(Number.isFinite);
        cell.arms[arm] = {
          rounds: rs.length, tps: round(tps, 1), spread: round(spread(rs.map((r) => r.tps)), 3), ...l,
          vsDirect: round(tps / directTps, 3), addedP50Ms: round(l.p50Ms - dl.p50Ms, 3), addedP99Ms: round(l.p99Ms - dl.p99Ms, 3),
          ...(cpu.length ? { hopCpuUsPerQuery: round(median(cpu), 1) } : {}),
        };
      }
      const cf = cell.arms['c-forward'];
      const pl = cell.arms.plain;
      if (cf && pl) {
        cell.cForwardVsPlain = round(cf.tps / pl.tps, 3);
        cell.cForwardAddedP50Ms = round(cf.p50Ms - pl.p50Ms, 3);
      }
      cells.push(cell);
    }
  }
  return cells;
}

export function renderMysql(r: ScenarioResult<MysqlCell[], MysqlRun>): string[] {
  const c = r.config as unknown as MysqlOptions;
  const arms = MYSQL_ARMS.filter((a) => r.summary.some((x) => x.arms[a]));
  const others = arms.filter((a) => a !== 'direct');
  const hasCf = r.summary.some((x) => x.cForwardVsPlain !== undefined);
  const L: string[] = [
    `sysbench (${c.tables} tables × ${c.tableSize} rows, TLS arms with \`--mysql-ssl=on\`), ${c.durationS} s per arm, ${c.rounds} round${c.rounds === 1 ? '' : 's'}, arm order rotated every round${c.nativeWorkers ? `; native data plane with ${c.nativeWorkers} worker threads` : ''}.`,
    '',
    ...arms.map((a) => `- **${a}**: ${ARM_DESCRIPTIONS[a]}`),
    '',
    'tps = median over rounds; ratios are against direct TLS; spread = (max−min)/median across rounds; latencies in ms from sysbench\'s histogram',
    '(median over rounds); added = arm − direct; hop CPU = CPU of the proxy or forwarder process per query (user+system, all its threads).',
    '',
    `| test | threads | direct tps | ${others.map((a) => `${a}/direct`).join(' | ')}${hasCf ? ' | c-forward/plain' : ''} |`,
    `|---|---:|---:|${others.map(() => '---:|').join('')}${hasCf ? '---:|' : ''}`,
    ...r.summary.map((x) => `| ${x.test} | ${x.threads} | ${fmt(x.arms.direct?.tps, 0)} | ${others.map((a) => {
      const v = fmt(x.arms[a]?.vsDirect);
      return a === 'native' ? `**${v}**` : v;
    }).join(' | ')}${hasCf ? ` | ${fmt(x.cForwardVsPlain)}` : ''} |`),
  ];
  for (const x of r.summary) {
    L.push('', `**${x.test}, ${x.threads} thread${x.threads === 1 ? '' : 's'}**${x.cForwardVsPlain !== undefined ? ` (c-forward vs plain: ${fmt(x.cForwardVsPlain)}× tps, +${fmt(x.cForwardAddedP50Ms, 3)} ms p50)` : ''}`, '',
      '| arm | tps | vs direct | spread | p50 | p95 | p99 | added p50 | added p99 | hop CPU µs/query |',
      '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
    for (const a of arms) {
      const s = x.arms[a];
      if (!s) continue;
      const base = a === 'direct';
      L.push(`| ${a} | ${fmt(s.tps, 0)} | ${base ? '1' : `**${fmt(s.vsDirect)}**`} | ${pct(s.spread)} | ${fmt(s.p50Ms, 3)} | ${fmt(s.p95Ms, 3)} | ${fmt(s.p99Ms, 3)} | ${base ? '' : fmt(s.addedP50Ms, 3)} | ${base ? '' : fmt(s.addedP99Ms, 3)} | ${s.hopCpuUsPerQuery === undefined ? '' : fmt(s.hopCpuUsPerQuery, 1)} |`);
    }
  }
  return L;
}

const pct = (x: number) => `${(x * 100).toFixed(0)}%`;
