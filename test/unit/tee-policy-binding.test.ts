/**
 * The report is bound to the owner's policy (SEV-SNP HOST_DATA / TDX MRCONFIGID = the signed policy's hash,
 * src/attestation/policy-binding.ts) and to the session (REPORT_DATA = the nonce/key binding). Each field
 * is attacked twice on the real vectors: the host edits the bytes in the report (the signature re-check
 * fails), or presents the genuine report for another policy or session (the policy refuses), each with
 * its own stable code.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { sign, type KeyObject } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { verifySnpReport, type SnpVerifyInput } from '../../src/attestation/snp/verify.ts';
import { verifyTdxQuote, type TdxVerifyInput } from '../../src/attestation/tdx/verify.ts';
import { parseSnpReport } from '../../src/attestation/snp/report.ts';
import { parseTdxQuote } from '../../src/attestation/tdx/quote.ts';
import { checkLaunchBinding, launchBindingValue } from '../../src/attestation/policy-binding.ts';
import { validateTeeAppraisalPolicy } from '../../src/attestation/tee-policy.ts';
import { TeeEvidenceVerifier } from '../../src/attestation/tee-verifier.ts';
import { verifyTeeEvidence } from '../../src/attestation/verify-evidence.ts';
import { buildPolicy, policyHash, signPolicy } from '../../src/provisioning/policy.ts';
import { generateSigningKeyPair } from '../../src/crypto/ed25519.ts';
import { isCdbpError, type ErrorCode } from '../../src/kernel/errors.ts';
import { checkEvidenceFile } from '../../cli/commands/verify-evidence.ts';
import type { SnpProduct } from '../../src/attestation/snp/report.ts';
import { fixture, SPR_V4_AT, snpVector, sprV4Collateral, tdxQuote } from '../support/tee-vectors.ts';
import { forgeChain } from '../support/tee-forge.ts';
import { tempDir } from '../support/tmp.ts';

const SNP_HOST_DATA = 0xc0;
const SNP_REPORT_DATA = 0x50;
const TDX_BODY = 48;
const TDX_MRCONFIGID = TDX_BODY + 184;
const TDX_REPORT_DATA = TDX_BODY + 520;

function throwsCode(f: () => unknown, code: ErrorCode, pattern?: RegExp): void {
  assert.throws(f, (e: unknown) => {
    assert.ok(isCdbpError(e), `not a CdbpError: ${String(e)}`);
    assert.equal(e.code, code, e.message);
    if (pattern) assert.match(e.message, pattern);
    return true;
  });
}

const H1 = policyHash(buildPolicy({ service: 'orders-db', measurements: ['aa'.repeat(32)], teeModes: ['simulated'] }));
const H2 = policyHash(buildPolicy({ service: 'orders-db', measurements: ['bb'.repeat(32)], teeModes: ['simulated'] }));

const snp = (over: Partial<SnpVerifyInput> = {}): SnpVerifyInput => {
  const v = snpVector('milan-vcek-2');
  return { report: v.evidence.bytes, certs: v.certs, now: v.at, ...over };
};
const q4 = (over: Partial<TdxVerifyInput> = {}): TdxVerifyInput => ({
  quote: tdxQuote('quote-4'), collateral: sprV4Collateral(), now: SPR_V4_AT, policy: { allowDebug: true }, ...over,
});

function withBytes(buf: Buffer, offset: number, value: Buffer): Buffer {
  const out = Buffer.from(buf);
  value.copy(out, offset);
  return out;
}

/** The real milan-vcek-2 report with chosen bytes, re-signed by a forged VCEK under a forged "ARK-Milan" (a test trust anchor). */
function forgedSnp(edit: (r: Buffer) => Buffer): { report: Buffer; certs: SnpVerifyInput['certs']; arks: Map<SnpProduct, SnpVerifyInput['certs'][number]> } {
  const real = snpVector('milan-vcek-2').evidence.bytes;
  const parsed = parseSnpReport(real);
  const AMD = '/OU=Engineering/C=US/L=Santa Clara/ST=CA/O=Advanced Micro Devices';
  const chain = forgeChain({
    curve: 'P-384', rootSubject: `${AMD}/CN=ARK-Milan`, intermediateSubject: `${AMD}/CN=SEV-Milan`, leafSubject: `${AMD}/CN=SEV-VCEK`,
    // milan-vcek-2's reported TCB 0300000000000873: bootloader 3, tee 0, snp 8, microcode 115.
    leafExtensions: ['1.3.6.1.4.1.3704.1.3.1 = DER:020103', '1.3.6.1.4.1.3704.1.3.2 = DER:020100', '1.3.6.1.4.1.3704.1.3.3 = DER:020108',
      '1.3.6.1.4.1.3704.1.3.8 = DER:020173', `1.3.6.1.4.1.3704.1.4 = DER:${parsed.chipId.toString('hex')}`],
  });
  return { report: resignSnp(edit(real), chain.leafKey), certs: [chain.leaf, chain.intermediate], arks: new Map([['Milan', chain.root]]) };
}

function resignSnp(report: Buffer, key: KeyObject): Buffer {
  const out = Buffer.from(report);
  const rs = sign('sha384', out.subarray(0, 0x2a0), { key, dsaEncoding: 'ieee-p1363' });
  out.fill(0, 0x2a0);
  Buffer.from(rs.subarray(0, 48)).reverse().copy(out, 0x2a0);
  Buffer.from(rs.subarray(48)).reverse().copy(out, 0x2a0 + 72);
  return out;
}

test('launch binding values: HOST_DATA = the policy hash, MRCONFIGID = the policy hash ‖ 16 zero bytes', () => {
  assert.equal(launchBindingValue('HOST_DATA', H1).toString('hex'), H1);
  assert.equal(launchBindingValue('MRCONFIGID', H1).toString('hex'), H1 + '00'.repeat(16));
  checkLaunchBinding('MRCONFIGID', Buffer.from(H1 + '00'.repeat(16), 'hex'), H1);
  throwsCode(() => checkLaunchBinding('MRCONFIGID', Buffer.from(H1 + '00'.repeat(15) + '01', 'hex'), H1), 'TEE_POLICY_BINDING_MISMATCH');
  throwsCode(() => checkLaunchBinding('HOST_DATA', Buffer.from(H1, 'hex'), undefined), 'TEE_POLICY_BINDING_MISMATCH', /not given the policy hash/);
  throwsCode(() => launchBindingValue('HOST_DATA', 'nothex'), 'POLICY_INVALID');
});

test('SEV-SNP HOST_DATA: a real report launched without the binding is refused when the policy requires it', () => {
  // milan-vcek-2 carries HOST_DATA = 0^32: it was not launched for our policy.
  throwsCode(() => verifySnpReport(snp({ policy: { bindPolicyHash: true }, policyHash: H1 })), 'TEE_POLICY_BINDING_MISMATCH', new RegExp(`HOST_DATA 0{64} does not bind the owner's policy ${H1}`));
  // Fail closed: a verifier not told the policy hash cannot accept.
  throwsCode(() => verifySnpReport(snp({ policy: { bindPolicyHash: true } })), 'TEE_POLICY_BINDING_MISMATCH');
  // Not required: the same report passes.
  assert.equal(verifySnpReport(snp({ policyHash: H1 })).hostData, '00'.repeat(32));
});

test('SEV-SNP HOST_DATA: the host writing the policy hash into a real report breaks its signature', () => {
  const edited = withBytes(snpVector('milan-vcek-2').evidence.bytes, SNP_HOST_DATA, Buffer.from(H1, 'hex'));
  assert.equal(parseSnpReport(edited).hostData.toString('hex'), H1);
  throwsCode(() => verifySnpReport(snp({ report: edited, policy: { bindPolicyHash: true }, policyHash: H1 })), 'TEE_SIGNATURE_INVALID');
});

test('SEV-SNP HOST_DATA: a signed report launched for policy H1 passes H1 and is refused for the successor H2', () => {
  const f = forgedSnp((r) => withBytes(r, SNP_HOST_DATA, launchBindingValue('HOST_DATA', H1)));
  const base = { report: f.report, certs: f.certs, arks: f.arks, now: new Date(Date.now() + 60_000) }; // the forged chain starts now
  assert.equal(verifySnpReport({ ...base, policy: { bindPolicyHash: true }, policyHash: H1 }).hostData, H1);
  throwsCode(() => verifySnpReport({ ...base, policy: { bindPolicyHash: true }, policyHash: H2 }), 'TEE_POLICY_BINDING_MISMATCH', /launched for another policy/);
  // The same bytes under the pinned AMD roots: the forged chain is refused first.
  throwsCode(() => verifySnpReport({ ...base, arks: undefined, policy: { bindPolicyHash: true }, policyHash: H1 }), 'TEE_CERT_CHAIN_INVALID', /pinned root ARK-Milan/);
});

test('SEV-SNP REPORT_DATA: another session is refused by policy, edited bytes by the signature', () => {
  const real = snpVector('milan-vcek-2').evidence.bytes;
  const theirs = Buffer.from(parseSnpReport(real).reportData);
  const ours = Buffer.alloc(64, 0x5a);
  throwsCode(() => verifySnpReport(snp({ expectedReportData: ours })), 'TEE_REPORT_DATA_MISMATCH');
  assert.ok(verifySnpReport(snp({ expectedReportData: theirs })));
  throwsCode(() => verifySnpReport(snp({ report: withBytes(real, SNP_REPORT_DATA, ours), expectedReportData: ours })), 'TEE_SIGNATURE_INVALID');
});

test('TDX MRCONFIGID: a real quote launched without the binding is refused when the policy requires it; edited bytes break the signature', () => {
  throwsCode(() => verifyTdxQuote(q4({ policy: { allowDebug: true, bindPolicyHash: true }, policyHash: H1 })), 'TEE_POLICY_BINDING_MISMATCH',
    new RegExp(`MRCONFIGID 0{96} does not bind the owner's policy ${H1} \\(expected ${H1}0{32}\\)`));
  throwsCode(() => verifyTdxQuote(q4({ policy: { allowDebug: true, bindPolicyHash: true } })), 'TEE_POLICY_BINDING_MISMATCH');
  assert.equal(verifyTdxQuote(q4({ policyHash: H1 })).mrConfigId, '00'.repeat(48));
  const edited = withBytes(tdxQuote('quote-4'), TDX_MRCONFIGID, launchBindingValue('MRCONFIGID', H1));
  assert.equal(parseTdxQuote(edited).body.mrConfigId.toString('hex'), H1 + '00'.repeat(16));
  throwsCode(() => verifyTdxQuote(q4({ quote: edited, policy: { allowDebug: true, bindPolicyHash: true }, policyHash: H1 })), 'TEE_SIGNATURE_INVALID');
});

test('TDX REPORTDATA: another session is refused by policy, edited bytes by the signature', () => {
  const q = tdxQuote('quote-4');
  const theirs = Buffer.from(parseTdxQuote(q).body.reportData);
  const ours = Buffer.alloc(64, 0xa5);
  throwsCode(() => verifyTdxQuote(q4({ expectedReportData: ours })), 'TEE_REPORT_DATA_MISMATCH');
  assert.ok(verifyTdxQuote(q4({ expectedReportData: theirs })));
  throwsCode(() => verifyTdxQuote(q4({ quote: withBytes(q, TDX_REPORT_DATA, ours), expectedReportData: ours })), 'TEE_SIGNATURE_INVALID');
});

test('the policy: bindPolicyHash is a boolean and excludes a pinned HOST_DATA / MRCONFIGID', () => {
  assert.ok(validateTeeAppraisalPolicy({ snp: { bindPolicyHash: true }, tdx: { bindPolicyHash: false } }));
  throwsCode(() => validateTeeAppraisalPolicy({ snp: { bindPolicyHash: 'yes' } }), 'POLICY_INVALID', /bindPolicyHash must be true or false/);
  throwsCode(() => validateTeeAppraisalPolicy({ snp: { bindPolicyHash: true, hostData: ['00'.repeat(32)] } }), 'POLICY_INVALID', /exclude each other/);
  throwsCode(() => validateTeeAppraisalPolicy({ tdx: { bindPolicyHash: true, mrConfigId: ['00'.repeat(48)] } }), 'POLICY_INVALID', /exclude each other/);
});

test('the CAS verifier passes the signed policy\'s hash: the envelope of a report launched for another policy is refused', async () => {
  const v = snpVector('milan-vcek-2');
  const rd = v.evidence.bytes.subarray(0x50, 0x90);
  const m = v.evidence.bytes.subarray(0x90, 0xc0).toString('hex');
  const ev = { mode: 'sev-snp' as const, measurement: m, reportData: rd.toString('hex'), report: v.evidence.bytes.toString('base64'),
    certs: v.certs.map((c) => c.raw.toString('base64')) };
  const verifier = new TeeEvidenceVerifier('sev-snp', undefined, () => v.at);
  await assert.rejects(verifier.verify(ev, rd, { snp: { measurements: [m], bindPolicyHash: true } }, { policyHash: H1 }),
    (e: unknown) => isCdbpError(e, 'TEE_POLICY_BINDING_MISMATCH'));
  await assert.rejects(verifier.verify(ev, rd, { snp: { measurements: [m], bindPolicyHash: true } }),
    (e: unknown) => isCdbpError(e, 'TEE_POLICY_BINDING_MISMATCH'));
  assert.equal((await verifier.verify(ev, rd, { snp: { measurements: [m] } }, { policyHash: H1 })).measurement, m);
});

test('cdbp verify --policy SIGNED.json takes the hash of the signed policy; --policy-hash overrides it', async (t) => {
  const d = tempDir('tee-bind');
  t.after(() => d.remove());
  const v = snpVector('milan-vcek-2');
  const m = parseSnpReport(v.evidence.bytes).measurement.toString('hex');
  const policy = buildPolicy({ service: 'orders-db', measurements: [], teeModes: ['sev-snp'], tee: { snp: { measurements: [m], bindPolicyHash: true } } });
  const signed = await signPolicy(policy, await generateSigningKeyPair());
  const file = path.join(d.path, 'signed.json');
  writeFileSync(file, JSON.stringify(signed));
  const evidence = fixture('snp', 'milan-vcek-2', 'report.hex');
  const certs = fixture('snp', 'milan-vcek-2');
  const r = checkEvidenceFile({ evidence, certs, policy: file, at: '2026-01-01T00:00:00Z' });
  assert.equal(r.verified, false);
  assert.equal(r.error?.code, 'TEE_POLICY_BINDING_MISMATCH');
  assert.match(r.error!.message, new RegExp(signed.policyHash));
  const o = checkEvidenceFile({ evidence, certs, policy: file, policyHash: H2, at: '2026-01-01T00:00:00Z' });
  assert.match(o.error!.message, new RegExp(H2));
  // And through the one entry the CAS uses, with the forged-but-trusted report launched for this very policy.
  const f = forgedSnp((rep) => withBytes(rep, SNP_HOST_DATA, launchBindingValue('HOST_DATA', signed.policyHash)));
  const ok = verifySnpReport({ report: f.report, certs: f.certs, arks: f.arks, now: new Date(Date.now() + 60_000), policy: signed.policy.tee!.snp!, policyHash: signed.policyHash });
  assert.equal(ok.hostData, signed.policyHash);
  throwsCode(() => verifyTeeEvidence({ evidence: { ...v.evidence }, certs: v.certs, now: v.at, policy: signed.policy.tee!, policyHash: signed.policyHash }),
    'TEE_POLICY_BINDING_MISMATCH');
});
