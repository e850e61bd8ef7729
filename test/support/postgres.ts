import pg from 'pg';
import { chmodSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { PostgresServer, lookupOsUser, type PostgresServerOptions } from '../../src/db/postgres-server.ts';
import { GocryptfsDirectory, type EncryptedDirectory } from '../../src/storage/index.ts';
import { freePort } from '../../src/kernel/net.ts';
import { tempDir } from './tmp.ts';

/** Accounts created in every private PostgreSQL, one per authentication method. */
export interface PgAccounts {
  /** SCRAM-SHA-256 (stored as SCRAM, authenticated with scram-sha-256). */
  scram: { user: string; password: string };
  /** md5 (stored as md5, pg_hba method md5). */
  md5: { user: string; password: string };
  /** Cleartext `password` method. */
  password: { user: string; password: string };
  /** `trust`: no password. */
  trust: { user: string };
}

export interface PrivatePostgres {
  server: PostgresServer;
  /** The encrypted directory the whole instance lives in (undefined when started unencrypted). */
  storage: EncryptedDirectory | undefined;
  accounts: PgAccounts;
  /** Runs SQL as the superuser over the unix socket (database `postgres` unless named). */
  query(sql: string, params?: unknown[], database?: string): Promise<pg.QueryResult>;
  stop(): Promise<void>;
}

/** pg_hba lines for the accounts above; scram is the default for everyone else. */
function hbaFor(accounts: PgAccounts, tcp: boolean): string[] {
  return [
    `local all ${accounts.trust.user} trust`,
    `local all ${accounts.md5.user} md5`,
    `local all ${accounts.password.user} password`,
    'local all all scram-sha-256',
    ...(tcp ? [
      `host all ${accounts.trust.user} 127.0.0.1/32 trust`,
      `host all ${accounts.md5.user} 127.0.0.1/32 md5`,
      `host all ${accounts.password.user} 127.0.0.1/32 password`,
      'host all all 127.0.0.1/32 scram-sha-256',
    ] : []),
  ];
}

/**
 * PostgreSQL suites run encrypted at rest by default, as the proxy runs it (a gocryptfs directory with a
 * random key; the whole instance inside the mount). CDBP_TEST_PG_ENCRYPTION=off runs them on plain files.
 */
export function testPgEncryptionDefault(): boolean {
  return process.env.CDBP_TEST_PG_ENCRYPTION !== 'off';
}

/**
 * Starts a private PostgreSQL for one test file (temp dir, free port, own socket dir; run as the
 * `postgres` OS user when we are root), creates one account per auth method and a database `test`
 * owned by the scram account, and tears everything down on stop(). `encrypted` (default: see
 * testPgEncryptionDefault; ignored when `dir` is given) puts the instance inside a gocryptfs mount.
 */
export async function startPrivatePostgres(opts: Partial<PostgresServerOptions> & { encrypted?: boolean } = {}): Promise<PrivatePostgres> {
  const { encrypted: wantEncrypted, ...serverOpts } = opts;
  const encrypted = !opts.dir && (wantEncrypted ?? testPgEncryptionDefault());
  const base = opts.dir ? { path: opts.dir, remove() {} } : tempDir('pg');
  let storage: GocryptfsDirectory | undefined;
  let dirPath = base.path;
  if (encrypted) {
    chmodSync(base.path, 0o711); // the postgres OS user reaches the mount point below it
    const owner = process.getuid?.() === 0 ? lookupOsUser(opts.runAsUser ?? 'postgres') : undefined;
    storage = new GocryptfsDirectory({ encryptedPath: path.join(base.path, 'encrypted'), plaintextPath: path.join(base.path, 'plain'), owner });
    await storage.mount({ version: 1, secret: randomBytes(32) }, { create: true });
    dirPath = path.join(storage.plaintextPath, 'pg');
  }
  const teardown = async () => {
    await storage?.unmount();
    base.remove();
  };
  const port = opts.port ?? (await freePort());
  const suffix = Math.random().toString(36).slice(2);
  const accounts: PgAccounts = {
    scram: { user: 'app', password: `scram-pw-${suffix}` },
    md5: { user: 'app_md5', password: `md5-pw-${suffix}` },
    password: { user: 'app_pw', password: `clear-pw-${suffix}` },
    trust: { user: 'app_trust' },
  };
  const server = new PostgresServer({
    initNoSync: true,
    hba: hbaFor(accounts, opts.tcp ?? false),
    ...serverOpts,
    dir: dirPath,
    port,
  });
  try {
    await server.initialize();
    await server.start();
  } catch (e) {
    await server.stop();
    await teardown();
    throw e;
  }
  const query = async (sql: string, params?: unknown[], database = 'postgres') => {
    const client = new pg.Client({ host: server.socketDir, port, user: server.superuser, database });
    await client.connect();
    try {
      return await client.query(sql, params);
    } finally {
      await client.end();
    }
  };
  const lit = (s: string) => `'${s.replace(/'/g, "''")}'`;
  await query(
    `SET password_encryption = 'scram-sha-256';` +
    `CREATE ROLE ${accounts.scram.user} LOGIN SUPERUSER PASSWORD ${lit(accounts.scram.password)};` +
    `CREATE ROLE ${accounts.password.user} LOGIN PASSWORD ${lit(accounts.password.password)};` +
    `CREATE ROLE ${accounts.trust.user} LOGIN;` +
    `SET password_encryption = 'md5';` +
    `CREATE ROLE ${accounts.md5.user} LOGIN PASSWORD ${lit(accounts.md5.password)};`,
  );
  await query(`CREATE DATABASE test OWNER ${accounts.scram.user}`);
  return {
    server, accounts, query, storage,
    async stop() {
      await server.stop();
      await teardown();
    },
  };
}
