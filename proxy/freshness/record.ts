/**
 * The sealed freshness record: the proxy's high-water mark of the database's durable position, kept
 * on the untrusted volume next to the data directory and anchored by the CAS counter.
 *
 * Layout (all integers big-endian):
 *   header  = magic "CDBPFR01" (8) ‖ databaseId length u8 ‖ databaseId (utf8) ‖ epoch u64
 *   sealed  = nonce (24) ‖ XChaCha20-Poly1305(key, nonce, body JSON, associated data = header)
 * The whole header is associated data, so editing the epoch or the database id breaks the tag
 * (edgelessdb left its header unauthenticated; we do not). The record's digest (SHA-256 of the whole
 * file) is what the CAS counter stores, which is how two records with the same epoch (a fork) differ.
 *
 * Pure: no files, no clocks (time is passed in), no logging.
 */
import { createHash } from 'node:crypto';
import { CdbpError } from '../../src/kernel/errors.ts';
import { aeadOpen, aeadSeal } from '../../src/crypto/aead.ts';
import type { InventoryRef } from './inventory/types.ts';

export const RECORD_MAGIC = Buffer.from('CDBPFR01', 'ascii');

/** The database's durable position when the record was sealed. Fields depend on the engine. */
export interface DurablePosition {
  engine: 'mariadb' | 'postgres';
  /** MariaDB: Innodb_lsn_flushed (everything up to it is on disk). */
  lsnFlushed?: string;
  /** MariaDB: Innodb_lsn_last_checkpoint (comparable with the offline checkpoint in ib_logfile0). */
  lsnCheckpoint?: string;
  /** MariaDB: @@gtid_binlog_pos. */
  gtid?: string;
  /** PostgreSQL: pg_current_wal_flush_lsn() as a decimal string. */
  walLsn?: string;
}

export interface FreshnessRecord {
  databaseId: string;
  epoch: number;
  position: DurablePosition;
  /** ISO time the record was sealed (informational; never trusted for ordering). */
  sealedAt: string;
  /**
   * The sealed data-file inventory this record vouches for (issue 22, docs/FRESHNESS.md "Per-file
   * freshness"): its digest, so the inventory itself stays on the volume and the counted record small.
   */
  inventory?: InventoryRef;
}

function header(databaseId: string, epoch: number): Buffer {
  const id = Buffer.from(databaseId, 'utf8');
  if (id.length === 0 || id.length > 255) throw new CdbpError('SEAL_INVALID', 'database id must be 1..255 bytes');
  const epochBuf = Buffer.alloc(8);
  epochBuf.writeBigUInt64BE(BigInt(epoch));
  return Buffer.concat([RECORD_MAGIC, Buffer.from([id.length]), id, epochBuf]);
}

export async function sealRecord(record: FreshnessRecord, key: Buffer): Promise<Buffer> {
  if (key.length !== 32) throw new CdbpError('SEAL_INVALID', 'freshness key must be 32 bytes');
  const head = header(record.databaseId, record.epoch);
  const sealed = await aeadSeal(key, Buffer.from(JSON.stringify(record), 'utf8'), head);
  return Buffer.concat([head, sealed]);
}

/** Opens and authenticates a sealed record; any edit, truncation or wrong key is SEAL_INVALID. */
export async function openRecord(bytes: Buffer, key: Buffer): Promise<FreshnessRecord> {
  if (bytes.length < RECORD_MAGIC.length + 1 || !bytes.subarray(0, RECORD_MAGIC.length).equals(RECORD_MAGIC)) {
    throw new CdbpError('SEAL_INVALID', 'not a freshness record (bad magic)');
  }
  const idLen = bytes[RECORD_MAGIC.length]!;
  const headLen = RECORD_MAGIC.length + 1 + idLen + 8;
  if (bytes.length <= headLen) throw new CdbpError('SEAL_INVALID', 'freshness record truncated');
  const head = bytes.subarray(0, headLen);
  let plain: Buffer;
  try {
    plain = await aeadOpen(key, bytes.subarray(headLen), head);
  } catch (e) {
    throw new CdbpError('SEAL_INVALID', `freshness record failed authentication (edited, forged, truncated or sealed with another key)`, { cause: e });
  }
  const record = JSON.parse(plain.toString('utf8')) as FreshnessRecord;
  // The header is authenticated; the body must agree with it (defence in depth against a buggy sealer).
  const headId = head.subarray(RECORD_MAGIC.length + 1, RECORD_MAGIC.length + 1 + idLen).toString('utf8');
  const headEpoch = Number(head.readBigUInt64BE(RECORD_MAGIC.length + 1 + idLen));
  if (record.databaseId !== headId || record.epoch !== headEpoch) {
    throw new CdbpError('SEAL_INVALID', 'freshness record header and body disagree');
  }
  return record;
}

/**
 * Reads the (authenticated-but-not-yet-verified) header of a record without the key: what an owner
 * needs to re-anchor the counter to a restored backup (`cdbp recover --record`).
 */
export function peekRecordHeader(bytes: Buffer): { databaseId: string; epoch: number } {
  if (bytes.length < RECORD_MAGIC.length + 1 || !bytes.subarray(0, RECORD_MAGIC.length).equals(RECORD_MAGIC)) {
    throw new CdbpError('SEAL_INVALID', 'not a freshness record (bad magic)');
  }
  const idLen = bytes[RECORD_MAGIC.length]!;
  const idEnd = RECORD_MAGIC.length + 1 + idLen;
  if (bytes.length < idEnd + 8) throw new CdbpError('SEAL_INVALID', 'freshness record truncated');
  return { databaseId: bytes.subarray(RECORD_MAGIC.length + 1, idEnd).toString('utf8'), epoch: Number(bytes.readBigUInt64BE(idEnd)) };
}

export function recordDigest(bytes: Buffer): string {
  return createHash('sha256').update(bytes).digest('hex');
}
