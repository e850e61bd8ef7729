/**
 * The per-file freshness of a managed PostgreSQL's data directory (issue 22), wired like MariaDB's
 * (mariadb-inventory.ts) and read through the gocryptfs plaintext mount:
 *
 *   start (offline: mounted, PostgreSQL not started): the inventory the anchored record references is
 *     compared with the files (postgres-check.ts): a few blocks per relation file, one byte per pg_xact
 *     segment, full reads only of relation files created since the sweep (to tell new from foreign).
 *   start (online: PostgreSQL up, no client yet): a file missing since a non-exact sweep is checked against
 *     pg_database / pg_class (pg_relation_filenode) and the oldest xid.
 *   run time: a background sweep every `sweepIntervalMs` re-reads only files whose size/mtime changed, at
 *     most `sweepBytesPerSecond`; witnesses only at or below the redo LSN of the last completed checkpoint
 *     (every page version below it is on disk) and xids below that checkpoint's oldest active xid (their
 *     pg_xact status was flushed by it). The guard seals the new reference into its next epoch.
 *   clean stop (PostgreSQL gone, still mounted): an exact sweep (every block counts), sealed by the final epoch.
 */
import pg from 'pg';
import { open } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '../../../src/kernel/log.ts';
import type { MetricsRegistry } from '../../../src/kernel/metrics.ts';
import { parseLsn } from '../../../src/db/postgres-server.ts';
import type { FileViolation } from './check.ts';
import { checkPgInventory, pgDeferredViolations, type PgCatalog } from './postgres-check.ts';
import { readWalEvidence } from './postgres-wal.ts';
import { formatLsn } from './postgres-page.ts';
import { PG_STATE_SHUTDOWNED, PgDatadirReader, listPgFiles, observePgDatadir, readPgControl, sweepPgFile, type PgSweepLimits } from './postgres-files.ts';
import { SweepBudgetExceeded, fileStamp } from './innodb-files.ts';
import type { InventoryStore } from './store.ts';
import type { InventoryRef, PgInventory, PgInventoryFile } from './types.ts';

export interface PostgresInventoryOptions {
  /** PostgreSQL's data directory (inside the mount when encrypted at rest). */
  datadir: string;
  store: InventoryStore;
  log: Logger;
  metrics?: MetricsRegistry;
  sweepIntervalMs: number;
  sweepBytesPerSecond: number;
  finalSweepBudgetMs?: number;
  /** The superuser connection over the socket (the proxy's monitor account). */
  connection: () => { socketDir: string; port: number; user: string; password?: string };
}

interface Cached { stamp: string; entry: PgInventoryFile; complete: boolean }

export class PostgresInventory {
  private readonly cache = new Map<string, Cached>();
  private deferred: PgInventoryFile[] = [];
  private emptied: PgInventoryFile[] = [];
  private timer: NodeJS.Timeout | undefined;
  private sweeping: Promise<InventoryRef | undefined> | undefined;
  private stopped = false;
  private phase: 'idle' | 'verifying' | 'verified' | 'running' | 'stopped' = 'idle';
  private verifyMs: number | undefined;
  private verified: { files: number; added: number } | undefined;
  private lastSweepAt: number | undefined;
  private lastSweepMs: number | undefined;
  private lastSweepBytes = 0;
  private written: string | undefined;
  private counted: string | undefined;
  private previous: string | undefined;
  /** Durable LSN of the inventories this process read or wrote (the WAL slot follows the counted one). */
  private readonly durableOf = new Map<string, string>();

  constructor(private readonly opts: PostgresInventoryOptions) {
    const m = opts.metrics;
    m?.gauge('cdbp_freshness_inventory_verifying', '1 while the start-up check of the data files against the sealed inventory runs', (g) => g.set(this.phase === 'verifying' ? 1 : 0));
    m?.gauge('cdbp_freshness_inventory_verify_seconds', 'Duration of the last start-up check of the data files', (g) => {
      if (this.verifyMs !== undefined) g.set(this.verifyMs / 1000);
    });
    m?.gauge('cdbp_freshness_inventory_sweep_age_seconds', 'Seconds since the last sealed sweep of the data files: after a crash, a file put back to a copy newer than the sweep is not caught', (g) => {
      if (this.lastSweepAt !== undefined) g.set((Date.now() - this.lastSweepAt) / 1000);
    });
    m?.gauge('cdbp_freshness_inventory_files', 'Data files in the last sweep', (g) => g.set(this.cache.size));
  }

  get running(): boolean {
    return this.phase === 'running';
  }

  status(): Record<string, unknown> {
    return {
      phase: this.phase,
      verifyMs: this.verifyMs ?? null,
      ...(this.verified ? { verifiedFiles: this.verified.files, newFiles: this.verified.added } : {}),
      files: this.cache.size,
      sweepIntervalMs: this.opts.sweepIntervalMs,
      lastSweepAt: this.lastSweepAt ? new Date(this.lastSweepAt).toISOString() : null,
      lastSweepAgeSeconds: this.lastSweepAt ? (Date.now() - this.lastSweepAt) / 1000 : null,
      lastSweepMs: this.lastSweepMs ?? null,
      lastSweepBytes: this.lastSweepBytes,
    };
  }

  /** Offline check (mounted, PostgreSQL not running). Throws like InventoryStore.read when the inventory is gone or edited. */
  async verifyOffline(ref: InventoryRef | undefined): Promise<FileViolation[]> {
    if (!ref) {
      this.opts.log.info('freshness: no data-file inventory sealed yet (first start or an older record): the first sweep seals one');
      return [];
    }
    this.phase = 'verifying';
    const started = Date.now();
    const inv = await this.opts.store.read<PgInventory>(ref.digest);
    this.counted = ref.digest;
    this.durableOf.set(ref.digest, inv.durableLsn);
    const found = observePgDatadir(this.opts.datadir);
    const bytes = found.reduce((s, f) => s + f.pages * 8192, 0);
    this.opts.log.info({ files: found.length, sealedFiles: inv.files.length, gib: +(bytes / 2 ** 30).toFixed(3), exact: ref.exact, sweptAt: ref.takenAt },
      `freshness: verifying ${found.length} data files (${(bytes / 2 ** 20).toFixed(1)} MiB) against the sealed inventory`);
    // From the sweep's checkpoint redo (≤ its start): a truncation logged just before the sweep read the
    // still-long file is in range too. The replication slot (retainWal) keeps that WAL.
    // Two passes only when needed: the check is synchronous and cheap, pg_waldump is neither.
    const reader = new PgDatadirReader(this.opts.datadir);
    let asked = false;
    let result = checkPgInventory(inv, ref.exact, found, reader, () => {
      asked = true;
      return { available: false, from: BigInt(inv.durableLsn), why: 'not read yet' };
    });
    if (asked) {
      const wal = await readWalEvidence(this.opts.datadir, BigInt(inv.durableLsn), readPgControl(this.opts.datadir));
      this.opts.log.info(wal.available ? { walFrom: formatLsn(wal.from), truncations: wal.truncatedTo.size, dropped: wal.dropped.size } : { walFrom: formatLsn(wal.from), unavailable: wal.why },
        'freshness: read the WAL since the sweep for truncations and dropped relations');
      result = checkPgInventory(inv, ref.exact, found, reader, () => wal);
    }
    this.deferred = result.deferred;
    this.emptied = result.emptied;
    this.verifyMs = Date.now() - started;
    this.verified = { files: result.checked, added: result.added.length };
    this.phase = 'verified';
    if (result.violations.length === 0) {
      const present = new Set(found.map((f) => f.path));
      for (const e of inv.files) {
        const stamp = present.has(e.path) ? fileStamp(this.opts.datadir, e.path) : undefined;
        if (stamp) this.cache.set(e.path, { stamp, entry: e, complete: ref.exact });
      }
      this.opts.log.info({ ms: this.verifyMs, files: result.checked, newFiles: result.added.length, deferred: result.deferred.length + result.emptied.length, truncatedPerWal: result.truncated.length, droppedPerWal: result.dropped.length },
        'freshness: data files verified against the sealed inventory');
    }
    return result.violations;
  }

  /** Online part (PostgreSQL up, no client yet): files missing since a non-exact sweep. */
  async verifyOnline(): Promise<FileViolation[]> {
    if (this.deferred.length === 0 && this.emptied.length === 0) return [];
    return pgDeferredViolations(this.deferred, await this.catalog(), this.emptied);
  }

  private query<T extends pg.QueryResultRow>(database: string, sql: string, params: unknown[] = []): Promise<T[]> {
    return pgQuery<T>(this.opts.connection(), database, sql, params);
  }

  /**
   * Keeps the WAL a crash-time check needs: from the durable LSN of the counted inventory on (a
   * truncation since then is proven by its record, postgres-wal.ts). A physical replication slot that
   * never streams anywhere pins it; it moves forward with each counted sweep, so it holds about one sweep
   * interval of WAL. Failures only warn: without the WAL a later crash-time truncation is refused (fail
   * closed), never accepted.
   */
  private async retainWal(durableLsn: string | undefined): Promise<void> {
    try {
      // A slot PostgreSQL gave up on (past max_slot_wal_keep_size: sweeps stalled) keeps nothing: start over.
      await this.query('postgres', `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
        WHERE slot_name = '${WAL_SLOT}' AND wal_status = 'lost'`);
      await this.query('postgres', `SELECT pg_create_physical_replication_slot('${WAL_SLOT}', true)
        WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = '${WAL_SLOT}')`);
      if (durableLsn === undefined) return;
      const lsn = formatLsn(BigInt(durableLsn));
      await this.query('postgres', `SELECT pg_replication_slot_advance('${WAL_SLOT}', $1::pg_lsn)
        FROM pg_replication_slots WHERE slot_name = '${WAL_SLOT}' AND restart_lsn < $1::pg_lsn`, [lsn]);
    } catch (e) {
      this.opts.log.warn({ err: (e as Error).message }, 'freshness: could not keep the WAL since the counted sweep (a crash-time truncation would be refused)');
    }
  }

  private async catalog(): Promise<PgCatalog> {
    const dbs = await this.query<{ oid: string; datname: string; datallowconn: boolean }>('postgres', 'SELECT oid::text, datname, datallowconn FROM pg_database');
    const [cp] = await this.query<{ oldest: string }>('postgres', 'SELECT oldest_xid::text AS oldest FROM pg_control_checkpoint()');
    const cat: PgCatalog = { databases: new Set(dbs.map((d) => Number(d.oid))), relations: new Map(), oldestXid: Number(cp!.oldest), unreadable: new Set() };
    const wanted = new Set([...this.deferred, ...this.emptied].map((e) => /^base\/(\d+)\//.exec(e.path)?.[1]).filter((x): x is string => !!x).map(Number));
    const sql = `SELECT c.relisshared AS shared, pg_relation_filenode(c.oid)::text AS node, pg_relation_size(c.oid)::text AS size
      FROM pg_class c WHERE pg_relation_filenode(c.oid) IS NOT NULL`;
    const add = (db: number | 'global', rows: Array<{ shared: boolean; node: string; size: string }>, sharedOnly: boolean) => {
      for (const r of rows) if (r.shared === sharedOnly) cat.relations.set(`${r.shared ? 'global' : db}/${r.node}`, Number(r.size));
    };
    add('global', await this.query('postgres', sql), true);
    for (const d of dbs) {
      const oid = Number(d.oid);
      if (!wanted.has(oid)) continue;
      if (!d.datallowconn) { cat.unreadable.add(oid); continue; }
      add(oid, await this.query(d.datname, sql), false);
    }
    return cat;
  }

  start(sealed: (ref: InventoryRef) => void): void {
    this.phase = 'running';
    void this.retainWal(this.counted ? this.durableOf.get(this.counted) : undefined);
    const tick = () => {
      this.timer = setTimeout(() => {
        void this.sweep(false).then((ref) => {
          if (ref && !this.stopped) sealed(ref);
        }, (e: unknown) => this.opts.log.warn({ err: (e as Error).message }, 'freshness: data-file sweep failed (the previous inventory stays sealed)'))
          .finally(() => { if (!this.stopped) tick(); });
      }, this.opts.sweepIntervalMs);
      this.timer.unref();
    };
    tick();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.phase === 'running') this.phase = 'stopped';
    if (this.timer) clearTimeout(this.timer);
    await this.sweeping?.catch(() => undefined);
  }

  /** Same retention as MariaDB's (mariadb-inventory.ts countedRef). */
  countedRef(digest: string | undefined): void {
    if (!digest || digest === this.counted) return;
    this.previous = this.counted;
    this.counted = digest;
    if (this.phase === 'running') void this.retainWal(this.durableOf.get(digest));
    if (!this.sweeping) this.opts.store.retain([digest, this.previous, this.written]);
  }

  /** One sweep; `stopped`: PostgreSQL shut down cleanly, every block counts (exact). */
  sweep(stopped: boolean): Promise<InventoryRef | undefined> {
    if (this.sweeping) return this.sweeping.then(() => this.sweep(stopped));
    const run = this.sweepOnce(stopped).catch((e: unknown) => {
      if (!(e instanceof SweepBudgetExceeded)) throw e;
      this.opts.log.warn({ budgetMs: this.opts.finalSweepBudgetMs ?? 20_000 }, 'freshness: the clean-stop data-file sweep ran out of time; the last background sweep stays sealed (not exact)');
      return undefined;
    }).finally(() => { this.sweeping = undefined; });
    this.sweeping = run;
    return run;
  }

  /** Running: limits from the last completed checkpoint. Stopped: pg_control of the clean shutdown. */
  private async limits(stopped: boolean): Promise<{ start: bigint; durable: bigint; limits: PgSweepLimits } | undefined> {
    if (stopped) {
      // Exact only after a clean shutdown (a stop that had to kill PostgreSQL leaves the last sweep sealed).
      const c = readPgControl(this.opts.datadir);
      if (!c || c.state !== PG_STATE_SHUTDOWNED) return undefined;
      return { start: c.checkpoint, durable: c.checkpoint, limits: { lsn: (1n << 64n) - 1n, xid: Infinity } };
    }
    const [r] = await this.query<{ redo: string; active: string; insert: string }>('postgres',
      'SELECT redo_lsn::text AS redo, oldest_active_xid::text AS active, pg_current_wal_insert_lsn()::text AS insert FROM pg_control_checkpoint()');
    const redo = parseLsn(r!.redo);
    // oldest_active_xid is 0 for a shutdown checkpoint (and with wal_level=minimal): no xid counts as durable yet.
    return { start: parseLsn(r!.insert), durable: redo, limits: { lsn: redo, xid: Number(r!.active) } };
  }

  private async sweepOnce(stopped: boolean): Promise<InventoryRef | undefined> {
    const { datadir } = this.opts;
    const started = Date.now();
    const l = await this.limits(stopped);
    if (!l) return undefined;
    const deadline = stopped ? started + (this.opts.finalSweepBudgetMs ?? 20_000) : undefined;
    const files: PgInventoryFile[] = [];
    const seen = new Set<string>();
    let bytes = 0;
    for (const { path: rel, kind } of listPgFiles(datadir)) {
      if (this.stopped && !stopped) return undefined;
      if (deadline !== undefined && Date.now() > deadline) throw new SweepBudgetExceeded('sweep budget exceeded');
      if (stopped) await flushFile(path.join(datadir, rel));
      const stamp = fileStamp(datadir, rel);
      if (!stamp) continue;
      const cached = this.cache.get(rel);
      if (cached && cached.stamp === stamp && (!stopped || cached.complete)) {
        files.push(cached.entry);
        seen.add(rel);
        continue;
      }
      const r = await sweepPgFile(datadir, rel, kind, l.limits, { bytesPerSecond: stopped ? 0 : this.opts.sweepBytesPerSecond, deadline });
      if (!r) continue;
      bytes += r.bytes;
      // A previous witness stays a valid lower bound while nothing newer is durable yet.
      let entry = r.entry;
      // Only where the page still carries at least that LSN: a file cut and regrown since may hold a zero
      // page there, whose cut lies before this sweep's WAL range (a false alarm at the next crash).
      if (cached && entry.kind === 'pg-relation' && entry.witnesses.length === 0) {
        const reader = new PgDatadirReader(datadir);
        entry = { ...entry, witnesses: cached.entry.witnesses.filter((w) => w.page < entry.pages && (reader.readLsn(rel, w.page) ?? 0n) >= BigInt(w.lsn)) };
      }
      if (cached && entry.kind === 'pg-xact' && !entry.xact && cached.entry.xact) entry = { ...entry, xact: cached.entry.xact };
      files.push(entry);
      seen.add(rel);
      this.cache.set(rel, { stamp, entry, complete: stopped });
    }
    for (const rel of [...this.cache.keys()]) if (!seen.has(rel)) this.cache.delete(rel);
    const inv: PgInventory = { engine: 'postgres', startLsn: l.start.toString(), durableLsn: l.durable.toString(), takenAt: new Date(started).toISOString(), files };
    const digest = await this.opts.store.write(inv);
    this.written = digest;
    this.durableOf.set(digest, inv.durableLsn);
    if (this.durableOf.size > 8) this.durableOf.delete(this.durableOf.keys().next().value!);
    this.lastSweepAt = started;
    this.lastSweepMs = Date.now() - started;
    this.lastSweepBytes = bytes;
    return { digest, startLsn: inv.startLsn, durableLsn: inv.durableLsn, exact: stopped, files: files.length, takenAt: inv.takenAt };
  }
}

/** The replication slot that keeps the WAL since the counted sweep (retainWal). */
export const WAL_SLOT = 'cdbp_inventory';

/**
 * The most WAL the slot may pin if sweeps stall (PostgreSQL then drops its hold rather than fill the
 * disk; a crash-time truncation is refused until the next counted sweep: fail closed).
 */
export const WAL_SLOT_KEEP = 'max_slot_wal_keep_size = 2GB';

type PgConnection = ReturnType<PostgresInventoryOptions['connection']>;

async function pgQuery<T extends pg.QueryResultRow>(c: PgConnection, database: string, sql: string, params: unknown[] = []): Promise<T[]> {
  const client = new pg.Client({ host: c.socketDir, port: c.port, user: c.user, password: c.password, database, connectionTimeoutMillis: 5000, application_name: 'cdbp-inventory' });
  client.on('error', () => undefined);
  await client.connect();
  try {
    return (await client.query<T>(sql, params)).rows;
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** Freshness off: nothing follows the slot any more, so it must not pin the WAL for ever. */
export async function dropInventoryWalSlot(c: PgConnection): Promise<void> {
  await pgQuery(c, 'postgres', `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '${WAL_SLOT}'`);
}

async function flushFile(file: string): Promise<void> {
  try {
    const fh = await open(file, 'r');
    try { await fh.sync(); } finally { await fh.close(); }
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
}
