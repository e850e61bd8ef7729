/**
 * Policy applies decide one at a time and write concurrently (cas/core.ts applyPolicy): many services
 * applied at once are all created, durable (a restarted CAS has every one, and the audit log and its
 * anchor check out), and the cross-service checks still hold while writes overlap: of two services
 * applied at the same moment that claim the same DNS name, exactly one gets it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { tempDir } from '../support/tmp.ts';
import { startTestCas, type TestCas } from '../support/cas.ts';
import { buildPolicy, signPolicy } from '../../src/provisioning/policy.ts';
import { applySignedPolicy, getCurrentPolicy } from '../../src/cas-client/policy.ts';
import { isCdbpError } from '../../src/kernel/errors.ts';
import { measureShippedCode } from '../../src/attestation/measurement.ts';

test('concurrent policy applies: all durable, names still exclusive', { timeout: 120_000 }, async (t) => {
  const tmp = tempDir('cas-apply-concurrent');
  let cas: TestCas | undefined;
  t.after(async () => { await cas?.stop(); tmp.remove(); });
  cas = await startTestCas({ root: tmp.path });
  const c = cas;
  const measurement = measureShippedCode();
  const apply = async (service: string, o: { dnsNames?: string[] } = {}) =>
    applySignedPolicy(c.url, c.caPem, await signPolicy(buildPolicy({ service, measurements: [measurement], teeModes: ['simulated'], dnsNames: o.dnsNames ?? ['localhost'] }), c.owner));

  const names = Array.from({ length: 200 }, (_, i) => `svc-${String(i).padStart(3, '0')}`);
  const results = await Promise.all(names.map((n) => apply(n)));
  assert.deepEqual(new Set(results.map((r) => r.status)), new Set(['created']));

  // Two services at once claim one name: exactly one is refused, whichever decided second.
  const race = await Promise.allSettled([apply('claim-a', { dnsNames: ['db.example.test'] }), apply('claim-b', { dnsNames: ['db.example.test'] })]);
  const won = race.filter((r) => r.status === 'fulfilled');
  const lost = race.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
  assert.equal(won.length, 1, JSON.stringify(race.map((r) => r.status)));
  assert.ok(isCdbpError(lost[0]!.reason, 'POLICY_INVALID') && /already taken/.test((lost[0]!.reason as Error).message), String(lost[0]!.reason));

  // Durable: a restarted CAS (which checks the audit log against its sealed anchor) has every service.
  assert.equal(await c.stop(), 0);
  cas = await startTestCas({ root: tmp.path, dir: c.dir });
  for (const n of [...names, won[0] === race[0] ? 'claim-a' : 'claim-b']) {
    assert.ok(await getCurrentPolicy(cas.url, cas.caPem, n), `${n} survived the restart`);
  }
});
