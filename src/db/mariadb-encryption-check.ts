/**
 * Is this MariaDB really encrypting? Checked before the proxy goes ready (issue 16 item 5): a server
 * started by a tampered wrapper with encryption off, or without our key plugin, must not be served.
 *
 * `checkMariadbEncryption` is pure (facts in, verdict out: unit-tested on hand-made facts);
 * `readMariadbEncryptionFacts` is the thin query layer; `verifyMariadbEncryption` polls the two until
 * the verdict is final. What each fact means: docs/KEYRING.md "Server check before ready".
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import mariadb, { type Connection } from 'mariadb';
import { CdbpError, asCdbpError } from '../kernel/errors.ts';

export interface TablespaceFact {
  name: string;
  /** From INNODB_TABLESPACES_ENCRYPTION; undefined when the tablespace is missing from that view. */
  scheme: number | undefined;
  /** Background (re-)encryption still running for it (KEY_ROTATION_PAGE_NUMBER set or ROTATING_OR_FLUSHING). */
  rotating: boolean;
}

export interface TableFact {
  schema: string;
  table: string;
  engine: string | null;
  rowFormat: string | null;
}

export interface MariadbEncryptionFacts {
  /** information_schema.GLOBAL_VARIABLES, names lower-cased. */
  variables: Record<string, string | null>;
  /** Encryption plugins and their status (information_schema.PLUGINS, PLUGIN_TYPE='ENCRYPTION'). */
  encryptionPlugins: Array<{ name: string; status: string }>;
  /** Every InnoDB tablespace except the temporary one (encrypted by innodb_encrypt_temporary_tables). */
  tablespaces: TablespaceFact[];
  /** Base tables outside the system schemas whose engine is not InnoDB. */
  nonInnodbTables: TableFact[];
  /** Key requests our keyring served since it issued this server's token; undefined when unknown. */
  keysServed?: number;
  /** Real uid of the mariadbd process (from /proc); undefined when the proxy does not manage it. */
  serverUid?: number;
}

export interface EncryptionExpectations {
  /** The encryption plugin that must be the active one. */
  plugin: string;
  /**
   * The managed server's hardening (mariadb-hardening.ts): InnoDB-only engine enforcement,
   * secure_file_priv set. Off for an external server whose options the proxy does not write.
   */
  hardened: boolean;
  /**
   * Memory-backed directories: when given, every file MariaDB may write plaintext or SQL to (Aria log,
   * tmpdir, general/slow log, error log, secure_file_priv) must be below one of them.
   */
  volatileDirs?: string[];
  /** Require the binary log to be on (and then encrypted). Default true: the freshness guard relies on it. */
  requireBinlog?: boolean;
}

export interface EncryptionVerdict {
  ok: boolean;
  /** Why not, one line each, naming the variable/table and the fix. */
  failures: string[];
  /** Tablespaces still being encrypted by the background threads: wait, then ask again. */
  pending: string[];
}

const SYSTEM_SCHEMAS = new Set(['mysql', 'information_schema', 'performance_schema', 'sys']);

export function checkMariadbEncryption(facts: MariadbEncryptionFacts, expect: EncryptionExpectations): EncryptionVerdict {
  const failures: string[] = [];
  const pending: string[] = [];
  const v = (name: string): string => String(facts.variables[name] ?? '').trim();
  const on = (name: string) => ['ON', '1', 'FORCE'].includes(v(name).toUpperCase());
  const want = (name: string, ok: boolean, expected: string) => {
    if (!ok) failures.push(`${name}=${v(name) || '(empty)'} (expected ${expected})`);
  };

  // The key plugin: ours, active, and really asked for keys by this server.
  const active = facts.encryptionPlugins.filter((p) => p.status.toUpperCase() === 'ACTIVE').map((p) => p.name);
  if (!active.includes(expect.plugin)) {
    failures.push(`encryption plugin ${expect.plugin} is not active (active: ${active.join(', ') || 'none'})`);
  } else if (active.length > 1) {
    failures.push(`more than one encryption plugin is active: ${active.join(', ')}`);
  }
  if (facts.keysServed !== undefined && facts.keysServed < 1) {
    failures.push('the keyring served no key to this server (it does not take its keys from the proxy)');
  }

  want('innodb_encrypt_tables', v('innodb_encrypt_tables').toUpperCase() === 'FORCE', 'FORCE');
  for (const name of ['innodb_encrypt_log', 'innodb_encrypt_temporary_tables', 'encrypt_tmp_files', 'encrypt_tmp_disk_tables', 'aria_encrypt_tables']) {
    want(name, on(name), 'ON');
  }
  want('innodb_encryption_threads', Number(v('innodb_encryption_threads')) > 0, '> 0: existing tablespaces are encrypted in the background');
  if (expect.requireBinlog ?? true) want('log_bin', on('log_bin'), 'ON');
  if (on('log_bin')) want('encrypt_binlog', on('encrypt_binlog'), 'ON');

  for (const ts of facts.tablespaces) {
    if (ts.scheme === 1) continue;
    if (ts.rotating) pending.push(ts.name);
    else failures.push(`InnoDB tablespace ${ts.name} is not encrypted`);
  }
  for (const t of facts.nonInnodbTables) {
    const engine = t.engine ?? '(unknown engine)';
    if (engine.toUpperCase() === 'MEMORY') continue; // never on disk
    // aria_encrypt_tables covers ROW_FORMAT=PAGE only; FIXED/DYNAMIC Aria rows are written in plaintext.
    if (engine.toUpperCase() === 'ARIA' && on('aria_encrypt_tables') && (t.rowFormat ?? '').toUpperCase() === 'PAGE') continue;
    failures.push(`table ${t.schema}.${t.table} uses ${engine}${t.rowFormat ? ` (${t.rowFormat})` : ''}, which MariaDB does not encrypt: ALTER TABLE ... ENGINE=InnoDB`);
  }

  if (expect.hardened) {
    want('enforce_storage_engine', v('enforce_storage_engine').toUpperCase() === 'INNODB', 'InnoDB');
    want('secure_file_priv', v('secure_file_priv') !== '', 'a directory (empty means SELECT ... INTO OUTFILE may write anywhere)');
    const output = v('log_output').toUpperCase().split(',');
    if (output.includes('TABLE') && (on('general_log') || on('slow_query_log'))) {
      failures.push(`log_output=${v('log_output')} with a query log on writes SQL to CSV tables in the datadir`);
    }
  }
  if (facts.serverUid === 0) failures.push('mariadbd runs as root (uid 0)');

  if (expect.volatileDirs && expect.volatileDirs.length > 0) {
    const roots = expect.volatileDirs.map((d) => path.resolve(d));
    const under = (p: string) => roots.some((r) => p === r || p.startsWith(r.endsWith(path.sep) ? r : r + path.sep));
    const mustBeVolatile = (name: string, always: boolean) => {
      const value = v(name);
      if (!always && value === '') return;
      if (value === '' || !path.isAbsolute(value) || !under(path.resolve(value))) {
        failures.push(`${name}=${value || '(empty)'} is not on the memory-backed directory (${roots.join(', ')})`);
      }
    };
    mustBeVolatile('aria_log_dir_path', true);
    mustBeVolatile('tmpdir', true);
    if (expect.hardened) {
      mustBeVolatile('secure_file_priv', true);
      mustBeVolatile('log_error', true);
      mustBeVolatile('general_log_file', true);
      mustBeVolatile('slow_query_log_file', true);
    }
  }
  return { ok: failures.length === 0 && pending.length === 0, failures, pending };
}

/** Variables the check reads (lower-case, as GLOBAL_VARIABLES names them in upper case). */
export const CHECKED_VARIABLES = [
  'innodb_encrypt_tables', 'innodb_encrypt_log', 'innodb_encrypt_temporary_tables', 'innodb_encryption_threads',
  'encrypt_tmp_files', 'encrypt_tmp_disk_tables', 'aria_encrypt_tables', 'encrypt_binlog', 'log_bin',
  'enforce_storage_engine', 'secure_file_priv', 'log_output', 'general_log', 'general_log_file',
  'slow_query_log', 'slow_query_log_file', 'log_error', 'aria_log_dir_path', 'tmpdir',
] as const;

/** What the query layer needs of a connection (the `mariadb` connector's Connection has it). */
export interface SqlQueryable {
  query(sql: string): Promise<unknown>;
}

/** Queries the facts over an open connection; `keysServed`/`serverUid` come from the caller. */
export async function readMariadbEncryptionFacts(conn: SqlQueryable, extra: { keysServed?: number; serverUid?: number } = {}): Promise<MariadbEncryptionFacts> {
  const rows = async <T>(sql: string) => (await conn.query(sql)) as T[];
  const vars = await rows<{ n: string; v: string | null }>(
    `SELECT VARIABLE_NAME AS n, VARIABLE_VALUE AS v FROM information_schema.GLOBAL_VARIABLES WHERE VARIABLE_NAME IN (${CHECKED_VARIABLES.map((n) => `'${n.toUpperCase()}'`).join(',')})`);
  const plugins = await rows<{ n: string; s: string }>(
    "SELECT PLUGIN_NAME AS n, PLUGIN_STATUS AS s FROM information_schema.PLUGINS WHERE PLUGIN_TYPE = 'ENCRYPTION'");
  const spaces = await rows<{ name: string; scheme: number | null; page: unknown; rot: number | null }>(
    'SELECT t.NAME AS name, e.ENCRYPTION_SCHEME AS scheme, e.KEY_ROTATION_PAGE_NUMBER AS page, e.ROTATING_OR_FLUSHING AS rot ' +
    'FROM information_schema.INNODB_SYS_TABLESPACES t LEFT JOIN information_schema.INNODB_TABLESPACES_ENCRYPTION e ON e.SPACE = t.SPACE ' +
    "WHERE t.NAME <> 'innodb_temporary'");
  const tables = await rows<{ s: string; t: string; e: string | null; f: string | null }>(
    "SELECT TABLE_SCHEMA AS s, TABLE_NAME AS t, ENGINE AS e, ROW_FORMAT AS f FROM information_schema.TABLES WHERE TABLE_TYPE IN ('BASE TABLE', 'SEQUENCE') " +
    `AND TABLE_SCHEMA NOT IN (${[...SYSTEM_SCHEMAS].map((s) => `'${s}'`).join(',')}) AND (ENGINE IS NULL OR ENGINE <> 'InnoDB')`);
  const toSpace = (r: { name: string; scheme: number | null; page: unknown; rot: number | null }): TablespaceFact => ({
    name: r.name,
    scheme: r.scheme === null || r.scheme === undefined ? undefined : Number(r.scheme),
    rotating: (r.page !== null && r.page !== undefined) || Number(r.rot ?? 0) > 0,
  });
  const tablespaces = spaces.map(toSpace);
  return {
    variables: Object.fromEntries(vars.map((r) => [r.n.toLowerCase(), r.v])),
    encryptionPlugins: plugins.map((p) => ({ name: p.n, status: p.s })),
    tablespaces,
    nonInnodbTables: tables.map((r) => ({ schema: r.s, table: r.t, engine: r.e, rowFormat: r.f })),
    ...(extra.keysServed !== undefined ? { keysServed: extra.keysServed } : {}),
    ...(extra.serverUid !== undefined ? { serverUid: extra.serverUid } : {}),
  };
}

/**
 * Reads facts and checks them until the verdict is final: while only background encryption is pending
 * (e.g. the first start after an upgrade), asks again up to `pendingTimeoutMs`. Throws
 * BACKEND_NOT_ENCRYPTED with every failure in the message and details.
 */
export async function verifyMariadbEncryption(
  read: () => Promise<MariadbEncryptionFacts>,
  expect: EncryptionExpectations,
  o: { pendingTimeoutMs?: number; pollMs?: number } = {},
): Promise<EncryptionVerdict> {
  const deadline = Date.now() + (o.pendingTimeoutMs ?? 30_000);
  for (;;) {
    const verdict = checkMariadbEncryption(await read(), expect);
    if (verdict.ok) return verdict;
    if (verdict.failures.length > 0 || Date.now() > deadline) {
      const reasons = [...verdict.failures, ...verdict.pending.map((n) => `InnoDB tablespace ${n} is still not encrypted`)];
      throw new CdbpError('BACKEND_NOT_ENCRYPTED', `MariaDB is not safe to serve: ${reasons.join('; ')}`, { details: { failures: reasons } });
    }
    await new Promise((r) => setTimeout(r, o.pollMs ?? 500));
  }
}

/** Real uid of a process (Linux /proc); undefined when it is gone or unreadable. */
export function processUid(pid: number): number | undefined {
  try {
    const m = /^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The whole check against a server on a unix socket: one connection (the monitor account; needs PROCESS
 * for the InnoDB views), facts re-read until final, connection closed. Throws BACKEND_NOT_ENCRYPTED.
 */
export async function checkMariadbServer(o: {
  socket: string;
  user?: string;
  password?: string;
  /** Current count of keys the keyring served to this server's token (read at each poll). */
  keysServed?: () => number;
  /** mariadbd's pid when we started it: its uid must not be 0. */
  serverPid?: number;
  expect: EncryptionExpectations;
  pendingTimeoutMs?: number;
}): Promise<EncryptionVerdict> {
  let conn: Connection;
  try {
    conn = await mariadb.createConnection({ socketPath: o.socket, user: o.user ?? 'root', password: o.password, connectTimeout: 5000 });
  } catch (e) {
    throw new CdbpError('BACKEND_UNAVAILABLE', `cannot connect to MariaDB to check its encryption: ${asCdbpError(e).message}`, { cause: e });
  }
  conn.on('error', () => undefined);
  try {
    return await verifyMariadbEncryption(() => readMariadbEncryptionFacts(conn, {
      ...(o.keysServed ? { keysServed: o.keysServed() } : {}),
      ...(o.serverPid !== undefined ? { serverUid: processUid(o.serverPid) } : {}),
    }), o.expect, { pendingTimeoutMs: o.pendingTimeoutMs });
  } finally {
    await conn.end().catch(() => conn.destroy());
  }
}
