/**
 * Every refusal of a real `cdbp cas`: 4xx JSON with a stable code, nothing issued, an audit entry.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import https from 'node:https';
import path from 'node:path';
import { readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tempDir } from '../support/tmp.ts';
import { startTestCas, applyTestPolicy, type TestCas } from '../support/cas.ts';
import { SimulatedProvider } from '../../src/attestation/simulated.ts';
import { generateSigningKeyPair } from '../../src/crypto/ed25519.ts';
import { generateSealingKeyPair } from '../../src/crypto/box.ts';
import { createCsr, generateTlsKeyPair, spkiDer } from '../../src/crypto/x509.ts';
import { sha512 } from '../../src/crypto/hash.ts';
import { attestAndProvision } from '../../src/cas-client/index.ts';
import { buildPolicy, signPolicy } from '../../src/provisioning/policy.ts';
import { measureShippedCode } from '../../src/attestation/measurement.ts';
import type { AttestationProvider } from '../../src/attestation/types.ts';
import { fixture, flip, snpVector } from '../support/tee-vectors.ts';
import { loadCertificates } from '../../src/attestation/evidence-file.ts';

interface Reply { status: number; body: { error?: { code: string; message: string } } & Record<string, unknown> }

function post(cas: TestCas, p: string, body: unknown, raw = false, method = 'POST', client?: { key: string; cert: string }): Promise<Reply> {
  const payload = raw ? Buffer.from(body as string) : Buffer.from(JSON.stringify(body ?? null));
  return new Promise((resolve, reject) => {
    const req = https.request(new URL(p, cas.url), {
      method, ca: cas.caPem, ...(client ?? {}),
      headers: method === 'POST' ? { 'content-type': 'application/json', 'content-length': payload.length } : {},
    }, (res) => {
      let s = '';
      res.on('data', (d: Buffer) => { s += d.toString(); });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(s) as Reply['body'] }));
    });
    req.on('error', reject);
    req.end(method === 'POST' ? payload : undefined);
  });
}

/** A complete, valid attest request, built by hand so tests can break one part of it. */
async function attestBody(cas: TestCas, service: string, provider: AttestationProvider, o: { evidenceKeys?: 'other-tls' | 'other-sealing' } = {}) {
  const { nonce } = (await post(cas, '/v1/nonce', { purpose: 'attest' })).body as { nonce: string };
  const tlsKeys = generateTlsKeyPair();
  const sealing = await generateSealingKeyPair();
  const csr = createCsr({ ...tlsKeys, commonName: service });
  const boundTls = o.evidenceKeys === 'other-tls' ? spkiDer(generateTlsKeyPair().publicKey) : spkiDer(tlsKeys.publicKey);
  const boundSealing = o.evidenceKeys === 'other-sealing' ? (await generateSealingKeyPair()).publicKey : sealing.publicKey;
  const evidence = await provider.collect(sha512(Buffer.from(nonce, 'hex'), boundTls, boundSealing));
  return { service, nonce, csr, sealingPublicKey: sealing.publicKey.toString('hex'), evidence };
}

function assertRefused(r: Reply, status: number, code: string): void {
  assert.equal(r.status, status, JSON.stringify(r.body));
  assert.equal(r.body.error?.code, code, JSON.stringify(r.body));
  assert.equal(typeof r.body.error?.message, 'string');
  assert.equal(r.body.certPem, undefined);
  assert.equal(r.body.sealedSecrets, undefined);
}

test('refusals: bad evidence, nonces, policies, input, counter access', async (t) => {
  const tmp = tempDir('cas-ref');
  const cas = await startTestCas({ root: tmp.path });
  t.after(async () => { await cas.stop(); tmp.remove(); });
  const provider = new SimulatedProvider(cas.platformKeyFile);
  const { owner, signed } = await applyTestPolicy(cas, { service: 'svc' });
  const expectedCodes: string[] = [];
  const refused = async (r: Promise<Reply>, status: number, code: string) => {
    assertRefused(await r, status, code);
    expectedCodes.push(code);
  };

  await t.test('wrong measurement', async () => {
    const wrong = new SimulatedProvider(cas.platformKeyFile, 'ee'.repeat(32));
    await refused(post(cas, '/v1/attest', await attestBody(cas, 'svc', wrong)), 401, 'MEASUREMENT_MISMATCH');
  });
  await t.test('reused nonce', async () => {
    const body = await attestBody(cas, 'svc', provider);
    assert.equal((await post(cas, '/v1/attest', body)).status, 200);
    await refused(post(cas, '/v1/attest', body), 400, 'NONCE_INVALID');
  });
  await t.test('unknown nonce', async () => {
    const body = await attestBody(cas, 'svc', provider);
    await refused(post(cas, '/v1/attest', { ...body, nonce: randomBytes(32).toString('hex') }), 400, 'NONCE_INVALID');
  });
  await t.test('a nonce fails once and is gone (no retry with fixed evidence)', async () => {
    const body = await attestBody(cas, 'svc', provider);
    await refused(post(cas, '/v1/attest', { ...body, service: 'nope' }), 404, 'SERVICE_UNKNOWN');
    await refused(post(cas, '/v1/attest', body), 400, 'NONCE_INVALID');
  });
  await t.test('evidence bound to other TLS key', async () => {
    await refused(post(cas, '/v1/attest', await attestBody(cas, 'svc', provider, { evidenceKeys: 'other-tls' })), 400, 'EVIDENCE_INVALID');
  });
  await t.test('evidence bound to other sealing key', async () => {
    await refused(post(cas, '/v1/attest', await attestBody(cas, 'svc', provider, { evidenceKeys: 'other-sealing' })), 400, 'EVIDENCE_INVALID');
  });
  await t.test('evidence signed by an untrusted platform key', async () => {
    const rogue = new SimulatedProvider(await generateSigningKeyPair(), measureShippedCode());
    await refused(post(cas, '/v1/attest', await attestBody(cas, 'svc', rogue)), 400, 'EVIDENCE_INVALID');
  });
  await t.test('evidence envelope edited after signing', async () => {
    const body = await attestBody(cas, 'svc', provider);
    await refused(post(cas, '/v1/attest', { ...body, evidence: { ...body.evidence, measurement: 'ab'.repeat(32) } }), 400, 'EVIDENCE_INVALID');
  });
  await t.test('tampered CSR', async () => {
    const body = await attestBody(cas, 'svc', provider);
    const lines = body.csr.split('\n');
    lines[2] = lines[2]!.slice(0, 10) + (lines[2]![10] === 'A' ? 'B' : 'A') + lines[2]!.slice(11);
    await refused(post(cas, '/v1/attest', { ...body, csr: lines.join('\n') }), 400, 'BAD_REQUEST');
  });
  await t.test('unknown service', async () => {
    await refused(post(cas, '/v1/attest', await attestBody(cas, 'ghost', provider)), 404, 'SERVICE_UNKNOWN');
  });
  await t.test('real SEV-SNP evidence reaches the real verifier with the policy\'s tee part (never the simulated one)', async () => {
    const v = snpVector('milan-vcek-2');
    const debugV = snpVector('milan-vcek');
    const realSnp = (vec: typeof v): AttestationProvider => ({
      mode: 'sev-snp', measurement: () => vec.evidence.bytes.subarray(0x90, 0xc0).toString('hex'),
      // A recorded report cannot bind this CAS's fresh nonce: the binding is the last check, so reaching it
      // proves the chain to the pinned ARK, the signature, the TCB and the policy all passed.
      collect: async () => ({ mode: 'sev-snp', measurement: vec.evidence.bytes.subarray(0x90, 0xc0).toString('hex'),
        reportData: vec.evidence.bytes.subarray(0x50, 0x90).toString('hex'), report: vec.evidence.bytes.toString('base64'),
        certs: vec.certs.map((c) => c.raw.toString('base64')) }),
    });
    const m = v.evidence.bytes.subarray(0x90, 0xc0).toString('hex');
    await applyTestPolicy(cas, { service: 'snp-svc', teeModes: ['sev-snp'], measurements: [], tee: { snp: { measurements: [m] } } });
    await refused(post(cas, '/v1/attest', await attestBody(cas, 'snp-svc', realSnp(v))), 401, 'TEE_REPORT_DATA_MISMATCH');
    await applyTestPolicy(cas, { service: 'snp-other', teeModes: ['sev-snp'], measurements: [], tee: { snp: { measurements: ['ab'.repeat(48)] } } });
    await refused(post(cas, '/v1/attest', await attestBody(cas, 'snp-other', realSnp(v))), 401, 'MEASUREMENT_MISMATCH');
    await refused(post(cas, '/v1/attest', await attestBody(cas, 'snp-svc', realSnp(debugV))), 401, 'TEE_DEBUG_REFUSED');
    const broken = { ...(await attestBody(cas, 'snp-svc', realSnp(v))) };
    broken.evidence = { ...broken.evidence, report: flip(v.evidence.bytes, 0x95).toString('base64') };
    await refused(post(cas, '/v1/attest', broken), 401, 'TEE_SIGNATURE_INVALID');
    // Azure vTPM evidence (SNP report in the HCL report → AK → TPM2 quote) through the same verifier:
    // chain, signatures and the policy's measurement pass, and the quote's nonce is not this request's binding.
    const azure = readFileSync(fixture('snp', 'genoa-azure', 'evidence.json'));
    const azureM = 'f57dc09a507c6ecd82369bffb600f0003792f4d99bc26e985ec0c266fc34faf3706faf814c9e61065768a6ff917c89ae';
    const azureProvider: AttestationProvider = {
      mode: 'sev-snp', measurement: () => azureM,
      collect: async (rd) => ({ mode: 'sev-snp', measurement: azureM, reportData: rd.toString('hex'), report: azure.toString('base64'),
        certs: loadCertificates(fixture('snp', 'genoa-azure', 'ask-ark.pem')).map((c) => c.raw.toString('base64')) }),
    };
    await applyTestPolicy(cas, { service: 'azure-svc', teeModes: ['sev-snp'], measurements: [], tee: { snp: { measurements: [azureM] } } });
    await refused(post(cas, '/v1/attest', await attestBody(cas, 'azure-svc', azureProvider)), 401, 'TEE_REPORT_DATA_MISMATCH');
    // A policy for simulated only refuses the same real evidence by mode.
    await refused(post(cas, '/v1/attest', await attestBody(cas, 'svc', realSnp(v))), 401, 'ATTESTATION_REFUSED');
  });
  await t.test('mode the policy does not allow', async () => {
    await applyTestPolicy(cas, { service: 'hw-only', teeModes: ['sev-snp'], tee: { snp: { measurements: ['ab'.repeat(48)] } } });
    await refused(post(cas, '/v1/attest', await attestBody(cas, 'hw-only', provider)), 401, 'SIMULATION_NOT_ALLOWED');
  });
  await t.test('malformed JSON', async () => {
    await refused(post(cas, '/v1/attest', '{"service": "svc", ', true), 400, 'BAD_REQUEST');
  });
  await t.test('schema violation', async () => {
    await refused(post(cas, '/v1/attest', { service: 'svc', extra: 1 }), 400, 'BAD_REQUEST');
  });
  await t.test('oversized body', async () => {
    await refused(post(cas, '/v1/attest', JSON.stringify({ pad: 'x'.repeat(100_000) }), true), 413, 'BODY_TOO_LARGE');
  });

  await t.test('policy: bad signature', async () => {
    const other = await signPolicy(buildPolicy({ service: 'p1', measurements: [measureShippedCode()], teeModes: ['simulated'] }), owner);
    const flipped = other.signature.slice(0, -2) + (other.signature.endsWith('00') ? '01' : '00');
    await refused(post(cas, '/v1/policies', { ...other, signature: flipped }), 401, 'POLICY_SIGNATURE_INVALID');
  });
  await t.test('policy: missing signature', async () => {
    const { signature: _drop, ...unsigned } = await signPolicy(buildPolicy({ service: 'p2', measurements: [measureShippedCode()], teeModes: ['simulated'] }), owner);
    await refused(post(cas, '/v1/policies', unsigned), 400, 'BAD_REQUEST');
  });
  await t.test('policy: edited after signing', async () => {
    const s = await signPolicy(buildPolicy({ service: 'p3', measurements: [measureShippedCode()], teeModes: ['simulated'] }), owner);
    await refused(post(cas, '/v1/policies', { ...s, policy: { ...s.policy, teeModes: ['simulated', 'tdx'] } }), 400, 'POLICY_INVALID');
  });
  await t.test('policy: update by another owner', async () => {
    const stranger = await generateSigningKeyPair();
    const s = await signPolicy(buildPolicy({ service: 'svc', predecessor: signed.policyHash, measurements: ['00'.repeat(32)], teeModes: ['simulated'] }), stranger);
    await refused(post(cas, '/v1/policies', s), 403, 'POLICY_OWNER_MISMATCH');
  });
  await t.test('policy: update naming the wrong predecessor', async () => {
    const s = await signPolicy(buildPolicy({ service: 'svc', predecessor: 'ab'.repeat(32), measurements: [measureShippedCode()], teeModes: ['simulated'] }), owner);
    await refused(post(cas, '/v1/policies', s), 409, 'POLICY_CHAIN_BROKEN');
  });
  await t.test('policy: first apply with a predecessor', async () => {
    const s = await signPolicy(buildPolicy({ service: 'fresh', predecessor: 'ab'.repeat(32), measurements: [measureShippedCode()], teeModes: ['simulated'] }), owner);
    await refused(post(cas, '/v1/policies', s), 409, 'POLICY_CHAIN_BROKEN');
  });
  await t.test('policy: removing a key version', async () => {
    const s = await signPolicy(buildPolicy({ service: 'svc', predecessor: signed.policyHash, measurements: [measureShippedCode()], teeModes: ['simulated'], dbKeys: [{ id: 2, versions: [1] }] }), owner);
    await refused(post(cas, '/v1/policies', s), 400, 'POLICY_INVALID');
  });
  await t.test('policy: invalid content (TEE mode none, bad IP)', async () => {
    const s = await signPolicy(buildPolicy({ service: 'p4', measurements: [measureShippedCode()], teeModes: ['simulated'] }), owner);
    await refused(post(cas, '/v1/policies', { ...s, policy: { ...s.policy, teeModes: ['none'], tls: { ...s.policy.tls, ipAddresses: ['999.1.1.1'] } } }), 400, 'POLICY_INVALID');
  });

  await t.test('counter: no client certificate', async () => {
    const r = await post(cas, '/v1/services/svc/counter', { expected: 0, next: 1, digest: 'aa'.repeat(32) });
    assertRefused(r, 403, 'FORBIDDEN');
    expectedCodes.push('FORBIDDEN');
    assertRefused(await post(cas, '/v1/services/svc/counter', undefined, false, 'GET'), 403, 'FORBIDDEN');
    expectedCodes.push('FORBIDDEN');
  });
  await t.test('counter: certificate of another service', async () => {
    await applyTestPolicy(cas, { service: 'other', owner });
    const p = await attestAndProvision({ casUrl: cas.url, caPem: cas.caPem, service: 'other', provider, tls: {} });
    const client = { key: p.identity.keyPem, cert: p.identity.certPem };
    await refused(post(cas, '/v1/services/svc/counter', { expected: 0, next: 1, digest: 'aa'.repeat(32) }, false, 'POST', client), 403, 'FORBIDDEN');
    // Its own counter works with the same certificate.
    assert.equal((await post(cas, '/v1/services/other/counter', { expected: 0, next: 1, digest: 'aa'.repeat(32) }, false, 'POST', client)).status, 200);
    // Backwards or malformed advances are refused.
    await refused(post(cas, '/v1/services/other/counter', { expected: 1, next: 1, digest: 'aa'.repeat(32) }, false, 'POST', client), 400, 'BAD_REQUEST');
    await refused(post(cas, '/v1/services/other/counter', { expected: 1, next: 2, digest: 'zz' }, false, 'POST', client), 400, 'BAD_REQUEST');
  });
  await t.test('recover: signed by a stranger', async () => {
    const stranger = await generateSigningKeyPair();
    const { recoverCounter } = await import('../../src/cas-client/policy.ts');
    await assert.rejects(recoverCounter({ casUrl: cas.url, caPem: cas.caPem, ownerKey: stranger, service: 'svc', value: 0, digest: '' }),
      (e: { code?: string }) => e.code === 'POLICY_OWNER_MISMATCH');
    expectedCodes.push('POLICY_OWNER_MISMATCH');
  });
  await t.test('unknown route', async () => {
    assertRefused(await post(cas, '/v1/nothing', {}), 404, 'NOT_FOUND');
  });

  // Every refusal left an audit entry with its code.
  const entries = readFileSync(path.join(cas.dir, 'audit.log'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { outcome: string; code?: string });
  const refusedCodes = entries.filter((e) => e.outcome === 'refused').map((e) => e.code);
  assert.deepEqual([...refusedCodes].sort(), [...expectedCodes].sort());
});
