/**
 * Walking a PostgreSQL data directory (the plaintext side of the gocryptfs mount) for the files the
 * inventory covers, and reading them. Formats are parsed in postgres-page.ts.
 *
 * Covered: the main fork of every relation, `base/<db oid>/<relfilenode>[.k]` and `global/<relfilenode>[.k]`
 * (tables, indexes, TOAST, sequences, materialized views, the catalogs), and `pg_xact/<segment>`.
 * Not covered: the free-space map (`_fsm`: not WAL-logged page by page, its pages keep LSN 0 or an old
 * one, and PostgreSQL repairs a stale FSM itself), the visibility map (`_vm`: its bits are cleared without
 * a new page LSN, so a page LSN is no lower bound on its contents; docs/FRESHNESS.md "Not covered"),
 * unlogged relations (their `_init` fork resets them at crash recovery), temporary relations
 * (`t<backend>_<relfilenode>`, gone at restart), pg_filenode.map, pg_multixact, pg_subtrans (rebuilt at
 * start), and pg_wal (its position is checked by the freshness record itself).
 */
import { closeSync, existsSync, fstatSync, openSync, readSync, readdirSync, statSync } from 'node:fs';
import { open } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CLOG_XIDS_PER_SEGMENT, PG_BLOCK_SIZE, highestFinalXact, isInitializedPage, pgRelationName, pgXactSegment, readPgPageHeader, xactStatus } from './postgres-page.ts';
import type { PgFileReader } from './postgres-check.ts';
import type { PgInventoryFile, PgObservedFile, Witness } from './types.ts';
import type { SweepIo } from './innodb-files.ts';
import { SweepBudgetExceeded } from './innodb-files.ts';
import { keepTop } from './witnesses.ts';

export const PG_WITNESSES_PER_FILE = 3;

/**
 * Prefix witnesses: at each boundary of a geometric sequence (×1.5: 1, 2, 3, 4, 6, 9, 13, …; ~30 in a 1 GiB
 * segment) the highest-LSN block *below* it. The top witnesses are the newest blocks, usually at the
 * tail, which VACUUM may cut off; after a cut to N blocks the prefix witnesses below N still stand, so
 * the blocks the cut left are witnessed too (all but at most the last third of them).
 */
export function nextPrefixBoundary(b: number): number {
  return Math.max(b + 1, Math.floor(b * 1.5));
}

/** Relative paths of the covered files, sorted, with their kind. */
export function listPgFiles(datadir: string): Array<{ path: string; kind: PgInventoryFile['kind'] }> {
  const out: Array<{ path: string; kind: PgInventoryFile['kind'] }> = [];
  const names = (dir: string): string[] => {
    try { return readdirSync(path.join(datadir, dir)); } catch { return []; }
  };
  const relations = (dir: string) => {
    const all = names(dir);
    // Unlogged relations (an `_init` fork beside the main one): crash recovery resets them from the init
    // fork, so their pages go back by design and are no witnesses.
    const unlogged = new Set(all.filter((n) => n.endsWith('_init')).map((n) => n.slice(0, -'_init'.length)));
    for (const n of all) {
      const r = pgRelationName(n);
      if (r && !unlogged.has(String(r.relfilenode))) out.push({ path: `${dir}/${n}`, kind: 'pg-relation' });
    }
  };
  relations('global');
  for (const db of names('base')) if (/^\d+$/.test(db)) relations(`base/${db}`);
  for (const n of names('pg_xact')) if (pgXactSegment(n) !== undefined) out.push({ path: `pg_xact/${n}`, kind: 'pg-xact' });
  return out.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

export function observePgDatadir(datadir: string): PgObservedFile[] {
  const out: PgObservedFile[] = [];
  if (!existsSync(datadir)) return out;
  for (const f of listPgFiles(datadir)) {
    try {
      out.push({ ...f, pages: Math.floor(statSync(path.join(datadir, f.path)).size / PG_BLOCK_SIZE) });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
  }
  return out;
}

function readAt(fd: number, buf: Buffer, pos: number): number {
  let got = 0;
  while (got < buf.length) {
    const n = readSync(fd, buf, got, buf.length - got, pos + got);
    if (n === 0) break;
    got += n;
  }
  return got;
}

/** Synchronous reads for the start-up check (a few blocks per file; whole files only for new ones). */
export class PgDatadirReader implements PgFileReader {
  constructor(private readonly datadir: string) {}

  private withFile<T>(rel: string, f: (fd: number) => T): T {
    const fd = openSync(path.join(this.datadir, rel), 'r');
    try { return f(fd); } finally { closeSync(fd); }
  }

  readLsn(rel: string, page: number): bigint | undefined {
    return this.withFile(rel, (fd) => {
      const head = Buffer.alloc(24);
      if (readAt(fd, head, page * PG_BLOCK_SIZE) < head.length) return undefined;
      const h = readPgPageHeader(head);
      return isInitializedPage(h) ? h.lsn : 0n;
    });
  }

  lowestLsn(rel: string): bigint | undefined {
    return this.withFile(rel, (fd) => {
      let lowest: bigint | undefined;
      const chunk = Buffer.alloc(PG_BLOCK_SIZE * 64);
      for (let pos = 0; ; pos += chunk.length) {
        const n = readAt(fd, chunk, pos);
        for (let off = 0; off + PG_BLOCK_SIZE <= n; off += PG_BLOCK_SIZE) {
          const h = readPgPageHeader(chunk.subarray(off, off + 24));
          if (isInitializedPage(h) && h.lsn > 0n && (lowest === undefined || h.lsn < lowest)) lowest = h.lsn;
        }
        if (n < chunk.length) break;
      }
      return lowest;
    });
  }

  xactStatus(rel: string, offset: number): number {
    return this.withFile(rel, (fd) => {
      const b = Buffer.alloc(1);
      if (readAt(fd, b, Math.floor(offset / 4)) < 1) return 0;
      return xactStatus(b, offset % 4);
    });
  }
}

export interface PgSweepLimits {
  /** Highest page LSN that counts as durable (pages above it may not be on disk yet). */
  lsn: bigint;
  /** Xids below it have a durable final status (pg_xact); Infinity after a clean stop. */
  xid: number;
}

/**
 * Reads one file and picks its witnesses. Relation: the PG_WITNESSES_PER_FILE initialized blocks with the
 * highest non-zero pd_lsn at or below `limits.lsn`, then the prefix witnesses (nextPrefixBoundary). pg_xact: the highest xid below `limits.xid` with a final
 * status. Undefined when the file vanished (a DROP while the sweep runs).
 */
export async function sweepPgFile(datadir: string, rel: string, kind: PgInventoryFile['kind'], limits: PgSweepLimits, io: SweepIo): Promise<{ entry: PgInventoryFile; bytes: number } | undefined> {
  let fh;
  try {
    fh = await open(path.join(datadir, rel), 'r');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
  try {
    if (kind === 'pg-xact') {
      const buf = await fh.readFile();
      const seg = pgXactSegment(path.basename(rel))!;
      const limit = limits.xid === Infinity ? Infinity : Math.max(0, limits.xid - seg * CLOG_XIDS_PER_SEGMENT);
      const w = highestFinalXact(buf, limit);
      return { entry: { path: rel, kind, pages: Math.floor(buf.length / PG_BLOCK_SIZE), witnesses: [], ...(w ? { xact: w } : {}) }, bytes: buf.length };
    }
    const chunk = Buffer.alloc(io.chunkBytes ?? 1 << 20);
    const top: Array<{ page: number; lsn: bigint }> = [];
    const prefix: Array<{ page: number; lsn: bigint }> = [];
    let best: { page: number; lsn: bigint } | undefined;
    let nextBoundary = 1;
    let bytes = 0;
    const started = Date.now();
    for (let pos = 0; ; pos += chunk.length) {
      const { bytesRead: n } = await fh.read(chunk, 0, chunk.length, pos);
      bytes += n;
      for (let off = 0; off + PG_BLOCK_SIZE <= n; off += PG_BLOCK_SIZE) {
        const page = (pos + off) / PG_BLOCK_SIZE;
        if (page === nextBoundary) {
          if (best && prefix.at(-1)?.page !== best.page) prefix.push(best);
          nextBoundary = nextPrefixBoundary(nextBoundary);
        }
        const h = readPgPageHeader(chunk.subarray(off, off + 24));
        if (!isInitializedPage(h) || h.lsn === 0n || h.lsn > limits.lsn) continue;
        if (!best || h.lsn > best.lsn) best = { page, lsn: h.lsn };
        keepTop(top, page, h.lsn, PG_WITNESSES_PER_FILE);
      }
      if (n < chunk.length) break;
      if (io.deadline !== undefined && Date.now() > io.deadline) throw new SweepBudgetExceeded(`sweep budget exceeded in ${rel}`);
      if (io.bytesPerSecond > 0) {
        const due = (bytes / io.bytesPerSecond) * 1000 - (Date.now() - started);
        if (due > 0) await sleep(due);
      }
    }
    const st = await fh.stat();
    const chosen = [...top, ...prefix.filter((p) => !top.some((t) => t.page === p.page))];
    return {
      entry: { path: rel, kind, pages: Math.floor(st.size / PG_BLOCK_SIZE), witnesses: chosen.map((w): Witness => ({ page: w.page, lsn: w.lsn.toString() })) },
      bytes,
    };
  } finally {
    await fh.close();
  }
}

/**
 * pg_control (src/include/catalog/pg_control.h, PostgreSQL 11+): system_identifier u64 @0,
 * pg_control_version u32 @8, catalog_version_no u32 @12, state u32 @16, time i64 @24, checkPoint (LSN of
 * the last checkpoint record) u64 @32, then checkPointCopy: its redo LSN @40, its ThisTimeLineID u32 @48.
 * Host byte order. Read after a clean stop: the shutdown checkpoint is the end of everything written.
 */
export function readPgControl(datadir: string): { checkpoint: bigint; redo: bigint; timeline: number; state: number } | undefined {
  let fd: number;
  try { fd = openSync(path.join(datadir, 'global', 'pg_control'), 'r'); } catch { return undefined; }
  try {
    const b = Buffer.alloc(52);
    if (readAt(fd, b, 0) < b.length || fstatSync(fd).size < 52) return undefined;
    if (b.readUInt32LE(8) < 1100) return undefined;
    return { state: b.readUInt32LE(16), checkpoint: b.readBigUInt64LE(32), redo: b.readBigUInt64LE(40), timeline: b.readUInt32LE(48) };
  } finally {
    closeSync(fd);
  }
}

/** pg_control's DBState value for a clean shutdown (DB_SHUTDOWNED). */
export const PG_STATE_SHUTDOWNED = 1;
