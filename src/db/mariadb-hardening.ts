import { existsSync, lstatSync, mkdirSync, readdirSync, rmSync, symlinkSync, chmodSync } from 'node:fs';
import path from 'node:path';
import { CdbpError } from '../kernel/errors.ts';

/**
 * `[mariadbd]` lines that keep plaintext off the untrusted volume beyond what the key plugin encrypts
 * (issue 16 item 5; facts in docs/KEYRING.md "What MariaDB would still write in plaintext"):
 *
 * - `enforce_storage_engine=InnoDB`: CREATE/ALTER TABLE with another engine (MyISAM, CSV, ARCHIVE,
 *   Aria, ...) fails with ER_OPTION_PREVENTS_STATEMENT (1290) under the default NO_ENGINE_SUBSTITUTION,
 *   or is silently made InnoDB without it. MyISAM and CSV are mandatory engines in 10.11 (load option
 *   FORCE): they cannot be unloaded, only refused. Bootstrap (mariadb-install-db) is exempt, so the
 *   system tables stay Aria. A SUPER holder can lift it for its own session (SET SESSION
 *   enforce_storage_engine=NULL): the start-up check (mariadb-encryption-check.ts) finds such tables.
 * - general and slow query log: off, FILE output, their files in the memory-backed directory, so an
 *   admin's `SET GLOBAL general_log=ON` writes SQL to tmpfs, not to the volume.
 * - `secure_file_priv`: a memory-backed directory (MariaDB has no "NULL = disabled"; empty means no
 *   limit), so SELECT … INTO OUTFILE / DUMPFILE, LOAD DATA INFILE and LOAD_FILE() are confined to it.
 *   Read-only at run time.
 * - `plugin_dir`: a directory holding only the plugins we load, so INSTALL SONAME cannot add
 *   server_audit / sql_errlog (SQL to files), ARCHIVE or CONNECT. Read-only at run time.
 * - the error log: in the memory-backed directory, because a crashing mariadbd prints the query it was
 *   running into it ("Query (0x…): …"), and InnoDB monitors/deadlock reports can print SQL too.
 */
export interface MariadbHardeningOptions {
  /** Memory-backed (tmpfs) directory, absolute. Subdirectories below are created by `hardeningDirs`. */
  volatileDir: string;
  /** Directory prepared by `preparePluginDir`; omitted: the stock plugin_dir (INSTALL SONAME unrestricted). */
  pluginDir?: string;
}

/** Where each file lives below the volatile directory. */
export function hardeningPaths(o: MariadbHardeningOptions): { logDir: string; filesDir: string; errorLog: string; generalLog: string; slowLog: string } {
  const root = absolute('volatileDir', o.volatileDir);
  const logDir = path.join(root, 'logs');
  return {
    logDir,
    filesDir: path.join(root, 'files'),
    errorLog: path.join(logDir, 'mariadb.err'),
    generalLog: path.join(logDir, 'general.log'),
    slowLog: path.join(logDir, 'slow.log'),
  };
}

/** Directories mariadbd must own for these lines to work (MariadbServerOptions.ownedDirs). */
export function hardeningDirs(o: MariadbHardeningOptions): string[] {
  const p = hardeningPaths(o);
  return [path.resolve(o.volatileDir), p.logDir, p.filesDir];
}

export function mariadbHardeningConfig(o: MariadbHardeningOptions): string[] {
  const p = hardeningPaths(o);
  const lines = [
    'enforce_storage_engine=InnoDB',
    'default_storage_engine=InnoDB',
    'default_tmp_storage_engine=InnoDB',
    'log_output=FILE',
    'general_log=OFF',
    `general_log_file=${p.generalLog}`,
    'slow_query_log=OFF',
    `slow_query_log_file=${p.slowLog}`,
    `secure_file_priv=${p.filesDir}`,
    `log-error=${p.errorLog}`,
  ];
  if (o.pluginDir !== undefined) lines.push(`plugin_dir=${absolute('pluginDir', o.pluginDir)}`);
  return lines;
}

/** The plugins the managed server loads; nothing else can be installed at run time. */
export const ALLOWED_PLUGINS = ['hashicorp_key_management.so'] as const;

/**
 * (Re)creates `dir` with symlinks to the allowed plugins of the stock plugin directory and nothing else.
 * Root-owned and 0755 (mariadbd only reads it).
 */
export function preparePluginDir(dir: string, stockDir: string, plugins: readonly string[] = ALLOWED_PLUGINS): string {
  const abs = absolute('pluginDir', dir);
  mkdirSync(abs, { recursive: true, mode: 0o755 });
  chmodSync(abs, 0o755);
  for (const name of readdirSync(abs)) {
    if (!plugins.includes(name)) rmSync(path.join(abs, name), { recursive: true, force: true });
  }
  for (const name of plugins) {
    const target = path.join(stockDir, name);
    if (!existsSync(target)) throw new CdbpError('BINARY_MISSING', `MariaDB plugin ${target} is missing`);
    const link = path.join(abs, name);
    if (existsSync(link) || isSymlink(link)) rmSync(link, { force: true });
    symlinkSync(target, link);
  }
  return abs;
}

function isSymlink(p: string): boolean {
  try {
    return lstatSync(p).isSymbolicLink();
  } catch {
    return false;
  }
}

function absolute(name: string, value: string): string {
  if (typeof value !== 'string' || !path.isAbsolute(value) || /[\r\n\0]/.test(value) || value !== value.trim()) {
    throw new CdbpError('CONFIG_INVALID', `${name} must be an absolute single-line path`);
  }
  return path.resolve(value);
}
