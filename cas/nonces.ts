/**
 * Single-use, short-lived nonces that cost the CAS nothing to hand out.
 *
 * Issuing keeps no state: a nonce is 32 bytes
 *
 *   purpose (1) ‖ expiresAt ms, big-endian (6) ‖ random (9) ‖ HMAC-SHA256(key, "cdbp-nonce/1" ‖ first 16 bytes)[0..16)
 *
 * with a key drawn at process start and kept in memory. Consuming one checks the MAC (a nonce this CAS
 * did not issue, or issued for another purpose, fails), the expiry, and then a replay cache that holds
 * only nonces already consumed, each until its own expiry. So `/v1/nonce` can be called at any rate
 * without filling anything (a store of live nonces let 10,000 unused ones block attestation), and the
 * cache grows only with requests that reach attest/recover, each of which is also audited.
 *
 * The cache is bounded (maxConsumed): when full of unexpired entries, consuming refuses (RATE_LIMITED)
 * rather than forgetting a consumed nonce, which would allow a replay. A restart draws a new key, so
 * nonces issued before it are simply invalid (they live 60 s by default).
 */
import { createHmac, randomBytes } from 'node:crypto';
import { CdbpError } from '../src/kernel/errors.ts';
import { constantTimeEqual } from '../src/crypto/hash.ts';

export type NoncePurpose = 'attest' | 'recover';

const PURPOSE_BYTE: Record<NoncePurpose, number> = { attest: 1, recover: 2 };
const BODY = 16;
const MAC = 16;

export class NonceStore {
  private readonly key = randomBytes(32);
  /** Consumed nonce (hex) → its expiry. */
  private readonly consumed = new Map<string, number>();
  /** Nonces issued so far: a consumed nonce says which it was (see `issued`). */
  private issuedCount = 0;

  constructor(private readonly ttlMs = 60_000, private readonly maxConsumed = 100_000, private readonly now = () => Date.now()) {}

  private mac(body: Buffer): Buffer {
    return createHmac('sha256', this.key).update('cdbp-nonce/1\0').update(body).digest().subarray(0, MAC);
  }

  issue(purpose: NoncePurpose): { nonce: string; expiresAt: number } {
    const expiresAt = this.now() + this.ttlMs;
    const body = Buffer.alloc(BODY);
    body[0] = PURPOSE_BYTE[purpose];
    body.writeUIntBE(expiresAt, 1, 6);
    body.writeUInt32BE(++this.issuedCount >>> 0, 7);
    randomBytes(5).copy(body, 11);
    return { nonce: Buffer.concat([body, this.mac(body)]).toString('hex'), expiresAt };
  }

  /**
   * How many nonces were issued so far. A nonce consumed later reports its own number (`consume`), so a
   * caller can tell whether it was issued before or after something it marked with this (a counter that
   * changed after a recovery's nonce was handed out: the signed recovery is stale, core.ts recover).
   */
  get issued(): number {
    return this.issuedCount;
  }

  /** Checks and burns the nonce; returns its issue number. Forged, reused, expired or for another purpose → NONCE_INVALID. */
  consume(nonce: string, purpose: NoncePurpose): { issued: number } {
    const raw = /^[0-9a-f]{64}$/.test(nonce) ? Buffer.from(nonce, 'hex') : undefined;
    if (!raw) throw new CdbpError('NONCE_INVALID', 'nonce must be 32 bytes of lowercase hex');
    const body = raw.subarray(0, BODY);
    if (!constantTimeEqual(this.mac(body), raw.subarray(BODY))) throw new CdbpError('NONCE_INVALID', 'nonce unknown (not issued by this CAS, or issued before it restarted)');
    const issuedFor = (Object.keys(PURPOSE_BYTE) as NoncePurpose[]).find((p) => PURPOSE_BYTE[p] === body[0]);
    const expiresAt = body.readUIntBE(1, 6);
    const t = this.now();
    if (expiresAt < t) throw new CdbpError('NONCE_INVALID', 'nonce expired');
    if (this.consumed.has(nonce)) throw new CdbpError('NONCE_INVALID', 'nonce unknown or already used');
    if (this.consumed.size >= this.maxConsumed) this.purgeExpired();
    if (this.consumed.size >= this.maxConsumed) throw new CdbpError('RATE_LIMITED', 'too many nonces consumed recently; retry shortly');
    // Burnt before the purpose check and before the caller's own checks: each nonce is tried once.
    this.consumed.set(nonce, expiresAt);
    if (issuedFor !== purpose) throw new CdbpError('NONCE_INVALID', `nonce was issued for ${issuedFor ?? 'nothing'}, not ${purpose}`);
    return { issued: body.readUInt32BE(7) };
  }

  /** Consumed nonces remembered until they expire (the only state nonces keep). */
  get size(): number {
    return this.consumed.size;
  }

  private purgeExpired(): void {
    const t = this.now();
    for (const [k, exp] of this.consumed) if (exp < t) this.consumed.delete(k);
  }
}
