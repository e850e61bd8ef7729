import { test } from 'node:test';
import assert from 'node:assert/strict';
import { NonceStore } from '../../cas/nonces.ts';
import { isCdbpError } from '../../src/kernel/errors.ts';

test('nonces: 32 random bytes, single use, expire, purpose-bound, bounded store', () => {
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
  assert.throws(() => s.consume(c.nonce, 'attest'), (e: unknown) => isCdbpError(e, 'NONCE_INVALID'));
  assert.throws(() => s.consume(c.nonce, 'recover'), (e: unknown) => isCdbpError(e, 'NONCE_INVALID')); // consumed by the failed try
  s.issue('attest'); s.issue('attest'); s.issue('attest');
  assert.throws(() => s.issue('attest'), (e: unknown) => isCdbpError(e, 'RATE_LIMITED'));
  now += 60_001; // all expired → purged on demand
  assert.ok(s.issue('attest').nonce);
});
