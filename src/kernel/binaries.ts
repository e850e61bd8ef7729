import { accessSync, constants, readdirSync } from 'node:fs';
import path from 'node:path';
import { CdbpError } from './errors.ts';

/**
 * System binaries the project drives, and the Debian package that ships each. A missing binary is a
 * one-line error naming the package, never a stack trace.
 */
export const BINARY_PACKAGES: Record<string, string> = {
  mariadbd: 'mariadb-server',
  'mariadb-install-db': 'mariadb-server',
  mariadb: 'mariadb-client',
  'mariadb-admin': 'mariadb-client',
  sysbench: 'sysbench',
  postgres: 'postgresql',
  initdb: 'postgresql',
  pg_ctl: 'postgresql',
  pg_controldata: 'postgresql',
  pg_waldump: 'postgresql',
  psql: 'postgresql-client',
  pgbench: 'postgresql-contrib',
  pgbouncer: 'pgbouncer',
  'docker-compose': 'docker-compose',
  dockerd: 'docker.io',
};

/** Files (not binaries) the project needs, with their package. */
export const FILE_PACKAGES: Record<string, string> = {
  'hashicorp_key_management.so': 'mariadb-plugin-hashicorp-key-management',
};

const EXTRA_DIRS = ['/usr/sbin', '/usr/local/sbin', '/sbin', ...postgresBinDirs()];

function postgresBinDirs(): string[] {
  try {
    return readdirSync('/usr/lib/postgresql')
      .sort((a, b) => Number(b) - Number(a))
      .map((v) => `/usr/lib/postgresql/${v}/bin`);
  } catch {
    return [];
  }
}

/** PostgreSQL server binaries must come from one version directory, not a mix from PATH. */
const PREFER_POSTGRES_DIR = new Set(['postgres', 'initdb', 'pg_ctl', 'pg_controldata', 'pg_waldump']);

export function findBinary(name: string): string {
  const pathDirs = (process.env.PATH ?? '').split(path.delimiter).filter(Boolean);
  // CDBP_BIN_PATH pins where database binaries come from (custom installs), and nothing else is searched.
  const pinned = process.env.CDBP_BIN_PATH?.split(path.delimiter).filter(Boolean);
  const dirs = pinned ?? (PREFER_POSTGRES_DIR.has(name) ? [...postgresBinDirs(), ...pathDirs, ...EXTRA_DIRS] : [...pathDirs, ...EXTRA_DIRS]);
  for (const dir of dirs) {
    const candidate = path.join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // keep looking
    }
  }
  const pkg = BINARY_PACKAGES[name];
  throw new CdbpError('BINARY_MISSING',
    `${name} not found${pkg ? `: install the Debian package ${pkg} (apt-get install ${pkg})` : ''}`,
    { details: { binary: name, package: pkg } });
}

export function mariadbPluginDir(): string {
  for (const dir of ['/usr/lib/mysql/plugin', '/usr/lib/x86_64-linux-gnu/mariadb19/plugin', '/usr/lib64/mysql/plugin']) {
    try {
      accessSync(dir);
      return dir;
    } catch {
      // next
    }
  }
  throw new CdbpError('BINARY_MISSING', 'MariaDB plugin directory not found: install the Debian package mariadb-server');
}

export function requirePluginFile(file: string): string {
  const p = path.join(mariadbPluginDir(), file);
  try {
    accessSync(p);
    return p;
  } catch {
    const pkg = FILE_PACKAGES[file];
    throw new CdbpError('BINARY_MISSING',
      `${file} not found in ${mariadbPluginDir()}${pkg ? `: install the Debian package ${pkg} (apt-get install ${pkg})` : ''}`,
      { details: { file, package: pkg } });
  }
}
