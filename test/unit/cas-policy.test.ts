import { test } from 'node:test';
import assert from 'node:assert/strict';
import { buildPolicy, policyHash, signPolicy, validatePolicy, verifySignedPolicy, type Policy } from '../../src/provisioning/policy.ts';
import { checkPolicyUpdate } from '../../cas/policy.ts';
import { generateSigningKeyPair } from '../../src/crypto/ed25519.ts';
import { canonicalJson } from '../../src/crypto/hash.ts';
import { isCdbpError } from '../../src/kernel/errors.ts';

const M = 'ab'.repeat(32);
const base = (): Policy => buildPolicy({ service: 'svc', measurements: [M], teeModes: ['simulated'] });

test('buildPolicy defaults: localhost + 127.0.0.1, key 1 version 1, one day', () => {
  const p = base();
  assert.deepEqual(p.tls, { dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'], lifetimeSeconds: 86400 });
  assert.deepEqual(p.dbKeys, [{ id: 1, versions: [1] }]);
  assert.equal(p.predecessor, null);
});

test('validatePolicy reports every problem at once', () => {
  const bad = { ...base(), service: 'Bad Name', measurements: ['xyz'], teeModes: ['none'], extra: 1,
    tls: { dnsNames: ['-bad-'], ipAddresses: ['1.2.3'], lifetimeSeconds: 5 }, dbKeys: [{ id: 0, versions: [1, 1] }] };
  try {
    validatePolicy(bad);
    assert.fail('accepted');
  } catch (e) {
    assert.ok(isCdbpError(e, 'POLICY_INVALID'));
    const problems = (e.details as { problems: string[] }).problems;
    for (const needle of ['unknown field "extra"', 'service', 'measurements[0]', 'teeModes[0]', 'dnsNames[0]', 'ipAddresses[0]', 'lifetimeSeconds', 'dbKeys[0].id', 'duplicates']) {
      assert.ok(problems.some((p) => p.includes(needle)), `missing ${needle} in ${problems.join(' | ')}`);
    }
  }
});

test('policy hash is over canonical JSON: key order does not matter, content does', () => {
  const p = base();
  const reordered = JSON.parse(JSON.stringify({ dbKeys: p.dbKeys, tls: p.tls, teeModes: p.teeModes, measurements: p.measurements, predecessor: p.predecessor, service: p.service, format: p.format })) as Policy;
  assert.equal(policyHash(reordered), policyHash(p));
  assert.notEqual(policyHash({ ...p, measurements: ['cd'.repeat(32)] }), policyHash(p));
  assert.equal(canonicalJson({ b: 1, a: [true, null, 's'] }), '{"a":[true,null,"s"],"b":1}');
});

test('signed policy: verifies; edited policy, hash or signature are refused', async () => {
  const owner = await generateSigningKeyPair();
  const s = await signPolicy(base(), owner);
  assert.equal((await verifySignedPolicy(JSON.parse(JSON.stringify(s)))).policyHash, s.policyHash);
  await assert.rejects(verifySignedPolicy({ ...s, policy: { ...s.policy, measurements: ['cd'.repeat(32)] } }), (e: unknown) => isCdbpError(e, 'POLICY_INVALID'));
  const other = await signPolicy({ ...base(), service: 'other' }, owner);
  await assert.rejects(verifySignedPolicy({ ...other, policy: s.policy, policyHash: s.policyHash }), (e: unknown) => isCdbpError(e, 'POLICY_SIGNATURE_INVALID'));
  const stranger = await generateSigningKeyPair();
  await assert.rejects(verifySignedPolicy({ ...s, owner: stranger.publicKey.toString('hex') }), (e: unknown) => isCdbpError(e, 'POLICY_SIGNATURE_INVALID'));
  await assert.rejects(verifySignedPolicy({ ...s, extra: 1 }), (e: unknown) => isCdbpError(e, 'POLICY_INVALID'));
});

test('update rules: owner binding, predecessor chain, idempotent re-apply, no key version removal', async () => {
  const owner = await generateSigningKeyPair();
  const first = await signPolicy(base(), owner);
  assert.deepEqual(checkPolicyUpdate(undefined, first), { kind: 'create' });
  const current = { owner: first.owner, policyHash: first.policyHash, policy: first.policy };
  assert.deepEqual(checkPolicyUpdate(current, first), { kind: 'unchanged' });
  const next = await signPolicy({ ...base(), predecessor: first.policyHash, dbKeys: [{ id: 1, versions: [1, 2] }, { id: 2, versions: [1] }] }, owner);
  assert.deepEqual(checkPolicyUpdate(current, next), { kind: 'update' });
  const noPred = await signPolicy({ ...base(), measurements: ['cd'.repeat(32)] }, owner);
  assert.throws(() => checkPolicyUpdate(current, noPred), (e: unknown) => isCdbpError(e, 'POLICY_CHAIN_BROKEN'));
  const stranger = await signPolicy({ ...base(), predecessor: first.policyHash }, await generateSigningKeyPair());
  assert.throws(() => checkPolicyUpdate(current, stranger), (e: unknown) => isCdbpError(e, 'POLICY_OWNER_MISMATCH'));
  const firstWithPred = await signPolicy({ ...base(), predecessor: first.policyHash }, owner);
  assert.throws(() => checkPolicyUpdate(undefined, firstWithPred), (e: unknown) => isCdbpError(e, 'POLICY_CHAIN_BROKEN'));
  const cur2 = { owner: next.owner, policyHash: next.policyHash, policy: next.policy };
  const dropped = await signPolicy({ ...base(), predecessor: next.policyHash, dbKeys: [{ id: 1, versions: [2] }, { id: 2, versions: [1] }] }, owner);
  assert.throws(() => checkPolicyUpdate(cur2, dropped), (e: unknown) => isCdbpError(e, 'POLICY_INVALID') && /1v1/.test(e.message));
});
