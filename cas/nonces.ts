/**
 * Single-use, short-lived nonces. Issued as 32 random bytes; consuming one removes it whether or not
 * the request it came with succeeds, so each nonce is tried at most once. The store is bounded: when
 * full of unexpired nonces it refuses new ones (RATE_LIMITED) rather than evicting nonces that honest
 * clients are about to use.
 */
import { randomBytes } from 'node:crypto';
import { CdbpError } from '../src/kernel/errors.ts';

export type NoncePurpose = 'attest' | 'recover';

export class NonceStore {
  private readonly live = new Map<string, { purpose: NoncePurpose; expiresAt: number }>();

  constructor(private readonly ttlMs = 60_000, private readonly maxLive = 10_000, private readonly now = () => Date.now()) {}

  issue(purpose: NoncePurpose): { nonce: string; expiresAt: number } {
    if (this.live.size >= this.maxLive) this.purgeExpired();
    if (this.live.size >= this.maxLive) throw new CdbpError('RATE_LIMITED', 'too many outstanding nonces; retry shortly');
    const nonce = randomBytes(32).toString('hex');
    const expiresAt = this.now() + this.ttlMs;
    this.live.set(nonce, { purpose, expiresAt });
    return { nonce, expiresAt };
  }

  /** Removes and checks the nonce. Unknown, reused, expired or for another purpose → NONCE_INVALID. */
  consume(nonce: string, purpose: NoncePurpose): void {
    // Map lookup by the nonce itself: a nonce is not a secret that a timing difference would reveal
    // (it was handed out in the clear); a guess must hit 256 random bits.
    const entry = this.live.get(nonce);
    this.live.delete(nonce);
    if (!entry) throw new CdbpError('NONCE_INVALID', 'nonce unknown or already used');
    if (entry.expiresAt < this.now()) throw new CdbpError('NONCE_INVALID', 'nonce expired');
    if (entry.purpose !== purpose) throw new CdbpError('NONCE_INVALID', `nonce was issued for ${entry.purpose}, not ${purpose}`);
  }

  get size(): number {
    return this.live.size;
  }

  private purgeExpired(): void {
    const t = this.now();
    for (const [k, v] of this.live) if (v.expiresAt < t) this.live.delete(k);
  }
}
