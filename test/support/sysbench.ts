/**
 * Drives sysbench 1.0.20 (mysql driver) for tests and bench/mysql.ts.
 *
 * TLS with sysbench 1.0.20: the only switch is `--mysql-ssl=on` (there is no --mysql-ssl-ca / ssl-mode in
 * 1.0.x; those came in 1.1). It then calls mysql_ssl_set(con, "client-key.pem", "client-cert.pem",
 * "cacert.pem", ...) with paths relative to its working directory, so we run it in a directory holding
 * the CA as cacert.pem and a client certificate pair (the proxy does not ask for one, but libmariadb
 * loads the files when set).
 */
import { execFile } from 'node:child_process';
import { writeFileSync, existsSync } from 'node:fs';
import path from 'node:path';
import { findBinary } from '../../src/kernel/binaries.ts';
import { makeTestPki } from './test-pki.ts';

export interface SysbenchTarget {
  host: string;
  port: number;
  user: string;
  password: string;
  db: string;
  /** CA that verifies the server; written as cacert.pem into cwd. Omit for plaintext. */
  caPem?: string;
  /**
   * Client certificate libmariadb presents (it loads client-cert.pem whenever SSL is on). A server that
   * verifies client certificates (MariaDB with ssl-ca) needs one from its CA; the proxy asks for none.
   */
  client?: { certPem: string; keyPem: string };
  /** Working directory for the PEM files. */
  cwd: string;
  tables?: number;
  tableSize?: number;
}

export interface SysbenchResult {
  transactions: number;
  tps: number;
  queries: number;
  qps: number;
  errors: number;
  latencyAvgMs: number;
  latencyP95Ms: number;
  raw: string;
}

function writePems(t: SysbenchTarget): void {
  if (!t.caPem) return;
  writeFileSync(path.join(t.cwd, 'cacert.pem'), t.caPem);
  if (t.client) {
    writeFileSync(path.join(t.cwd, 'client-cert.pem'), t.client.certPem);
    writeFileSync(path.join(t.cwd, 'client-key.pem'), t.client.keyPem, { mode: 0o600 });
  } else if (!existsSync(path.join(t.cwd, 'client-cert.pem'))) {
    const clientPki = makeTestPki({ hosts: ['sysbench-client'], ips: [] });
    writeFileSync(path.join(t.cwd, 'client-cert.pem'), clientPki.certPem);
    writeFileSync(path.join(t.cwd, 'client-key.pem'), clientPki.keyPem, { mode: 0o600 });
  }
}

/** Connection and table arguments for a target (shared with bench/lib/sysbench.ts). */
export function commonArgs(t: SysbenchTarget): string[] {
  return [
    '--db-driver=mysql', `--mysql-host=${t.host}`, `--mysql-port=${t.port}`, `--mysql-user=${t.user}`,
    `--mysql-password=${t.password}`, `--mysql-db=${t.db}`, `--tables=${t.tables ?? 1}`, `--table-size=${t.tableSize ?? 10000}`,
    ...(t.caPem ? ['--mysql-ssl=on'] : []),
  ];
}

/** Runs sysbench in the target's working directory (with its PEM files) and returns stdout. */
export function sysbench(t: SysbenchTarget, args: string[], timeoutMs: number): Promise<string> {
  writePems(t);
  return new Promise((resolve, reject) => {
    execFile(findBinary('sysbench'), args, { cwd: t.cwd, timeout: timeoutMs, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`sysbench ${args[0]} ${args.at(-1)} failed: ${(stderr || stdout || err.message).slice(0, 2000)}`));
      else resolve(stdout);
    });
  });
}

export async function prepareSysbench(t: SysbenchTarget, test: string): Promise<void> {
  await sysbench(t, [test, ...commonArgs(t), 'prepare'], 300_000);
}

export async function runSysbench(t: SysbenchTarget, test: string, o: { threads: number; durationS: number }): Promise<SysbenchResult> {
  const out = await sysbench(t, [test, ...commonArgs(t), `--threads=${o.threads}`, `--time=${o.durationS}`,
    '--report-interval=0', '--percentile=95', 'run'], (o.durationS + 60) * 1000);
  return parseSysbench(out);
}

export function parseSysbench(raw: string): SysbenchResult {
  const num = (re: RegExp): number => {
    const m = raw.match(re);
    if (!m) throw new Error(`sysbench output lacks ${re}: ${raw.slice(0, 400)}`);
    return Number(m[1]);
  };
  const pair = (re: RegExp): [number, number] => {
    const m = raw.match(re);
    if (!m) throw new Error(`sysbench output lacks ${re}`);
    return [Number(m[1]), Number(m[2])];
  };
  const [transactions, tps] = pair(/transactions:\s+(\d+)\s+\(([\d.]+) per sec/);
  const [queries, qps] = pair(/queries:\s+(\d+)\s+\(([\d.]+) per sec/);
  return {
    transactions, tps, queries, qps,
    errors: num(/ignored errors:\s+(\d+)/),
    latencyAvgMs: num(/avg:\s+([\d.]+)/),
    latencyP95Ms: num(/95th percentile:\s+([\d.]+)/),
    raw,
  };
}
