/**
 * A real `cdbp cas` over HTTPS: attest-and-provision round trip, certificate contents, sealed
 * secrets, counters (with a race), policy updates adding key versions, restart with state intact.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import tls from 'node:tls';
import { tempDir } from '../support/tmp.ts';
import { startTestCas, applyTestPolicy } from '../support/cas.ts';
import { attestAndProvision } from '../../src/cas-client/index.ts';
import { SimulatedProvider } from '../../src/attestation/simulated.ts';
import { buildPolicy, signPolicy } from '../../src/provisioning/policy.ts';
import { applySignedPolicy, getCurrentPolicyHash } from '../../src/cas-client/policy.ts';
import { measureShippedCode } from '../../src/attestation/measurement.ts';
import { isCdbpError } from '../../src/kernel/errors.ts';
import { verifyAuditFile } from '../../cas/audit.ts';
import path from 'node:path';

test('attest-and-provision round trip, counters, key versions, restart with state intact', async (t) => {
  const tmp = tempDir('cas-rt');
  let cas = await startTestCas({ root: tmp.path });
  t.after(async () => { await cas.stop(); tmp.remove(); });
  const provider = new SimulatedProvider(cas.platformKeyFile);
  const { owner, signed } = await applyTestPolicy(cas, { service: 'orders', dnsNames: ['localhost', 'db.example.test'], ipAddresses: ['127.0.0.1'], lifetimeSeconds: 3600 });

  const p = await attestAndProvision({ casUrl: cas.url, caPem: cas.caPem, service: 'orders', provider, tls: { dnsNames: ['localhost'] } });
  assert.equal(p.service, 'orders');
  assert.equal(p.mode, 'simulated');
  assert.equal(p.measurement, measureShippedCode());
  assert.equal(p.policyHash, signed.policyHash);
  // The certificate: issued by the CAS CA, for our key, with the policy's names, marked simulated.
  const cert = new X509Certificate(p.identity.certPem);
  assert.ok(cert.verify(new X509Certificate(cas.caPem).publicKey));
  assert.match(cert.subject, /OU=SIMULATED-NOT-A-TEE/);
  assert.match(cert.subject, /CN=orders/);
  assert.ok(cert.checkHost('db.example.test'));
  assert.ok(cert.checkIP('127.0.0.1'));
  assert.match(cert.subjectAltName ?? '', /URI:urn:cdbp:tee:simulated/);
  assert.match(cert.subjectAltName ?? '', /URI:urn:cdbp:service:orders/);
  const lifetime = (p.identity.notAfter.getTime() - Date.now()) / 1000;
  assert.ok(lifetime > 3500 && lifetime <= 3600, `lifetime ${lifetime}`);
  // The private key matches the certificate (it never left this process).
  const ctx = tls.createSecureContext({ key: p.identity.keyPem, cert: p.identity.certPem });
  assert.ok(ctx);
  // Secrets.
  assert.equal(p.secrets.dbKeys.length, 1);
  assert.equal(p.secrets.dbKeys[0]!.key.length, 32);
  assert.equal(p.secrets.freshnessKey.length, 32);
  assert.match(p.secrets.keyringToken, /^[0-9a-f]{64}$/);
  const key1 = Buffer.from(p.secrets.dbKeys[0]!.key);

  // Counter: read, advance, stale advance → conflict with the current state in details.
  assert.deepEqual(await p.counter.read(), { value: 0, digest: '' });
  const d1 = 'a1'.repeat(32);
  assert.deepEqual(await p.counter.advance(0, 1, d1), { value: 1, digest: d1 });
  await assert.rejects(p.counter.advance(0, 1, 'b2'.repeat(32)), (e: unknown) => isCdbpError(e, 'COUNTER_CONFLICT')
    && (e.details as { value?: number }).value === 1);

  // Race: two attested callers advance from the same value; exactly one wins.
  const p2 = await attestAndProvision({ casUrl: cas.url, caPem: cas.caPem, service: 'orders', provider, tls: {} });
  const results = await Promise.allSettled([p.counter.advance(1, 2, 'c3'.repeat(32)), p2.counter.advance(1, 2, 'd4'.repeat(32))]);
  assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1);
  const lost = results.find((r) => r.status === 'rejected') as PromiseRejectedResult;
  assert.ok(isCdbpError(lost.reason, 'COUNTER_CONFLICT'));
  const after = await p2.counter.read();
  assert.equal(after.value, 2);
  const winnerDigest = after.digest;
  assert.ok(winnerDigest === 'c3'.repeat(32) || winnerDigest === 'd4'.repeat(32));

  // Policy update: add key version 2 (CAS draws it); version 1 stays byte-identical.
  assert.equal(await getCurrentPolicyHash(cas.url, cas.caPem, 'orders'), signed.policyHash);
  const v2 = await signPolicy(buildPolicy({
    service: 'orders', predecessor: signed.policyHash, measurements: [measureShippedCode()], teeModes: ['simulated'],
    dnsNames: ['localhost', 'db.example.test'], ipAddresses: ['127.0.0.1'], lifetimeSeconds: 3600, dbKeys: [{ id: 1, versions: [1, 2] }],
  }), owner);
  const applied = await applySignedPolicy(cas.url, cas.caPem, v2);
  assert.equal(applied.status, 'updated');
  assert.deepEqual(applied.newKeys, ['1v2']);
  const p3 = await attestAndProvision({ casUrl: cas.url, caPem: cas.caPem, service: 'orders', provider, tls: {} });
  assert.deepEqual(p3.secrets.dbKeys.map((k) => `${k.id}v${k.version}`), ['1v1', '1v2']);
  assert.ok(p3.secrets.dbKeys[0]!.key.equals(key1));
  assert.ok(!p3.secrets.dbKeys[1]!.key.equals(key1));
  const key2 = Buffer.from(p3.secrets.dbKeys[1]!.key);

  // Metrics report what happened.
  const metrics = await (await fetchText(cas.url, cas.caPem, '/metrics'));
  assert.match(metrics, /cdbp_cas_attestations_total\{code="",mode="simulated",outcome="ok"\} 3/);
  assert.match(metrics, /cdbp_cas_counter_advances_total\{code="COUNTER_CONFLICT",outcome="refused"\} 2/);

  // Restart: same CA, same keys, same counter, same policy.
  assert.equal(await cas.stop(), 0);
  cas = await startTestCas({ root: tmp.path, dir: cas.dir, platformKeyFile: cas.platformKeyFile });
  const p4 = await attestAndProvision({ casUrl: cas.url, caPem: cas.caPem, service: 'orders', provider, tls: {} });
  assert.ok(p4.secrets.dbKeys[0]!.key.equals(key1));
  assert.ok(p4.secrets.dbKeys[1]!.key.equals(key2));
  assert.equal(p4.secrets.databaseId, p.secrets.databaseId);
  assert.deepEqual(await p4.counter.read(), { value: 2, digest: winnerDigest });
  assert.equal(p4.policyHash, v2.policyHash);

  // The audit chain verifies and recorded every step, without secrets.
  const v = await verifyAuditFile(path.join(cas.dir, 'audit.log'));
  assert.ok(v.ok, v.problem);
  const { readFileSync } = await import('node:fs');
  const audit = readFileSync(path.join(cas.dir, 'audit.log'), 'utf8');
  for (const secret of [key1, key2, p.secrets.freshnessKey]) assert.ok(!audit.includes(secret.toString('hex')));
  assert.ok(!audit.includes(p.secrets.keyringToken));
  assert.ok(!cas.output().includes(key1.toString('hex')));
  for (const ev of ['"policy.apply"', '"attest"', '"counter.advance"', '"cas.start"']) assert.ok(audit.includes(ev), ev);
});

async function fetchText(url: string, caPem: string, p: string): Promise<string> {
  const https = await import('node:https');
  return new Promise((resolve, reject) => {
    https.get(new URL(p, url), { ca: caPem }, (res) => {
      let s = '';
      res.on('data', (d: Buffer) => { s += d.toString(); });
      res.on('end', () => resolve(s));
    }).on('error', reject);
  });
}
