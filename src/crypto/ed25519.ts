/**
 * Ed25519 signing keys (libsodium) and their file format. Used for the owner's policy key and for the
 * simulated attestation platform key. Files hold hex JSON, mode 0600; the public half is also printed
 * so it can be pinned elsewhere.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { CdbpError } from '../kernel/errors.ts';
import { isHex } from './hash.ts';
import { sodiumReady } from './sodium.ts';

export interface SigningKeyPair {
  publicKey: Buffer;
  /** 64 bytes (libsodium format: seed ‖ public key). */
  secretKey: Buffer;
}

export async function generateSigningKeyPair(): Promise<SigningKeyPair> {
  const s = await sodiumReady();
  const kp = s.crypto_sign_keypair();
  return { publicKey: Buffer.from(kp.publicKey), secretKey: Buffer.from(kp.privateKey) };
}

export async function signDetached(secretKey: Buffer, message: Buffer): Promise<Buffer> {
  const s = await sodiumReady();
  return Buffer.from(s.crypto_sign_detached(message, secretKey));
}

export async function verifyDetached(publicKey: Buffer, message: Buffer, signature: Buffer): Promise<boolean> {
  const s = await sodiumReady();
  if (publicKey.length !== s.crypto_sign_PUBLICKEYBYTES || signature.length !== s.crypto_sign_BYTES) return false;
  try {
    return s.crypto_sign_verify_detached(signature, message, publicKey);
  } catch {
    return false;
  }
}

/** `format` names what the key is for, so an owner key cannot be loaded as a platform key by mistake. */
export function writeSigningKeyFile(file: string, kp: SigningKeyPair, format: string): void {
  writeFileSync(file, JSON.stringify({ format, publicKey: kp.publicKey.toString('hex'), secretKey: kp.secretKey.toString('hex') }) + '\n',
    { mode: 0o600, flag: 'wx' });
}

export function readSigningKeyFile(file: string, format: string): SigningKeyPair {
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new CdbpError('CONFIG_INVALID', `cannot read key file ${file}: ${(e as Error).message}`);
  }
  const o = parsed as { format?: unknown; publicKey?: unknown; secretKey?: unknown };
  if (o.format !== format || !isHex(o.publicKey, 32) || !isHex(o.secretKey, 64)) {
    throw new CdbpError('CONFIG_INVALID', `${file} is not a ${format} key file`);
  }
  const kp = { publicKey: Buffer.from(o.publicKey, 'hex'), secretKey: Buffer.from(o.secretKey, 'hex') };
  if (!kp.secretKey.subarray(32).equals(kp.publicKey)) throw new CdbpError('CONFIG_INVALID', `${file}: public and secret key do not match`);
  return kp;
}

/** Public key files hold just the hex public key (one line), easy to pin and to compare by eye. */
export function readPublicKeyFile(file: string): Buffer {
  let text: string;
  try {
    text = readFileSync(file, 'utf8').trim();
  } catch (e) {
    throw new CdbpError('CONFIG_INVALID', `cannot read public key file ${file}: ${(e as Error).message}`);
  }
  if (!isHex(text, 32)) throw new CdbpError('CONFIG_INVALID', `${file} must hold a 32-byte hex Ed25519 public key`);
  return Buffer.from(text, 'hex');
}
