/**
 * Who may answer as the CAS. A real `cdbp cas`, and an impostor HTTPS server on the
 * CAS's own host:
 *  - with a genuine service certificate from the CAS CA that names that host (any owner can get one):
 *    every client of the CAS refuses it (CAS role required), before sending a single request;
 *  - with a CAS-role certificate (as if TLS itself were compromised: the CA key leaked): counter answers
 *    and attest results that the CAS did not sign for this request are still refused.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import https from 'node:https';
import path from 'node:path';
import { X509Certificate } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tempDir } from '../support/tmp.ts';
import { startTestCas, applyTestPolicy, runCdbp, type TestCas } from '../support/cas.ts';
import { SimulatedProvider } from '../../src/attestation/simulated.ts';
import { attestAndProvision, fetchCasSigningKey, HttpCounterClient } from '../../src/cas-client/index.ts';
import { casAgent, casRequest } from '../../src/cas-client/http.ts';
import { buildPolicy, signPolicy } from '../../src/provisioning/policy.ts';
import { applySignedPolicy, getCurrentPolicy, recoverCounter } from '../../src/cas-client/policy.ts';
import { createCsr, generateTlsKeyPair, issueLeafCertificate, parseCsr, ROLE_URI, type CaMaterial } from '../../src/crypto/x509.ts';
import { generateSigningKeyPair } from '../../src/crypto/ed25519.ts';
import { sealToPublicKey } from '../../src/crypto/box.ts';
import { openBlob } from '../../src/crypto/sealed-file.ts';
import { deriveKey } from '../../cas/sealing-key.ts';
import { counterAnswerMessage, ed25519PrivateKey, signAnswer } from '../../src/provisioning/answers.ts';
import { measureShippedCode } from '../../src/attestation/measurement.ts';
import { isCdbpError } from '../../src/kernel/errors.ts';

type Handler = (req: { method: string; url: string; body: unknown }) => Promise<{ status?: number; body: unknown }>;

/** An HTTPS server on 127.0.0.1 with the given identity; counts the HTTP requests that reached it. */
async function impostor(keyPem: string, certPem: string, caPem: string, handle: Handler) {
  let requests = 0;
  const server = https.createServer({ key: keyPem, cert: certPem, ca: caPem, requestCert: true, rejectUnauthorized: false }, (req, res) => {
    requests++;
    let s = '';
    req.on('data', (d: Buffer) => { s += d.toString(); });
    req.on('end', () => {
      void handle({ method: req.method ?? '', url: req.url ?? '', body: s ? JSON.parse(s) : undefined }).then((r) => {
        res.writeHead(r.status ?? 200, { 'content-type': 'application/json' }).end(JSON.stringify(r.body));
      });
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `https://127.0.0.1:${(server.address() as AddressInfo).port}`,
    requests: () => requests,
    close: () => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }),
  };
}

/** Forwards a request to the real CAS (same path, body), optionally with a client certificate. */
async function forward(cas: TestCas, req: { method: string; url: string; body: unknown }, client?: { keyPem: string; certPem: string }) {
  const agent = client ? casAgent({ caPem: cas.caPem, ...client, keepAlive: false }) : undefined;
  try {
    return { body: await casRequest<unknown>(cas.url, req.method as 'GET' | 'POST', req.url, req.body, agent ? { agent } : { caPem: cas.caPem }) };
  } catch (e) {
    return { status: 409, body: { error: { code: (e as { code: string }).code, message: 'x', details: (e as { details?: unknown }).details } } };
  } finally {
    agent?.destroy();
  }
}

const refusedAsNotCas = (e: unknown) => isCdbpError(e, 'CAS_IDENTITY_INVALID');

test('a service certificate that names the CAS host cannot impersonate the CAS to any of its clients', async (t) => {
  const tmp = tempDir('cas-id');
  const cas = await startTestCas({ root: tmp.path });
  t.after(async () => { await cas.stop(); tmp.remove(); });
  const provider = new SimulatedProvider(cas.platformKeyFile);
  // "evil": a legitimate owner's service whose certificate names 127.0.0.1 and localhost: the CAS's host.
  await applyTestPolicy(cas, { service: 'evil' });
  const evil = await attestAndProvision({ casUrl: cas.url, caPem: cas.caPem, service: 'evil', provider, tls: {} });
  t.after(() => (evil.counter as HttpCounterClient).close());
  const evilCert = new X509Certificate(evil.identity.certPem);
  assert.ok(evilCert.checkIP('127.0.0.1') && evilCert.checkHost('localhost'), 'precondition: the service certificate names the CAS host');
  assert.match(evilCert.subjectAltName ?? '', new RegExp(ROLE_URI.service));
  assert.doesNotMatch(evilCert.subjectAltName ?? '', new RegExp(`${ROLE_URI.cas}(,|$)`));
  // The real CAS's certificate carries the CAS role.
  const realCert = await new Promise<X509Certificate>((resolve, reject) => {
    const r = https.get(`${cas.url}/livez`, { ca: cas.caPem }, (res) => {
      resolve(new X509Certificate((res.socket as import('node:tls').TLSSocket).getPeerX509Certificate()!.raw));
      res.resume();
    });
    r.on('error', reject);
  });
  assert.match(realCert.subjectAltName ?? '', /URI:urn:cdbp:role:cas(,|$)/);

  // The impostor answers everything "successfully": a rolled-back counter, a policy, a nonce.
  const fake = await impostor(evil.identity.keyPem, evil.identity.certPem, cas.caPem, async ({ url }) => {
    if (url.includes('/counter')) return { body: { value: 0, digest: '' } };
    if (url.startsWith('/v1/nonce')) return { body: { nonce: 'ab'.repeat(32), expiresAt: new Date().toISOString() } };
    if (url.startsWith('/v1/policies')) return { body: { service: 'mariadb', policyHash: 'cd'.repeat(32), status: 'created', newKeys: [] } };
    return { body: { service: 'x', policyHash: 'cd'.repeat(32), owner: 'ef'.repeat(32), signed: { policy: {} }, history: [] } };
  });
  t.after(() => fake.close());

  const signed = await signPolicy(buildPolicy({ service: 'victim', measurements: [measureShippedCode()], teeModes: ['simulated'] }), cas.owner);
  // Library clients: owner calls, attestation, the counter (mTLS agent).
  await assert.rejects(applySignedPolicy(fake.url, cas.caPem, signed), refusedAsNotCas);
  await assert.rejects(getCurrentPolicy(fake.url, cas.caPem, 'victim'), refusedAsNotCas);
  await assert.rejects(recoverCounter({ casUrl: fake.url, caPem: cas.caPem, ownerKey: cas.owner, service: 'evil', value: 0, digest: '' }), refusedAsNotCas);
  await assert.rejects(attestAndProvision({ casUrl: fake.url, caPem: cas.caPem, service: 'evil', provider, tls: {} }), refusedAsNotCas);
  const signingKey = await fetchCasSigningKey(cas.url, cas.caPem);
  const counter = new HttpCounterClient(fake.url, 'evil', cas.caPem, evil.identity.keyPem, evil.identity.certPem, signingKey);
  t.after(() => counter.close());
  await assert.rejects(counter.read(), refusedAsNotCas);
  await assert.rejects(counter.advance(0, 1, 'aa'.repeat(32)), refusedAsNotCas);
  // The CLI commands that talk to the CAS.
  const f = (n: string) => path.join(tmp.path, n);
  writeFileSync(f('signed.json'), JSON.stringify(signed));
  writeFileSync(f('policy.json'), JSON.stringify(signed.policy));
  for (const args of [
    ['policy', 'apply', '--cas', fake.url, '--ca', cas.caFile, '--in', f('signed.json')],
    ['policy', 'show', '--cas', fake.url, '--ca', cas.caFile, '--service', 'victim'],
    ['recover', '--cas', fake.url, '--ca', cas.caFile, '--owner-key', f('owner.key'), '--service', 'evil', '--value', '0', '--digest', ''],
  ]) {
    if (args[0] === 'recover') (await import('../../src/crypto/ed25519.ts')).writeSigningKeyFile(f('owner.key'), cas.owner, 'cdbp-owner-key/1');
    const r = await runCdbp(args);
    assert.equal(r.code, 1, `${args.slice(0, 2).join(' ')}: ${r.output}`);
    assert.match(r.output, /CAS_IDENTITY_INVALID/, args.slice(0, 2).join(' '));
  }
  // Refused in the TLS handshake: not one HTTP request reached the impostor.
  assert.equal(fake.requests(), 0);
  // The real CAS is accepted by the same clients.
  assert.equal((await applySignedPolicy(cas.url, cas.caPem, signed)).status, 'created');
  assert.deepEqual(await evil.counter.read(), { value: 0, digest: '' });
});

test('with TLS compromised (a CAS-role certificate from the leaked CA key), forged or replayed counter and attest answers are refused', async (t) => {
  const tmp = tempDir('cas-sig');
  const cas = await startTestCas({ root: tmp.path });
  t.after(async () => { await cas.stop(); tmp.remove(); });
  const provider = new SimulatedProvider(cas.platformKeyFile);
  await applyTestPolicy(cas, { service: 'db' });
  const p = await attestAndProvision({ casUrl: cas.url, caPem: cas.caPem, service: 'db', provider, tls: {} });
  t.after(() => (p.counter as HttpCounterClient).close());
  const d1 = '11'.repeat(32);
  const d5 = '55'.repeat(32);
  await p.counter.advance(0, 1, d1);
  await p.counter.advance(1, 5, d5);
  assert.deepEqual(await p.counter.read(), { value: 5, digest: d5 });

  // The adversary's position: the CA key (read out of the sealed state here) → a CAS-role TLS identity.
  const master = Buffer.from(readFileSync(path.join(cas.dir, 'sealing.key'), 'utf8').trim(), 'hex');
  const ca = JSON.parse((await openBlob(deriveKey(master, 'state'), 'cas/ca', readFileSync(path.join(cas.dir, 'state', 'ca.sealed')))).toString()) as CaMaterial;
  const kp = generateTlsKeyPair();
  const mitmCert = issueLeafCertificate(ca, {
    role: 'cas', spki: parseCsr(createCsr({ ...kp, commonName: 'cas' })).spki, subject: { commonName: 'cdbp-cas' },
    dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'], uris: [], notAfter: new Date(Date.now() + 3600_000),
  });
  const mitmKey = kp.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  // An answer the real CAS signed, for another request (nonce): what a replaying adversary holds.
  const agent = casAgent({ caPem: cas.caPem, keyPem: p.identity.keyPem, certPem: p.identity.certPem, keepAlive: false });
  const captured = await casRequest<Record<string, unknown>>(cas.url, 'GET', `/v1/services/db/counter?nonce=${'77'.repeat(32)}`, undefined, { agent });
  agent.destroy();
  assert.equal(captured.value, 5);
  assert.match(String(captured.signature), /^[0-9a-f]{128}$/);
  const rogueSigner = ed25519PrivateKey((await generateSigningKeyPair()).secretKey);

  let mode: 'rolled-back' | 'rogue-signed' | 'replayed' | 'forged-conflict' | 'swap-secrets' = 'rolled-back';
  const fake = await impostor(mitmKey, mitmCert, cas.caPem, async (req) => {
    const nonce = (req.body as { nonce?: string } | undefined)?.nonce ?? new URL(req.url, 'https://x').searchParams.get('nonce') ?? '';
    switch (mode) {
      case 'rolled-back': return { body: { value: 1, digest: d1 } };
      case 'rogue-signed': return { body: { value: 1, digest: d1, signature: signAnswer(rogueSigner, counterAnswerMessage({ service: 'db', op: 'read', nonce, value: 1, digest: d1 })) } };
      case 'replayed': return { body: captured };
      case 'forged-conflict': {
        // "Your advance already landed": would make the guard treat an unanchored epoch as counted.
        const b = req.body as { next: number; digest: string };
        return { status: 409, body: { error: { code: 'COUNTER_CONFLICT', message: 'counter is elsewhere', details: { value: b.next, digest: b.digest } } } };
      }
      case 'swap-secrets': {
        // Pass attestation through to the real CAS, then swap in secrets the adversary chose, sealed to
        // the attesting process's key (the box is anonymous).
        const r = await forward(cas, req);
        if (req.url === '/v1/attest') {
          const sealingPublicKey = Buffer.from((req.body as { sealingPublicKey: string }).sealingPublicKey, 'hex');
          const mine = { format: 'cdbp-secrets/1', service: 'db', policyHash: (r.body as { policyHash: string }).policyHash, databaseId: 'x',
            keyringToken: '00'.repeat(32), freshnessKey: '00'.repeat(32), dbKeys: [{ id: 1, version: 1, key: '00'.repeat(32) }] };
          (r.body as { sealedSecrets: string }).sealedSecrets = (await sealToPublicKey(sealingPublicKey, Buffer.from(JSON.stringify(mine)))).toString('base64');
        }
        return r;
      }
    }
  });
  t.after(() => fake.close());
  const signingKey = await fetchCasSigningKey(cas.url, cas.caPem);
  const viaMitm = new HttpCounterClient(fake.url, 'db', cas.caPem, p.identity.keyPem, p.identity.certPem, signingKey);
  t.after(() => viaMitm.close());

  for (const m of ['rolled-back', 'rogue-signed', 'replayed'] as const) {
    mode = m;
    await assert.rejects(viaMitm.read(), refusedAsNotCas, `read, ${m}`);
    await assert.rejects(viaMitm.advance(5, 6, '66'.repeat(32)), refusedAsNotCas, `advance, ${m}`);
  }
  mode = 'forged-conflict';
  await assert.rejects(viaMitm.advance(5, 6, '66'.repeat(32)), refusedAsNotCas);
  mode = 'swap-secrets';
  await assert.rejects(attestAndProvision({ casUrl: fake.url, caPem: cas.caPem, service: 'db', provider, tls: {} }), refusedAsNotCas);
  assert.ok(fake.requests() > 0, 'the MitM did answer (its TLS identity passed)');

  // Through the real CAS: signed answers verify, and a real conflict still reads as COUNTER_CONFLICT
  // with the CAS's (signed) value and digest.
  assert.deepEqual(await p.counter.read(), { value: 5, digest: d5 });
  await assert.rejects(p.counter.advance(1, 2, '22'.repeat(32)), (e: unknown) => isCdbpError(e, 'COUNTER_CONFLICT')
    && (e.details as { value: number; digest: string }).value === 5 && (e.details as { digest: string }).digest === d5);
  assert.deepEqual(await p.counter.advance(5, 6, '66'.repeat(32)), { value: 6, digest: '66'.repeat(32) });
});
