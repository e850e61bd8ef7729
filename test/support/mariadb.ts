import { chownSync } from 'node:fs';
import mariadb from 'mariadb';
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
export async function startPrivateMariadb(opts: Partial<MariadbServerOptions> & { tcp?: boolean } = {}): Promise<PrivateMariadb> {
  const dir = opts.dir ? { path: opts.dir, remove() {} } : tempDir('mariadb');
  const port = opts.tcp ? (opts.port ?? (await freePort())) : undefined;
  const server = new MariadbServer({ ...opts, dir: dir.path, port });
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
