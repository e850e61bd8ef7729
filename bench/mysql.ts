/**
 * MySQL endpoint benchmark: sysbench through the proxy vs a direct TLS connection to the same MariaDB,
 * in the same run, in alternating rounds (the machine is shared, so A/B interleaving + medians + the
 * spread across rounds are what make the ratio meaningful).
 *
 *   npx tsx bench/mysql.ts [--duration S] [--threads 1,8,32] [--rounds N] [--workers 1,2]
 *                          [--tests oltp_point_select,oltp_read_write] [--gate] [--profile]
 *
 * Arms: direct (sysbench → MariaDB TCP+TLS), proxy-wN (sysbench → proxy TLS → MariaDB unix socket, N
 * node:cluster workers sharing the listening handle), and with --gate proxy-wN-gate (a pass-through
 * AckGate, to price the packet tracker). Writes bench/results/mysql-<date>.md and .json.
 */
import cluster from 'node:cluster';
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { median } from './lib/common.ts';

if (cluster.isWorker) {
  await runWorker();
} else {
  await main();
}

async function runWorker(): Promise<void> {
  const { createMysqlProxy } = await import('../proxy/mysql/index.ts');
  const { createLogger } = await import('../src/kernel/log.ts');
  const env = process.env;
  const proxy = createMysqlProxy({
    listen: { host: '127.0.0.1', port: Number(env.BENCH_PORT) },
    backend: { socket: env.BENCH_SOCKET! },
    tls: { keyPem: env.BENCH_KEY!, certPem: env.BENCH_CERT! },
    log: createLogger({ name: 'bench-proxy', level: 'warn' }),
    ...(env.BENCH_GATE === '1' ? { ackGate: { holdAck: () => undefined } } : {}),
  });
  await proxy.listen();
  process.send?.('ready');
  process.on('message', async (m) => {
    if (m === 'stop') {
      const cpu = process.cpuUsage();
      process.send?.({ cpuUs: cpu.user + cpu.system });
      await proxy.close();
      process.exit(0);
    }
  });
}

interface ArmResult { arm: string; test: string; threads: number; round: number; tps: number; qps: number; p95: number; avg: number; errors: number }

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      duration: { type: 'string', default: '10' },
      threads: { type: 'string', default: '1,8,32' },
      rounds: { type: 'string', default: '2' },
      workers: { type: 'string', default: '1,2' },
      tests: { type: 'string', default: 'oltp_point_select,oltp_read_write' },
      'table-size': { type: 'string', default: '10000' },
      gate: { type: 'boolean', default: false },
      profile: { type: 'boolean', default: false },
    },
  });
  const duration = Number(values.duration);
  const threadsList = values.threads!.split(',').map(Number);
  const rounds = Number(values.rounds);
  const workersList = values.workers!.split(',').map(Number);
  const tests = values.tests!.split(',');
  const tableSize = Number(values['table-size']);

  const { startTlsMariadb } = await import('./lib/mariadb-tls.ts');
  const { prepareSysbench, runSysbench } = await import('../test/support/sysbench.ts');
  const { freePort } = await import('../src/kernel/net.ts');

  console.error('starting MariaDB (TCP+TLS and unix socket)...');
  const tls = await startTlsMariadb(['thread_handling=one-thread-per-connection']);
  const { db, pki, work } = tls;
  const results: ArmResult[] = [];
  const proxyCpu: { arm: string; round: number; cpuUsPerQuery: number }[] = [];
  const proxyPort = await freePort();
  let stopProxy: (() => Promise<number>) | undefined;

  async function startProxy(workers: number, gate: boolean): Promise<void> {
    cluster.setupPrimary({
      execArgv: [...process.execArgv, ...(values.profile ? ['--cpu-prof', `--cpu-prof-dir=${path.resolve('bench/results/profiles')}`] : [])],
    });
    const env = {
      BENCH_PORT: String(proxyPort), BENCH_SOCKET: db.server.socket, BENCH_KEY: pki.keyPem, BENCH_CERT: pki.certPem,
      BENCH_GATE: gate ? '1' : '0',
    };
    const ws = Array.from({ length: workers }, () => cluster.fork(env));
    await Promise.all(ws.map((w) => new Promise<void>((resolve, reject) => {
      w.once('message', (m) => (m === 'ready' ? resolve() : reject(new Error(String(m)))));
      w.once('exit', (code) => reject(new Error(`proxy worker exited ${code}`)));
    })));
    stopProxy = async () => {
      let cpuUs = 0;
      await Promise.all(ws.map((w) => new Promise<void>((resolve) => {
        w.removeAllListeners('exit');
        w.on('message', (m: any) => { if (m && typeof m.cpuUs === 'number') cpuUs += m.cpuUs; });
        w.once('exit', () => resolve());
        w.send('stop');
      })));
      return cpuUs;
    };
  }

  try {
    await db.rootQuery('CREATE DATABASE IF NOT EXISTS sbtest');
    const direct = { host: '127.0.0.1', port: db.server.port!, user: db.user, password: db.password, db: 'sbtest', caPem: pki.caPem, client: { certPem: pki.certPem, keyPem: pki.keyPem }, cwd: work.path, tables: 4, tableSize };
    const viaProxy = { ...direct, port: proxyPort };
    console.error('sysbench prepare...');
    await prepareSysbench(direct, 'oltp_read_write');

    const arms: { name: string; workers: number; gate: boolean }[] = [];
    for (const w of workersList) {
      arms.push({ name: `proxy-w${w}`, workers: w, gate: false });
      if (values.gate) arms.push({ name: `proxy-w${w}-gate`, workers: w, gate: true });
    }
    for (let round = 1; round <= rounds; round++) {
      // Alternate the order each round so drift (other tenants, caches) does not favour one side.
      const order = round % 2 === 1 ? ['direct', ...arms.map((a) => a.name)] : [...arms.map((a) => a.name).reverse(), 'direct'];
      for (const armName of order) {
        const arm = arms.find((a) => a.name === armName);
        if (arm) await startProxy(arm.workers, arm.gate);
        let transactions = 0;
        try {
          for (const test of tests) {
            for (const threads of threadsList) {
              const r = await runSysbench(arm ? viaProxy : direct, test, { threads, durationS: duration });
              const row = { arm: armName, test, threads, round, tps: r.tps, qps: r.qps, p95: r.latencyP95Ms, avg: r.latencyAvgMs, errors: r.errors };
              results.push(row);
              transactions += r.queries;
              console.error(`round ${round} ${armName.padEnd(16)} ${test.padEnd(18)} t=${String(threads).padStart(2)} tps=${r.tps.toFixed(1).padStart(9)} p95=${r.latencyP95Ms}ms`);
            }
          }
        } finally {
          if (arm) {
            const cpuUs = (await stopProxy?.()) ?? 0;
            proxyCpu.push({ arm: armName, round, cpuUsPerQuery: transactions ? cpuUs / transactions : 0 });
            console.error(`round ${round} ${armName}: proxy CPU ${(transactions ? cpuUs / transactions : 0).toFixed(1)} µs per query`);
          }
        }
      }
    }
  } finally {
    await tls.stop();
  }
  writeReport(results, proxyCpu, { duration, threadsList, rounds, workersList, tests, tableSize });
  process.exit(0);
}

function writeReport(results: ArmResult[], proxyCpu: { arm: string; round: number; cpuUsPerQuery: number }[], cfg: Record<string, unknown>): void {
  const date = new Date().toISOString().slice(0, 16).replace(/[:T]/g, '-');
  const dir = path.resolve('bench/results');
  mkdirSync(dir, { recursive: true });
  const arms = [...new Set(results.map((r) => r.arm))];
  const lines: string[] = [
    `# MySQL endpoint benchmark (${date})`, '',
    `Machine: ${os.cpus().length} × ${os.cpus()[0]?.model ?? '?'}, Node ${process.version}, shared with other workloads (noisy).`,
    `Config: ${JSON.stringify(cfg)}. MariaDB 10.11, sysbench 1.0.20 (--mysql-ssl=on), 4 tables.`,
    'direct = sysbench → MariaDB over TCP+TLS; proxy-wN = sysbench → proxy (TLS, N cluster workers) → MariaDB unix socket.',
    'Ratio = median proxy tps / median direct tps over the rounds; spread = (max-min)/median of that arm across rounds.', '',
    '| test | threads | arm | tps (median) | spread | ratio vs direct | p95 ms (median) | direct p95 ms |',
    '|---|---:|---|---:|---:|---:|---:|---:|',
  ];
  const summary: Record<string, unknown>[] = [];
  for (const test of [...new Set(results.map((r) => r.test))]) {
    for (const threads of [...new Set(results.map((r) => r.threads))]) {
      const pick = (arm: string) => results.filter((r) => r.test === test && r.threads === threads && r.arm === arm);
      const d = pick('direct');
      const dTps = median(d.map((r) => r.tps));
      const dP95 = median(d.map((r) => r.p95));
      for (const arm of arms) {
        const rs = pick(arm);
        if (rs.length === 0) continue;
        const tps = median(rs.map((r) => r.tps));
        const spread = (Math.max(...rs.map((r) => r.tps)) - Math.min(...rs.map((r) => r.tps))) / tps;
        const p95 = median(rs.map((r) => r.p95));
        const ratio = tps / dTps;
        summary.push({ test, threads, arm, tps, spread, ratio, p95, directP95: dP95 });
        lines.push(`| ${test} | ${threads} | ${arm} | ${tps.toFixed(1)} | ${(spread * 100).toFixed(1)}% | ${arm === 'direct' ? '1.00' : ratio.toFixed(2)} | ${p95.toFixed(2)} | ${dP95.toFixed(2)} |`);
      }
    }
  }
  lines.push('', 'Proxy CPU (user+system, all workers) per query, whole arm including connection set-up:', '');
  for (const c of proxyCpu) lines.push(`- round ${c.round} ${c.arm}: ${c.cpuUsPerQuery.toFixed(1)} µs/query`);
  const base = path.join(dir, `mysql-${date}`);
  writeFileSync(`${base}.json`, JSON.stringify({ date, config: cfg, summary, proxyCpu, results }, null, 2));
  writeFileSync(`${base}.md`, lines.join('\n') + '\n');
  console.log(lines.join('\n'));
  console.error(`wrote ${base}.md and .json`);
}
