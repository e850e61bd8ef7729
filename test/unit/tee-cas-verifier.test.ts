import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { TeeEvidenceVerifier } from '../../src/attestation/tee-verifier.ts';
import { selectVerifiers } from '../../src/attestation/select.ts';
import { buildPolicy, validatePolicy } from '../../src/provisioning/policy.ts';
import { parseTdxQuote } from '../../src/attestation/tdx/quote.ts';
import { loadCertificates } from '../../src/attestation/evidence-file.ts';
import { isCdbpError } from '../../src/kernel/errors.ts';
import type { Evidence } from '../../src/attestation/types.ts';
import { fixture, SPR_V4_AT, snpVector, tdxQuote } from '../support/tee-vectors.ts';
import { tempDir } from '../support/tmp.ts';

function snpEnvelope(name: string, withCerts = true): { ev: Evidence; rd: Buffer; m: string } {
  const v = snpVector(name);
  const rd = v.evidence.bytes.subarray(0x50, 0x90);
  const m = v.evidence.bytes.subarray(0x90, 0xc0).toString('hex');
  return { rd, m, ev: { mode: 'sev-snp', measurement: m, reportData: rd.toString('hex'), report: v.evidence.bytes.toString('base64'),
    ...(withCerts ? { certs: v.certs.map((c) => c.raw.toString('base64')) } : {}) } };
}

test('CAS verifier, SEV-SNP: certificates from the envelope or from the collateral directory; policy pins required', async (t) => {
  const { ev, rd, m } = snpEnvelope('milan-vcek-2');
  const now = () => new Date('2026-01-01T00:00:00Z');
  const v = new TeeEvidenceVerifier('sev-snp', undefined, now);
  const ok = await v.verify(ev, rd, { snp: { measurements: [m] } });
  assert.equal(ok.measurement, m);
  assert.match(ok.tee.signer, /ARK-Milan/);
  assert.equal(ok.tee.tcb, 'snp-0300000000000873'); // what the certificate names (urn:cdbp:tcb:...)
  await assert.rejects(v.verify(ev, rd, {}), (e: unknown) => isCdbpError(e, 'ATTESTATION_REFUSED'));
  await assert.rejects(v.verify(ev, rd), (e: unknown) => isCdbpError(e, 'ATTESTATION_REFUSED'));
  await assert.rejects(v.verify({ ...ev, measurement: 'ab'.repeat(48) }, rd, { snp: { measurements: [m] } }), (e: unknown) => isCdbpError(e, 'EVIDENCE_INVALID'));
  await assert.rejects(v.verify(ev, Buffer.alloc(64), { snp: { measurements: [m] } }), (e: unknown) => isCdbpError(e, 'TEE_REPORT_DATA_MISMATCH'));
  await assert.rejects(v.verify({ ...ev, mode: 'tdx' }, rd, { snp: { measurements: [m] } }), (e: unknown) => isCdbpError(e, 'EVIDENCE_INVALID'));
  // A TDX quote sent as sev-snp evidence is refused by format.
  await assert.rejects(v.verify({ ...ev, report: tdxQuote('quote-4').toString('base64') }, rd, { snp: { measurements: [m] } }),
    (e: unknown) => isCdbpError(e, 'EVIDENCE_INVALID'));

  const bare = snpEnvelope('milan-vcek-2', false).ev;
  await assert.rejects(v.verify(bare, rd, { snp: { measurements: [m] } }), (e: unknown) => isCdbpError(e, 'TEE_COLLATERAL_MISSING'));
  const d = tempDir('tee-col');
  t.after(() => d.remove());
  mkdirSync(path.join(d.path, 'snp'));
  copyFileSync(fixture('snp/milan-vcek-2/vcek.der'), path.join(d.path, 'snp', 'vcek.der'));
  copyFileSync(fixture('snp/milan-vcek-2/ask-ark.pem'), path.join(d.path, 'snp', 'ask-ark.pem'));
  assert.equal((await new TeeEvidenceVerifier('sev-snp', d.path, now).verify(bare, rd, { snp: { measurements: [m] } })).measurement, m);
});

test('CAS verifier, TDX: collateral from tdx/ and tdx/<fmspc>/, status and age reported; debug per policy', async (t) => {
  const d = tempDir('tee-col');
  t.after(() => d.remove());
  const shared = path.join(d.path, 'tdx');
  const own = path.join(shared, '50806f000000');
  mkdirSync(own, { recursive: true });
  for (const f of ['root-crl.der', 'qe-identity.json', 'qe-identity-issuer-chain.pem']) copyFileSync(fixture('tdx/spr-v4', f), path.join(shared, f));
  for (const f of ['tcb-info.json', 'tcb-info-issuer-chain.pem', 'pck-crl.der']) copyFileSync(fixture('tdx/spr-v4', f), path.join(own, f));
  const quote = tdxQuote('quote-4');
  const body = parseTdxQuote(quote).body;
  const rd = body.reportData;
  const mrtd = body.mrTd.toString('hex');
  const ev: Evidence = { mode: 'tdx', measurement: mrtd, reportData: rd.toString('hex'), report: quote.toString('base64') };
  const v = new TeeEvidenceVerifier('tdx', d.path, () => SPR_V4_AT);
  const ok = await v.verify(ev, rd, { tdx: { mrtd: [mrtd], allowDebug: true } });
  assert.equal(ok.tee.tcbStatus, 'UpToDate');
  assert.equal(ok.tee.tcb, 'UpToDate');
  assert.ok((ok.tee.collateralAgeSeconds ?? 0) > 0);
  await assert.rejects(v.verify(ev, rd, { tdx: { mrtd: [mrtd] } }), (e: unknown) => isCdbpError(e, 'TEE_DEBUG_REFUSED'));
  await assert.rejects(new TeeEvidenceVerifier('tdx', undefined, () => SPR_V4_AT).verify(ev, rd, { tdx: { mrtd: [mrtd], allowDebug: true } }),
    (e: unknown) => isCdbpError(e, 'TEE_COLLATERAL_MISSING'));
  await assert.rejects(new TeeEvidenceVerifier('tdx', d.path).verify(ev, rd, { tdx: { mrtd: [mrtd], allowDebug: true } }),
    (e: unknown) => isCdbpError(e, 'TEE_COLLATERAL_EXPIRED'));
});

test('selectVerifiers: sev-snp and tdx get the real verifiers, simulated stays opt-in and separate', () => {
  const m = selectVerifiers({ env: {} });
  assert.ok(m.get('sev-snp') instanceof TeeEvidenceVerifier);
  assert.ok(m.get('tdx') instanceof TeeEvidenceVerifier);
  assert.notEqual(m.get('simulated')?.constructor.name, 'SimulatedVerifier');
});

test('policy: real TEE modes need pinned measurements under tee; simulated-only policies are unchanged', () => {
  assert.throws(() => buildPolicy({ service: 's', measurements: [], teeModes: ['sev-snp'] }),
    (e: unknown) => isCdbpError(e, 'POLICY_INVALID') && /tee.snp.measurements/.test(e.message));
  assert.throws(() => buildPolicy({ service: 's', measurements: [], teeModes: ['tdx'], tee: { tdx: { allowDebug: true } } }),
    (e: unknown) => isCdbpError(e, 'POLICY_INVALID') && /tee.tdx.mrtd/.test(e.message));
  const p = buildPolicy({ service: 's', measurements: [], teeModes: ['sev-snp', 'tdx'],
    tee: { snp: { measurements: ['ab'.repeat(48)], minTcb: { bootloader: 3 } }, tdx: { mrtd: ['cd'.repeat(48)], tcbStatuses: ['UpToDate'] } } });
  assert.equal(validatePolicy(p).tee?.tdx?.tcbStatuses?.[0], 'UpToDate');
  assert.throws(() => buildPolicy({ service: 's', measurements: [], teeModes: ['simulated'] }), (e: unknown) => isCdbpError(e, 'POLICY_INVALID'));
  assert.throws(() => validatePolicy({ ...p, tee: { snp: { measurements: ['AB'] }, sgx: {} } }),
    (e: unknown) => isCdbpError(e, 'POLICY_INVALID') && /unknown field "sgx"/.test(e.message) && /snp.measurements\[0\]/.test(e.message));
  assert.equal('tee' in buildPolicy({ service: 's', measurements: ['ab'.repeat(32)], teeModes: ['simulated'] }), false);
});

test('cdbp policy measure: the measurements an owner pins come from the report (SNP) or quote (TDX MRTD, RTMR0-2)', async () => {
  const { measureEvidence } = await import('../../cli/commands/policy.ts');
  const snp = measureEvidence(fixture('snp/milan-vcek-2/report.hex'));
  assert.deepEqual(snp.snp?.measurements, [snpVector('milan-vcek-2').evidence.bytes.subarray(0x90, 0xc0).toString('hex')]);
  const tdx = measureEvidence(fixture('tdx/quote-5/quote.dat'));
  const body = parseTdxQuote(tdxQuote('quote-5')).body;
  assert.deepEqual(tdx.tdx?.mrtd, [body.mrTd.toString('hex')]);
  assert.equal(tdx.tdx?.rtmr?.[3], null);
  // What measure prints is a valid policy "tee" part.
  assert.ok(buildPolicy({ service: 's', measurements: [], teeModes: ['sev-snp', 'tdx'], tee: { ...snp, ...tdx } }));
});

test('bench scenario attest (smoke): one row per format, each a complete verification', async () => {
  const { runAttest, renderAttest } = await import('../../bench/scenarios/attest.ts');
  const r = await runAttest({ seconds: 0.05 });
  assert.equal(r.summary.length, 5);
  for (const row of r.summary) assert.ok(row.verifications > 0 && row.perSecond > 0, row.format);
  assert.match(renderAttest(r).join('\n'), /TDX quote v4/);
});

test('CAS verifier, Azure SEV-SNP vTPM: the same verifier as `cdbp verify`; the quote nonce carries the first 48 bytes of the binding', async () => {
  const raw = readFileSync(fixture('snp', 'genoa-azure', 'evidence.json'));
  const nonce = Buffer.from('0218488bae25d2509232bf676f1a66a30d7372add909109b36016ef136f2938ca05475f8b46094de6b64270ea35d950f', 'hex');
  const m = 'f57dc09a507c6ecd82369bffb600f0003792f4d99bc26e985ec0c266fc34faf3706faf814c9e61065768a6ff917c89ae';
  const certs = loadCertificates(fixture('snp', 'genoa-azure', 'ask-ark.pem')).map((c) => c.raw.toString('base64'));
  // The CAS's 64-byte report data whose first 48 bytes are the nonce this quote carries.
  const rd = Buffer.concat([nonce, Buffer.alloc(16, 7)]);
  const ev: Evidence = { mode: 'sev-snp', measurement: m, reportData: rd.toString('hex'), report: raw.toString('base64'), certs };
  const v = new TeeEvidenceVerifier('sev-snp', undefined, () => new Date('2026-01-01T00:00:00Z'));
  const ok = await v.verify(ev, rd, { snp: { measurements: [m] } });
  assert.equal(ok.measurement, m);
  assert.match(ok.tee.signer, /HCLAkPub/);
  assert.equal(ok.tee.tcb, 'snp-0a00000000001754');
  // Other keys or another CAS nonce give another binding: refused at the quote's nonce.
  const other = Buffer.alloc(64, 1);
  await assert.rejects(v.verify({ ...ev, reportData: other.toString('hex') }, other, { snp: { measurements: [m] } }),
    (e: unknown) => isCdbpError(e, 'TEE_REPORT_DATA_MISMATCH'));
  const tail = Buffer.concat([nonce.subarray(0, 47), Buffer.from([nonce[47]! ^ 1]), Buffer.alloc(16, 7)]);
  await assert.rejects(v.verify({ ...ev, reportData: tail.toString('hex') }, tail, { snp: { measurements: [m] } }),
    (e: unknown) => isCdbpError(e, 'TEE_REPORT_DATA_MISMATCH'));
  await assert.rejects(v.verify(ev, rd, { snp: { measurements: ['ab'.repeat(48)] } }), (e: unknown) => isCdbpError(e, 'MEASUREMENT_MISMATCH'));
  await assert.rejects(v.verify(ev, rd, {}), (e: unknown) => isCdbpError(e, 'ATTESTATION_REFUSED'));
  // Without the AMD chain (neither in the envelope nor in the collateral directory) nothing verifies.
  const { certs: _drop, ...bare } = ev;
  await assert.rejects(v.verify(bare, rd, { snp: { measurements: [m] } }), (e: unknown) => isCdbpError(e, 'TEE_COLLATERAL_MISSING'));
  // Azure vTPM evidence is sev-snp evidence: a TDX verifier refuses it by format.
  await assert.rejects(new TeeEvidenceVerifier('tdx').verify({ ...ev, mode: 'tdx' }, rd, { tdx: { mrtd: [m] } }), (e: unknown) => isCdbpError(e, 'EVIDENCE_INVALID'));
});
