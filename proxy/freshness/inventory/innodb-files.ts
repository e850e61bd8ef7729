/**
 * Walking a MariaDB data directory for InnoDB data files and reading their pages. The page-header
 * parsing is in innodb-page.ts; this module only finds files and feeds it bytes.
 *
 * Files: ibdata<N> (system tablespace: dictionary, change buffer, and the undo logs when
 * innodb_undo_tablespaces=0, the 10.11 default), undo<NNN> (dedicated undo tablespaces), and
 * <db>/<table>.ibd one level down (file-per-table, including partitions and ALTER's #sql files).
 * Not: ibtmp1 (the temporary tablespace, re-created empty at every start), the redo log (its
 * checkpoint is checked by position.ts), binlogs, Aria and .frm files (docs/FRESHNESS.md "Not covered").
 * MariaDB 10.11 has no mysql.ibd (its system tables are Aria; mysql.innodb_*_stats are plain .ibd files).
 */
import { closeSync, existsSync, fstatSync, openSync, readSync, readdirSync, statSync } from 'node:fs';
import { open } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { UNDO_TABLESPACE_FILE } from '../../../src/db/mariadb-server.ts';
import { DEFAULT_PAGE_SIZE, isDoublewritePage, readFilHeader, readSpaceIdentity, selfConsistent } from './innodb-page.ts';
import type { InventoryFile, ObservedFile, Witness } from './types.ts';
import type { PageReader } from './check.ts';
import { keepTop } from './witnesses.ts';

export const WITNESSES_PER_FILE = 3;

export function innodbKind(rel: string): InventoryFile['kind'] | undefined {
  if (/^ibdata\d+$/.test(rel)) return 'innodb-system';
  if (UNDO_TABLESPACE_FILE.test(rel)) return 'innodb-undo';
  if (/^[^/]+\/[^/]+\.ibd$/.test(rel)) return 'innodb-table';
  return undefined;
}

/** Relative paths ('/' separated) of the InnoDB data files, sorted. */
export function listInnodbFiles(datadir: string): string[] {
  const out: string[] = [];
  if (!existsSync(datadir)) return out;
  for (const d of readdirSync(datadir, { withFileTypes: true })) {
    if (d.isFile() && innodbKind(d.name)) out.push(d.name);
    if (!d.isDirectory()) continue;
    let inner: string[];
    try {
      inner = readdirSync(path.join(datadir, d.name));
    } catch {
      continue;
    }
    for (const f of inner) if (f.endsWith('.ibd')) out.push(`${d.name}/${f}`);
  }
  return out.sort();
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

/** Identity and size of one data file (page 0 only). */
export function observeFile(datadir: string, rel: string): ObservedFile {
  const kind = innodbKind(rel)!;
  const fd = openSync(path.join(datadir, rel), 'r');
  try {
    const size = fstatSync(fd).size;
    const head = Buffer.alloc(64);
    const id = readAt(fd, head, 0) === head.length ? readSpaceIdentity(head) : undefined;
    const pageSize = id?.pageSize ?? DEFAULT_PAGE_SIZE;
    return { path: rel, kind, spaceId: id?.spaceId, pageSize, pages: Math.floor(size / pageSize) };
  } finally {
    closeSync(fd);
  }
}

export function observeDatadir(datadir: string): ObservedFile[] {
  const out: ObservedFile[] = [];
  for (const rel of listInnodbFiles(datadir)) {
    try {
      out.push(observeFile(datadir, rel));
    } catch (e) {
      // Gone between the listing and the open (a DROP while the sweep runs): not a data file any more.
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
  }
  return out;
}

/** Synchronous page reads for the start-up check (a handful of pages per file). */
export class FilePageReader implements PageReader {
  constructor(private readonly datadir: string, private readonly pageSizeOf: (rel: string) => number) {}

  readLsn(rel: string, page: number): bigint | undefined {
    const size = this.pageSizeOf(rel);
    const fd = openSync(path.join(this.datadir, rel), 'r');
    try {
      const head = Buffer.alloc(24);
      if (readAt(fd, head, page * size) < head.length) return undefined;
      return head.readBigUInt64BE(16);
    } finally {
      closeSync(fd);
    }
  }

  lowestLsn(rel: string): bigint | undefined {
    let lowest: bigint | undefined;
    const size = this.pageSizeOf(rel);
    const fd = openSync(path.join(this.datadir, rel), 'r');
    try {
      const chunk = Buffer.alloc(size * 64);
      for (let pos = 0; ; pos += chunk.length) {
        const n = readAt(fd, chunk, pos);
        for (let off = 0; off + size <= n; off += size) {
          const pageNo = (pos + off) / size;
          const h = readFilHeader(chunk.subarray(off, off + 38));
          if (selfConsistent(h, pageNo) && (lowest === undefined || h.lsn < lowest)) lowest = h.lsn;
        }
        if (n < chunk.length) break;
      }
    } finally {
      closeSync(fd);
    }
    return lowest;
  }
}

export interface SweepIo {
  /** Cap on read throughput, bytes per second (0 = unbounded: the clean-stop sweep). */
  bytesPerSecond: number;
  chunkBytes?: number;
  /** Date.now() after which the sweep gives up (throws SweepBudgetExceeded). */
  deadline?: number;
}

/** The clean-stop sweep ran out of its time budget (the last background sweep stays sealed). */
export class SweepBudgetExceeded extends Error {}

/**
 * Reads a whole data file and picks its witnesses: the WITNESSES_PER_FILE self-consistent pages with the
 * highest LSN at or below `limit` (a durable LSN: every page version at or below it is on disk, so a
 * crash cannot take the file back below a witness). Pages above the limit may not be durable yet: the
 * highest of them come back as `pending`, for a checkpoint read later to promote (witnesses.ts).
 * Returns undefined when the file vanished or page 0 is unreadable.
 */
export async function sweepFile(datadir: string, rel: string, limit: bigint, io: SweepIo): Promise<{ entry: InventoryFile; pending: Witness[]; bytes: number; stamp: string } | undefined> {
  let fh;
  try {
    fh = await open(path.join(datadir, rel), 'r');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
  try {
    // The stamp of the file actually read (a RENAME between a stat of the path and this open would pair
    // another file's stamp with these contents), taken before reading: a write during the read changes it.
    const before = await fh.stat();
    const stamp = `${before.ino}:${before.size}:${before.mtimeMs}`;
    const head = Buffer.alloc(64);
    const { bytesRead } = await fh.read(head, 0, head.length, 0);
    const id = bytesRead === head.length ? readSpaceIdentity(head) : undefined;
    if (!id) return undefined;
    const size = id.pageSize;
    const chunk = Buffer.alloc(Math.max(size, Math.floor((io.chunkBytes ?? 1 << 20) / size) * size));
    const top: Array<{ page: number; lsn: bigint }> = [];
    const above: Array<{ page: number; lsn: bigint }> = [];
    let bytes = 0;
    const started = Date.now();
    for (let pos = 0; ; pos += chunk.length) {
      const { bytesRead: n } = await fh.read(chunk, 0, chunk.length, pos);
      bytes += n;
      for (let off = 0; off + size <= n; off += size) {
        const pageNo = (pos + off) / size;
        const h = readFilHeader(chunk.subarray(off, off + 38));
        if (!selfConsistent(h, pageNo) || isDoublewritePage(id.spaceId, pageNo, size)) continue;
        keepTop(h.lsn > limit ? above : top, pageNo, h.lsn, WITNESSES_PER_FILE);
      }
      if (n < chunk.length) break;
      if (io.deadline !== undefined && Date.now() > io.deadline) throw new SweepBudgetExceeded(`sweep budget exceeded in ${rel}`);
      if (io.bytesPerSecond > 0) {
        // Bounded I/O: never ahead of the allowed rate (the database's own reads come first).
        const due = (bytes / io.bytesPerSecond) * 1000 - (Date.now() - started);
        if (due > 0) await sleep(due);
      }
    }
    const st = await fh.stat();
    return {
      entry: {
        path: rel, kind: innodbKind(rel)!, spaceId: id.spaceId, pageSize: size, pages: Math.floor(st.size / size),
        witnesses: top.map((w): Witness => ({ page: w.page, lsn: w.lsn.toString() })),
      },
      pending: above.map((w): Witness => ({ page: w.page, lsn: w.lsn.toString() })),
      bytes,
      stamp,
    };
  } finally {
    await fh.close();
  }
}

/** Size and mtime: what tells the background sweep a file may have changed since it last read it. */
export function fileStamp(datadir: string, rel: string): string | undefined {
  try {
    const st = statSync(path.join(datadir, rel));
    return `${st.ino}:${st.size}:${st.mtimeMs}`;
  } catch {
    return undefined;
  }
}
