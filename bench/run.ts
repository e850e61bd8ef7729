/**
 * The benchmark entry point: every figure is a ratio against a baseline measured in the same run.
 *
 *   npx tsx bench/run.ts [--scenarios mysql,pg,storm,idle,freshness,cas,attest,cas-ha,inventory] [--duration 10] [--rounds 2] [--threads 1,8,32] ...
 *   (npx tsx bench/run.ts --help for every option)
 *
 * Starts what it needs (private MariaDB/PostgreSQL, PgBouncer, CAS, proxy processes, `cdbp up` stacks),
 * and writes bench/results/<date>.md and .json (plus <date>-mysql.svg when the mysql scenario ran).
 * A scenario that fails is recorded as not measured, and the others still run.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { execSync } from 'node:child_process';
import { parseArgs } from 'node:util';
import { machine, versions, loadNow, fmt, REPO, type ScenarioResult, type Machine } from './lib/common.ts';
import { runMysql, renderMysql, normalizeArms, DEFAULT_MYSQL_ARMS, REFERENCE_ARMS, MYSQL_ARMS, type MysqlArm, type MysqlCell } from './scenarios/mysql.ts';
import { runPg, renderPg, type PgCell, type PgWorkload } from './scenarios/pg.ts';
import { runStorm, renderStorm } from './scenarios/storm.ts';
import { runIdle, renderIdle, type IdleRow } from './scenarios/idle.ts';
import { runFreshness, renderFreshness, type FreshnessMode, type FreshnessSummary } from './scenarios/freshness.ts';
import { runCas, renderCas } from './scenarios/cas.ts';
import { runAttest, renderAttest } from './scenarios/attest.ts';
import { runCasHa, renderCasHa } from './scenarios/cas-ha.ts';
import { runInventory, renderInventory } from './scenarios/inventory.ts';
import { mysqlThroughputSvg } from './plot.ts';

export const SCENARIOS = ['mysql', 'pg', 'storm', 'idle', 'freshness', 'cas', 'attest', 'cas-ha', 'inventory'] as const;
export type ScenarioName = (typeof SCENARIOS)[number];

const HELP = `npx tsx bench/run.ts [options]
  --scenarios LIST        ${SCENARIOS.join(',')} (default: all)
  --duration S            seconds per arm for mysql, pg, storm, freshness (default 10)
  --rounds N              A/B rounds (default 2)
  --threads LIST          sysbench threads and pgbench clients (default 1,8,32)
  --tests LIST            sysbench tests (default oltp_point_select,oltp_read_only,oltp_read_write)
  --tables N --table-size N   sysbench data (default 4 × 10000)
  --mysql-arms LIST       ${MYSQL_ARMS.join(',')} (default ${DEFAULT_MYSQL_ARMS.join(',')}; direct always runs, it is the baseline)
  --mysql-reference       also the reference arms ${REFERENCE_ARMS.join(',')} (no TLS: MariaDB over plain TCP, and a bare C forwarder)
  --mysql-native-workers N   worker threads of the native data plane (default: the proxy's default)
  --pg-scale N            pgbench scale (default 5)
  --pg-workloads LIST     select-only,tpcb (default both)
  --storm-loops LIST      concurrent connect loops (default 1,8)
  --idle LIST             idle connection counts (default 1000,5000)
  --idle-active S         active-client seconds per step and arm (default 5)
  --thread-handling X     MariaDB thread_handling for idle (default one-thread-per-connection; or pool-of-threads)
  --freshness-modes LIST  strict,strict-ha,relaxed,off (default strict,relaxed,off; strict-ha = strict over cdbp up --ha)
  --freshness-threads LIST   sysbench threads for oltp_write_only (default 1,8)
  --freshness-pg-clients LIST  pgbench clients for the PostgreSQL arm (default 8; none = no PostgreSQL arm)
  --cas-clients LIST      concurrent attest clients (default 1,4,16)
  --cas-seconds S         seconds per CAS row (default: --duration)
  --cas-services N        also time N services' provisioning (~60 s for 6000; default 0 = reuse the committed figure)
  --inventory-gib LIST    data-directory sizes for the per-file freshness scan (default 1,5)
  --inventory-tables N    tables the inventory data is spread over (default 8)
  --profile               V8 CPU profiles of the proxy processes into bench/results/profiles/ (not committed)
  --out DIR               results directory (default bench/results)`;

const list = (s: string) => s.split(',').map((x) => x.trim()).filter(Boolean);
const nums = (s: string) => list(s).map(Number);

export interface BenchReport {
  date: string;
  command: string;
  commit: string;
  machine: Machine;
  versions: Record<string, string>;
  noise: string;
  targets: TargetRow[];
  scenarios: Partial<Record<ScenarioName, ScenarioResult<any, any>>>;
  failed: Partial<Record<ScenarioName, string>>;
}

export interface TargetRow { target: string; measured: string; met: boolean | null; detail: string }

/** Checks the issue's targets against whatever was measured; null = not measured in this run. */
export function evaluateTargets(s: BenchReport['scenarios']): TargetRow[] {
  const rows: TargetRow[] = [];
  // The MySQL verdicts are the native data plane's (the default); the Node plane's figure is shown beside it.
  const mysql = s.mysql?.summary as MysqlCell[] | undefined;
  const node = (c: MysqlCell, f: (a: NonNullable<MysqlCell['arms']['node']>) => string) => (c.arms.node ? ` (node ${f(c.arms.node)})` : '');
  const cellName = (c: MysqlCell) => c.test.replace('oltp_', '');
  const big = mysql?.filter((c) => c.threads >= 8 && c.arms.native) ?? [];
  if (big.length) {
    const ratio = (c: MysqlCell) => c.arms.native!.vsDirect;
    const worst = big.reduce((a, b) => (ratio(b) < ratio(a) ? b : a));
    const met = big.every((c) => ratio(c) >= 0.9);
    rows.push({ target: 'MariaDB through the proxy (native data plane) ≥ 0.9× direct TLS throughput at 8 and 32 threads', met,
      measured: big.map((c) => `${cellName(c)}@${c.threads}: ${fmt(ratio(c))}${node(c, (a) => fmt(a.vsDirect))}`).join(', '),
      detail: met ? 'met' : `missed: worst ${fmt(ratio(worst))}× (${worst.test}, ${worst.threads} threads), ${fmt((0.9 - ratio(worst)) * 100, 0)} points short` });
  } else rows.push({ target: 'MariaDB ≥ 0.9× direct at 8/32 threads (native data plane)', measured: 'not measured', met: null, detail: '' });
  const one = mysql?.filter((c) => c.threads === 1 && c.arms.native) ?? [];
  if (one.length) {
    const added = (c: MysqlCell) => c.arms.native!.addedP50Ms;
    const worst = one.reduce((a, b) => (added(b) > added(a) ? b : a));
    const met = one.every((c) => added(c) <= 0.1);
    rows.push({ target: 'added p50 ≤ 0.1 ms at 1 thread (native data plane)', met,
      measured: one.map((c) => `${cellName(c)}: +${fmt(added(c), 3)} ms${node(c, (a) => `+${fmt(a.addedP50Ms, 3)}`)}`).join(', '),
      detail: met ? 'met' : `missed by ${fmt(added(worst) - 0.1, 3)} ms (${worst.test})` });
  } else rows.push({ target: 'added p50 ≤ 0.1 ms at 1 thread (native data plane)', measured: 'not measured', met: null, detail: '' });
  const pg = s.pg?.summary as PgCell[] | undefined;
  if (pg?.length) {
    const worst = pg.reduce((a, b) => (b.proxyVsPgbouncer < a.proxyVsPgbouncer ? b : a));
    const met = pg.every((c) => c.proxyVsPgbouncer >= 1);
    rows.push({ target: 'PG through the proxy ≥ PgBouncer with TLS', met,
      measured: pg.map((c) => `${c.workload}@${c.clients}: ${fmt(c.proxyVsPgbouncer)}`).join(', '),
      detail: met ? 'met' : `missed: worst ${fmt(worst.proxyVsPgbouncer)}× (${worst.workload}, ${worst.clients} clients)` });
  } else rows.push({ target: 'PG proxy ≥ PgBouncer', measured: 'not measured', met: null, detail: '' });
  const fr = s.freshness?.summary as FreshnessSummary | undefined;
  const strict = fr?.cells.filter((c) => c.mode === 'strict' && Number.isFinite(c.vsOff)) ?? [];
  if (strict.length) {
    const worst = strict.reduce((a, b) => (b.vsOff < a.vsOff ? b : a));
    const met = strict.every((c) => c.vsOff >= 0.8);
    rows.push({ target: 'strict freshness ≥ 0.8× freshness-off write throughput', met,
      measured: strict.map((c) => `${c.threads} thr: ${fmt(c.vsOff)}`).join(', '),
      detail: met ? 'met' : `missed: worst ${fmt(worst.vsOff)}× at ${worst.threads} threads (${fmt(worst.sealsPerSecond, 1)} counter advances/s, ${fmt(worst.holdMeanMs)} ms mean hold)` });
  } else rows.push({ target: 'strict ≥ 0.8× off', measured: 'not measured', met: null, detail: '' });
  const idle = (s.idle?.summary as IdleRow[] | undefined)?.filter((r) => r.idle >= 5000) ?? [];
  if (idle.length) {
    const r = idle[idle.length - 1]!;
    rows.push({ target: '5,000 idle TLS connections under 500 MB proxy RSS', met: r.proxyRssMB < 500,
      measured: `${r.idle} idle: ${fmt(r.proxyRssMB, 1)} MB`, detail: r.proxyRssMB < 500 ? 'met' : `missed by ${fmt(r.proxyRssMB - 500, 0)} MB` });
  } else rows.push({ target: '5,000 idle under 500 MB', measured: 'not measured', met: null, detail: '' });
  return rows;
}

export function renderReport(r: BenchReport): string {
  const L: string[] = [
    `# Benchmark results ${r.date}`, '',
    `Machine: ${r.machine.cores} cores × ${r.machine.cpuModel}, ${r.machine.memGiB} GiB, Linux ${r.machine.kernel}. Commit ${r.commit}.`,
    `Versions: node ${r.versions.node}; ${r.versions.mariadb}; ${r.versions.postgres}; ${r.versions.pgbouncer}; sysbench ${r.versions.sysbench}.`,
    `Command: \`${r.command}\``, '',
    `**Noise:** ${r.noise}`, '',
    '## Targets', '',
    '| target | measured | verdict |', '|---|---|---|',
    ...r.targets.map((t) => `| ${t.target} | ${t.measured} | ${t.met === null ? 'not measured' : t.met ? '**met**' : `**${t.detail}**`} |`),
    '',
  ];
  const renderers: Record<ScenarioName, [string, (x: any) => string[]]> = {
    mysql: ['MariaDB: sysbench, proxy (native and Node data planes) vs direct TLS', renderMysql],
    pg: ['PostgreSQL: pgbench, proxy vs direct TLS vs PgBouncer', renderPg],
    storm: ['Connection storm: new TLS connections per second', renderStorm],
    idle: ['Scale: idle TLS connections, proxy RSS/CPU, active-client latency', renderIdle],
    freshness: ['Freshness: strict / relaxed / off write throughput', renderFreshness],
    cas: ['CAS: attest-and-provision', renderCas],
    attest: ['Attestation: SEV-SNP / TDX evidence verifications per second', renderAttest],
    'cas-ha': ['Replicated CAS: counter advance, 3 members vs 1 CAS', renderCasHa],
    inventory: ['Per-file freshness: data-file verification at start and sweep time per GiB', (x) => renderInventory(x).split('\n')],
  };
  for (const name of SCENARIOS) {
    const res = r.scenarios[name];
    const [title, render] = renderers[name];
    if (!res && !r.failed[name]) continue;
    L.push(`## ${title}`, '');
    if (r.failed[name]) {
      L.push(`**Not measured:** the scenario failed: ${r.failed[name]}`, '');
      continue;
    }
    L.push(`Ran ${res!.seconds} s from ${res!.startedAt}; load average (1 min) ${res!.loadBefore.load1} before → ${res!.loadAfter.load1} after.`, '');
    L.push(...render(res), '');
    for (const n of res!.notes) L.push(`- ${n}`);
    for (const u of res!.unmeasured) L.push(`- **Not measured:** ${u}`);
    if (res!.notes.length || res!.unmeasured.length) L.push('');
  }
  return L.join('\n');
}

async function main(): Promise<void> {
  const { values: v } = parseArgs({ options: {
    help: { type: 'boolean' }, profile: { type: 'boolean' },
    'mysql-arms': { type: 'string', default: DEFAULT_MYSQL_ARMS.join(',') }, 'mysql-reference': { type: 'boolean' },
    'mysql-native-workers': { type: 'string' },
    scenarios: { type: 'string', default: SCENARIOS.join(',') }, duration: { type: 'string', default: '10' },
    rounds: { type: 'string', default: '2' }, threads: { type: 'string', default: '1,8,32' },
    tests: { type: 'string', default: 'oltp_point_select,oltp_read_only,oltp_read_write' },
    tables: { type: 'string', default: '4' }, 'table-size': { type: 'string', default: '10000' },
    'pg-scale': { type: 'string', default: '5' }, 'pg-workloads': { type: 'string', default: 'select-only,tpcb' },
    'storm-loops': { type: 'string', default: '1,8' },
    idle: { type: 'string', default: '1000,5000' }, 'idle-active': { type: 'string', default: '5' },
    'thread-handling': { type: 'string', default: 'one-thread-per-connection' },
    'freshness-modes': { type: 'string', default: 'strict,relaxed,off' }, 'freshness-threads': { type: 'string', default: '1,8' }, 'freshness-pg-clients': { type: 'string', default: '8' },
    'inventory-gib': { type: 'string', default: '1,5' }, 'inventory-tables': { type: 'string', default: '8' },
    'cas-clients': { type: 'string', default: '1,4,16' }, 'cas-seconds': { type: 'string' }, 'cas-services': { type: 'string', default: '0' },
    out: { type: 'string', default: path.join(REPO, 'bench', 'results') },
  } });
  if (v.help) {
    console.log(HELP);
    return;
  }
  const chosen = list(v.scenarios!) as ScenarioName[];
  for (const c of chosen) if (!SCENARIOS.includes(c)) throw new Error(`unknown scenario ${c} (known: ${SCENARIOS.join(', ')})`);
  const mysqlArms = normalizeArms([...list(v['mysql-arms']!) as MysqlArm[], ...(v['mysql-reference'] ? REFERENCE_ARMS : [])]);
  const duration = Number(v.duration);
  const rounds = Number(v.rounds);
  const threads = nums(v.threads!);
  const log = (line: string) => console.error(`[${new Date().toISOString().slice(11, 19)} load ${loadNow().load1}] ${line}`);
  const started = new Date();
  const scenarios: BenchReport['scenarios'] = {};
  const failed: BenchReport['failed'] = {};
  const runners: Record<ScenarioName, () => Promise<ScenarioResult<any, any>>> = {
    mysql: () => runMysql({ tests: list(v.tests!), threads, durationS: duration, rounds, tables: Number(v.tables), tableSize: Number(v['table-size']),
      arms: mysqlArms, ...(v['mysql-native-workers'] ? { nativeWorkers: Number(v['mysql-native-workers']) } : {}), profile: !!v.profile, log }),
    pg: () => runPg({ workloads: list(v['pg-workloads']!) as PgWorkload[], clients: threads, durationS: duration, rounds, scale: Number(v['pg-scale']), log }),
    storm: () => runStorm({ concurrency: nums(v['storm-loops']!), durationS: duration, rounds, log }),
    idle: () => runIdle({ counts: nums(v.idle!), activeS: Number(v['idle-active']), idleS: 3, openConcurrency: 32,
      threadHandling: v['thread-handling'] as 'one-thread-per-connection' | 'pool-of-threads', log }),
    freshness: () => runFreshness({ modes: list(v['freshness-modes']!) as FreshnessMode[], threads: nums(v['freshness-threads']!), durationS: duration, rounds,
      tables: Number(v.tables), tableSize: Number(v['table-size']), profile: !!v.profile,
      pgClients: v['freshness-pg-clients'] === 'none' ? [] : nums(v['freshness-pg-clients']!), log }),
    cas: () => runCas({ clients: nums(v['cas-clients']!), seconds: Number(v['cas-seconds'] ?? duration), services: Number(v['cas-services']), concurrency: 8, log }),
    attest: () => runAttest({ seconds: Math.min(duration, 3), log }),
    'cas-ha': () => runCasHa({ seconds: duration, services: 8, rounds, log }),
    inventory: () => runInventory({ gib: nums(v['inventory-gib']!), tables: Number(v['inventory-tables']), log }),
  };
  for (const name of chosen) {
    log(`=== ${name}`);
    try {
      scenarios[name] = await runners[name]();
    } catch (e) {
      failed[name] = ((e as Error).message ?? String(e)).split('\n').slice(0, 6).join(' ');
      log(`${name} FAILED: ${failed[name]}`);
    }
  }
  let commit = 'unknown';
  try { commit = execSync('git rev-parse --short HEAD', { cwd: REPO }).toString().trim(); } catch { /* not a checkout */ }
  const report: BenchReport = {
    date: started.toISOString(), command: `npx tsx bench/run.ts ${process.argv.slice(2).join(' ')}`.trim(), commit,
    machine: machine(), versions: await versions(),
    noise: 'this 2-core machine is shared with other jobs (Docker builds, test runs) while the benchmark runs; the load average before/after each scenario is recorded. Both arms of every ratio ran interleaved in the same run, which cancels slow drift but not bursts: read ratios as ±0.1–0.2 and look at the spread columns.',
    targets: evaluateTargets(scenarios), scenarios, failed,
  };
  const stamp = started.toISOString().slice(0, 16).replace(/[:T]/g, '-');
  mkdirSync(v.out!, { recursive: true });
  const base = path.join(v.out!, stamp);
  const md = renderReport(report);
  writeFileSync(`${base}.json`, JSON.stringify(report, null, 2) + '\n');
  if (scenarios.mysql) {
    const m = report.machine;
    writeFileSync(`${base}-mysql.svg`, mysqlThroughputSvg(scenarios.mysql.summary as MysqlCell[],
      `${m.cores} × ${m.cpuModel}, shared (noisy); ${duration} s × ${rounds} rounds per arm; medians; ${report.date.slice(0, 10)}`));
  }
  writeFileSync(`${base}.md`, md + (scenarios.mysql ? `\n![sysbench throughput vs threads](${path.basename(base)}-mysql.svg)\n` : ''));
  console.log(md);
  log(`wrote ${path.relative(process.cwd(), base)}.md, .json${scenarios.mysql ? ', -mysql.svg' : ''}`);
  if (Object.keys(failed).length) process.exitCode = 1;
}

if (import.meta.url === `file://${process.argv[1]}` || process.argv[1]?.endsWith('bench/run.ts')) {
  await main();
}
