/**
 * PostgreSQL endpoint benchmark, standalone: `pgbench -S` (select-only) through the proxy, PostgreSQL's
 * own TLS and PgBouncer, rotating the target order every round. It is the `pg` scenario of bench/run.ts
 * (bench/scenarios/pg.ts, helpers in bench/lib/pgbench.ts; it includes the gocryptfs-encrypted arm) with
 * its select-only workload and its own result files; `npx tsx bench/run.ts --scenarios pg` runs both
 * workloads in the combined report.
 *
 *   npx tsx bench/pg.ts [--duration S] [--clients 1,8,32] [--rounds N] [--scale N]
 *
 * Writes bench/results/pg-<date>.md and .json.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { parseFlags } from '../src/kernel/args.ts';
import { machine, versions, REPO } from './lib/common.ts';
import { runPg, renderPg } from './scenarios/pg.ts';

const { flags } = parseFlags(process.argv.slice(2), [], ['duration', 'clients', 'rounds', 'scale']);
if (flags.help) {
  console.log('npx tsx bench/pg.ts [--duration S] [--clients 1,8,32] [--rounds N] [--scale N]');
  process.exit(0);
}

const result = await runPg({
  workloads: ['select-only'],
  clients: String(flags.clients ?? '1,8,32').split(',').map(Number),
  durationS: Number(flags.duration ?? 10),
  rounds: Number(flags.rounds ?? 2),
  scale: Number(flags.scale ?? 5),
  log: (line) => console.log(line),
});
const m = machine();
const md = [
  `# PostgreSQL endpoint benchmark (${result.startedAt})`,
  '',
  ...renderPg(result),
  '',
  `Machine: ${m.cores} × ${m.cpuModel}, ${m.memGiB} GiB, Linux ${m.kernel}; load ${result.loadBefore.load1} → ${result.loadAfter.load1}.`,
  'Shared machine with other jobs running: treat differences under ~10% as noise.',
  '',
].join('\n');
const stamp = result.startedAt.slice(0, 16).replace(/[:T]/g, '-');
const outDir = path.join(REPO, 'bench', 'results');
mkdirSync(outDir, { recursive: true });
writeFileSync(path.join(outDir, `pg-${stamp}.json`), JSON.stringify({ ...result, machine: m, versions: await versions() }, null, 2) + '\n');
writeFileSync(path.join(outDir, `pg-${stamp}.md`), md);
console.log(md);
