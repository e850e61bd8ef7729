/**
 * ECDSA as the TEE formats carry it: raw r‖s (IEEE P1363), not DER. SEV-SNP stores each of r and s
 * little-endian in a 72-byte field (only the low 48 bytes used); TDX quotes store big-endian r‖s and raw
 * x‖y public keys.
 */
import { createPublicKey, verify, type KeyObject } from 'node:crypto';

/** Verifies a big-endian r‖s signature; any malformed key or signature is simply "does not verify". */
export function verifyP1363(hash: 'sha256' | 'sha384', data: Buffer, key: KeyObject, rs: Buffer): boolean {
  try {
    return verify(hash, data, { key, dsaEncoding: 'ieee-p1363' }, rs);
  } catch {
    return false;
  }
}

/** SEV-SNP's signature block (r then s, 72 bytes each, little-endian) → big-endian r‖s (96 bytes, P-384). */
export function snpSignatureToP1363(sig: Buffer): Buffer {
  const r = Buffer.from(sig.subarray(0, 48)).reverse();
  const s = Buffer.from(sig.subarray(72, 72 + 48)).reverse();
  return Buffer.concat([r, s]);
}

/** True if the unused high bytes of SNP's 72-byte r and s fields are zero (anything else is not a valid encoding). */
export function snpSignaturePaddingIsZero(sig: Buffer): boolean {
  return sig.subarray(48, 72).every((b) => b === 0) && sig.subarray(120, 144).every((b) => b === 0);
}

/** A P-256 public key from raw x‖y (64 bytes), as TDX quotes carry the attestation key. */
export function p256PublicKeyFromRaw(xy: Buffer): KeyObject {
  if (xy.length !== 64) throw new Error('P-256 raw public key must be 64 bytes');
  return createPublicKey({
    key: { kty: 'EC', crv: 'P-256', x: xy.subarray(0, 32).toString('base64url'), y: xy.subarray(32).toString('base64url') },
    format: 'jwk',
  });
}
