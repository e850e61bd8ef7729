import { closeSync, existsSync, lstatSync, openSync, readdirSync, readlinkSync, readSync, realpathSync } from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import mariadb from 'mariadb';
import { MariadbServer } from '../../src/db/mariadb-server.ts';
import { silentLogger } from '../../src/kernel/log.ts';
import { MetricsRegistry } from '../../src/kernel/metrics.ts';
import type { DbKey } from '../../src/provisioning/types.ts';
import {
  createKeyring, keyringEnv, mariadbEncryptionConfig, prepareVolatileDir, writeKeyringCaFile,
  type Keyring, type KeyringAuditEvent, type MariadbEncryptionOptions,
} from '../../keyring/index.ts';
import { makeTestPki, type TestPki } from './test-pki.ts';
import { hardeningDirs, hardeningPaths, mariadbHardeningConfig, preparePluginDir } from '../../src/db/mariadb-hardening.ts';
import { mariadbPluginDir } from '../../src/kernel/binaries.ts';
import { tempDir } from './tmp.ts';

/**
 * Encryption-at-rest checks by grepping for a marker string. Reusable: the keyring tests use it against a
 * private mariadbd, the end-to-end tests against a MariaDB behind the proxy.
 */
export interface MarkerHit {
  file: string;
  count: number;
}

const CHUNK = 1 << 20;

/** Occurrences of `marker` in one file, read in chunks (files can be large), matches across chunk borders included. */
export function countInFile(file: string, marker: string | Buffer): number {
  const needle = Buffer.isBuffer(marker) ? marker : Buffer.from(marker);
  if (needle.length === 0) throw new Error('empty marker');
  const fd = openSync(file, 'r');
  try {
    const buf = Buffer.alloc(CHUNK + needle.length - 1);
    let carry = 0;
    let count = 0;
    for (;;) {
      const n = readSync(fd, buf, carry, CHUNK, null);
      if (n === 0) break;
      const end = carry + n;
      let i = buf.indexOf(needle, 0);
      while (i !== -1 && i + needle.length <= end) {
        count++;
        i = buf.indexOf(needle, i + needle.length);
      }
      // Keep the last needle.length-1 bytes so a match split over two chunks is seen once.
      carry = Math.min(needle.length - 1, end);
      buf.copy(buf, 0, end - carry, end);
    }
    return count;
  } finally {
    closeSync(fd);
  }
}

/** Every regular file under the given directories (symlinks not followed). */
export function listFiles(dirs: string[]): string[] {
  const out: string[] = [];
  const walk = (dir: string) => {
    if (!existsSync(dir)) return;
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, entry.name);
      if (entry.isDirectory()) walk(p);
      else if (entry.isFile()) out.push(p);
    }
  };
  for (const d of new Set(dirs.map((d) => path.resolve(d)))) walk(d);
  return out;
}

/** Files under `dirs` that contain `marker`, with the number of occurrences (files without it are left out). */
export function grepTree(dirs: string[], marker: string | Buffer): MarkerHit[] {
  const hits: MarkerHit[] = [];
  for (const file of listFiles(dirs)) {
    const count = countInFile(file, marker);
    if (count > 0) hits.push({ file, count });
  }
  return hits;
}

/**
 * Files a live process holds open under `dirs`, including unlinked ones (MariaDB unlinks its temp files
 * right after creating them, so they never show in a directory listing): read through /proc/PID/fd.
 * Linux only; needs the right to read the process's fds (same user or root).
 */
export function grepOpenFiles(pid: number, dirs: string[], marker: string | Buffer): MarkerHit[] {
  const roots = dirs.map((d) => realpathSync(d) + path.sep);
  const fdDir = `/proc/${pid}/fd`;
  const hits: MarkerHit[] = [];
  for (const fd of readdirSync(fdDir)) {
    const link = path.join(fdDir, fd);
    let target: string;
    try {
      target = readlinkSync(link).replace(/ \(deleted\)$/, '');
      if (!roots.some((r) => target.startsWith(r))) continue;
      if (!lstatSync(link).isSymbolicLink()) continue;
      const count = countInFile(link, marker);
      if (count > 0) hits.push({ file: `${target} (fd ${fd})`, count });
    } catch {
      // fd closed meanwhile
    }
  }
  return hits;
}

/** Human-readable summary for assertion messages. */
export function describeHits(hits: MarkerHit[]): string {
  return hits.length === 0 ? '(none)' : hits.map((h) => `${h.file}: ${h.count}`).join('\n');
}

// ---------------------------------------------------------------------------------------------------
// A private mariadbd whose keys come from a real keyring (or, for control runs, no encryption at all).


export interface KeyedMariadb {
  server: MariadbServer;
  /** Undefined in a control run (encryption: false). */
  keyring: Keyring | undefined;
  vaultUrl: string | undefined;
  pki: TestPki;
  metrics: MetricsRegistry;
  audit: KeyringAuditEvent[];
  /** Memory-backed dir (tmpfs) holding the Aria log and the tmpdir (encrypted runs only). */
  volatileDir: string | undefined;
  ariaLogDir: string | undefined;
  /** Directories on the data disk that must hold no plaintext: the instance dir (datadir, binlogs, logs, my.cnf). */
  persistentDirs: string[];
  query(sql: string, params?: unknown[]): Promise<any>;
  /** (Re)starts mariadbd with a freshly issued token. */
  start(): Promise<void>;
  stop(): Promise<void>;
  /** Stops everything and removes the temp dirs. */
  destroy(): Promise<void>;
}

export function testKeys(ids: number[], version = 1): DbKey[] {
  return ids.map((id) => ({ id, version, key: randomBytes(32) }));
}

/**
 * Keyring up → (first run) mariadb-install-db → mariadbd, the order the proxy composition uses, each
 * mariadbd start with a fresh token passed in VAULT_TOKEN. `encryption: false` is the control run.
 */
export async function startKeyedMariadb(opts: {
  encryption: boolean;
  keys?: DbKey[];
  config?: Partial<MariadbEncryptionOptions>;
  extraConfig?: string[];
  startTimeoutMs?: number;
  /**
   * The managed server's hardening (src/db/mariadb-hardening.ts): InnoDB only, logs/error log/secure_file_priv
   * on the volatile dir, a plugin dir with only the key plugin. Encrypted runs only; default off (the
   * at-rest tests below write user Aria tables on purpose).
   */
  hardening?: boolean;
} = { encryption: true }): Promise<KeyedMariadb> {
  const dir = tempDir('keyring-db');
  const pki = makeTestPki();
  const metrics = new MetricsRegistry();
  const audit: KeyringAuditEvent[] = [];
  const env: Record<string, string> = {};
  let keyring: Keyring | undefined;
  let vaultUrl: string | undefined;
  let volatileDir: string | undefined;
  let ariaLogDir: string | undefined;
  let tmpdir: string | undefined;
  let errorLog: string | undefined;
  const ownedDirs: string[] = [];
  let extraConfig = [...(opts.extraConfig ?? [])];
  if (opts.encryption) {
    keyring = createKeyring({ keys: opts.keys ?? testKeys([1, 2]), tls: pki, log: silentLogger(), metrics, audit: (e) => audit.push(e) });
    vaultUrl = (await keyring.listen()).url;
    const caFile = writeKeyringCaFile(dir.path, pki.caPem);
    // What MariaDB writes unencrypted (Aria log, internal Aria temp tables) goes to memory only.
    volatileDir = mkdtempSync('/dev/shm/cdbp-vol-');
    ariaLogDir = prepareVolatileDir(path.join(volatileDir, 'aria')).dir;
    tmpdir = prepareVolatileDir(path.join(volatileDir, 'tmp')).dir;
    extraConfig = [...mariadbEncryptionConfig({ vaultUrl, caFile, ariaLogDir, ...opts.config }), ...extraConfig];
    ownedDirs.push(volatileDir, ariaLogDir, tmpdir);
    if (opts.hardening) {
      const h = { volatileDir, pluginDir: preparePluginDir(path.join(dir.path, 'plugins'), mariadbPluginDir()) };
      extraConfig = [...extraConfig, ...mariadbHardeningConfig(h)];
      ownedDirs.push(...hardeningDirs(h));
      errorLog = hardeningPaths(h).errorLog;
    }
  } else {
    extraConfig = ['log-bin=mariadb-bin', ...extraConfig];
  }
  // MariadbServer reads `env` at each spawn, so refreshing this object gives every start its own token.
  const server = new MariadbServer({ dir: dir.path, tmpdir, extraConfig, env, ownedDirs, errorLog, ariaLogDir, startTimeoutMs: opts.startTimeoutMs ?? 30_000 });
  const freshToken = () => { if (keyring) Object.assign(env, keyringEnv(keyring.issueToken())); };
  const query = async (sql: string, params?: unknown[]) => {
    const conn = await mariadb.createConnection({ socketPath: server.socket, user: 'root', multipleStatements: true });
    try {
      return await conn.query(sql, params);
    } finally {
      await conn.end();
    }
  };
  const db: KeyedMariadb = {
    server, keyring, vaultUrl, pki, metrics, audit, volatileDir, ariaLogDir,
    persistentDirs: [dir.path],
    query,
    async start() {
      freshToken();
      await server.start();
    },
    stop: () => server.stop(),
    async destroy() {
      await server.stop();
      await keyring?.close();
      dir.remove();
      if (volatileDir && !process.env.CDBP_KEEP_TMP) rmSync(volatileDir, { recursive: true, force: true });
    },
  };
  try {
    freshToken();
    await server.initialize();
    await db.start();
  } catch (e) {
    await db.destroy();
    throw e;
  }
  return db;
}

/**
 * Writes `marker` through every path MariaDB can persist it: an InnoDB table (also a binlogged write) and
 * a transactional Aria table. Rows are padded so the table spans many pages and the temp-file checks
 * below really spill to disk.
 */
export async function writeMarkerRows(query: (sql: string) => Promise<unknown>, marker: string, rows = 4096): Promise<void> {
  if (!/^[A-Za-z0-9_]+$/.test(marker)) throw new Error('marker must be [A-Za-z0-9_]');
  await query('CREATE DATABASE IF NOT EXISTS atrest');
  await query('CREATE TABLE atrest.inno (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(255)) ENGINE=InnoDB');
  await query('CREATE TABLE atrest.aria (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(255)) ENGINE=Aria');
  await query(`INSERT INTO atrest.inno (v) VALUES (CONCAT('${marker} ', REPEAT('i', 100)))`);
  let n = 1;
  while (n < rows) {
    await query(`INSERT INTO atrest.inno (v) SELECT CONCAT('${marker} ', REPEAT('i', 100), id + ${n}) FROM atrest.inno LIMIT ${rows - n}`);
    n = Math.min(rows, n * 2);
  }
  await query(`INSERT INTO atrest.aria (v) SELECT CONCAT('${marker} aria ', id) FROM atrest.inno`);
  await query(`INSERT INTO atrest.aria (v) VALUES ('${marker} single aria row')`);
}

/**
 * Runs a sort and a GROUP BY that spill to disk (tiny sort buffer and tmp_table_size), pauses while
 * mariadbd still holds the (already unlinked) temp files open, and greps those through /proc.
 */
export async function grepSpilledTempFiles(server: MariadbServer, marker: string): Promise<{ sort: MarkerHit[]; groupBy: MarkerHit[]; opened: number }> {
  const conn = await mariadb.createConnection({ socketPath: server.socket, user: 'root' });
  let opened = 0;
  const probe = async (sql: string): Promise<MarkerHit[]> => {
    const stream = conn.queryStream(sql);
    const it = stream[Symbol.asyncIterator]();
    await it.next(); // first row: the sort / temp table is complete, rows are being sent from the file
    stream.pause();
    await new Promise((r) => setTimeout(r, 200));
    opened += countOpenUnder(server.pid!, [server.tmpdir]);
    const hits = grepOpenFiles(server.pid!, [server.tmpdir], marker);
    stream.resume();
    for (let r = await it.next(); !r.done; r = await it.next()) { /* drain */ }
    return hits;
  };
  try {
    await conn.query('SET SESSION sort_buffer_size=32768, tmp_table_size=16384, max_heap_table_size=16384, big_tables=0');
    const sort = await probe('SELECT v, id FROM atrest.inno ORDER BY v DESC, id');
    const groupBy = await probe("SELECT CONCAT(v, REPEAT('g', 100)) AS g, COUNT(*) AS n FROM atrest.inno GROUP BY g ORDER BY NULL");
    return { sort, groupBy, opened };
  } finally {
    await conn.end();
  }
}

function countOpenUnder(pid: number, dirs: string[]): number {
  const roots = dirs.map((d) => realpathSync(d) + path.sep);
  let n = 0;
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      if (roots.some((r) => readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith(r))) n++;
    } catch { /* closed */ }
  }
  return n;
}
