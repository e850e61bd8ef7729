/**
 * InnoDB page headers, as far as freshness needs them. Pure functions over Buffers.
 *
 * Every InnoDB page starts with the 38-byte FIL header (storage/innobase/include/fil0fil.h):
 *   FIL_PAGE_OFFSET     @4  u32be  the page's own number
 *   FIL_PAGE_LSN        @16 u64be  end LSN of the last mini-transaction that modified the page
 *   FIL_PAGE_TYPE       @24 u16be
 *   FIL_PAGE_SPACE_ID   @34 u32be
 * Page 0 of every tablespace also carries the FSP header at 38 (fsp0fsp.h): FSP_SPACE_ID @38+0,
 * FSP_SPACE_FLAGS @38+16.
 *
 * Encrypted tablespaces (MariaDB's full_crc32 format, the default since 10.5): bytes 0..25 of a page
 * stay plaintext (page number and LSN included), bytes 26.. are ciphertext, so FIL_PAGE_SPACE_ID is
 * readable on page 0 only (page 0 is never encrypted: it holds the crypt data). Checked on a real
 * encrypted 10.11 file: page n reads FIL_PAGE_OFFSET = n and a plausible LSN, @34 is noise.
 * The LSN and page number are inputs of the page's encryption IV (fil0crypt.cc passes space id, page
 * number and FIL_PAGE_LSN to encryption_scheme_encrypt), so editing them turns the page into garbage.
 */

export const FIL_PAGE_OFFSET = 4;
export const FIL_PAGE_LSN = 16;
export const FIL_PAGE_TYPE = 24;
export const FIL_PAGE_SPACE_ID = 34;
export const FIL_HEADER_BYTES = 38;
export const FSP_HEADER = 38;
const FSP_SPACE_FLAGS = FSP_HEADER + 16;

/** full_crc32 marker bit in FSP_SPACE_FLAGS (fsp0types.h FSP_FLAGS_FCRC32_MASK_MARKER). */
const FCRC32_MARKER = 1 << 4;

export const DEFAULT_PAGE_SIZE = 16384;

export interface FilHeader {
  pageNo: number;
  lsn: bigint;
  type: number;
}

export function readFilHeader(page: Buffer): FilHeader {
  return { pageNo: page.readUInt32BE(FIL_PAGE_OFFSET), lsn: page.readBigUInt64BE(FIL_PAGE_LSN), type: page.readUInt16BE(FIL_PAGE_TYPE) };
}

/**
 * A page whose header can be trusted as this page's own: it names itself (FIL_PAGE_OFFSET = its position)
 * and has been written at least once (LSN > 0). This excludes never-written (zero) pages and copies of
 * other pages (the doublewrite buffer in ibdata1 holds copies with their original page numbers).
 */
export function selfConsistent(h: FilHeader, position: number): boolean {
  return h.lsn > 0n && h.pageNo === position;
}

export interface SpaceIdentity {
  spaceId: number;
  pageSize: number;
  flags: number;
}

/**
 * Space id and page size from page 0 (read its first 64 bytes). Undefined when it is not a plausible page 0
 * (too short, never written — a file InnoDB has just created reads zeros, which would look like space 0 —,
 * names another page, or the FIL and FSP space ids disagree).
 */
export function readSpaceIdentity(head: Buffer): SpaceIdentity | undefined {
  if (head.length < FSP_SPACE_FLAGS + 4) return undefined;
  if (head.readBigUInt64BE(FIL_PAGE_LSN) === 0n) return undefined;
  if (head.readUInt32BE(FIL_PAGE_OFFSET) !== 0) return undefined;
  const filSpace = head.readUInt32BE(FIL_PAGE_SPACE_ID);
  const fspSpace = head.readUInt32BE(FSP_HEADER);
  if (filSpace !== fspSpace) return undefined;
  const flags = head.readUInt32BE(FSP_SPACE_FLAGS);
  return { spaceId: fspSpace, pageSize: pageSizeFromFlags(flags), flags };
}

/**
 * Physical page size from FSP_SPACE_FLAGS: full_crc32 keeps the size's shift in bits 0..3, the older
 * format in bits 6..9 (0 = 16 KiB there); size = 512 << ssize (fsp0types.h).
 */
export function pageSizeFromFlags(flags: number): number {
  const ssize = flags & FCRC32_MARKER ? flags & 0xf : (flags >>> 6) & 0xf;
  return ssize === 0 ? DEFAULT_PAGE_SIZE : 512 << ssize;
}

/**
 * The system tablespace's doublewrite buffer: two blocks of one extent each, allocated right after the
 * first extent when the datadir is created (buf0dblwr.cc: pages FSP_EXTENT_SIZE .. 3*FSP_EXTENT_SIZE-1,
 * 64..191 with 16 KiB pages). Its slots hold copies of other pages, whose LSNs go up and down: never
 * witnesses, even when a copy's own page number matches the slot.
 */
export function isDoublewritePage(spaceId: number, pageNo: number, pageSize: number): boolean {
  if (spaceId !== 0) return false;
  const extent = pageSize <= 16384 ? (1024 * 1024) / pageSize : 64;
  return pageNo >= extent && pageNo < 3 * extent;
}
