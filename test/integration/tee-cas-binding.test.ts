/**
 * The launch binding at a real `cdbp cas`: the CAS hands the verifier the hash of the policy it holds for
 * the service (cas/core.ts → TeeEvidenceVerifier → policy-binding.ts), so real SEV-SNP evidence whose
 * HOST_DATA does not carry that hash is refused with TEE_POLICY_BINDING_MISMATCH naming it — and, after
 * a policy update, naming the successor's hash. Without the binding the same evidence gets as far as the
 * report-data check (a recorded report cannot bind this CAS's fresh nonce).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import https from 'node:https';
import { tempDir } from '../support/tmp.ts';
import { startTestCas, applyTestPolicy, type TestCas } from '../support/cas.ts';
import { generateSealingKeyPair } from '../../src/crypto/box.ts';
import { createCsr, generateTlsKeyPair } from '../../src/crypto/x509.ts';
import { snpVector } from '../support/tee-vectors.ts';

interface Reply { status: number; body: { error?: { code: string; message: string } } & Record<string, unknown> }

function post(cas: TestCas, p: string, body: unknown): Promise<Reply> {
  const payload = Buffer.from(JSON.stringify(body));
  return new Promise((resolve, reject) => {
    const req = https.request(new URL(p, cas.url), { method: 'POST', ca: cas.caPem, headers: { 'content-type': 'application/json', 'content-length': payload.length } }, (res) => {
      let s = '';
      res.on('data', (d: Buffer) => { s += d.toString(); });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(s) as Reply['body'] }));
    });
    req.on('error', reject);
    req.end(payload);
  });
}

/** An attest request carrying the real milan-vcek-2 report (its report data is whatever it recorded). */
async function attestWithRealSnp(cas: TestCas, service: string): Promise<Reply> {
  const v = snpVector('milan-vcek-2');
  const { nonce } = (await post(cas, '/v1/nonce', { purpose: 'attest' })).body as { nonce: string };
  const tls = generateTlsKeyPair();
  const sealing = await generateSealingKeyPair();
  const evidence = { mode: 'sev-snp', measurement: v.evidence.bytes.subarray(0x90, 0xc0).toString('hex'),
    reportData: v.evidence.bytes.subarray(0x50, 0x90).toString('hex'), report: v.evidence.bytes.toString('base64'),
    certs: v.certs.map((c) => c.raw.toString('base64')) };
  return post(cas, '/v1/attest', { service, nonce, csr: createCsr({ ...tls, commonName: service }), sealingPublicKey: sealing.publicKey.toString('hex'), evidence });
}

test('the CAS checks HOST_DATA against the hash of the policy it holds, and follows policy updates', async (t) => {
  const tmp = tempDir('cas-bind');
  const cas = await startTestCas({ root: tmp.path });
  t.after(async () => { await cas.stop(); tmp.remove(); });
  const m = snpVector('milan-vcek-2').evidence.bytes.subarray(0x90, 0xc0).toString('hex');

  const { signed } = await applyTestPolicy(cas, { service: 'bound', teeModes: ['sev-snp'], measurements: [], tee: { snp: { measurements: [m], bindPolicyHash: true } } });
  const r1 = await attestWithRealSnp(cas, 'bound');
  assert.equal(r1.status, 401, JSON.stringify(r1.body));
  assert.equal(r1.body.error?.code, 'TEE_POLICY_BINDING_MISMATCH');
  assert.match(r1.body.error!.message, new RegExp(`HOST_DATA 0{64} does not bind the owner's policy ${signed.policyHash}`));
  assert.equal(r1.body.certPem, undefined);

  const { signed: next } = await applyTestPolicy(cas, { service: 'bound', predecessor: signed.policyHash, teeModes: ['sev-snp'], measurements: [],
    tee: { snp: { measurements: [m], bindPolicyHash: true, vmpls: [0] } } });
  assert.notEqual(next.policyHash, signed.policyHash);
  const r2 = await attestWithRealSnp(cas, 'bound');
  assert.equal(r2.body.error?.code, 'TEE_POLICY_BINDING_MISMATCH');
  assert.match(r2.body.error!.message, new RegExp(next.policyHash));

  await applyTestPolicy(cas, { service: 'unbound', teeModes: ['sev-snp'], measurements: [], tee: { snp: { measurements: [m] } } });
  const r3 = await attestWithRealSnp(cas, 'unbound');
  assert.equal(r3.body.error?.code, 'TEE_REPORT_DATA_MISMATCH', JSON.stringify(r3.body));
});
