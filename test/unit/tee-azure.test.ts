import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { parseAzureVtpmEvidence, parseTpmQuote, verifyAzureSnpVtpm } from '../../src/attestation/azure/vtpm.ts';
import { loadCertificates } from '../../src/attestation/evidence-file.ts';
import { isCdbpError, type ErrorCode } from '../../src/kernel/errors.ts';
import { fixture, flip } from '../support/tee-vectors.ts';

const raw = () => readFileSync(fixture('snp', 'genoa-azure', 'evidence.json'));
const chain = () => loadCertificates(fixture('snp', 'genoa-azure', 'ask-ark.pem'));
const now = new Date('2026-01-01T00:00:00Z');
const NONCE = '0218488bae25d2509232bf676f1a66a30d7372add909109b36016ef136f2938ca05475f8b46094de6b64270ea35d950f';

function refuses(f: () => unknown, code: ErrorCode): void {
  assert.throws(f, (e: unknown) => { assert.ok(isCdbpError(e), String(e)); assert.equal(e.code, code, e.message); return true; });
}

test('Azure SNP vTPM: AMD root → VCEK → SNP report → HCL runtime data → AK → TPM2 quote → nonce and PCRs', () => {
  const ev = parseAzureVtpmEvidence(raw());
  const v = verifyAzureSnpVtpm({ evidence: ev, certs: chain(), now, expectedNonce: Buffer.from(NONCE, 'hex') });
  assert.equal(v.snp.product, 'Genoa');
  assert.equal(v.nonce, NONCE);
  assert.equal(Object.keys(v.pcrs).length, 24);
  assert.ok(verifyAzureSnpVtpm({ evidence: ev, certs: chain(), now, expectedPcrs: { 0: v.pcrs[0]! } }));
});

test('Azure SNP vTPM refusals: other nonce, flipped quote or signature, edited PCR value, pinned PCR, no VCEK chain', () => {
  const ev = parseAzureVtpmEvidence(raw());
  refuses(() => verifyAzureSnpVtpm({ evidence: ev, certs: chain(), now, expectedNonce: Buffer.alloc(48) }), 'TEE_REPORT_DATA_MISMATCH');
  refuses(() => verifyAzureSnpVtpm({ evidence: { ...ev, quote: { ...ev.quote, message: flip(ev.quote.message, 20) } }, certs: chain(), now }), 'TEE_SIGNATURE_INVALID');
  refuses(() => verifyAzureSnpVtpm({ evidence: { ...ev, quote: { ...ev.quote, signature: flip(ev.quote.signature, 9) } }, certs: chain(), now }), 'TEE_SIGNATURE_INVALID');
  const pcrs = ev.quote.pcrs.map((p, i) => (i === 7 ? flip(p, 0) : p));
  refuses(() => verifyAzureSnpVtpm({ evidence: { ...ev, quote: { ...ev.quote, pcrs } }, certs: chain(), now }), 'TEE_SIGNATURE_INVALID');
  refuses(() => verifyAzureSnpVtpm({ evidence: ev, certs: chain(), now, expectedPcrs: { 7: '00'.repeat(32) } }), 'MEASUREMENT_MISMATCH');
  refuses(() => verifyAzureSnpVtpm({ evidence: ev, now }), 'TEE_COLLATERAL_MISSING');
  // The runtime data (with the AK) is bound by the SNP report: swapping the AK breaks that binding.
  const hcl = Buffer.from(ev.hclReport);
  const at = hcl.indexOf(Buffer.from('"n":"')) + 10;
  hcl[at] = hcl[at] === 0x41 ? 0x42 : 0x41;
  refuses(() => verifyAzureSnpVtpm({ evidence: { ...ev, hclReport: hcl }, certs: chain(), now }), 'TEE_REPORT_DATA_MISMATCH');
});

test('TPM2 quote and evidence JSON: truncated, oversized and garbage inputs are malformed', () => {
  const ev = parseAzureVtpmEvidence(raw());
  for (const n of [0, 5, 40, ev.quote.message.length - 1]) refuses(() => parseTpmQuote(ev.quote.message.subarray(0, n)), 'TEE_EVIDENCE_MALFORMED');
  refuses(() => parseTpmQuote(Buffer.concat([ev.quote.message, Buffer.alloc(1)])), 'TEE_EVIDENCE_MALFORMED');
  refuses(() => parseAzureVtpmEvidence(Buffer.from('{"quote":')), 'TEE_EVIDENCE_MALFORMED');
  refuses(() => parseAzureVtpmEvidence(Buffer.from(JSON.stringify({ quote: { message: [1, 2, 300], signature: [], pcrs: [] }, report: [] }))), 'TEE_EVIDENCE_MALFORMED');
});

test('Azure vTPM evidence JSON is recognised by the evidence loader and verified through the one entry', async () => {
  const { loadEvidenceBytes } = await import('../../src/attestation/evidence-file.ts');
  const { verifyTeeEvidence } = await import('../../src/attestation/verify-evidence.ts');
  const loaded = loadEvidenceBytes(raw());
  assert.equal(loaded.format, 'azure-snp-vtpm');
  const v = verifyTeeEvidence({ evidence: loaded, certs: chain(), now, expectedReportData: Buffer.from(NONCE, 'hex') });
  assert.match(v.format, /TPM2 quote/);
  assert.throws(() => verifyTeeEvidence({ evidence: loaded, certs: chain(), now, policy: { snp: { measurements: ['00'.repeat(48)] } } }),
    (e: unknown) => isCdbpError(e, 'MEASUREMENT_MISMATCH'));
});
