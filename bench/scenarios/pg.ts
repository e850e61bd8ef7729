/**
 * pgbench through the proxy vs PostgreSQL's own TLS vs PgBouncer (client TLS, session pooling), against
 * the same private PostgreSQL, rotating the target order every round. Two workloads: `-S` (select-only)
 * and pgbench's default TPC-B-like mix. The proxy runs as its own process over the unix socket.
 * `proxy-encrypted` is the same proxy in front of a second, identical PostgreSQL whose whole instance
 * lives in a gocryptfs encrypted directory (what the managed proxy runs by default, docs/PG-AT-REST.md),
 * so the cost of encryption at rest is read off one run: proxy-encrypted / proxy.
 */
import { execFile, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { findBinary } from '../../src/kernel/binaries.ts';
import { startPrivatePostgres } from '../../test/support/postgres.ts';
import { makeTestPki } from '../../test/support/test-pki.ts';
import { tempDir } from '../../test/support/tmp.ts';
import { scenario, median, spread, round, fmt, exited, type ScenarioResult } from '../lib/common.ts';
import { spawnProxy } from '../lib/proxy-process.ts';
import { pgbench, startPgbouncer, type PgWorkload } from '../lib/pgbench.ts';

const run = promisify(execFile);

export type { PgWorkload } from '../lib/pgbench.ts';
export type PgTarget = 'proxy' | 'proxy-encrypted' | 'direct' | 'pgbouncer';
export interface PgOptions {
  workloads: PgWorkload[];
  clients: number[];
  durationS: number;
  rounds: number;
  scale: number;
  log?: (line: string) => void;
}
export interface PgRun { target: PgTarget; workload: PgWorkload; clients: number; round: number; tps: number; latencyMs: number; failed: number }
export interface PgCell {
  workload: PgWorkload;
  clients: number;
  tps: Record<PgTarget, number>;
  latencyMs: Record<PgTarget, number>;
  spread: Record<PgTarget, number>;
  proxyVsPgbouncer: number;
  proxyVsDirect: number;
  /** What encryption at rest costs: proxy over the encrypted instance / proxy over the plain one. */
  encryptedVsPlain: number;
}

export function runPg(o: PgOptions): Promise<ScenarioResult<PgCell[], PgRun>> {
  const log = o.log ?? (() => undefined);
  return scenario('pg', { ...o, log: undefined }, async () => {
    const pki = makeTestPki();
    const work = tempDir('bench-pg');
    const runs: PgRun[] = [];
    const dbOptions = {
      tcp: true, tls: { certPem: pki.certPem, keyPem: pki.keyPem },
      hba: ['local all all scram-sha-256', 'hostssl all all 127.0.0.1/32 scram-sha-256'],
      extraConfig: ['max_connections = 300'],
    };
    const db = await startPrivatePostgres({ ...dbOptions, encrypted: false });
    let encDb: Awaited<ReturnType<typeof startPrivatePostgres>> | undefined;
    let bouncer: { port: number; child: ChildProcess } | undefined;
    let proxy: Awaited<ReturnType<typeof spawnProxy>> | undefined;
    let encProxy: Awaited<ReturnType<typeof spawnProxy>> | undefined;
    try {
      encDb = await startPrivatePostgres({ ...dbOptions, encrypted: true });
      const password = db.accounts.scram.password;
      const bouncerDir = path.join(work.path, 'pgbouncer');
      mkdirSync(bouncerDir, { mode: 0o700 });
      chmodSync(work.path, 0o711); // PgBouncer runs unprivileged and must reach its own directory
      bouncer = await startPgbouncer(bouncerDir, { socketDir: db.server.socketDir, port: db.server.port }, pki, password);
      proxy = await spawnProxy({
        engine: 'pg', backend: { socketDir: db.server.socketDir, port: db.server.port }, tls: { keyPem: pki.keyPem, certPem: pki.certPem }, maxConnections: 1000,
      });
      encProxy = await spawnProxy({
        engine: 'pg', backend: { socketDir: encDb.server.socketDir, port: encDb.server.port }, tls: { keyPem: pki.keyPem, certPem: pki.certPem }, maxConnections: 1000,
      });
      const ports: Record<PgTarget, number> = { proxy: proxy.port, 'proxy-encrypted': encProxy.port, direct: db.server.port, pgbouncer: bouncer.port };
      log(`pg: pgbench -i -s ${o.scale} (plain and encrypted instance)`);
      for (const d of [db, encDb]) {
        await run(findBinary('pgbench'), ['-h', '127.0.0.1', '-p', String(d.server.port), '-U', 'app', '-i', '-q', '-s', String(o.scale), 'test'],
          { env: { ...process.env, PGPASSWORD: d.accounts.scram.password, PGSSLMODE: 'require' } });
      }
      const targets: PgTarget[] = ['proxy', 'proxy-encrypted', 'direct', 'pgbouncer'];
      for (let r = 1; r <= o.rounds; r++) {
        for (const workload of o.workloads) {
          for (const clients of o.clients) {
            const order = targets.map((_, i) => targets[(i + r - 1) % targets.length]!);
            for (const target of order) {
              const s = await pgbench(ports[target], workload, clients, o.durationS, target === 'proxy-encrypted' ? encDb.accounts.scram.password : password);
              runs.push({ target, workload, round: r, ...s });
              log(`pg r${r} ${workload} c=${clients} ${target.padEnd(9)} ${s.tps.toFixed(0)} tps, ${s.latencyMs} ms avg${s.failed ? `, ${s.failed} failed` : ''}`);
            }
          }
        }
      }
    } finally {
      await proxy?.stop();
      await encProxy?.stop();
      if (bouncer) {
        bouncer.child.kill('SIGTERM');
        await exited(bouncer.child);
      }
      await db.stop();
      await encDb?.stop();
      work.remove();
    }
    return { summary: summarizePg(runs), runs };
  });
}

export function summarizePg(runs: PgRun[]): PgCell[] {
  const cells: PgCell[] = [];
  for (const workload of [...new Set(runs.map((r) => r.workload))]) {
    for (const clients of [...new Set(runs.map((r) => r.clients))]) {
      const pick = (t: PgTarget) => runs.filter((r) => r.workload === workload && r.clients === clients && r.target === t);
      const by = <T>(f: (t: PgTarget) => T) => ({ proxy: f('proxy'), 'proxy-encrypted': f('proxy-encrypted'), direct: f('direct'), pgbouncer: f('pgbouncer') });
      const tps = by((t) => round(median(pick(t).map((r) => r.tps)), 0));
      cells.push({
        workload, clients, tps,
        latencyMs: by((t) => round(median(pick(t).map((r) => r.latencyMs)), 3)),
        spread: by((t) => round(spread(pick(t).map((r) => r.tps)), 3)),
        proxyVsPgbouncer: round(tps.proxy / tps.pgbouncer, 3), proxyVsDirect: round(tps.proxy / tps.direct, 3),
        encryptedVsPlain: round(tps['proxy-encrypted'] / tps.proxy, 3),
      });
    }
  }
  return cells;
}

export function renderPg(r: ScenarioResult<PgCell[], PgRun>): string[] {
  const c = r.config as unknown as PgOptions;
  return [
    `pgbench (scale ${c.scale}, \`-n -T ${c.durationS}\`, sslmode=require for every target), ${c.rounds} rounds, target order rotated every round.`,
    'select-only = `-S`; tpcb = pgbench\'s default TPC-B-like mix. proxy and PgBouncer (session pooling, client TLS, same certificate) reach',
    'PostgreSQL over its unix socket; direct = PostgreSQL\'s own TLS. tps = median over rounds; latency = pgbench\'s average.',
    'proxy (encrypted) = the same proxy in front of an identical PostgreSQL inside a gocryptfs encrypted directory (docs/PG-AT-REST.md).',
    '',
    '| workload | clients | proxy tps | proxy (encrypted) tps | direct TLS tps | PgBouncer tps | proxy/PgBouncer | proxy/direct | encrypted/plain | avg latency ms proxy / encrypted / direct / PgBouncer | spread p / e / d / b |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|',
    ...r.summary.map((x) => `| ${x.workload} | ${x.clients} | ${x.tps.proxy} | ${x.tps['proxy-encrypted']} | ${x.tps.direct} | ${x.tps.pgbouncer} | **${fmt(x.proxyVsPgbouncer)}** | ${fmt(x.proxyVsDirect)} | **${fmt(x.encryptedVsPlain)}** | ${fmt(x.latencyMs.proxy, 3)} / ${fmt(x.latencyMs['proxy-encrypted'], 3)} / ${fmt(x.latencyMs.direct, 3)} / ${fmt(x.latencyMs.pgbouncer, 3)} | ${pct(x.spread.proxy)} / ${pct(x.spread['proxy-encrypted'])} / ${pct(x.spread.direct)} / ${pct(x.spread.pgbouncer)} |`),
  ];
}

const pct = (x: number) => `${(x * 100).toFixed(0)}%`;
