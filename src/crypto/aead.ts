/**
 * Authenticated encryption with associated data: XChaCha20-Poly1305 (libsodium IETF construction).
 * 24-byte random nonces are safe to draw at random for any realistic number of messages per key.
 */
import { CdbpError } from '../kernel/errors.ts';
import { sodiumReady } from './sodium.ts';

export const AEAD_KEY_BYTES = 32;
export const AEAD_NONCE_BYTES = 24;

/** Returns nonce ‖ ciphertext (ciphertext includes the 16-byte tag). */
export async function aeadSeal(key: Buffer, plaintext: Buffer, associatedData: Buffer): Promise<Buffer> {
  const s = await sodiumReady();
  if (key.length !== AEAD_KEY_BYTES) throw new CdbpError('INTERNAL', 'aeadSeal: key must be 32 bytes');
  const nonce = s.randombytes_buf(AEAD_NONCE_BYTES);
  const ct = s.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, associatedData, null, nonce, key);
  return Buffer.concat([Buffer.from(nonce), Buffer.from(ct)]);
}

/** Opens nonce ‖ ciphertext; any change to key, nonce, ciphertext or associated data → SEAL_INVALID. */
export async function aeadOpen(key: Buffer, sealed: Buffer, associatedData: Buffer): Promise<Buffer> {
  const s = await sodiumReady();
  if (key.length !== AEAD_KEY_BYTES) throw new CdbpError('INTERNAL', 'aeadOpen: key must be 32 bytes');
  if (sealed.length < AEAD_NONCE_BYTES + s.crypto_aead_xchacha20poly1305_ietf_ABYTES) {
    throw new CdbpError('SEAL_INVALID', 'sealed data is truncated');
  }
  try {
    const pt = s.crypto_aead_xchacha20poly1305_ietf_decrypt(null, sealed.subarray(AEAD_NONCE_BYTES),
      associatedData, sealed.subarray(0, AEAD_NONCE_BYTES), key);
    return Buffer.from(pt);
  } catch {
    throw new CdbpError('SEAL_INVALID', 'authentication failed (wrong key, or data or header modified)');
  }
}
