/**
 * Who may create services on a real `cdbp cas` : the first policy binds its owner
 * (trust on first use, sealed, audited) unless `--owner` names the allowed keys; names a service's
 * certificate carries are unique across services (loopback names excepted) and never the CAS's own.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { readFileSync, writeFileSync } from 'node:fs';
import { tempDir } from '../support/tmp.ts';
import { startTestCas, runCdbp } from '../support/cas.ts';
import { buildPolicy, signPolicy, type BuildPolicyOptions } from '../../src/provisioning/policy.ts';
import { applySignedPolicy, getCurrentPolicy } from '../../src/cas-client/policy.ts';
import { generateSigningKeyPair, type SigningKeyPair } from '../../src/crypto/ed25519.ts';
import { measureShippedCode } from '../../src/attestation/measurement.ts';
import { isCdbpError } from '../../src/kernel/errors.ts';

const apply = async (cas: { url: string; caPem: string }, owner: SigningKeyPair, o: Partial<BuildPolicyOptions> & { service: string }) =>
  applySignedPolicy(cas.url, cas.caPem, await signPolicy(buildPolicy({ measurements: [measureShippedCode()], teeModes: ['simulated'], ...o }), owner));
const code = (c: string) => (e: unknown) => isCdbpError(e, c as never);

test('trust on first use: the first policy binds the CAS owner; strangers cannot create services, also after a restart', async (t) => {
  const tmp = tempDir('cas-tofu');
  t.after(() => tmp.remove());
  const cas = await startTestCas({ root: tmp.path, extraArgs: ['--tls-names', 'cas.example.test'] });
  const [alice, mallory] = [await generateSigningKeyPair(), await generateSigningKeyPair()];
  assert.equal((await apply(cas, alice, { service: 'a' })).status, 'created');
  // A stranger may not create a new service...
  await assert.rejects(apply(cas, mallory, { service: 'b' }), code('POLICY_OWNER_MISMATCH'));
  // ...while the bound owner may.
  assert.equal((await apply(cas, alice, { service: 'b', dnsNames: ['localhost', 'db-b.example.test'], ipAddresses: ['127.0.0.1', '::1', '10.9.8.7'] })).status, 'created');

  // Names: another service's DNS name (any case, or via a wildcard), IP, or the CAS's own name → refused.
  const clashes: Array<[string, Partial<BuildPolicyOptions>]> = [
    ['c1', { dnsNames: ['DB-B.example.test'] }],
    ['c2', { dnsNames: ['*.example.test'] }],
    ['c3', { ipAddresses: ['10.9.8.7'] }],
    ['c4', { dnsNames: ['cas.example.test'] }],
  ];
  for (const [service, o] of clashes) {
    await assert.rejects(apply(cas, alice, { service, ...o }), (e: unknown) => isCdbpError(e, 'POLICY_INVALID') && /already taken/.test(e.message), service);
  }
  // An update of a service may not grab another's name either.
  const aHash = (await getCurrentPolicy(cas.url, cas.caPem, 'a'))!.policyHash;
  await assert.rejects(apply(cas, alice, { service: 'a', predecessor: aHash, dnsNames: ['db-b.example.test'] }),
    (e: unknown) => isCdbpError(e, 'POLICY_INVALID') && /already taken/.test(e.message));
  // The loopback names every local proxy needs are shared.
  assert.equal((await apply(cas, alice, { service: 'd', dnsNames: ['localhost'], ipAddresses: ['127.0.0.1', '::1'] })).status, 'created');

  const audit = readFileSync(path.join(cas.dir, 'audit.log'), 'utf8');
  assert.match(audit, new RegExp(`"event":"cas.owners".*"owners":"${alice.publicKey.toString('hex')}","boundBy":"first-policy"`));
  assert.equal(await cas.stop(), 0);

  // The binding is sealed state: a restart keeps it.
  const again = await startTestCas({ root: tmp.path, dir: cas.dir, platformKeyFile: cas.platformKeyFile });
  t.after(() => again.stop());
  await assert.rejects(apply(again, mallory, { service: 'e' }), code('POLICY_OWNER_MISMATCH'));
  assert.equal((await apply(again, alice, { service: 'e' })).status, 'created');
  // And `--owner` cannot silently replace it.
  const other = await runCdbp(['cas', '--dir', path.join(tmp.path, 'cas-other-dir-not-used'), '--port', '0', '--owner', 'zz']);
  assert.equal(other.code, 1);
  assert.match(other.output, /CONFIG_INVALID/);
  await again.stop();
  const override = await runCdbp(['cas', '--dir', cas.dir, '--port', '0', '--owner', mallory.publicKey.toString('hex')]);
  assert.equal(override.code, 1, override.output);
  assert.match(override.output, /CONFIG_INVALID.*owner allow-list sealed/);
});

test('--owner (repeatable, or a file) restricts who creates services from the start', async (t) => {
  const tmp = tempDir('cas-owner');
  t.after(() => tmp.remove());
  const [alice, bob, carol] = [await generateSigningKeyPair(), await generateSigningKeyPair(), await generateSigningKeyPair()];
  const ownersFile = path.join(tmp.path, 'owners.txt');
  writeFileSync(ownersFile, `# allowed owners\n${carol.publicKey.toString('hex')}\n`);
  const cas = await startTestCas({ root: tmp.path, extraArgs: ['--owner', bob.publicKey.toString('hex'), '--owner', ownersFile] });
  t.after(() => cas.stop());
  // Alice would have won trust-on-first-use; with --owner she is not allowed at all.
  await assert.rejects(apply(cas, alice, { service: 'a' }), code('POLICY_OWNER_MISMATCH'));
  assert.equal((await apply(cas, bob, { service: 'b' })).status, 'created');
  assert.equal((await apply(cas, carol, { service: 'c' })).status, 'created');
  // Each service stays its owner's: carol cannot update bob's.
  const current = (await getCurrentPolicy(cas.url, cas.caPem, 'b'))!;
  await assert.rejects(apply(cas, carol, { service: 'b', predecessor: current.policyHash, lifetimeSeconds: 600 }), code('POLICY_OWNER_MISMATCH'));
  const audit = readFileSync(path.join(cas.dir, 'audit.log'), 'utf8');
  assert.match(audit, /"event":"cas.owners".*"boundBy":"configured"/);
  assert.match(audit, /"event":"policy.apply".*"outcome":"refused".*"code":"POLICY_OWNER_MISMATCH"/);
});
