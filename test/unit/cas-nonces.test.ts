import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { NonceStore } from '../../cas/nonces.ts';
import { isCdbpError } from '../../src/kernel/errors.ts';

test('nonces: 32 bytes, single use, expire, purpose-bound, forged ones refused', () => {
  let now = 1000;
  const s = new NonceStore(60_000, 3, () => now);
  const a = s.issue('attest');
  assert.match(a.nonce, /^[0-9a-f]{64}$/);
  s.consume(a.nonce, 'attest');
  assert.throws(() => s.consume(a.nonce, 'attest'), (e: unknown) => isCdbpError(e, 'NONCE_INVALID'));
  const b = s.issue('attest');
  now += 60_001;
  assert.throws(() => s.consume(b.nonce, 'attest'), (e: unknown) => isCdbpError(e, 'NONCE_INVALID') && /expired/.test(e.message));
  const c = s.issue('recover');
  assert.throws(() => s.consume(c.nonce, 'attest'), (e: unknown) => isCdbpError(e, 'NONCE_INVALID') && /issued for recover/.test(e.message));
  assert.throws(() => s.consume(c.nonce, 'recover'), (e: unknown) => isCdbpError(e, 'NONCE_INVALID')); // consumed by the failed try
  // Not issued by this store: random bytes, an edited nonce (expiry pushed out), another store's nonce.
  assert.throws(() => s.consume(randomBytes(32).toString('hex'), 'attest'), (e: unknown) => isCdbpError(e, 'NONCE_INVALID'));
  const d = Buffer.from(s.issue('attest').nonce, 'hex');
  d[3] = d[3]! ^ 0x01;
  assert.throws(() => s.consume(d.toString('hex'), 'attest'), (e: unknown) => isCdbpError(e, 'NONCE_INVALID') && /unknown/.test(e.message));
  assert.throws(() => s.consume(new NonceStore(60_000, 3, () => now).issue('attest').nonce, 'attest'), (e: unknown) => isCdbpError(e, 'NONCE_INVALID'));
  assert.throws(() => s.consume('AB'.repeat(32), 'attest'), (e: unknown) => isCdbpError(e, 'NONCE_INVALID'));
});

test('nonces: issuing is stateless (no limit), only consumed nonces are remembered, until they expire', () => {
  let now = 1000;
  const s = new NonceStore(60_000, 3, () => now);
  const issued = Array.from({ length: 20_000 }, () => s.issue('attest'));
  assert.equal(s.size, 0); // a flood of /v1/nonce keeps nothing
  assert.equal(new Set(issued.map((n) => n.nonce)).size, issued.length);
  for (const n of issued.slice(0, 3)) s.consume(n.nonce, 'attest');
  assert.equal(s.size, 3);
  // The replay cache is bounded: full of unexpired consumed nonces → RATE_LIMITED, never forgetting one.
  assert.throws(() => s.consume(issued[3]!.nonce, 'attest'), (e: unknown) => isCdbpError(e, 'RATE_LIMITED'));
  assert.throws(() => s.consume(issued[0]!.nonce, 'attest'), (e: unknown) => isCdbpError(e, 'NONCE_INVALID'));
  now += 60_001; // all expired → purged on demand; a fresh nonce is accepted
  s.consume(s.issue('attest').nonce, 'attest');
  assert.equal(s.size, 1);
});

test('nonces: a consumed nonce tells its issue number, so a caller can tell it was issued before a change it marked', () => {
  const s = new NonceStore(60_000, 100);
  const early = s.issue('recover');
  const mark = s.issued;
  const late = s.issue('recover');
  assert.ok(s.consume(early.nonce, 'recover').issued <= mark, 'issued before the mark');
  assert.ok(s.consume(late.nonce, 'recover').issued > mark, 'issued after the mark');
});
