/**
 * pgbench and PgBouncer for the PostgreSQL benchmarks (bench/scenarios/pg.ts, bench/pg.ts): one copy.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { chownSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { findBinary } from '../../src/kernel/binaries.ts';
import { freePort, waitForListen } from '../../src/kernel/net.ts';
import { lookupOsUser } from '../../src/db/postgres-server.ts';

const run = promisify(execFile);

export type PgWorkload = 'select-only' | 'tpcb';
export interface PgbenchResult { clients: number; tps: number; latencyMs: number; failed: number }

/**
 * PgBouncer on a free loopback port in front of `pg` (unix socket): client TLS required with the given
 * pair, SCRAM for the `app` account, session pooling. `dir` must be reachable by the postgres OS user
 * (PgBouncer, like PostgreSQL, refuses to run as root).
 */
export async function startPgbouncer(dir: string, pg: { socketDir: string; port: number }, tls: { certPem: string; keyPem: string }, password: string): Promise<{ port: number; child: ChildProcess }> {
  const port = await freePort();
  const certFile = path.join(dir, 'cert.pem');
  const keyFile = path.join(dir, 'key.pem');
  writeFileSync(certFile, tls.certPem);
  writeFileSync(keyFile, tls.keyPem, { mode: 0o600 });
  const ini = path.join(dir, 'pgbouncer.ini');
  const userlist = path.join(dir, 'userlist.txt');
  writeFileSync(userlist, `"app" "${password}"\n`, { mode: 0o600 });
  writeFileSync(ini, [
    '[databases]', `test = host=${pg.socketDir} port=${pg.port} dbname=test`,
    '[pgbouncer]', 'listen_addr = 127.0.0.1', `listen_port = ${port}`, "unix_socket_dir = ''",
    'auth_type = scram-sha-256', `auth_file = ${userlist}`, 'pool_mode = session', 'max_client_conn = 500', 'default_pool_size = 200',
    'client_tls_sslmode = require', `client_tls_cert_file = ${certFile}`, `client_tls_key_file = ${keyFile}`,
    `logfile = ${path.join(dir, 'pgbouncer.log')}`, 'log_connections = 0', 'log_disconnections = 0', '',
  ].join('\n'), { mode: 0o600 });
  const owner = process.getuid?.() === 0 ? lookupOsUser('postgres') : undefined;
  if (owner) for (const f of [dir, ini, userlist, certFile, keyFile]) chownSync(f, owner.uid, owner.gid);
  const child = spawn(findBinary('pgbouncer'), [ini], { stdio: 'ignore', ...(owner ?? {}) });
  await waitForListen({ host: '127.0.0.1', port }, 15_000, () => child.exitCode === null);
  return { port, child };
}

/** Where pgbench connects (always TLS: sslmode=require). */
export interface PgbenchTarget { host: string; port: number; user: string; password: string; db: string }

/** One pgbench run (`-n -T durationS`, `-S` for select-only) as `app` with sslmode=require. */
export function pgbench(port: number, workload: PgWorkload, clients: number, durationS: number, password: string): Promise<PgbenchResult> {
  return pgbenchAt({ host: '127.0.0.1', port, user: 'app', password, db: 'test' }, workload, clients, durationS);
}

/** `pgbench -i -q -s scale` against a target (e.g. through a proxy). */
export async function pgbenchInit(t: PgbenchTarget, scale: number): Promise<void> {
  await run(findBinary('pgbench'), ['-h', t.host, '-p', String(t.port), '-U', t.user, '-i', '-q', '-s', String(scale), t.db],
    { env: { ...process.env, PGPASSWORD: t.password, PGSSLMODE: 'require' }, maxBuffer: 16 << 20, timeout: 300_000 });
}

export async function pgbenchAt(t: PgbenchTarget, workload: PgWorkload, clients: number, durationS: number): Promise<PgbenchResult> {
  const { stdout } = await run(findBinary('pgbench'), [
    '-h', t.host, '-p', String(t.port), '-U', t.user, ...(workload === 'select-only' ? ['-S'] : []), '-n', '-T', String(durationS),
    '-c', String(clients), '-j', String(Math.min(clients, 2)), t.db,
  ], { env: { ...process.env, PGPASSWORD: t.password, PGSSLMODE: 'require' }, maxBuffer: 16 << 20, timeout: (durationS + 60) * 1000 });
  const tps = Number(/tps = ([\d.]+) \(without initial connection time\)/.exec(stdout)?.[1]);
  const latencyMs = Number(/latency average = ([\d.]+) ms/.exec(stdout)?.[1]);
  const failed = Number(/number of failed transactions: (\d+)/.exec(stdout)?.[1] ?? 0);
  if (!Number.isFinite(tps)) throw new Error(`could not parse pgbench output:\n${stdout}`);
  return { clients, tps, latencyMs, failed };
}
