/**
 * A real `cdbp proxy` for PostgreSQL (CDBP_ENGINE=postgres, managed PostgreSQL, encrypted at rest unless
 * `encryption: 'off'`), built on startProxyProcess. Layout under `root`:
 *   root/untrusted/postgres/    the encrypted directory (ciphertext) or, with encryption off, the datadir
 *   root/untrusted/freshness-<service>.sealed
 *   root/run/pg/plain/          the mount point (plaintext only while mounted)
 */
import { chmodSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { freePort } from '../../src/kernel/net.ts';
import { startProxyProcess, type TestProxy } from './proxy-process.ts';
import type { TestCas } from './cas.ts';

export interface PgTestProxy extends TestProxy {
  pgPort: number;
  runDir: string;
  encryptedDir: string;
  mountPoint: string;
  /** Superuser connection over the backend socket (bypasses the proxy; test setup only). */
  backendQuery(sql: string, params?: unknown[]): Promise<pg.QueryResult>;
  /** A node-postgres client through the proxy, TLS verified against the CAS CA. */
  client(user: string, password: string): Promise<pg.Client>;
}

export async function startPgProxyProcess(o: {
  root: string; cas: Pick<TestCas, 'url' | 'caFile' | 'caPem' | 'platformKeyFile'>; service?: string;
  encryption?: 'gocryptfs' | 'off'; env?: Record<string, string>; waitFor?: 'ready' | 'ops'; pgPort?: number;
}): Promise<PgTestProxy> {
  // PostgreSQL runs as its own OS user and must traverse the test's temp dirs (the caller's too).
  mkdirSync(o.root, { recursive: true });
  chmodSync(o.root, 0o711);
  // With encryption off the datadir itself lies on the untrusted volume and PostgreSQL must reach it.
  mkdirSync(path.join(o.root, 'untrusted'), { recursive: true, mode: 0o711 });
  const runDir = path.join(o.root, 'run', 'pg');
  mkdirSync(path.join(o.root, 'run'), { recursive: true, mode: 0o711 });
  chmodSync(path.join(o.root, 'run'), 0o711);
  const service = o.service ?? 'postgres';
  const encryptedDir = path.join(o.root, 'untrusted', service);
  const pgPort = o.pgPort ?? (await freePort());
  const proxy = await startProxyProcess({
    root: o.root, cas: o.cas, service, waitFor: o.waitFor ?? 'ready',
    env: {
      CDBP_ENGINE: 'postgres', CDBP_MANAGE_MARIADB: '0', CDBP_MANAGE_POSTGRES: '1',
      CDBP_PG_RUN_DIR: runDir, CDBP_DATADIR: encryptedDir, CDBP_PG_HOST: '127.0.0.1',
      CDBP_PG_PORT: String(pgPort), CDBP_PG_BACKEND_PORT: String(await freePort()),
      CDBP_PG_ENCRYPTION: o.encryption ?? 'gocryptfs', CDBP_FRESHNESS: 'relaxed', CDBP_SEAL_INTERVAL_MS: '200',
      ...o.env,
    },
  });
  const socket = async (): Promise<{ dir: string; port: number }> => {
    const s = (await proxy.get('/v1/status')).body.backend.socket as string;
    return { dir: path.dirname(s), port: Number(path.extname(s).slice(1)) };
  };
  return {
    ...proxy, pgPort, runDir, encryptedDir, mountPoint: path.join(runDir, 'plain'),
    async backendQuery(sql, params) {
      const { dir, port } = await socket();
      const c = new pg.Client({ host: dir, port, user: 'postgres', database: 'postgres' });
      await c.connect();
      try { return await c.query(sql, params); } finally { await c.end(); }
    },
    async client(user, password) {
      const c = new pg.Client({ host: '127.0.0.1', port: pgPort, user, password, database: 'postgres', ssl: { ca: o.cas.caPem, rejectUnauthorized: true } });
      await c.connect();
      return c;
    },
  };
}
