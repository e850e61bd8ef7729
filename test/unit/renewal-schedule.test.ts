/**
 * The renewal schedule (src/cas-client/renewal.ts), apart from what a renewal does: when, how retries
 * back off, shared attempts, and that a failure is counted and shown but keeps the schedule going.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { renewalDelayMs, retryDelayMs, RenewalDriver } from '../../src/cas-client/renewal.ts';
import { CdbpError } from '../../src/kernel/errors.ts';

const H = 3600_000;

test('renewalDelayMs: a third of the lifetime left by default, renew-before capped at half, at least 1 s', () => {
  assert.equal(renewalDelayMs({ now: 0, notAfter: 24 * H, renewBeforeSeconds: 0 }), 16 * H);
  assert.equal(renewalDelayMs({ now: 0, notAfter: 24 * H, renewBeforeSeconds: 3600 }), 23 * H);
  assert.equal(renewalDelayMs({ now: 0, notAfter: 24 * H, renewBeforeSeconds: 10 * 24 * 3600 }), 12 * H, 'capped at half: no tight loop');
  assert.equal(renewalDelayMs({ now: 10_000, notAfter: 10_500, renewBeforeSeconds: 0 }), 1000, 'never sooner than 1 s');
  assert.equal(renewalDelayMs({ now: 10_000, notAfter: 5000, renewBeforeSeconds: 0 }), 1000, 'already expired: 1 s');
  assert.equal(renewalDelayMs({ now: 0, notAfter: 400 * 24 * H, renewBeforeSeconds: 0 }), 2 ** 31 - 1, 'within what setTimeout takes');
});

test('retryDelayMs: 5 s doubling to 60 s', () => {
  assert.deepEqual([1, 2, 3, 4, 5, 10].map(retryDelayMs), [5000, 10_000, 20_000, 40_000, 60_000, 60_000]);
});

test('driver: shared attempt, success counted and rescheduled, failure counted, shown, retried with backoff, rethrown', async () => {
  let calls = 0;
  let fail = false;
  let release: () => void = () => undefined;
  const driver = new RenewalDriver({
    renewBeforeSeconds: 0,
    attempt: async () => {
      calls++;
      await new Promise<void>((r) => { release = r; });
      if (fail) throw new CdbpError('CAS_UNREACHABLE', 'down');
      return { notAfter: new Date(Date.now() + 3 * H), facts: { serial: String(calls) } };
    },
  });
  const a = driver.renew();
  const b = driver.renew();
  await new Promise((r) => setImmediate(r));
  release();
  assert.deepEqual(await a, { serial: '1' });
  assert.deepEqual(await b, { serial: '1' }, 'concurrent requests share one attempt');
  assert.equal(calls, 1);
  let s = driver.status();
  assert.equal(s.renewals, 1);
  assert.equal(s.error, undefined);
  assert.ok(Math.abs(s.nextRenewalAt!.getTime() - (Date.now() + 2 * H)) < 5000, 'next at two thirds of the new lifetime');

  fail = true;
  const c = driver.renew();
  await new Promise((r) => setImmediate(r));
  release();
  await assert.rejects(c, (e: any) => e.code === 'CAS_UNREACHABLE');
  s = driver.status();
  assert.equal(s.renewals, 1);
  assert.equal(s.consecutiveFailures, 1);
  assert.equal(s.error, 'CAS_UNREACHABLE: down');
  assert.ok(Math.abs(s.nextRenewalAt!.getTime() - (Date.now() + 5000)) < 1000, 'retry in 5 s');

  const d = driver.renew();
  await new Promise((r) => setImmediate(r));
  release();
  await assert.rejects(d);
  assert.equal(driver.status().consecutiveFailures, 2);
  assert.ok(Math.abs(driver.status().nextRenewalAt!.getTime() - (Date.now() + 10_000)) < 1000, 'then 10 s');

  fail = false;
  const e = driver.renew();
  await new Promise((r) => setImmediate(r));
  release();
  await e;
  assert.equal(driver.status().consecutiveFailures, 0);
  assert.equal(driver.status().error, undefined);

  await driver.stop();
  assert.equal(driver.status().nextRenewalAt, undefined);
  await assert.rejects(driver.renew(), (err: any) => err.code === 'LIFECYCLE_INVALID_TRANSITION');
});
