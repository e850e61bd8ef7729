/**
 * PostgreSQL on-disk formats the per-file inventory reads (pure: bytes in, facts out).
 *
 * Relation pages (src/include/storage/bufpage.h, PageHeaderData): 8 KiB blocks; the header starts with
 * pd_lsn = { uint32 xlogid; uint32 xrecoff } in host byte order (little-endian on x86-64/arm64), then
 * pd_checksum u16 (8), pd_flags u16 (10), pd_lower u16 (12), pd_upper u16 (14), pd_special u16 (16),
 * pd_pagesize_version u16 (18) = BLCKSZ | PG_PAGE_LAYOUT_VERSION (8192 | 4). A page's LSN is that of the
 * last WAL record that changed it, so it only moves forward (PageSetLSN after every logged change).
 *
 * pg_xact (src/backend/access/transam/clog.c): 2 status bits per xid, 4 xids per byte, the lowest xid in
 * the low bits; 8 KiB pages, 32 pages per segment file (SLRU_PAGES_PER_SEGMENT), so a segment holds
 * 1,048,576 xids and is named by 4+ hex digits of its number. Status 0 = in progress, 1 = committed,
 * 2 = aborted, 3 = sub-committed (temporary: becomes 1 or 2). Once 1 or 2 it never changes, so the highest
 * xid with a final status is a witness: an older copy of the segment shows it 0 (or 3).
 */

export const PG_BLOCK_SIZE = 8192;
export const PG_PAGE_LAYOUT_VERSION = 4;
export const CLOG_XIDS_PER_BYTE = 4;
export const CLOG_PAGES_PER_SEGMENT = 32;
export const CLOG_XIDS_PER_SEGMENT = PG_BLOCK_SIZE * CLOG_XIDS_PER_BYTE * CLOG_PAGES_PER_SEGMENT;

export const XACT_IN_PROGRESS = 0;
export const XACT_COMMITTED = 1;
export const XACT_ABORTED = 2;
export const XACT_SUB_COMMITTED = 3;

export interface PgPageHeader {
  lsn: bigint;
  lower: number;
  upper: number;
  special: number;
  pageSizeVersion: number;
}

export function readPgPageHeader(page: Buffer): PgPageHeader {
  const xlogid = page.readUInt32LE(0);
  const xrecoff = page.readUInt32LE(4);
  return {
    lsn: (BigInt(xlogid) << 32n) | BigInt(xrecoff),
    lower: page.readUInt16LE(12),
    upper: page.readUInt16LE(14),
    special: page.readUInt16LE(16),
    pageSizeVersion: page.readUInt16LE(18),
  };
}

/**
 * An initialized page whose header is plausible (PageIsVerified's header test, bufpage.c): a new,
 * all-zero page (extension not yet written) or garbage carries no LSN worth trusting.
 */
export function isInitializedPage(h: PgPageHeader): boolean {
  return h.pageSizeVersion === (PG_BLOCK_SIZE | PG_PAGE_LAYOUT_VERSION)
    && h.lower >= 24 && h.lower <= h.upper && h.upper <= h.special && h.special <= PG_BLOCK_SIZE;
}

/** Status bits of `xid`'s slot in its segment (offset = xid mod CLOG_XIDS_PER_SEGMENT). */
export function xactStatus(segment: Buffer, offset: number): number {
  const byte = Math.floor(offset / CLOG_XIDS_PER_BYTE);
  if (byte >= segment.length) return XACT_IN_PROGRESS;
  return (segment[byte]! >> ((offset % CLOG_XIDS_PER_BYTE) * 2)) & 3;
}

/**
 * The highest slot below `limit` (a segment offset; Infinity = all) whose status is final (committed or
 * aborted), with that status; undefined when none is.
 */
export function highestFinalXact(segment: Buffer, limit = Infinity): { offset: number; status: number } | undefined {
  const top = Math.min(segment.length * CLOG_XIDS_PER_BYTE, limit);
  for (let byte = Math.ceil(top / CLOG_XIDS_PER_BYTE) - 1; byte >= 0; byte--) {
    const b = segment[byte]!;
    if (b === 0) continue;
    for (let k = CLOG_XIDS_PER_BYTE - 1; k >= 0; k--) {
      const offset = byte * CLOG_XIDS_PER_BYTE + k;
      if (offset >= top) continue;
      const s = (b >> (k * 2)) & 3;
      if (s === XACT_COMMITTED || s === XACT_ABORTED) return { offset, status: s };
    }
  }
  return undefined;
}

/** Relation file kinds under base/<db oid>/ and global/: main fork segments `N` and `N.k` only. */
export function pgRelationName(name: string): { relfilenode: number; segment: number } | undefined {
  const m = /^(\d+)(?:\.(\d+))?$/.exec(name);
  if (!m) return undefined;
  return { relfilenode: Number(m[1]), segment: m[2] ? Number(m[2]) : 0 };
}

/** pg_xact segment names: 4 or more hex digits (slru.c SlruFileName). */
export function pgXactSegment(name: string): number | undefined {
  return /^[0-9A-F]{4,}$/.test(name) ? parseInt(name, 16) : undefined;
}

/** PostgreSQL's own LSN notation (X/X), as pg_current_wal_lsn() prints it. */
export function formatLsn(lsn: bigint): string {
  return `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffffffffn).toString(16).toUpperCase()}`;
}

/** Blocks per 1 GiB segment file (RELSEG_SIZE with 8 KiB blocks). */
export const RELSEG_BLOCKS = 131_072;

/** "base/5/16384.2" → the relation "base/5/16384" and the relation block where that segment file starts. */
export function relationOfFile(file: string): { relation: string; firstBlock: number } {
  const m = /^(.*?)(?:\.(\d+))?$/.exec(file)!;
  return { relation: m[1]!, firstBlock: m[2] ? Number(m[2]) * RELSEG_BLOCKS : 0 };
}
