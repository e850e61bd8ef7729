/**
 * PostgreSQL endpoint benchmark: `pgbench -S` (select-only) through
 *   - proxy:     the cdbp PG endpoint (TLS terminated by the proxy, backend over the unix socket)
 *   - direct:    PostgreSQL's own TLS (ssl=on, same certificate) over TCP
 *   - pgbouncer: PgBouncer, client_tls_sslmode=require with the same certificate, session pooling,
 *                backend over the unix socket
 * all against the same private PostgreSQL, in the same run, alternating the order every round so
 * drift on this shared machine hits every target alike.
 *
 *   npx tsx bench/pg.ts [--duration S] [--clients 1,8,32] [--rounds N] [--scale N]
 *
 * Writes bench/results/pg-<date>.md and .json.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { parseFlags } from '../src/kernel/args.ts';
import { findBinary } from '../src/kernel/binaries.ts';
import { createLogger } from '../src/kernel/log.ts';
import { freePort, waitForListen } from '../src/kernel/net.ts';
import { lookupOsUser } from '../src/db/postgres-server.ts';
import { createPgProxy } from '../proxy/pg/index.ts';
import { startPrivatePostgres } from '../test/support/postgres.ts';
import { makeTestPki } from '../test/support/test-pki.ts';
import { tempDir } from '../test/support/tmp.ts';

const run = promisify(execFile);
type Target = 'proxy' | 'direct' | 'pgbouncer';

const { flags } = parseFlags(process.argv.slice(2), [], ['duration', 'clients', 'rounds', 'scale']);
if (flags.help) {
  console.log('npx tsx bench/pg.ts [--duration S] [--clients 1,8,32] [--rounds N] [--scale N]');
  process.exit(0);
}
const duration = Number(flags.duration ?? 10);
const clientCounts = String(flags.clients ?? '1,8,32').split(',').map(Number);
const rounds = Number(flags.rounds ?? 2);
const scale = Number(flags.scale ?? 5);

interface Sample { target: Target; clients: number; round: number; tps: number; latencyMs: number; failed: number }

async function pgbenchVersion(bin: string, args: string[] = ['--version']): Promise<string> {
  try {
    return (await run(bin, args)).stdout.split('\n')[0]!.trim();
  } catch (e) {
    return `unknown (${(e as Error).message})`;
  }
}

async function startPgbouncer(dir: string, pg: { socketDir: string; port: number }, tlsFiles: { certFile: string; keyFile: string }, password: string): Promise<{ port: number; child: ChildProcess }> {
  const port = await freePort();
  const ini = path.join(dir, 'pgbouncer.ini');
  const userlist = path.join(dir, 'userlist.txt');
  writeFileSync(userlist, `"app" "${password}"\n`, { mode: 0o600 });
  writeFileSync(ini, [
    '[databases]',
    `test = host=${pg.socketDir} port=${pg.port} dbname=test`,
    '[pgbouncer]',
    'listen_addr = 127.0.0.1',
    `listen_port = ${port}`,
    "unix_socket_dir = ''",
    'auth_type = scram-sha-256',
    `auth_file = ${userlist}`,
    'pool_mode = session',
    'max_client_conn = 500',
    'default_pool_size = 200',
    'client_tls_sslmode = require',
    `client_tls_cert_file = ${tlsFiles.certFile}`,
    `client_tls_key_file = ${tlsFiles.keyFile}`,
    `logfile = ${path.join(dir, 'pgbouncer.log')}`,
    'log_connections = 0',
    'log_disconnections = 0',
    '',
  ].join('\n'), { mode: 0o600 });
  // PgBouncer refuses to run as root, like PostgreSQL.
  const owner = process.getuid?.() === 0 ? lookupOsUser('postgres') : undefined;
  if (owner) for (const f of [dir, ini, userlist, tlsFiles.certFile, tlsFiles.keyFile]) chownSync(f, owner.uid, owner.gid);
  const child = spawn(findBinary('pgbouncer'), [ini], { stdio: 'ignore', ...(owner ?? {}) });
  await waitForListen({ host: '127.0.0.1', port }, 15_000, () => child.exitCode === null);
  return { port, child };
}

async function pgbench(port: number, clients: number, password: string): Promise<Omit<Sample, 'target' | 'round'>> {
  const { stdout } = await run(findBinary('pgbench'), [
    '-h', '127.0.0.1', '-p', String(port), '-U', 'app', '-S', '-n', '-T', String(duration),
    '-c', String(clients), '-j', String(Math.min(clients, 2)), 'test',
  ], { env: { ...process.env, PGPASSWORD: password, PGSSLMODE: 'require' }, maxBuffer: 16 * 1024 * 1024 });
  const tps = Number(/tps = ([\d.]+) \(without initial connection time\)/.exec(stdout)?.[1]);
  const latencyMs = Number(/latency average = ([\d.]+) ms/.exec(stdout)?.[1]);
  const failed = Number(/number of failed transactions: (\d+)/.exec(stdout)?.[1] ?? 0);
  if (!Number.isFinite(tps)) throw new Error(`could not parse pgbench output:\n${stdout}`);
  return { clients, tps, latencyMs, failed };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

async function main(): Promise<void> {
  const startedAt = new Date();
  const pki = makeTestPki();
  const work = tempDir('bench-pg');
  const files = pki.writeTo(work.path);
  const db = await startPrivatePostgres({
    tcp: true, tls: { certPem: pki.certPem, keyPem: pki.keyPem },
    hba: ['local all all scram-sha-256', 'hostssl all all 127.0.0.1/32 scram-sha-256'],
    extraConfig: ['max_connections = 300'],
    encrypted: false, // this standalone compares hops, not storage (bench/scenarios/pg.ts has the encrypted arm)
  });
  const password = db.accounts.scram.password;
  const bouncerDir = path.join(work.path, 'pgbouncer');
  mkdirSync(bouncerDir, { mode: 0o700 });
  chmodSync(work.path, 0o711); // PgBouncer runs unprivileged and must reach its own directory
  const proxy = createPgProxy({
    listen: { host: '127.0.0.1', port: 0 },
    backend: { socketDir: db.server.socketDir, port: db.server.port },
    tls: { keyPem: pki.keyPem, certPem: pki.certPem },
    log: createLogger({ name: 'bench-pg', level: 'warn' }),
  });
  let bouncer: { port: number; child: ChildProcess } | undefined;
  const samples: Sample[] = [];
  const load: number[][] = [os.loadavg()];
  try {
    const { port: proxyPort } = await proxy.listen();
    const bouncerFiles = { certFile: path.join(bouncerDir, 'cert.pem'), keyFile: path.join(bouncerDir, 'key.pem') };
    writeFileSync(bouncerFiles.certFile, pki.certPem);
    writeFileSync(bouncerFiles.keyFile, pki.keyPem, { mode: 0o600 });
    bouncer = await startPgbouncer(bouncerDir, { socketDir: db.server.socketDir, port: db.server.port }, bouncerFiles, password);
    const ports: Record<Target, number> = { proxy: proxyPort, direct: db.server.port, pgbouncer: bouncer.port };

    console.log(`pgbench -i -s ${scale} ...`);
    await run(findBinary('pgbench'), ['-h', '127.0.0.1', '-p', String(db.server.port), '-U', 'app', '-i', '-q', '-s', String(scale), 'test'],
      { env: { ...process.env, PGPASSWORD: password, PGSSLMODE: 'require' } });

    const targets: Target[] = ['proxy', 'direct', 'pgbouncer'];
    for (const clients of clientCounts) {
      for (let round = 1; round <= rounds; round++) {
        // rotate the order each round (A/B/C, B/C/A, ...)
        const order = targets.map((_, i) => targets[(i + round - 1) % targets.length]!);
        for (const target of order) {
          const s = await pgbench(ports[target], clients, password);
          samples.push({ target, round, ...s });
          console.log(`${target.padEnd(9)} c=${String(clients).padStart(3)} round ${round}: ${s.tps.toFixed(0)} tps, ${s.latencyMs} ms avg${s.failed ? `, ${s.failed} failed` : ''}`);
        }
      }
      load.push(os.loadavg());
    }
  } finally {
    await proxy.close();
    bouncer?.child.kill('SIGTERM');
    if (bouncer) await new Promise((r) => (bouncer!.child.exitCode !== null ? r(null) : bouncer!.child.once('exit', r)));
    await db.stop();
    work.remove();
  }

  const summary = clientCounts.map((clients) => {
    const row: Record<string, number> = { clients };
    for (const target of ['proxy', 'direct', 'pgbouncer'] as Target[]) {
      const xs = samples.filter((s) => s.target === target && s.clients === clients);
      row[`${target}Tps`] = Math.round(median(xs.map((s) => s.tps)));
      row[`${target}LatencyMs`] = Number(median(xs.map((s) => s.latencyMs)).toFixed(3));
    }
    row.proxyVsPgbouncer = Number((row.proxyTps! / row.pgbouncerTps!).toFixed(3));
    row.proxyVsDirect = Number((row.proxyTps! / row.directTps!).toFixed(3));
    return row;
  });

  const machine = {
    cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model ?? 'unknown', memGiB: Number((os.totalmem() / 2 ** 30).toFixed(1)),
    kernel: os.release(), loadavgDuring: load,
  };
  const versions = {
    node: process.version,
    postgres: await pgbenchVersion(findBinary('postgres')),
    pgbench: await pgbenchVersion(findBinary('pgbench')),
    pgbouncer: await pgbenchVersion(findBinary('pgbouncer'), ['--version']),
  };
  const result = {
    benchmark: 'pgbench -S (select-only), sslmode=require for every target',
    startedAt: startedAt.toISOString(), durationPerRunS: duration, rounds, scale, clientCounts,
    machine, versions, summary, samples,
    note: 'Shared 2-core machine with other jobs running; pgbench, PostgreSQL and the proxy compete for the same cores. Medians over rounds; treat differences under ~10% as noise.',
  };
  const stamp = startedAt.toISOString().slice(0, 16).replace(/[:T]/g, '-');
  const outDir = path.join(path.dirname(new URL(import.meta.url).pathname), 'results');
  mkdirSync(outDir, { recursive: true });
  writeFileSync(path.join(outDir, `pg-${stamp}.json`), JSON.stringify(result, null, 2) + '\n');
  const md = [
    `# PostgreSQL endpoint benchmark (${startedAt.toISOString()})`,
    '',
    `\`pgbench -S -n -T ${duration}\` (select-only, scale ${scale}), ${rounds} rounds per client count, target order rotated each round.`,
    'All targets use TLS (sslmode=require) with the same certificate; proxy and PgBouncer reach PostgreSQL over its unix socket.',
    '',
    `Machine: ${machine.cpus} × ${machine.cpuModel}, ${machine.memGiB} GiB, Linux ${machine.kernel}. Load average during the run: ${load.map((l) => l[0]!.toFixed(2)).join(' → ')}.`,
    `Versions: node ${versions.node}; ${versions.postgres}; ${versions.pgbench}; ${versions.pgbouncer}.`,
    '',
    '| clients | proxy tps | direct TLS tps | PgBouncer tps | proxy / PgBouncer | proxy / direct | latency ms (proxy / direct / PgBouncer) |',
    '|---:|---:|---:|---:|---:|---:|---|',
    ...summary.map((r) => `| ${r.clients} | ${r.proxyTps} | ${r.directTps} | ${r.pgbouncerTps} | ${r.proxyVsPgbouncer} | ${r.proxyVsDirect} | ${r.proxyLatencyMs} / ${r.directLatencyMs} / ${r.pgbouncerLatencyMs} |`),
    '',
    '## Every run',
    '',
    '| target | clients | round | tps | latency ms | failed |',
    '|---|---:|---:|---:|---:|---:|',
    ...samples.map((s) => `| ${s.target} | ${s.clients} | ${s.round} | ${s.tps.toFixed(0)} | ${s.latencyMs} | ${s.failed} |`),
    '',
    `Noise: ${result.note}`,
    '',
  ].join('\n');
  writeFileSync(path.join(outDir, `pg-${stamp}.md`), md);
  console.log(md);
}

await main();
