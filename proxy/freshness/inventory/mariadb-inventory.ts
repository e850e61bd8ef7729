/**
 * The per-file freshness of a MariaDB data directory (issue 22), wired as the proxy needs it:
 *
 *   start (offline, before the keyring releases any key): the inventory the anchored record references is
 *     compared with the files on the volume (check.ts); O(files): page 0 and the witness pages of each
 *     file, plus a full read of files created since the sweep (to tell new from foreign).
 *   start (online, after mariadbd is up, before any client): a tablespace missing or moved since a
 *     non-exact sweep is checked against InnoDB's dictionary (a DROP or RENAME explains it; else violation).
 *   run time: a background sweep every `sweepIntervalMs` re-reads only files whose size/mtime changed, at
 *     most `sweepBytesPerSecond`, writes a new sealed inventory and hands its reference to the guard, which
 *     puts it into the next epoch it seals anyway (no extra round trip, no fsync on an ack's path).
 *   clean stop (mariadbd gone): an exact sweep, sealed by the final epoch.
 */
import mariadb from 'mariadb';
import { open } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '../../../src/kernel/log.ts';
import type { MetricsRegistry } from '../../../src/kernel/metrics.ts';
import { readOfflineCheckpoint } from '../mariadb-position.ts';
import { checkDeferred, checkInventory, checkRecoveryRefusal, type Deferred, type FileViolation, type SpaceNames } from './check.ts';
import { FilePageReader, SweepBudgetExceeded, WITNESSES_PER_FILE, fileStamp, listInnodbFiles, observeDatadir, sweepFile } from './innodb-files.ts';
import type { InventoryStore } from './store.ts';
import type { Inventory, InventoryFile, InventoryRef, Witness } from './types.ts';
import { pickWitnesses } from './witnesses.ts';

export interface MariadbInventoryOptions {
  datadir: string;
  store: InventoryStore;
  log: Logger;
  metrics?: MetricsRegistry;
  /** Background sweep period: the window in which a crash leaves a file's latest writes unwitnessed. */
  sweepIntervalMs: number;
  /** Read-rate cap of the background sweep (bytes per second; 0 = unbounded). */
  sweepBytesPerSecond: number;
  /**
   * Time the clean-stop sweep may take (it reads every file changed since the last background sweep in
   * full; disk-bound, docs/FRESHNESS.md "Measured"). Past it the stop goes on and the last background
   * sweep stays sealed (non-exact). Default 20 s.
   */
  finalSweepBudgetMs?: number;
}

interface Cached {
  stamp: string;
  entry: InventoryFile;
  /** The witnesses include the file's highest-LSN page (no page was above the sweep's durable limit). */
  complete: boolean;
  /** Page versions seen above the durable limit: witnesses once a later checkpoint passes them. */
  pending: Witness[];
  /** 1 when the last sweep did not find the file and carried its entry over (settle). */
  missed: number;
}

export class MariadbInventory {
  private readonly cache = new Map<string, Cached>();
  private deferred: Deferred = { missing: [], moved: [] };
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

  constructor(private readonly opts: MariadbInventoryOptions) {
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

  /**
   * Only an inventory whose start-up checks passed and whose sweeps ran may be sealed as exact at the stop:
   * a stop during start-up must not vouch for files nobody verified.
   */
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

  /**
   * Offline start-up check. Returns the violations (empty: the files are at least as new as the sealed
   * inventory says). Throws TAMPER_DETECTED when the referenced inventory is missing or edited.
   */
  async verifyOffline(ref: InventoryRef | undefined): Promise<FileViolation[]> {
    if (!ref) {
      this.opts.log.info('freshness: no data-file inventory sealed yet (first start or an older record): the first sweep seals one');
      return [];
    }
    this.phase = 'verifying';
    const started = Date.now();
    const inv = await this.opts.store.read(ref.digest);
    const found = observeDatadir(this.opts.datadir);
    const bytes = found.reduce((s, f) => s + f.pages * f.pageSize, 0);
    this.opts.log.info({ files: found.length, sealedFiles: inv.files.length, gib: +(bytes / 2 ** 30).toFixed(3), exact: ref.exact, sweptAt: ref.takenAt },
      `freshness: verifying ${found.length} data files (${(bytes / 2 ** 20).toFixed(1)} MiB) against the sealed inventory`);
    const pageSize = new Map(found.map((f) => [f.path, f.pageSize]));
    const result = checkInventory(inv, ref.exact, found, new FilePageReader(this.opts.datadir, (rel) => pageSize.get(rel) ?? 16384));
    this.deferred = result.deferred;
    this.verifyMs = Date.now() - started;
    this.verified = { files: result.checked, added: result.added.length };
    this.phase = 'verified';
    if (result.violations.length === 0) {
      // Witnesses stay valid lower bounds: files the database does not touch need no re-read.
      for (const e of inv.files) {
        const now = found.find((f) => f.spaceId === e.spaceId);
        const stamp = now && fileStamp(this.opts.datadir, now.path);
        if (now && stamp) this.cache.set(now.path, { stamp, entry: { ...e, path: now.path }, complete: ref.exact, pending: [], missed: 0 });
      }
      this.opts.log.info({ ms: this.verifyMs, files: result.checked, newFiles: result.added, deferred: result.deferred.missing.length + result.deferred.moved.length },
        'freshness: data files verified against the sealed inventory');
    }
    return result.violations;
  }

  /** Online part (mariadbd up, no client yet): missing or moved tablespaces against the dictionary. */
  async verifyOnline(socket: string, user: string, password: string | undefined): Promise<FileViolation[]> {
    if (this.deferred.missing.length === 0 && this.deferred.moved.length === 0) return [];
    const conn = await mariadb.createConnection({ socketPath: socket, user, password, connectTimeout: 5000 });
    try {
      const rows = (await conn.query('SELECT SPACE AS s, NAME AS n FROM information_schema.INNODB_SYS_TABLESPACES')) as Array<{ s: number | bigint; n: string }>;
      const dict: SpaceNames = new Map(rows.map((r) => [Number(r.s), r.n]));
      return checkDeferred(this.deferred, dict);
    } finally {
      await conn.end().catch(() => conn.destroy());
    }
  }

  /** mariadbd did not start (`errorText`: its error log's tail): a verdict on the tablespaces left to the online check, if its refusal gives one. */
  explainStartFailure(errorText: string): FileViolation[] {
    return checkRecoveryRefusal(this.deferred, errorText);
  }

  /** Starts the background sweeps; `sealed(ref)` hands each new inventory to the guard. */
  start(sealed: (ref: InventoryRef) => void): void {
    this.phase = 'running';
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

  /** Stops the background sweeps (waits for one in progress). */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.phase === 'running') this.phase = 'stopped';
    if (this.timer) clearTimeout(this.timer);
    await this.sweeping?.catch(() => undefined);
  }

  /**
   * The guard counted a record referencing `digest`: inventories older than the previous one are no longer
   * needed. The previous one stays because the record cache on the volume (what `cdbp recover` re-anchors
   * a backup to) is written in the background and may still reference it.
   */
  countedRef(digest: string | undefined): void {
    if (!digest || digest === this.counted) return;
    this.previous = this.counted;
    this.counted = digest;
    if (!this.sweeping) this.opts.store.retain([digest, this.previous, this.written]);
  }

  /**
   * One sweep. `stopped`: mariadbd is not running (clean stop): every file is flushed first and all pages
   * count, so the inventory is exact. Otherwise only pages below the redo checkpoint count (durable).
   */
  sweep(stopped: boolean): Promise<InventoryRef | undefined> {
    if (this.sweeping) return this.sweeping.then(() => this.sweep(stopped));
    const run = this.sweepOnce(stopped).catch((e: unknown) => {
      if (!(e instanceof SweepBudgetExceeded)) throw e;
      this.opts.log.warn({ budgetMs: this.opts.finalSweepBudgetMs ?? 20_000, lastSweepAt: this.lastSweepAt ? new Date(this.lastSweepAt).toISOString() : null },
        'freshness: the clean-stop data-file sweep ran out of time; the last background sweep stays sealed (not exact)');
      return undefined;
    }).finally(() => {
      this.sweeping = undefined;
    });
    this.sweeping = run;
    return run;
  }

  private async sweepOnce(stopped: boolean): Promise<InventoryRef | undefined> {
    const { datadir } = this.opts;
    const started = Date.now();
    const checkpoint = readOfflineCheckpoint(datadir);
    if (checkpoint === undefined) return undefined;
    const limit = stopped ? (1n << 64n) - 1n : checkpoint - 1n;
    const deadline = stopped ? started + (this.opts.finalSweepBudgetMs ?? 20_000) : undefined;
    const swept: string[] = [];
    const tried = new Set<string>();
    // What the previous sweep had, by tablespace: a RENAME swap during this sweep can leave a path's cache
    // entry overwritten by another tablespace, and settle() must still find the one this sweep missed.
    const before = [...this.cache.values()];
    let bytes = 0;
    // A RENAME while the sweep runs can hide a tablespace from one listing (listed as d2.ibd, gone back to
    // d.ibd by the time it is read): files that appeared since the listing are swept in up to 3 more passes.
    let listing = listInnodbFiles(datadir);
    for (let pass = 0; pass < 4 && listing.some((rel) => !tried.has(rel)); pass++) {
      for (const rel of listing) {
        if (tried.has(rel)) continue;
        tried.add(rel);
        if (this.stopped && !stopped) return undefined;
        if (deadline !== undefined && Date.now() > deadline) throw new SweepBudgetExceeded('sweep budget exceeded');
        if (stopped) await flushFile(path.join(datadir, rel));
        const stamp = fileStamp(datadir, rel);
        if (!stamp) {
          tried.delete(rel); // gone for now (a RENAME in flight): a later listing may show it again
          continue;
        }
        const cached = this.cache.get(rel);
        if (cached && cached.stamp === stamp && (!stopped || cached.complete)) {
          if (cached.missed) this.cache.set(rel, { ...cached, missed: 0 });
          swept.push(rel);
          continue;
        }
        const r = await sweepFile(datadir, rel, limit, { bytesPerSecond: stopped ? 0 : this.opts.sweepBytesPerSecond, deadline });
        if (!r) {
          tried.delete(rel);
          continue;
        }
        bytes += r.bytes;
        // An earlier sweep's witnesses and pending versions of the same tablespace stay valid lower bounds
        // (page LSNs only grow), but only where the page still carries at least that LSN: DISCARD + IMPORT
        // TABLESPACE puts another copy under the same space id, which may be shorter or older.
        const prev = before.find((c) => c.entry.spaceId === r.entry.spaceId);
        const reader = new FilePageReader(datadir, () => r.entry.pageSize);
        const stillThere = (ws: Witness[] | undefined) => (ws ?? []).filter((w) => w.page < r.entry.pages && (readLsnOrZero(reader, rel, w.page) >= BigInt(w.lsn)));
        this.cache.set(rel, {
          stamp: r.stamp, entry: r.entry, complete: stopped, missed: 0,
          pending: [...r.pending, ...stillThere(prev?.entry.witnesses), ...stillThere(prev?.pending)],
        });
        swept.push(rel);
      }
      listing = listInnodbFiles(datadir);
    }
    const kept = this.settle(swept, new Set(listing), before, stopped);
    // A checkpoint read after every file was read: what it covers is durable (witnesses.ts).
    const durable = stopped ? limit : (readOfflineCheckpoint(datadir) ?? checkpoint) - 1n;
    const files = kept.map((rel) => {
      const c = this.promote(this.cache.get(rel)!, durable);
      this.cache.set(rel, c);
      return c.entry;
    });
    const inv: Inventory = {
      engine: 'mariadb', startLsn: checkpoint.toString(), durableLsn: (stopped ? checkpoint : durable).toString(),
      takenAt: new Date(started).toISOString(), files,
    };
    const digest = await this.opts.store.write(inv);
    this.written = digest;
    this.lastSweepAt = started;
    this.lastSweepMs = Date.now() - started;
    this.lastSweepBytes = bytes;
    return { digest, startLsn: inv.startLsn, durableLsn: inv.durableLsn, exact: stopped, files: files.length, takenAt: inv.takenAt };
  }

  /**
   * Which cached files the inventory lists: the swept ones, one path per tablespace (a file swept under a
   * name it has since left, while its space was also swept under its new one, is dropped), and, in a running
   * sweep, a tablespace the previous sweep had but this one never saw, for one more sweep: a RENAME racing
   * every pass must not turn a live table into "not in the inventory" (foreign, after a crash). A carried
   * entry of a table really dropped is harmless: missing after a crash is decided by the dictionary, and
   * the exact clean-stop sweep (no server, no race) carries nothing.
   */
  private settle(swept: string[], present: Set<string>, before: Cached[], stopped: boolean): string[] {
    const spaceOf = (rel: string) => this.cache.get(rel)!.entry.spaceId;
    const sweptSpaces = new Map<number, string[]>();
    for (const rel of swept) sweptSpaces.set(spaceOf(rel), [...(sweptSpaces.get(spaceOf(rel)) ?? []), rel]);
    const kept = swept.filter((rel) => present.has(rel) || (sweptSpaces.get(spaceOf(rel)) ?? []).every((r) => !present.has(r)));
    const keys = new Set(kept);
    // Carried under their own key: the path may hold another tablespace's entry now.
    if (!stopped) {
      for (const c of before) {
        if (c.missed !== 0 || sweptSpaces.has(c.entry.spaceId)) continue;
        const key = `carried:${c.entry.spaceId}`;
        this.cache.set(key, { ...c, missed: 1 });
        kept.push(key);
        keys.add(key);
      }
    }
    for (const rel of [...this.cache.keys()]) if (!keys.has(rel)) this.cache.delete(rel);
    return kept;
  }

  /** Pending versions a checkpoint at `durable` covers join the witnesses. */
  private promote(c: Cached, durable: bigint): Cached {
    if (c.pending.length === 0) return c;
    const { witnesses, pending } = pickWitnesses([c.entry.witnesses, c.pending], durable, WITNESSES_PER_FILE);
    return { ...c, entry: { ...c.entry, witnesses }, pending };
  }
}

/** fsync of a data file before the exact sweep reads it: what it witnesses is on disk, not only cached. */
async function flushFile(file: string): Promise<void> {
  try {
    const fh = await open(file, 'r');
    try { await fh.sync(); } finally { await fh.close(); }
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
}

/** Several file violations as the one violation the guard reports (every file named). */
export function describeFileViolations(v: FileViolation[]): { message: string; expected: Record<string, unknown>; seen: Record<string, unknown> } {
  const first = v[0]!;
  const more = v.length > 1 ? ` (and ${v.length - 1} more: ${v.slice(1).map((x) => `${x.file}: ${x.reason}`).join('; ')})` : '';
  return {
    message: `${first.message}${more}`,
    expected: { file: first.file, reason: first.reason, ...first.expected },
    seen: { ...first.seen, files: v.map((x) => ({ file: x.file, reason: x.reason })) },
  };
}

function readLsnOrZero(reader: FilePageReader, rel: string, page: number): bigint {
  try {
    return reader.readLsn(rel, page) ?? 0n;
  } catch {
    return 0n; // renamed away since the read: keep nothing from before
  }
}
