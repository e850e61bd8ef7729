/**
 * Memo of signature checks that passed, keyed by SHA-256 of exactly the bytes that were checked (the
 * signed data, the signature and the key). Every sidecar of one platform presents the same VCEK/ASK or
 * PCK chain and the CAS holds the same collateral, so re-verifying those RSA-4096/ECDSA signatures per
 * attestation is wasted work; the report or quote signature itself is new each time and never cached.
 * Only successes are remembered (a failure is re-checked, and costs the attacker the same as us), the
 * memo is bounded, and time checks (validity, nextUpdate) always run again: a cached signature never
 * makes an expired certificate valid.
 */
import { createHash } from 'node:crypto';

const MAX = 4096;
const seen = new Map<string, true>();

export function memoKey(...parts: Array<Buffer | string>): string {
  const h = createHash('sha256');
  for (const p of parts) {
    const b = typeof p === 'string' ? Buffer.from(p) : p;
    const len = Buffer.alloc(4);
    len.writeUInt32BE(b.length);
    h.update(len).update(b);
  }
  return h.digest('hex');
}

/** Runs `check` unless the same bytes already verified; remembers a `true`. */
export function verifiedOnce(key: string, check: () => boolean): boolean {
  if (seen.has(key)) return true;
  const ok = check();
  if (ok) {
    if (seen.size >= MAX) seen.delete(seen.keys().next().value as string);
    seen.set(key, true);
  }
  return ok;
}

/** For tests and benchmarks that measure the uncached path. */
export function clearVerifiedCache(): void {
  seen.clear();
}
