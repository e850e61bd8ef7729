import mariadb from 'mariadb';
import { chownSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { TestPki } from './test-pki.ts';
import { MariadbServer, type MariadbServerOptions } from '../../src/db/mariadb-server.ts';
import { freePort } from '../../src/kernel/net.ts';
import { tempDir } from './tmp.ts';

export interface PrivateMariadb {
  server: MariadbServer;
  /** An account with a mysql_native_password, usable over the socket and TCP. */
  user: string;
  password: string;
  /** Runs SQL as root over the unix socket. */
  rootQuery(sql: string, params?: unknown[]): Promise<any>;
  stop(): Promise<void>;
}

/**
 * Starts a private MariaDB for one test file (temp dir, free port, own socket), creates a test
 * account, and tears everything down on stop().
 */
export async function startPrivateMariadb(opts: Partial<MariadbServerOptions> & { tcp?: boolean; tls?: TestPki } = {}): Promise<PrivateMariadb> {
  const dir = opts.dir ? { path: opts.dir, remove() {} } : tempDir('mariadb');
  const port = opts.tcp ? (opts.port ?? (await freePort())) : undefined;
  // TLS for the server: its files go into its own instance directory, owned by the user mariadbd runs
  // as (it is not root when we are: a test directory of root's is not readable to it).
  const tlsFiles = opts.tls ? { ca: path.join(dir.path, 'ssl-ca.pem'), cert: path.join(dir.path, 'ssl-cert.pem'), key: path.join(dir.path, 'ssl-key.pem') } : undefined;
  const extraConfig = [...(opts.extraConfig ?? []), ...(tlsFiles ? [`ssl-ca=${tlsFiles.ca}`, `ssl-cert=${tlsFiles.cert}`, `ssl-key=${tlsFiles.key}`] : [])];
  const server = new MariadbServer({ ...opts, dir: dir.path, port, extraConfig });
  if (opts.tls && tlsFiles) {
    const pem = { ca: opts.tls.caPem, cert: opts.tls.certPem, key: opts.tls.keyPem } as const;
    for (const k of ['ca', 'cert', 'key'] as const) {
      writeFileSync(tlsFiles[k], pem[k], { mode: 0o600 });
      if (server.owner) chownSync(tlsFiles[k], server.owner.uid, server.owner.gid);
    }
  }
  // mariadbd runs as the mysql OS user when we are root: TLS files the caller wrote (0600, root) must be its.
  for (const line of opts.extraConfig ?? []) {
    const file = /^ssl-(?:ca|cert|key)=(.+)$/.exec(line)?.[1];
    if (file && server.owner) chownSync(file, server.owner.uid, server.owner.gid);
  }
  await server.initialize();
  await server.start();
  const user = 'app';
  const password = 'app-password-' + Math.random().toString(36).slice(2);
  const rootQuery = async (sql: string, params?: unknown[]) => {
    const conn = await mariadb.createConnection({ socketPath: server.socket, user: 'root', multipleStatements: true });
    try {
      return await conn.query(sql, params);
    } finally {
      await conn.end();
    }
  };
  await rootQuery(
    `CREATE USER IF NOT EXISTS '${user}'@'%' IDENTIFIED BY '${password}';` +
    `CREATE USER IF NOT EXISTS '${user}'@'localhost' IDENTIFIED BY '${password}';` +
    `GRANT ALL ON *.* TO '${user}'@'%' WITH GRANT OPTION; GRANT ALL ON *.* TO '${user}'@'localhost' WITH GRANT OPTION;` +
    'CREATE DATABASE IF NOT EXISTS test',
  );
  return {
    server, user, password, rootQuery,
    async stop() {
      await server.stop();
      dir.remove();
    },
  };
}
