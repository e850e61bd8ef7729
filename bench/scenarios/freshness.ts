/**
 * Freshness cost: sysbench `oltp_write_only` through the full proxy role (`cdbp up`: CAS, attestation,
 * keyring, managed MariaDB with innodb_flush_log_at_trx_commit=1, freshness guard) with strict / relaxed /
 * off, one stack per mode started side by side so arms can alternate. From each stack's /metrics: counter
 * advances (cdbp_freshness_seals_total) per second and the ack hold time (cdbp_freshness_hold_seconds);
 * for relaxed, the measured window (age of the last counted epoch, sampled while writes flow).
 *
 * The PostgreSQL arm (issue 17): the same stacks run with `--postgres`, and pgbench `-S` and tpcb-like
 * (8 clients by default) go through the PostgreSQL proxy of each mode, interleaved the same way.
 */
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { readFileSync } from 'node:fs';
import { startStack, connectThroughProxy, type RunningStack } from '../../test/support/stack.ts';
import { tempDir } from '../../test/support/tmp.ts';
import { scenario, median, spread, round, fmt, durableReplaceMs, REPO, type ScenarioResult } from '../lib/common.ts';
import { prepare, runSysbench } from '../lib/sysbench.ts';
import { scrape, histogramDelta, cumulativeQuantile } from '../lib/prometheus.ts';
import { measureCasAdvance, type CasAdvanceLatency } from '../lib/cas-advance.ts';
import { pgbenchAt, pgbenchInit, type PgWorkload, type PgbenchTarget } from '../lib/pgbench.ts';
import pg from 'pg';

/** 'strict-ha': strict freshness over the replicated CAS (`cdbp up --ha`: 3 members, counters by majority, issue 20). */
export type FreshnessMode = 'strict' | 'strict-ha' | 'bounded' | 'relaxed' | 'off';
export interface FreshnessOptions {
  modes: FreshnessMode[]; threads: number[]; durationS: number; rounds: number; tableSize: number; tables: number;
  /** V8 CPU profiles of the CAS and proxy processes (CDBP_CPU_PROF_DIR, cli/commands/up.ts) into bench/results/profiles/freshness-<mode>. */
  profile?: boolean;
  /** PostgreSQL arm: pgbench client counts (default [8]; [] = no PostgreSQL arm) and workloads (default -S and tpcb-like). */
  pgClients?: number[];
  pgWorkloads?: PgWorkload[];
  /** pgbench scale for the PostgreSQL arm (default 10: ten branches, so tpcb-like is not one hot row). */
  pgScale?: number;
  log?: (line: string) => void;
}
export interface FreshnessRun {
  /** 'oltp_write_only' (MariaDB, sysbench) or a pgbench workload (PostgreSQL); threads = pgbench clients there. */
  workload?: 'oltp_write_only' | PgWorkload;
  mode: FreshnessMode; threads: number; round: number; seconds: number; tps: number; p50Ms: number; p99Ms: number; errors: number;
  seals: number; sealsPerSecond: number; holds: number; holdMeanMs: number; holdP50Ms: number; holdP99Ms: number;
  /** relaxed: largest time writes went uncounted (age of the last counted epoch, capped at time since the run began; sampled every 100 ms). */
  windowMaxMs?: number;
  /** CPU (user+system) of the stack's processes during the run, ms. */
  cpuMs: { cas: number; proxy: number; mariadb: number };
}
export interface FreshnessCell {
  workload?: FreshnessRun['workload'];
  mode: FreshnessMode; threads: number; tps: number; vsOff: number; spread: number; p50Ms: number; p99Ms: number;
  sealsPerSecond: number; holdMeanMs: number; holdP50Ms: number; holdP99Ms: number; writesPerSeal: number; windowMaxMs?: number;
  /** CAS CPU per counter advance, ms; proxy and MariaDB CPU share of the run, in cores. */
  casCpuMsPerAdvance: number; proxyCores: number; casCores: number; mariadbCores: number;
}
export interface FreshnessSummary {
  /** MariaDB oltp_write_only (what bench/run.ts's target row reads). */
  cells: FreshnessCell[];
  /** PostgreSQL pgbench cells. */
  pgCells?: FreshnessCell[];
  durableReplaceMs: number; sealIntervalMs: number; casAdvance?: CasAdvanceLatency;
  load?: { before: number; after: number };
}

export function runFreshness(o: FreshnessOptions): Promise<ScenarioResult<FreshnessSummary, FreshnessRun>> {
  const log = o.log ?? (() => undefined);
  return scenario('freshness', { ...o, log: undefined }, async ({ notes, unmeasured }) => {
    const work = tempDir('bench-fresh');
    const pgClients = o.pgClients ?? [8];
    const pgWorkloads = o.pgWorkloads ?? ['select-only', 'tpcb'];
    const withPg = pgClients.length > 0 && pgWorkloads.length > 0;
    const pgTargets = new Map<FreshnessMode, PgbenchTarget>();
    const load0 = loadAverage();
    const stacks = new Map<FreshnessMode, RunningStack>();
    const runs: FreshnessRun[] = [];
    let durableMs = NaN;
    try {
      for (const mode of o.modes) {
        const dir = path.join(work.path, mode);
        mkdirSync(dir);
        log(`freshness: cdbp up --freshness ${mode}`);
        const profDir = path.join(REPO, 'bench', 'results', 'profiles', `freshness-${mode}`);
        if (o.profile) mkdirSync(profDir, { recursive: true });
        const s = await startStack(dir, [...(mode === 'strict-ha' ? ['--freshness', 'strict', '--ha'] : ['--freshness', mode]), ...(withPg ? ['--postgres'] : [])],
          { CDBP_LOG_LEVEL: 'warn', ...(o.profile ? { CDBP_CPU_PROF_DIR: profDir } : {}) }, 180_000);
        stacks.set(mode, s);
        const conn = await connectThroughProxy(s.stack);
        try { await conn.query('CREATE DATABASE IF NOT EXISTS sbtest'); } finally { await conn.end(); }
        await prepare(target(s, work.path, mode, o));
        if (withPg) {
          const p = s.stack.postgres!;
          const t: PgbenchTarget = { host: p.host, port: p.port, user: p.user, password: p.password, db: 'bench' };
          const c = new pg.Client({ host: p.host, port: p.port, user: p.user, password: p.password, database: 'postgres',
            ssl: { ca: readFileSync(s.stack.caFile, 'utf8'), rejectUnauthorized: true } });
          await c.connect();
          try { await c.query('CREATE DATABASE bench'); } finally { await c.end(); }
          log(`freshness: pgbench -i -s ${o.pgScale ?? 10} through the ${mode} PostgreSQL proxy`);
          await pgbenchInit(t, o.pgScale ?? 10);
          pgTargets.set(mode, t);
        }
      }
      durableMs = await durableReplaceMs(work.path);
      for (let r = 1; r <= o.rounds; r++) {
        for (const threads of o.threads) {
          const order = r % 2 === 1 ? o.modes : [...o.modes].reverse();
          for (const mode of order) {
            const s = stacks.get(mode)!;
            runs.push(await measureArm(s, mode, threads, r, 'oltp_write_only',
              () => runSysbench(target(s, work.path, mode, o), 'oltp_write_only', { threads, durationS: o.durationS })));
          }
        }
        if (!withPg) continue;
        for (const workload of pgWorkloads) {
          for (const clients of pgClients) {
            const order = r % 2 === 1 ? o.modes : [...o.modes].reverse();
            for (const mode of order) {
              const s = stacks.get(mode)!;
              runs.push(await measureArm(s, mode, clients, r, workload, async () => {
                const res = await pgbenchAt(pgTargets.get(mode)!, workload, clients, o.durationS);
                return { tps: res.tps, p50Ms: res.latencyMs, p99Ms: NaN, errors: res.failed };
              }));
            }
          }
        }
      }
    } finally {
      for (const s of stacks.values()) await s.stop();
      work.remove();
    }
    const load1 = loadAverage();

    /** One arm: the workload against one stack, with its proxy's freshness metrics and the processes' CPU. */
    async function measureArm(s: RunningStack, mode: FreshnessMode, threads: number, r: number, workload: NonNullable<FreshnessRun['workload']>,
      go: () => Promise<{ tps: number; p50Ms: number; p99Ms: number; errors: number }>): Promise<FreshnessRun> {
      const isPg = workload !== 'oltp_write_only';
      const metricsUrl = `${isPg ? s.stack.postgres!.ops.url : s.stack.ops.url}/metrics`;
      const before = await scrape(metricsUrl);
      let windowMaxMs = 0;
      let sampling = mode === 'relaxed' || mode === 'bounded';
      const pids = stackPids(s, isPg ? 'postgres' : 'mariadb');
      const cpuOf = (): { cas: number; proxy: number; mariadb: number } => ({
        cas: pids.cas.length > 0 ? pids.cas.reduce((a, p) => a + procCpuMs(p), 0) : NaN, proxy: procCpuMs(pids.proxy), mariadb: procCpuMs(pids.mariadb),
      });
      const cpu0 = cpuOf();
      const t0 = performance.now();
      const sampler = (async () => {
        while (sampling) {
          const age = (await scrape(metricsUrl).catch(() => new Map<string, number>())).get('cdbp_freshness_last_seal_age_seconds');
          // Before the first seal of this run, writes have been uncounted only since the run began.
          if (age !== undefined) windowMaxMs = Math.max(windowMaxMs, Math.min(age * 1000, performance.now() - t0));
          await new Promise((res) => setTimeout(res, 100));
        }
      })();
      const res = await go().finally(() => { sampling = false; });
      const seconds = (performance.now() - t0) / 1000;
      const cpu1 = cpuOf();
      await sampler;
      const after = await scrape(metricsUrl);
      const seals = (after.get('cdbp_freshness_seals_total') ?? 0) - (before.get('cdbp_freshness_seals_total') ?? 0);
      const hold = histogramDelta(before, after, 'cdbp_freshness_hold_seconds');
      const row: FreshnessRun = {
        workload, mode, threads, round: r, tps: res.tps, p50Ms: res.p50Ms, p99Ms: res.p99Ms, errors: res.errors,
        seals, sealsPerSecond: round(seals / seconds, 1), holds: hold.count,
        holdMeanMs: hold.count > 0 ? round((hold.sum / hold.count) * 1000, 2) : NaN,
        holdP50Ms: cumulativeQuantile(hold, 0.5) * 1000, holdP99Ms: cumulativeQuantile(hold, 0.99) * 1000,
        ...(mode === 'relaxed' || mode === 'bounded' ? { windowMaxMs: round(windowMaxMs, 0) } : {}),
        cpuMs: { cas: cpu1.cas - cpu0.cas, proxy: cpu1.proxy - cpu0.proxy, mariadb: cpu1.mariadb - cpu0.mariadb },
        seconds: round(seconds, 2),
      };
      log(`freshness r${r} ${workload} t=${threads} ${mode.padEnd(7)} tps=${res.tps.toFixed(1)} seals/s=${row.sealsPerSecond} hold mean=${fmt(row.holdMeanMs)}ms p99≤${fmt(row.holdP99Ms)}ms${row.windowMaxMs !== undefined ? ` window max=${row.windowMaxMs}ms` : ''}`);
      return row;
    }
    // After the stacks are gone, so it measures the CAS alone.
    let casAdvance: CasAdvanceLatency | undefined;
    try {
      casAdvance = await measureCasAdvance(o.durationS >= 5 ? 100 : 20);
      notes.push(`CAS counter in isolation (fresh CAS, sequential, ${casAdvance.samples} samples): advance p50 ${casAdvance.advanceP50Ms} ms / p90 ${casAdvance.advanceP90Ms} ms; read p50 ${casAdvance.readP50Ms} ms — the difference is the CAS's one durable step per advance (counter-log append + anchor slot, fdatasync'ed in parallel, shared by every advance in the batch), not the HTTPS round trip.`);
    } catch (e) {
      unmeasured.push(`CAS advance latency in isolation: ${(e as Error).message}`);
    }
    notes.push('Each mode is its own `cdbp up` stack (CAS + proxy + managed MariaDB with the keyring and innodb_flush_log_at_trx_commit=1), all on this machine.');
    notes.push(`Durable replace (tmp write → fsync → rename → fsync dir) in the stacks' file system: median ${fmt(durableMs, 3)} ms. A counter advance pays none of them since issue 17: the proxy writes nothing durable, the CAS appends to its group-committed counter log (one fdatasync per batch, with the anchor slot synced in parallel); plus one frame each way on the persistent counter channel (pipelined: up to 4 advances in flight) and a position query.`);
    notes.push(`Load average (1 min) ${load0} before the stacks started, ${load1} after the last arm: the 2-core machine is shared; read every ratio with its spread.`);
    const mdb = summarizeFreshness(runs.filter((x) => (x.workload ?? 'oltp_write_only') === 'oltp_write_only'), durableMs);
    const pgCells = withPg ? pgWorkloads.flatMap((w) => summarizeFreshness(runs.filter((x) => x.workload === w), durableMs).cells.map((c) => ({ ...c, workload: w }))) : undefined;
    return { summary: { ...mdb, ...(pgCells ? { pgCells } : {}), load: { before: load0, after: load1 }, ...(casAdvance ? { casAdvance } : {}) }, runs };
  });
}

function loadAverage(): number {
  return Number(readFileSafe('/proc/loadavg').split(' ')[0]);
}

/**
 * The stack's CAS and the proxy of `engine` (children of `cdbp up`) and its mariadbd (the PostgreSQL
 * arm leaves the database column empty: its CPU is spread over per-connection backends).
 */
/** The stack's processes; `cas` lists every CAS process (3 members with --ha: their CPU is summed). */
function stackPids(s: RunningStack, engine: 'mariadb' | 'postgres'): { cas: number[]; proxy: number; mariadb: number } {
  const out = { cas: [] as number[], proxy: NaN, mariadb: engine === 'mariadb' ? s.stack.mariadb.pid ?? NaN : NaN };
  let children: string[] = [];
  try {
    children = readFileSync(`/proc/${s.proc.pid}/task/${s.proc.pid}/children`, 'utf8').trim().split(/\s+/);
  } catch { /* no /proc children list: CPU columns stay n/a */ }
  for (const c of children) {
    const argv = readFileSafe(`/proc/${c}/cmdline`).split('\0');
    if (argv.includes('cas')) out.cas.push(Number(c));
    else if (argv.includes('proxy') && readFileSafe(`/proc/${c}/environ`).split('\0').includes('CDBP_ENGINE=postgres') === (engine === 'postgres')) out.proxy = Number(c);
  }
  return out;
}

function readFileSafe(f: string): string {
  try { return readFileSync(f, 'utf8'); } catch { return ''; }
}

/** user+system CPU of a process from /proc/<pid>/stat, ms (NaN if unknown). */
function procCpuMs(pid: number): number {
  const stat = readFileSafe(`/proc/${pid}/stat`);
  if (!stat) return NaN;
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100; // utime, stime in USER_HZ (100)
}


function target(s: RunningStack, root: string, mode: string, o: FreshnessOptions) {
  const cwd = path.join(root, `sysbench-${mode}`);
  mkdirSync(cwd, { recursive: true });
  return {
    host: s.stack.mysql.host, port: s.stack.mysql.port, user: s.stack.admin.user, password: s.stack.admin.password, db: 'sbtest',
    caPem: readFileSync(s.stack.caFile, 'utf8'), cwd, tables: o.tables, tableSize: o.tableSize,
  };
}

export function summarizeFreshness(runs: FreshnessRun[], durableReplaceMs: number): FreshnessSummary {
  const cells: FreshnessCell[] = [];
  for (const threads of [...new Set(runs.map((r) => r.threads))]) {
    const offTps = median(runs.filter((r) => r.threads === threads && r.mode === 'off').map((r) => r.tps));
    for (const mode of [...new Set(runs.map((r) => r.mode))]) {
      const rs = runs.filter((r) => r.threads === threads && r.mode === mode);
      const tps = median(rs.map((r) => r.tps));
      const sealsPerSecond = median(rs.map((r) => r.sealsPerSecond));
      const windows = rs.map((r) => r.windowMaxMs).filter((x): x is number => x !== undefined);
      cells.push({
        mode, threads, tps: round(tps, 1), vsOff: round(tps / offTps, 3), spread: round(spread(rs.map((r) => r.tps)), 3),
        p50Ms: median(rs.map((r) => r.p50Ms)), p99Ms: median(rs.map((r) => r.p99Ms)),
        sealsPerSecond, holdMeanMs: round(median(rs.map((r) => r.holdMeanMs)), 2),
        holdP50Ms: median(rs.map((r) => r.holdP50Ms)), holdP99Ms: median(rs.map((r) => r.holdP99Ms)),
        // Only where acks were held: a read-only workload's seals are the idle seal, not commits.
        writesPerSeal: sealsPerSecond > 0 && rs.some((x) => x.holds > 0) ? round(tps / sealsPerSecond, 1) : NaN,
        ...(windows.length ? { windowMaxMs: Math.max(...windows) } : {}),
        casCpuMsPerAdvance: round(median(rs.map((r) => (r.seals > 0 ? r.cpuMs.cas / r.seals : NaN)).filter(Number.isFinite)), 2),
        proxyCores: round(median(rs.map((r) => r.cpuMs.proxy / 1000 / r.seconds)), 2),
        casCores: round(median(rs.map((r) => r.cpuMs.cas / 1000 / r.seconds)), 2),
        mariadbCores: round(median(rs.map((r) => r.cpuMs.mariadb / 1000 / r.seconds)), 2),
      });
    }
  }
  return { cells, durableReplaceMs, sealIntervalMs: 1000 };
}

export function renderFreshness(r: ScenarioResult<FreshnessSummary, FreshnessRun>): string[] {
  const c = r.config as unknown as FreshnessOptions;
  return [
    `sysbench \`oltp_write_only\` (${c.tables} tables × ${c.tableSize} rows, TLS through the proxy of a full \`cdbp up\` stack), ${c.durationS} s per arm, ${c.rounds} rounds, mode order reversed every round.`,
    'vs off = tps / tps of freshness=off at the same thread count. Counter advances/s = cdbp_freshness_seals_total delta / run time.',
    'Hold = cdbp_freshness_hold_seconds (time a COMMIT\'s OK waited for a counted epoch; p50/p99 are histogram bucket upper bounds).',
    `Window (relaxed) = largest age of the last counted epoch sampled every 100 ms during the run (seal interval ${r.summary.sealIntervalMs} ms).`,
    '',
    'CPU columns: cores used (CPU seconds / wall seconds) by the stack\'s proxy, CAS and mariadbd during the arm, from /proc; CAS ms/advance = CAS CPU / advances.',
    '',
    '| mode | threads | tps | vs off | spread | p50 / p99 ms | counter advances/s | commits per advance | hold mean ms | hold p50 / p99 ms (≤) | relaxed window max ms | cores proxy / CAS / mariadbd | CAS CPU ms/advance |',
    '|---|---:|---:|---:|---:|---|---:|---:|---:|---|---:|---|---:|',
    ...r.summary.cells.map((x) => `| ${x.mode} | ${x.threads} | ${fmt(x.tps, 1)} | **${fmt(x.vsOff)}** | ${(x.spread * 100).toFixed(0)}% | ${fmt(x.p50Ms)} / ${fmt(x.p99Ms)} | ${fmt(x.sealsPerSecond, 1)} | ${fmt(x.writesPerSeal, 1)} | ${fmt(x.holdMeanMs)} | ${fmt(x.holdP50Ms, 1)} / ${fmt(x.holdP99Ms, 1)} | ${x.windowMaxMs !== undefined ? x.windowMaxMs : '–'} | ${fmt(x.proxyCores)} / ${fmt(x.casCores)} / ${fmt(x.mariadbCores)} | ${fmt(x.casCpuMsPerAdvance)} |`),
    ...(r.summary.pgCells?.length ? [
      '',
      `PostgreSQL: pgbench through the PostgreSQL proxy of the same stacks (\`cdbp up --postgres\`, scale ${c.pgScale ?? 10}), ${c.durationS} s per arm, same rounds, mode order reversed every round. Latency = pgbench's average; "commits per advance" for \`-S\` is n/a when nothing was held (reads are never held).`,
      '',
      '| workload | mode | clients | tps | vs off | spread | latency avg ms | counter advances/s | commits per advance | hold mean ms | hold p50 / p99 ms (≤) | cores proxy / CAS | CAS CPU ms/advance |',
      '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|',
      ...r.summary.pgCells.map((x) => `| ${x.workload === 'select-only' ? 'pgbench -S' : 'tpcb-like'} | ${x.mode} | ${x.threads} | ${fmt(x.tps, 1)} | **${fmt(x.vsOff)}** | ${(x.spread * 100).toFixed(0)}% | ${fmt(x.p50Ms)} | ${fmt(x.sealsPerSecond, 1)} | ${fmt(x.writesPerSeal, 1)} | ${fmt(x.holdMeanMs)} | ${fmt(x.holdP50Ms, 1)} / ${fmt(x.holdP99Ms, 1)} | ${fmt(x.proxyCores)} / ${fmt(x.casCores)} | ${fmt(x.casCpuMsPerAdvance)} |`),
    ] : []),
    '',
    'Issue 17 targets (strict / off in the same run):',
    '',
    ...issue17Targets(r.summary).map((t) => `- ${t}`),
  ];
}

/** The issue's "done when" figures, each with its verdict (met / missed / not measured). */
export function issue17Targets(s: FreshnessSummary): string[] {
  const verdict = (v: number | undefined, ok: (v: number) => boolean) => (v === undefined || !Number.isFinite(v) ? 'not measured' : ok(v) ? 'met' : '**missed**');
  const strict = (cells: FreshnessCell[] | undefined, threads: number, workload?: string) =>
    cells?.find((c) => c.mode === 'strict' && c.threads === threads && (workload === undefined || c.workload === workload));
  const out: string[] = [];
  for (const [threads, min] of [[1, 0.5], [8, 0.8], [32, 0.9]] as const) {
    const c = strict(s.cells, threads);
    out.push(`MariaDB oltp_write_only strict/off ≥ ${min} at ${threads} thread(s): ${c ? fmt(c.vsOff) : '–'} (spread ${c ? (c.spread * 100).toFixed(0) : '–'}%) — ${verdict(c?.vsOff, (v) => v >= min)}`);
  }
  for (const [workload, min, name] of [['select-only', 0.95, 'pgbench -S'], ['tpcb', 0.8, 'pgbench tpcb-like']] as const) {
    const c = strict(s.pgCells, 8, workload);
    out.push(`PostgreSQL ${name} strict/off ≥ ${min} at 8 clients: ${c ? fmt(c.vsOff) : '–'} — ${verdict(c?.vsOff, (v) => v >= min)}`);
  }
  const m8 = strict(s.cells, 8);
  out.push(`seal (ack hold) p50 ≤ 1 ms, p99 ≤ 5 ms at 8 threads: p50 ≤ ${m8 ? fmt(m8.holdP50Ms, 1) : '–'} ms, p99 ≤ ${m8 ? fmt(m8.holdP99Ms, 1) : '–'} ms (histogram bucket bounds) — ${verdict(m8?.holdP50Ms, (v) => v <= 1)} / ${verdict(m8?.holdP99Ms, (v) => v <= 5)}`);
  const cpu = [...s.cells, ...(s.pgCells ?? [])].filter((c) => c.mode === 'strict' && Number.isFinite(c.casCpuMsPerAdvance) && Number.isFinite(c.writesPerSeal));
  const worst = cpu.length ? Math.max(...cpu.map((c) => c.casCpuMsPerAdvance)) : undefined;
  out.push(`CAS CPU per advance ≤ 0.2 ms (strict arms, whole CAS process): ${cpu.map((c) => `${c.workload ?? 'oltp'}@${c.threads}: ${fmt(c.casCpuMsPerAdvance)}`).join(', ') || '–'} — ${verdict(worst, (v) => v <= 0.2)}`);
  out.push(`commits per advance (strict): ${[...s.cells, ...(s.pgCells ?? [])].filter((c) => c.mode === 'strict').map((c) => `${c.workload ?? 'oltp'}@${c.threads}: ${fmt(c.writesPerSeal, 1)}`).join(', ')}`);
  return out;
}
