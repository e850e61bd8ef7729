/**
 * Smoke versions of every benchmark scenario (bench/run.ts): ~1 s per arm, 1 thread, tiny data. They check
 * that the harness works end to end — real MariaDB/PostgreSQL/PgBouncer/CAS/`cdbp up` stacks, results with
 * the expected fields and positive throughput — never the speed.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runMysql, type MysqlArmCell } from '../../bench/scenarios/mysql.ts';
import { runPg } from '../../bench/scenarios/pg.ts';
import { runStorm } from '../../bench/scenarios/storm.ts';
import { runIdle } from '../../bench/scenarios/idle.ts';
import { runFreshness } from '../../bench/scenarios/freshness.ts';
import { runCas } from '../../bench/scenarios/cas.ts';
import { evaluateTargets, renderReport, type BenchReport } from '../../bench/run.ts';
import { mysqlThroughputSvg } from '../../bench/plot.ts';
import { machine } from '../../bench/lib/common.ts';

const scenarios: BenchReport['scenarios'] = {};
const positive = (x: unknown, what: string) => assert.ok(typeof x === 'number' && Number.isFinite(x) && x > 0, `${what} = ${x} should be > 0`);

function commonFields(r: { scenario: string; startedAt: string; loadBefore: { load1: number }; loadAfter: { load1: number }; unmeasured: string[] }, name: string) {
  assert.equal(r.scenario, name);
  assert.ok(!Number.isNaN(Date.parse(r.startedAt)));
  assert.equal(typeof r.loadBefore.load1, 'number');
  assert.equal(typeof r.loadAfter.load1, 'number');
  assert.deepEqual(r.unmeasured, [], `nothing left unmeasured: ${r.unmeasured.join('; ')}`);
}

test('mysql: sysbench direct vs proxy (native and node data planes) vs the no-TLS references, every arm with ratio and percentiles', async () => {
  const r = await runMysql({ tests: ['oltp_point_select'], threads: [1], durationS: 1, rounds: 1, tables: 1, tableSize: 500,
    arms: ['native', 'node', 'plain', 'c-forward'] });
  commonFields(r, 'mysql');
  assert.deepEqual(r.runs.map((x) => x.arm).sort(), ['c-forward', 'direct', 'native', 'node', 'plain']);
  const [cell] = r.summary;
  assert.ok(cell);
  for (const arm of ['direct', 'native', 'node', 'plain', 'c-forward'] as const) {
    const a: MysqlArmCell | undefined = cell.arms[arm];
    assert.ok(a, `${arm} arm in the summary`);
    positive(a.tps, `${arm} tps`);
    positive(a.vsDirect, `${arm}/direct`);
    for (const k of ['p50Ms', 'p95Ms', 'p99Ms'] as const) positive(a[k], `${arm} ${k}`);
    assert.ok(a.p50Ms <= a.p99Ms);
    assert.equal(typeof a.addedP50Ms, 'number');
  }
  assert.equal(cell.arms.direct!.vsDirect, 1);
  // CPU per query belongs to the hop's own process: both proxies and the forwarder, never the direct arms.
  for (const arm of ['native', 'node'] as const) positive(cell.arms[arm]!.hopCpuUsPerQuery, `${arm} proxy CPU per query`);
  assert.equal(typeof cell.arms['c-forward']!.hopCpuUsPerQuery, 'number'); // clock-tick resolution: may read 0 in 1 s
  assert.equal(cell.arms.direct!.hopCpuUsPerQuery, undefined);
  positive(cell.cForwardVsPlain, 'c-forward/plain');
  scenarios.mysql = r;
});

test('pg: pgbench select-only and tpcb through proxy (plain and encrypted at rest), direct TLS and PgBouncer', async () => {
  const r = await runPg({ workloads: ['select-only', 'tpcb'], clients: [1], durationS: 1, rounds: 1, scale: 1 });
  commonFields(r, 'pg');
  assert.equal(r.runs.length, 8);
  for (const cell of r.summary) {
    for (const t of ['proxy', 'proxy-encrypted', 'direct', 'pgbouncer'] as const) positive(cell.tps[t], `${cell.workload} ${t} tps`);
    positive(cell.encryptedVsPlain, 'encrypted/plain');
    positive(cell.proxyVsPgbouncer, 'proxy/pgbouncer');
  }
  assert.deepEqual(r.summary.map((c) => c.workload), ['select-only', 'tpcb']);
  scenarios.pg = r;
});

test('storm: TLS connect + auth + SELECT 1 + close loops, direct vs proxy', async () => {
  const r = await runStorm({ concurrency: [1], durationS: 1, rounds: 1 });
  commonFields(r, 'storm');
  const [cell] = r.summary;
  assert.ok(cell);
  positive(cell.directPerSecond, 'direct conn/s');
  positive(cell.proxyPerSecond, 'proxy conn/s');
  assert.equal(cell.errors, 0);
  scenarios.storm = r;
});

test('idle: proxy RSS with idle TLS connections held (each with its MariaDB connection) and an active client meanwhile', async () => {
  const r = await runIdle({ counts: [20], activeS: 0.5, idleS: 0.5, openConcurrency: 8, threadHandling: 'one-thread-per-connection' });
  commonFields(r, 'idle');
  assert.deepEqual(r.summary.map((x) => x.idle), [0, 20]);
  for (const row of r.summary) {
    positive(row.proxyRssMB, 'proxy RSS');
    positive(row.mariadbRssMB, 'MariaDB RSS');
    positive(row.active.proxy.qps, 'active qps via proxy');
    positive(row.active.direct.p99Ms, 'active p99 direct');
  }
  scenarios.idle = r;
});

test('freshness: oltp_write_only through cdbp up stacks with strict, relaxed and off', async () => {
  // The PostgreSQL arm at its smallest (scale 1, 2 clients): the smoke test proves it runs, not how fast.
  const r = await runFreshness({ modes: ['strict', 'relaxed', 'off'], threads: [1], durationS: 2, rounds: 1, tables: 1, tableSize: 200, pgClients: [2], pgScale: 1 });
  commonFields(r, 'freshness');
  const cell = (m: string) => r.summary.cells.find((c) => c.mode === m)!;
  for (const m of ['strict', 'relaxed', 'off']) positive(cell(m).tps, `${m} tps`);
  // strict counts every commit: advances happen and acks were held; off never advances the counter.
  positive(cell('strict').sealsPerSecond, 'strict counter advances/s');
  positive(cell('strict').holdMeanMs, 'strict hold mean');
  assert.equal(cell('off').sealsPerSecond, 0);
  assert.equal(cell('off').vsOff, 1);
  assert.equal(typeof cell('relaxed').windowMaxMs, 'number');
  positive(r.summary.casAdvance?.advanceP50Ms, 'CAS advance p50');
  const pg = r.summary.pgCells ?? [];
  for (const w of ['select-only', 'tpcb']) for (const m of ['strict', 'off']) {
    positive(pg.find((c) => c.workload === w && c.mode === m)?.tps, `PostgreSQL ${w} ${m} tps`);
  }
  scenarios.freshness = r;
});

test('cas: attest-and-provision round trips; the 6000-service figure is reused and says so', async () => {
  const r = await runCas({ clients: [1], seconds: 1, services: 0, concurrency: 8 });
  commonFields(r, 'cas');
  positive(r.summary.throughput[0]?.perSecond, 'round trips/s');
  assert.match(r.summary.provisioning?.source ?? '', /^reused from bench\/results\//);
  assert.ok(r.notes.some((n) => /NOT measured in this run/.test(n)));
  scenarios.cas = r;
});

test('report: targets verdicts, markdown sections and the SVG plot from the smoke results', () => {
  const targets = evaluateTargets(scenarios);
  assert.equal(targets.length, 5);
  // The smoke run measures at 1 thread only: the 8/32-thread and 5000-idle targets are "not measured", never guessed.
  assert.equal(targets[0]!.met, null);
  assert.equal(targets[4]!.met, null);
  assert.equal(typeof targets[1]!.met, 'boolean');
  const md = renderReport({
    date: new Date().toISOString(), command: 'smoke', commit: 'test', machine: machine(), versions: { node: process.version, mariadb: 'm', postgres: 'p', pgbouncer: 'b', sysbench: 's', pgbench: 'pb' },
    noise: 'smoke', targets, scenarios, failed: {},
  });
  for (const h of ['## Targets', '## MariaDB', '## PostgreSQL', '## Connection storm', '## Scale', '## Freshness', '## CAS']) assert.ok(md.includes(h), `report has ${h}`);
  assert.match(md, /load average \(1 min\) [\d.]+ before → [\d.]+ after/);
  const svg = mysqlThroughputSvg(scenarios.mysql!.summary, 'smoke');
  assert.match(svg, /^<svg xmlns="http:\/\/www.w3.org\/2000\/svg"/);
  assert.equal((svg.match(/<polyline /g) ?? []).length, 5, 'one line per arm');
  for (const name of ['native data plane', 'Node data plane', 'C forwarder']) assert.ok(svg.includes(name), `legend has ${name}`);
  for (const arm of ['native', 'node', 'plain', 'c-forward']) assert.match(md, new RegExp(`\\| ${arm} \\| [\\d.]+ \\| \\*\\*[\\d.]+\\*\\*`), `report row for ${arm}`);
});
