/**
 * Durable positions and how they compare. Pure functions only; reading them from a live server lives
 * in mariadb-position.ts.
 */
import type { DurablePosition } from './record.ts';

/** GTID position "domain-server-seq,..." → max seq per domain. */
export function parseGtidPos(pos: string | undefined): Map<number, bigint> {
  const out = new Map<number, bigint>();
  if (!pos) return out;
  for (const part of pos.split(',').map((s) => s.trim()).filter(Boolean)) {
    const m = /^(\d+)-(\d+)-(\d+)$/.exec(part);
    if (!m) continue;
    const domain = Number(m[1]);
    const seq = BigInt(m[3]!);
    if ((out.get(domain) ?? -1n) < seq) out.set(domain, seq);
  }
  return out;
}

/** Returns why `now` is behind `sealed`, or undefined if it is not behind. */
export function positionBehind(now: DurablePosition, sealed: DurablePosition): string | undefined {
  if (sealed.lsnFlushed !== undefined && now.lsnFlushed !== undefined) {
    // After start, the server's current LSN must reach what was flushed when the record was sealed.
    if (BigInt(now.lsnFlushed) < BigInt(sealed.lsnFlushed)) {
      return `InnoDB LSN ${now.lsnFlushed} is behind the sealed ${sealed.lsnFlushed}`;
    }
  }
  if (sealed.gtid) {
    const want = parseGtidPos(sealed.gtid);
    const have = parseGtidPos(now.gtid);
    for (const [domain, seq] of want) {
      const got = have.get(domain);
      if (got === undefined || got < seq) {
        return `GTID domain ${domain} is at ${got ?? 'nothing'}, behind the sealed ${seq}`;
      }
    }
  }
  if (sealed.walLsn !== undefined && now.walLsn !== undefined && BigInt(now.walLsn) < BigInt(sealed.walLsn)) {
    return `WAL LSN ${now.walLsn} is behind the sealed ${sealed.walLsn}`;
  }
  return undefined;
}

/** True when `a` is strictly ahead of `b` in any component that matters (worth sealing a new epoch). */
export function positionAdvanced(a: DurablePosition, b: DurablePosition | undefined): boolean {
  if (!b) return true;
  return a.lsnFlushed !== b.lsnFlushed || a.gtid !== b.gtid || a.walLsn !== b.walLsn;
}

// --- ib_logfile0 (MariaDB 10.8+ redo log format) ------------------------------------------------
// Block 0: format word, start LSN at 8, creator at 16. Checkpoint blocks at 0x1000 and 0x2000:
// u64be checkpoint_lsn @0, u64be end_lsn @8, CRC-32C of bytes 0..59 @60. These are in plaintext even
// when the log is encrypted; the CRC is not a MAC, so this is only a sanity check against a datadir
// swapped under a fresh record: the authoritative check is the online one after start.

const CRC32C_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0x82f63b78 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

export function crc32c(buf: Buffer): number {
  let crc = 0xffffffff;
  for (let i = 0; i < buf.length; i++) crc = CRC32C_TABLE[(crc ^ buf[i]!) & 0xff]! ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

/** The latest valid checkpoint LSN in the first 12 KiB of ib_logfile0, or undefined if none. */
export function parseRedoCheckpoint(head: Buffer): bigint | undefined {
  let best: bigint | undefined;
  for (const off of [0x1000, 0x2000]) {
    if (head.length < off + 64) continue;
    const block = head.subarray(off, off + 64);
    if (crc32c(block.subarray(0, 60)) !== block.readUInt32BE(60)) continue;
    const lsn = block.readBigUInt64BE(0);
    if (lsn !== 0n && (best === undefined || lsn > best)) best = lsn;
  }
  return best;
}
