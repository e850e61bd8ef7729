/**
 * Sealing to a public key (libsodium sealed box: ephemeral X25519 + XSalsa20-Poly1305). The CAS seals a
 * service's secrets to the ephemeral key of the attested process; only that process can open them.
 */
import { CdbpError } from '../kernel/errors.ts';
import { sodiumReady } from './sodium.ts';

export interface SealingKeyPair {
  publicKey: Buffer;
  /** Never leaves the process that generated it. */
  privateKey: Buffer;
}

export async function generateSealingKeyPair(): Promise<SealingKeyPair> {
  const s = await sodiumReady();
  const kp = s.crypto_box_keypair();
  return { publicKey: Buffer.from(kp.publicKey), privateKey: Buffer.from(kp.privateKey) };
}

export async function sealToPublicKey(publicKey: Buffer, plaintext: Buffer): Promise<Buffer> {
  const s = await sodiumReady();
  if (publicKey.length !== s.crypto_box_PUBLICKEYBYTES) throw new CdbpError('BAD_REQUEST', 'sealing public key must be 32 bytes');
  return Buffer.from(s.crypto_box_seal(plaintext, publicKey));
}

export async function openSealed(keys: SealingKeyPair, sealed: Buffer): Promise<Buffer> {
  const s = await sodiumReady();
  try {
    return Buffer.from(s.crypto_box_seal_open(sealed, keys.publicKey, keys.privateKey));
  } catch {
    throw new CdbpError('SEAL_INVALID', 'sealed box does not open with this key');
  }
}
