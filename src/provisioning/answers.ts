/**
 * Signed CAS answers (so a man in the middle holding some CA-signed certificate cannot forge them). TLS to the CAS is authenticated by the pinned CA plus the CAS
 * role (x509.ts checkCasServerIdentity); on top of that, the CAS signs what a rollback or a secret swap
 * would have to forge (counter values and the attest result) with an Ed25519 key whose certificate
 * chains to the same pinned CA (role cas-signing). Each signature covers a nonce the client chose (or,
 * for attest, the CAS nonce bound into the evidence), so an old answer cannot be replayed either.
 *
 * Messages are domain-separated: "<format>" NUL canonical JSON. Pure functions, shared by both sides.
 */
import { createPrivateKey, sign, verify, type KeyObject } from 'node:crypto';
import { canonicalJson, isHex } from '../crypto/hash.ts';

export const COUNTER_ANSWER_FORMAT = 'cdbp-counter-answer/1';
export const ATTEST_ANSWER_FORMAT = 'cdbp-attest-answer/1';

export interface CounterAnswer {
  service: string;
  /** read / advance: the answer's value; conflict: the CAS's current value on a refused advance. */
  op: 'read' | 'advance' | 'conflict' | 'recover';
  /** Hex, 32 bytes, chosen by the client per request. */
  nonce: string;
  value: number;
  digest: string;
  /**
   * A replicated CAS member's view of which generation holds each slot (src/cas-client/quorum.ts
   * formatMembership): signed, so the proxy can retire old incarnations. Absent on a single CAS.
   */
  membership?: string;
}

export interface AttestAnswer {
  service: string;
  nonce: string;
  mode: string;
  measurement: string;
  policyHash: string;
  notAfter: string;
  /** Hex SHA-256 of the issued certificate PEM and of the sealed secrets (base64 text). */
  certSha256: string;
  sealedSecretsSha256: string;
  sealingPublicKey: string;
}

export function counterAnswerMessage(a: CounterAnswer): Buffer {
  return Buffer.from(`${COUNTER_ANSWER_FORMAT}\0${canonicalJson({ ...a })}`);
}

export function attestAnswerMessage(a: AttestAnswer): Buffer {
  return Buffer.from(`${ATTEST_ANSWER_FORMAT}\0${canonicalJson({ ...a })}`);
}

/** An Ed25519 private KeyObject from a libsodium secret key (seed ‖ public). */
export function ed25519PrivateKey(secretKey: Buffer): KeyObject {
  const pkcs8 = Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'), secretKey.subarray(0, 32)]);
  return createPrivateKey({ key: pkcs8, format: 'der', type: 'pkcs8' });
}

export function signAnswer(key: KeyObject, message: Buffer): string {
  return sign(null, message, key).toString('hex');
}

export function verifyAnswer(key: KeyObject, message: Buffer, signature: unknown): boolean {
  if (!isHex(signature, 64)) return false;
  try {
    return verify(null, message, key, Buffer.from(signature, 'hex'));
  } catch {
    return false;
  }
}
