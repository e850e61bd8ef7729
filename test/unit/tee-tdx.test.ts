import { test } from 'node:test';
import assert from 'node:assert/strict';
import { sign, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { verifyTdxQuote, verifyTdxQuoteSignatures, type TdxVerifyInput } from '../../src/attestation/tdx/verify.ts';
import { parseTdxQuote, TDX_HEADER_SIZE } from '../../src/attestation/tdx/quote.ts';
import { checkCollateralSignatureOnly, parseQeIdentity, parseTcbInfo } from '../../src/attestation/tdx/collateral.ts';
import { evaluateTdxTcb } from '../../src/attestation/tdx/tcb.ts';
import { parsePemBundle } from '../../src/attestation/chain.ts';
import { certificateExtensions } from '../../src/attestation/asn1.ts';
import { loadEvidenceBytes } from '../../src/attestation/evidence-file.ts';
import { isCdbpError, type ErrorCode } from '../../src/kernel/errors.ts';
import { fixture, flip, SPR_V4_AT, sprV4Collateral, tdxQuote } from '../support/tee-vectors.ts';
import { forgeChain, forgeCrl } from '../support/tee-forge.ts';

const ALL_BUT_REVOKED = ['UpToDate', 'SWHardeningNeeded', 'ConfigurationNeeded', 'ConfigurationAndSWHardeningNeeded', 'OutOfDate',
  'OutOfDateConfigurationNeeded'] as const;

function refuses(input: TdxVerifyInput, code: ErrorCode, pattern?: RegExp): void {
  assert.throws(() => verifyTdxQuote(input), (e: unknown) => {
    assert.ok(isCdbpError(e), `not a CdbpError: ${String(e)}`);
    assert.equal(e.code, code, e.message);
    if (pattern) assert.match(e.message, pattern);
    return true;
  });
}

/** tdx/quote-4 (a debug TD, same FMSPC as spr-v4) against spr-v4's collateral at 2023-07-01. */
const q4 = (over: Partial<TdxVerifyInput> = {}): TdxVerifyInput => ({
  quote: tdxQuote('quote-4'), collateral: sprV4Collateral(), now: SPR_V4_AT, policy: { allowDebug: true }, ...over,
});

const sigDataStart = TDX_HEADER_SIZE + 584 + 4;

test('tdx/quote-4 verifies end to end at 2023-07-01: PCK chain, CRLs, QE report, binding, quote signature, TCB info + QE identity → UpToDate', () => {
  const v = verifyTdxQuote(q4());
  assert.equal(v.quoteVersion, 4);
  assert.equal(v.fmspc, '50806f000000');
  assert.equal(v.tcb.status, 'UpToDate');
  assert.equal(v.tcb.qeStatus, 'UpToDate');
  assert.equal(v.debug, true);
  assert.match(v.chain, /Intel SGX PCK Platform CA ← Intel SGX Root CA/);
  assert.equal(v.collateral.tcbInfoNextUpdate, '2023-07-18T08:42:58.000Z');
  assert.ok(v.collateral.ageSeconds > 0);
});

test('the debug TD (tdx/quote-4) is refused under the production default', () => {
  refuses(q4({ policy: {} }), 'TEE_DEBUG_REFUSED');
  refuses(q4({ policy: undefined }), 'TEE_DEBUG_REFUSED');
});

test('tdx/spr-v4: everything verifies, but its platform TCB is below every level of its TCB info → refused as an unknown status', () => {
  refuses({ quote: tdxQuote('spr-v4'), collateral: sprV4Collateral(), now: SPR_V4_AT, policy: { tcbStatuses: [...ALL_BUT_REVOKED] } },
    'TEE_TCB_STATUS_REFUSED', /below every level/);
  // 39 unsigned bytes after the signature data ("extra bytes (only for testing purpose)") are counted and ignored.
  assert.equal(parseTdxQuote(tdxQuote('spr-v4')).unsignedTrailingBytes, 39);
});

test('v4 and v5 quotes (TDX 1.0 and 1.5 bodies) parse and their signatures, QE binding and PCK chains verify', () => {
  const at = new Date('2026-02-01T00:00:00Z');
  const seen = ['spr-v4', 'quote-4', 'quote-5', 'quote-6', 'v5'].map((n) => {
    const r = verifyTdxQuoteSignatures(tdxQuote(n), at);
    return `${n}:v${r.quote.version}/body${r.quote.bodyType}/${r.pckExt.fmspc}`;
  });
  assert.deepEqual(seen, ['spr-v4:v4/body2/50806f000000', 'quote-4:v4/body2/50806f000000', 'quote-5:v5/body3/90c06f000000',
    'quote-6:v4/body2/00a06d080000', 'v5:v5/body3/90c06f000000']);
  assert.ok(parseTdxQuote(tdxQuote('v5')).body.mrServiceTd);
});

test('collateral of quote-6 and v5 (2025-2026) is signed over the exact bytes by the TCB Signing key; one changed byte is refused', () => {
  const signer = parsePemBundle(readFileSync(fixture('tdx', 'spr-v4', 'tcb-info-issuer-chain.pem'), 'utf8'), 'chain')[0]!;
  for (const f of ['quote-6/tcb-info.json', 'v5/tcb-info.json']) {
    const raw = readFileSync(fixture('tdx', f));
    checkCollateralSignatureOnly(parseTcbInfo(raw), signer, f);
    const tampered = Buffer.from(raw.toString('utf8').replace('"UpToDate"', '"UpToDatf"'));
    // Status strings are validated before signatures matter; change a date digit instead.
    const dateTampered = Buffer.from(raw.toString('utf8').replace(/"tcbDate":"(\d)/, (_m, d) => `"tcbDate":"${(Number(d) + 1) % 10}`));
    assert.throws(() => parseTcbInfo(tampered), (e: unknown) => isCdbpError(e, 'TEE_COLLATERAL_INVALID'));
    assert.throws(() => checkCollateralSignatureOnly(parseTcbInfo(dateTampered), signer, f), (e: unknown) => isCdbpError(e, 'TEE_COLLATERAL_INVALID'));
  }
  const qe = parseQeIdentity(readFileSync(fixture('tdx', 'quote-6', 'qe-identity.json')));
  checkCollateralSignatureOnly(qe, signer, 'qe');
  // Re-serialised JSON is not what Intel signed: the bytes must be sliced, not rebuilt.
  const reserialised = Buffer.from(JSON.stringify(JSON.parse(readFileSync(fixture('tdx', 'quote-6', 'tcb-info.json'), 'utf8')), null, 1));
  assert.throws(() => parseTcbInfo(reserialised), (e: unknown) => isCdbpError(e, 'TEE_COLLATERAL_INVALID'));
});

test('TCB evaluation: quote-6 against its own TCB info and QE identity (module identity TDX_03), v5 against its TCB info', () => {
  const q6 = verifyTdxQuoteSignatures(tdxQuote('quote-6'), new Date('2025-06-01T00:00:00Z'));
  const info6 = parseTcbInfo(readFileSync(fixture('tdx', 'quote-6', 'tcb-info.json'))).body;
  const qe6 = parseQeIdentity(readFileSync(fixture('tdx', 'quote-6', 'qe-identity.json'))).body;
  const e6 = evaluateTdxTcb(info6, qe6, q6.pckExt.tcb, q6.quote.body, q6.quote.qeReport);
  assert.equal(e6.qeStatus, 'UpToDate');
  assert.ok(e6.moduleStatus, 'TEE_TCB_SVN[1] > 0 selects the module identity');
  assert.equal(e6.status, 'OutOfDate');
  const q5 = verifyTdxQuoteSignatures(tdxQuote('v5'), new Date('2026-02-01T00:00:00Z'));
  const info5 = parseTcbInfo(readFileSync(fixture('tdx', 'v5', 'tcb-info.json'))).body;
  assert.equal(evaluateTdxTcb(info5, qe6, q5.pckExt.tcb, q5.quote.body, q5.quote.qeReport).status, 'UpToDate');
});

test('a flipped bit in the body, the quote signature, the QE report, its signature, the QE auth data or the attestation key is refused', () => {
  const q = tdxQuote('quote-4');
  const cases: Array<[number, ErrorCode]> = [
    [2 + 0, 'TEE_EVIDENCE_MALFORMED'], // attestation key type
    [TDX_HEADER_SIZE + 136, 'TEE_SIGNATURE_INVALID'], // MRTD
    [TDX_HEADER_SIZE + 520, 'TEE_SIGNATURE_INVALID'], // REPORTDATA
    [TDX_HEADER_SIZE + 120, 'TEE_SIGNATURE_INVALID'], // TDATTRIBUTES (clearing debug!)
    [20, 'TEE_SIGNATURE_INVALID'], // header: QE vendor id
    [sigDataStart + 5, 'TEE_SIGNATURE_INVALID'], // quote signature
    [sigDataStart + 64 + 3, 'TEE_QE_BINDING_INVALID'], // attestation key
    [sigDataStart + 128 + 6 + 100, 'TEE_SIGNATURE_INVALID'], // QE report (signed by the PCK)
    [sigDataStart + 128 + 6 + 384 + 7, 'TEE_SIGNATURE_INVALID'], // QE report signature
    [sigDataStart + 128 + 6 + 384 + 64 + 2 + 5, 'TEE_QE_BINDING_INVALID'], // QE auth data
  ];
  for (const [offset, code] of cases) refuses(q4({ quote: flip(q, offset, 0) }), code);
});

test('a flipped bit in each certificate of the PCK chain is refused', () => {
  const q = tdxQuote('quote-4');
  const text = q.toString('latin1');
  const begins = [...text.matchAll(/-----BEGIN CERTIFICATE-----/g)].map((m) => m.index!);
  assert.equal(begins.length, 3);
  for (const b of begins) {
    // A base64 character in the middle of the certificate: the DER changes by a few bits.
    const at = b + 28 + 400;
    const bad = Buffer.from(q);
    bad[at] = bad[at] === 0x41 ? 0x42 : 0x41;
    assert.throws(() => verifyTdxQuote(q4({ quote: bad })), (e: unknown) => {
      assert.ok(isCdbpError(e));
      assert.ok(['TEE_CERT_CHAIN_INVALID', 'TEE_UNTRUSTED_ROOT', 'TEE_SIGNATURE_INVALID'].includes(e.code), `${e.code}: ${e.message}`);
      return true;
    });
  }
});

test('collateral: expired (at the real date and a month after), missing, for another FMSPC, garbage; a grace period is the policy\'s call', () => {
  refuses(q4({ now: new Date('2026-12-01T00:00:00Z') }), 'TEE_COLLATERAL_EXPIRED');
  refuses(q4({ now: new Date('2023-08-01T00:00:00Z') }), 'TEE_COLLATERAL_EXPIRED', /PCK CRL/);
  assert.equal(verifyTdxQuote(q4({ now: new Date('2023-08-01T00:00:00Z'), policy: { allowDebug: true, collateralGraceSeconds: 40 * 86_400 } })).tcb.status, 'UpToDate');
  refuses(q4({ now: new Date('2023-06-01T00:00:00Z') }), 'TEE_COLLATERAL_EXPIRED', /issued/);
  const c = sprV4Collateral();
  for (const k of ['rootCrl', 'pckCrl', 'tcbInfo', 'qeIdentity'] as const) {
    const partial = { ...c };
    delete partial[k];
    refuses(q4({ collateral: partial }), 'TEE_COLLATERAL_MISSING');
  }
  refuses(q4({ collateral: { ...c, tcbInfoIssuerChain: [] } }), 'TEE_COLLATERAL_MISSING');
  // quote-6's TCB info is genuine Intel collateral, for FMSPC 00A06D080000.
  refuses(q4({ collateral: { ...c, tcbInfo: readFileSync(fixture('tdx', 'quote-6', 'tcb-info.json')) } }), 'TEE_FMSPC_MISMATCH', /00a06d080000/);
  refuses(q4({ collateral: { ...c, tcbInfo: Buffer.from('{"tcbInfo":{}}') } }), 'TEE_COLLATERAL_INVALID');
  refuses(q4({ collateral: { ...c, pckCrl: Buffer.from('not a crl') } }), 'TEE_COLLATERAL_INVALID');
  refuses(q4({ collateral: { ...c, pckCrl: flip(c.pckCrl!, c.pckCrl!.length - 3) } }), 'TEE_COLLATERAL_INVALID', /signature/);
  // The root CRL in place of the PCK CRL: signed by the root, not by the PCK CA.
  refuses(q4({ collateral: { ...c, pckCrl: c.rootCrl! } }), 'TEE_COLLATERAL_INVALID', /signature/);
});

test('TCB status and TD policy: accepted statuses, MRTD, RTMRs, MRCONFIGID, MROWNER, report data', () => {
  refuses(q4({ policy: { allowDebug: true, tcbStatuses: ['SWHardeningNeeded'] } }), 'TEE_TCB_STATUS_REFUSED', /UpToDate/);
  const v = verifyTdxQuote(q4());
  assert.ok(verifyTdxQuote(q4({ policy: { allowDebug: true, mrtd: [v.mrTd], rtmr: [[v.rtmr[0]!], null, null, [v.rtmr[3]!]] } })));
  refuses(q4({ policy: { allowDebug: true, mrtd: ['00'.repeat(48)] } }), 'MEASUREMENT_MISMATCH', /MRTD/);
  refuses(q4({ policy: { allowDebug: true, rtmr: [null, ['00'.repeat(48)]] } }), 'MEASUREMENT_MISMATCH', /RTMR1/);
  refuses(q4({ policy: { allowDebug: true, mrConfigId: ['11'.repeat(48)] } }), 'TEE_POLICY_REFUSED', /MRCONFIGID/);
  refuses(q4({ policy: { allowDebug: true, mrOwner: ['11'.repeat(48)] } }), 'TEE_POLICY_REFUSED', /MROWNER/);
  refuses(q4({ expectedReportData: flip(Buffer.from(v.reportData, 'hex'), 0) }), 'TEE_REPORT_DATA_MISMATCH');
  assert.ok(verifyTdxQuote(q4({ expectedReportData: Buffer.from(v.reportData, 'hex') })));
});

test('truncated and oversized quotes are refused', () => {
  const q = tdxQuote('quote-4');
  for (const len of [0, 10, TDX_HEADER_SIZE, TDX_HEADER_SIZE + 584, sigDataStart + 100, sigDataStart + 128 + 6 + 200, q.length - 1]) {
    refuses(q4({ quote: q.subarray(0, len) }), 'TEE_EVIDENCE_MALFORMED');
  }
  refuses(q4({ quote: Buffer.concat([q, Buffer.alloc(70 * 1024)]) }), 'TEE_EVIDENCE_MALFORMED', /larger/);
  const badLen = Buffer.from(q);
  badLen.writeUInt32LE(0xffffffff, TDX_HEADER_SIZE + 584);
  refuses(q4({ quote: badLen }), 'TEE_EVIDENCE_MALFORMED');
  // Hex text of a truncated quote: classified as a quote, refused by the parser.
  const loaded = loadEvidenceBytes(Buffer.from(q.toString('hex').slice(0, 200), 'latin1'));
  assert.equal(loaded.format, 'tdx-quote');
  refuses(q4({ quote: loaded.bytes }), 'TEE_EVIDENCE_MALFORMED');
});

// ---- forged Intel PKI: another root, a revoked PCK ---------------------------------------------------------

/** quote-4 with its PCK chain replaced by `chainPem` and the QE report re-signed by `pckKey`. */
function withPckChain(quote: Buffer, chainPem: string, pckKey: KeyObject): Buffer {
  const qeReportAt = sigDataStart + 128 + 6;
  const qeReport = quote.subarray(qeReportAt, qeReportAt + 384);
  const qeSig = sign('sha256', qeReport, { key: pckKey, dsaEncoding: 'ieee-p1363' });
  const authLen = quote.readUInt16LE(qeReportAt + 448);
  const auth = quote.subarray(qeReportAt + 450, qeReportAt + 450 + authLen);
  const pem = Buffer.from(chainPem, 'latin1');
  const inner = Buffer.concat([u16(5), u32(pem.length), pem]);
  const cert = Buffer.concat([qeReport, qeSig, u16(authLen), auth, inner]);
  const sigData = Buffer.concat([quote.subarray(sigDataStart, sigDataStart + 128), u16(6), u32(cert.length), cert]);
  return Buffer.concat([quote.subarray(0, sigDataStart - 4), u32(sigData.length), sigData]);
}
const u16 = (n: number) => { const b = Buffer.alloc(2); b.writeUInt16LE(n); return b; };
const u32 = (n: number) => { const b = Buffer.alloc(4); b.writeUInt32LE(n); return b; };

function forgedIntel() {
  const realPck = parsePemBundle(parseTdxQuote(tdxQuote('quote-4')).pckChainPem, 'pck')[0]!;
  const sgxExt = certificateExtensions(realPck.raw).get('1.2.840.113741.1.13.1')!;
  const INTEL = '/O=Intel Corporation/L=Santa Clara/ST=CA/C=US';
  const chain = forgeChain({
    curve: 'P-256', rootSubject: `/CN=Intel SGX Root CA${INTEL}`, intermediateSubject: `/CN=Intel SGX PCK Platform CA${INTEL}`,
    leafSubject: `/CN=Intel SGX PCK Certificate${INTEL}`, leafExtensions: [`1.2.840.113741.1.13.1 = DER:${sgxExt.toString('hex')}`],
  });
  const pem = [chain.leaf, chain.intermediate, chain.root].map((c) => c.toString()).join('');
  return { chain, quote: withPckChain(tdxQuote('quote-4'), pem, chain.leafKey) };
}

test('a PCK chain to another root ("Intel SGX Root CA" made by an attacker) is refused', () => {
  const f = forgedIntel();
  const now = new Date(Date.now() + 3_600_000);
  refuses(q4({ quote: f.quote, now }), 'TEE_UNTRUSTED_ROOT');
  // The splice itself is sound: with the forged root as anchor, the signatures verify.
  assert.equal(verifyTdxQuoteSignatures(f.quote, now, f.chain.root).pckExt.fmspc, '50806f000000');
});

test('a revoked PCK (PCK CRL) or a revoked PCK CA (root CRL) is refused', () => {
  const f = forgedIntel();
  const now = new Date(Date.now() + 3_600_000);
  const later = new Date(now.getTime() + 30 * 86_400_000);
  const rootCrl = forgeCrl(f.chain.root, f.chain.rootKey, [], new Date(now.getTime() - 60_000), later);
  const pckCrlRevoking = forgeCrl(f.chain.intermediate, f.chain.intermediateKey, ['1234', f.chain.leafSerialHex], new Date(now.getTime() - 60_000), later);
  const pckCrlClean = forgeCrl(f.chain.intermediate, f.chain.intermediateKey, ['1234'], new Date(now.getTime() - 60_000), later);
  const base = { quote: f.quote, now, root: f.chain.root, policy: { allowDebug: true } };
  refuses({ ...base, collateral: { rootCrl, pckCrl: pckCrlRevoking } }, 'TEE_PCK_REVOKED', /PCK certificate/);
  const rootCrlRevokingCa = forgeCrl(f.chain.root, f.chain.rootKey, ['02'], new Date(now.getTime() - 60_000), later);
  refuses({ ...base, collateral: { rootCrl: rootCrlRevokingCa, pckCrl: pckCrlClean } }, 'TEE_PCK_REVOKED', /PCK Platform CA/);
  // Not revoked: revocation passes and verification goes on to the TCB info, which this test does not supply.
  refuses({ ...base, collateral: { rootCrl, pckCrl: pckCrlClean } }, 'TEE_COLLATERAL_MISSING', /TCB info/);
});
