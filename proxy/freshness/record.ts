/**
 * The sealed freshness record: the proxy's high-water mark of the database's durable position, kept
 * on the untrusted volume next to the data directory and anchored by the CAS counter.
 *
 * Layout (all integers big-endian):
 *   header  = magic "CDBPFR01" (8) ‖ databaseId length u8 ‖ databaseId (utf8) ‖ epoch u64 ‖ nonce (24)
 *   sealed  = XChaCha20-Poly1305(key, nonce, body JSON, associated data = header)
 * The whole header is associated data, so editing the epoch or the database id breaks the tag
 * (edgelessdb left its header unauthenticated; we do not). The record's digest (SHA-256 of the whole
 * file) is what the CAS counter stores, which is how two records with the same epoch (a fork) differ.
 *
 * Pure: no files, no clocks (time is passed in), no logging.
 */
import { createHash } from 'node:crypto';
import sodium from 'libsodium-wrappers';
import { CdbpError } from '../../src/kernel/errors.ts';

export const RECORD_MAGIC = Buffer.from('CDBPFR01', 'ascii');
const NONCE_BYTES = 24;

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
}

export async function sodiumReady(): Promise<typeof sodium> {
  await sodium.ready;
  return sodium;
}

function header(databaseId: string, epoch: number, nonce: Uint8Array): Buffer {
  const id = Buffer.from(databaseId, 'utf8');
  if (id.length === 0 || id.length > 255) throw new CdbpError('SEAL_INVALID', 'database id must be 1..255 bytes');
  const epochBuf = Buffer.alloc(8);
  epochBuf.writeBigUInt64BE(BigInt(epoch));
  return Buffer.concat([RECORD_MAGIC, Buffer.from([id.length]), id, epochBuf, Buffer.from(nonce)]);
}

export async function sealRecord(record: FreshnessRecord, key: Buffer): Promise<Buffer> {
  const s = await sodiumReady();
  if (key.length !== 32) throw new CdbpError('SEAL_INVALID', 'freshness key must be 32 bytes');
  const nonce = s.randombytes_buf(NONCE_BYTES);
  const head = header(record.databaseId, record.epoch, nonce);
  const body = Buffer.from(JSON.stringify(record), 'utf8');
  const ct = s.crypto_aead_xchacha20poly1305_ietf_encrypt(body, head, null, nonce, key);
  return Buffer.concat([head, Buffer.from(ct)]);
}

/** Opens and authenticates a sealed record; any edit, truncation or wrong key is SEAL_INVALID. */
export async function openRecord(bytes: Buffer, key: Buffer): Promise<FreshnessRecord> {
  const s = await sodiumReady();
  if (bytes.length < RECORD_MAGIC.length + 1 || !bytes.subarray(0, RECORD_MAGIC.length).equals(RECORD_MAGIC)) {
    throw new CdbpError('SEAL_INVALID', 'not a freshness record (bad magic)');
  }
  const idLen = bytes[RECORD_MAGIC.length]!;
  const headLen = RECORD_MAGIC.length + 1 + idLen + 8 + NONCE_BYTES;
  if (bytes.length < headLen + s.crypto_aead_xchacha20poly1305_ietf_ABYTES) {
    throw new CdbpError('SEAL_INVALID', 'freshness record truncated');
  }
  const head = bytes.subarray(0, headLen);
  const nonce = head.subarray(headLen - NONCE_BYTES);
  let plain: Uint8Array;
  try {
    plain = s.crypto_aead_xchacha20poly1305_ietf_decrypt(null, bytes.subarray(headLen), head, nonce, key);
  } catch {
    throw new CdbpError('SEAL_INVALID', 'freshness record failed authentication (edited, forged or sealed with another key)');
  }
  const record = JSON.parse(Buffer.from(plain).toString('utf8')) as FreshnessRecord;
  // The header is authenticated; the body must agree with it (defence in depth against a buggy sealer).
  const headId = head.subarray(RECORD_MAGIC.length + 1, RECORD_MAGIC.length + 1 + idLen).toString('utf8');
  const headEpoch = Number(head.readBigUInt64BE(RECORD_MAGIC.length + 1 + idLen));
  if (record.databaseId !== headId || record.epoch !== headEpoch) {
    throw new CdbpError('SEAL_INVALID', 'freshness record header and body disagree');
  }
  return record;
}

export function recordDigest(bytes: Buffer): string {
  return createHash('sha256').update(bytes).digest('hex');
}
