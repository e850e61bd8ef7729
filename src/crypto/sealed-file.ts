/**
 * Sealed blobs at rest. Layout:
 *
 *   "CDBPSEAL" (8) | format version (1) | label length (2, BE) | label (utf8) | nonce (24) | ciphertext+tag
 *
 * Everything before the nonce is the header and is bound as AEAD associated data, so changing the
 * version or the label (e.g. renaming one service's file to another's) fails authentication just like
 * flipping a ciphertext byte. The label says what the blob is ("cas/service/orders").
 */
import { CdbpError } from '../kernel/errors.ts';
import { aeadOpen, aeadSeal } from './aead.ts';

const MAGIC = Buffer.from('CDBPSEAL');
const VERSION = 1;

export function sealedHeader(label: string): Buffer {
  const l = Buffer.from(label, 'utf8');
  if (l.length > 0xffff) throw new CdbpError('INTERNAL', 'sealed label too long');
  const h = Buffer.alloc(MAGIC.length + 3);
  MAGIC.copy(h, 0);
  h.writeUInt8(VERSION, MAGIC.length);
  h.writeUInt16BE(l.length, MAGIC.length + 1);
  return Buffer.concat([h, l]);
}

export async function sealBlob(key: Buffer, label: string, plaintext: Buffer): Promise<Buffer> {
  const header = sealedHeader(label);
  return Buffer.concat([header, await aeadSeal(key, plaintext, header)]);
}

/** Opens a sealed blob that must carry exactly `expectedLabel`; anything else → SEAL_INVALID. */
export async function openBlob(key: Buffer, expectedLabel: string, blob: Buffer): Promise<Buffer> {
  const header = sealedHeader(expectedLabel);
  if (blob.length < header.length || !blob.subarray(0, MAGIC.length).equals(MAGIC)) {
    throw new CdbpError('SEAL_INVALID', 'not a sealed blob (bad magic)');
  }
  if (!blob.subarray(0, header.length).equals(header)) {
    throw new CdbpError('SEAL_INVALID', `sealed header does not match (expected label "${expectedLabel}", version ${VERSION})`);
  }
  return aeadOpen(key, blob.subarray(header.length), header);
}
