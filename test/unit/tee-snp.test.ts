import { test } from 'node:test';
import assert from 'node:assert/strict';
import { sign, type KeyObject, type X509Certificate } from 'node:crypto';
import { verifySnpReport, type SnpVerifyInput } from '../../src/attestation/snp/verify.ts';
import { parseSnpReport, SNP_REPORT_SIZE } from '../../src/attestation/snp/report.ts';
import { pinnedArks } from '../../src/attestation/snp/roots.ts';
import { verifyTeeEvidence } from '../../src/attestation/verify-evidence.ts';
import { loadEvidenceBytes, unwrapAzureHcl } from '../../src/attestation/evidence-file.ts';
import { isCdbpError, type ErrorCode } from '../../src/kernel/errors.ts';
import { flip, snpVector, snpVectors } from '../support/tee-vectors.ts';
import { forgeChain } from '../support/tee-forge.ts';
import { readFileSync } from 'node:fs';
import { fixture } from '../support/tee-vectors.ts';

const allowDebug = { allowDebug: true };

function refuses(input: SnpVerifyInput, code: ErrorCode, pattern?: RegExp): void {
  assert.throws(() => verifySnpReport(input), (e: unknown) => {
    assert.ok(isCdbpError(e), `not a CdbpError: ${String(e)}`);
    assert.equal(e.code, code, e.message);
    if (pattern) assert.match(e.message, pattern);
    return true;
  });
}

const input = (name: string, over: Partial<SnpVerifyInput> = {}): SnpVerifyInput => {
  const v = snpVector(name);
  return { report: v.evidence.bytes, certs: v.certs, now: v.at, ...over };
};

test('every real SEV-SNP vector verifies inside its validity window (VCEK and VLEK, Milan and Genoa, v2 and v3, bare and Azure)', () => {
  const seen = new Set<string>();
  for (const v of snpVectors()) {
    const r = verifySnpReport({ report: v.evidence.bytes, certs: v.certs, now: v.at, policy: allowDebug });
    assert.equal(r.tee, 'sev-snp');
    assert.match(r.measurement, /^[0-9a-f]{96}$/);
    seen.add(`${r.product}/${r.signer}/v${r.reportVersion}`);
  }
  assert.deepEqual([...seen].sort(), ['Genoa/VCEK/v3', 'Milan/VCEK/v2', 'Milan/VLEK/v3']);
  const vlek = verifySnpReport(input('milan-vlek'));
  assert.equal(vlek.signer, 'VLEK');
  assert.equal(vlek.vmpl, 1);
  assert.equal(vlek.chain, 'VLEK ← SEV-VLEK-Milan ← ARK-Milan');
});

test('the pinned ARKs are the three AMD roots, and a supplied ARK must be the pinned one byte for byte', () => {
  assert.deepEqual([...pinnedArks().keys()], ['Milan', 'Genoa', 'Turin']);
});

test('debug-enabled guest (snp/milan-vcek, policy 0xb0000) is refused under the production default, accepted only if the policy allows debug', () => {
  refuses(input('milan-vcek'), 'TEE_DEBUG_REFUSED', /bit 19/);
  assert.equal(verifySnpReport(input('milan-vcek', { policy: allowDebug })).debug, true);
});

test('a VLEK outside its one-year validity is refused; the VCEKs are refused before their notBefore', () => {
  refuses(input('milan-vlek', { now: new Date('2026-06-01T00:00:00Z') }), 'TEE_CERT_EXPIRED');
  refuses(input('milan-vcek-2', { now: new Date('2019-01-01T00:00:00Z') }), 'TEE_CERT_EXPIRED');
});

test('a flipped bit in the signed body or in the signature is refused', () => {
  const r = snpVector('milan-vcek-2').evidence.bytes;
  for (const offset of [0x04, 0x30 + 3, 0x50, 0x90 + 10, 0xc0, 0x180 + 6, 0x1a0, 0x29f]) {
    refuses(input('milan-vcek-2', { report: flip(r, offset, 1) }), 'TEE_SIGNATURE_INVALID');
  }
  refuses(input('milan-vcek-2', { report: flip(r, 0x2a0) }), 'TEE_SIGNATURE_INVALID');
  refuses(input('milan-vcek-2', { report: flip(r, 0x2a0 + 72 + 20) }), 'TEE_SIGNATURE_INVALID');
  // The unused high bytes of r must be zero: a "valid" signature with junk there is still refused.
  refuses(input('milan-vcek-2', { report: flip(r, 0x2a0 + 60) }), 'TEE_SIGNATURE_INVALID');
});

test('a flipped bit in each certificate (VCEK, ASK, supplied ARK) is refused', async () => {
  const { X509Certificate } = await import('node:crypto');
  const v = snpVector('milan-vcek-2');
  const [vcek, ask, ark] = v.certs as [X509Certificate, X509Certificate, X509Certificate];
  const flipped = (c: X509Certificate, offset: number) => {
    try {
      return new X509Certificate(flip(c.raw, offset, 2));
    } catch {
      return undefined;
    }
  };
  let tried = 0;
  for (const [name, idx] of [['VCEK', 0], ['ASK', 1], ['ARK', 2]] as const) {
    const cert = [vcek, ask, ark][idx]!;
    // One bit in the signature value (end of the DER) and one in the TBS (past the header, inside the names).
    for (const offset of [cert.raw.length - 5, cert.raw.length - 40, 200, 160]) {
      const bad = flipped(cert, offset);
      if (!bad) continue; // not even parseable: nothing could be verified with it
      tried++;
      const certs = [vcek, ask, ark].map((c, i) => (i === idx ? bad : c));
      assert.throws(() => verifySnpReport({ report: v.evidence.bytes, certs, now: v.at }), (e: unknown) => {
        assert.ok(isCdbpError(e));
        assert.ok(['TEE_CERT_CHAIN_INVALID', 'TEE_UNTRUSTED_ROOT', 'TEE_COLLATERAL_MISSING', 'TEE_SIGNATURE_INVALID'].includes(e.code), `${name}@${offset}: ${e.code} ${e.message}`);
        return true;
      }, `${name} with bit flipped at ${offset} was accepted`);
    }
  }
  assert.ok(tried >= 5, `only ${tried} flipped certificates were parseable`);
});

/** The milan-vcek-2 report re-signed by a forged VCEK whose chain ends at a forged "ARK-Milan". */
function forgedMilan(tcb: { bl: number; snp: number; ucode: number }, chipId?: Buffer) {
  const report = parseSnpReport(snpVector('milan-vcek-2').evidence.bytes);
  const AMD = '/OU=Engineering/C=US/L=Santa Clara/ST=CA/O=Advanced Micro Devices';
  const hex2 = (n: number) => n.toString(16).padStart(2, '0');
  const int = (n: number) => `DER:02${n < 0x80 ? '01' + hex2(n) : '0200' + hex2(n)}`;
  const chain = forgeChain({
    curve: 'P-384', rootSubject: `${AMD}/CN=ARK-Milan`, intermediateSubject: `${AMD}/CN=SEV-Milan`, leafSubject: `${AMD}/CN=SEV-VCEK`,
    leafExtensions: [
      `1.3.6.1.4.1.3704.1.3.1 = ${int(tcb.bl)}`, '1.3.6.1.4.1.3704.1.3.2 = DER:020100',
      `1.3.6.1.4.1.3704.1.3.3 = ${int(tcb.snp)}`, `1.3.6.1.4.1.3704.1.3.8 = ${int(tcb.ucode)}`,
      `1.3.6.1.4.1.3704.1.4 = DER:${(chipId ?? report.chipId).toString('hex')}`,
    ],
  });
  const signed = resignSnp(snpVector('milan-vcek-2').evidence.bytes, chain.leafKey);
  return { chain, signed };
}

function resignSnp(report: Buffer, key: KeyObject): Buffer {
  const out = Buffer.from(report);
  const rs = sign('sha384', out.subarray(0, 0x2a0), { key, dsaEncoding: 'ieee-p1363' });
  out.fill(0, 0x2a0);
  Buffer.from(rs.subarray(0, 48)).reverse().copy(out, 0x2a0);
  Buffer.from(rs.subarray(48)).reverse().copy(out, 0x2a0 + 72);
  return out;
}

test('a chain to another root (an attacker-made "ARK-Milan") is refused, with or without the forged ARK supplied', () => {
  const { chain, signed } = forgedMilan({ bl: 3, snp: 8, ucode: 115 });
  const now = new Date(Date.now() + 3_600_000); // the forged certificates start "now"
  refuses({ report: signed, certs: [chain.leaf, chain.intermediate, chain.root], now }, 'TEE_UNTRUSTED_ROOT');
  refuses({ report: signed, certs: [chain.leaf, chain.intermediate], now }, 'TEE_CERT_CHAIN_INVALID', /signature by ARK-Milan|does not verify/);
  // The same forged chain, trusted (as if it were AMD's), verifies: the refusals above are about the root only.
  const arks = new Map([['Milan' as const, chain.root]]);
  assert.equal(verifySnpReport({ report: signed, certs: [chain.leaf, chain.intermediate], now, arks }).signer, 'VCEK');
});

test('a VCEK whose TCB or chip id does not match the report is refused (TEE_TCB_MISMATCH)', () => {
  const now = new Date(Date.now() + 3_600_000); // the forged certificates start "now"
  const wrongTcb = forgedMilan({ bl: 2, snp: 8, ucode: 115 });
  refuses({ report: wrongTcb.signed, certs: [wrongTcb.chain.leaf, wrongTcb.chain.intermediate], now, arks: new Map([['Milan', wrongTcb.chain.root]]) },
    'TEE_TCB_MISMATCH', /bootloader SPL 2.*says 3/);
  const wrongChip = forgedMilan({ bl: 3, snp: 8, ucode: 115 }, Buffer.alloc(64, 7));
  refuses({ report: wrongChip.signed, certs: [wrongChip.chain.leaf, wrongChip.chain.intermediate], now, arks: new Map([['Milan', wrongChip.chain.root]]) },
    'TEE_TCB_MISMATCH', /another chip/);
});

test('a VCEK of another report is refused; a missing VCEK or ASK is named', () => {
  const other = snpVector('milan-vcek');
  refuses(input('milan-vcek-2', { certs: [...other.certs] }), 'TEE_SIGNATURE_INVALID');
  refuses(input('milan-vcek-2', { certs: snpVector('milan-vcek-2').certs.slice(1) }), 'TEE_COLLATERAL_MISSING', /VCEK/);
  refuses(input('milan-vcek-2', { certs: snpVector('milan-vcek-2').certs.slice(0, 1) }), 'TEE_COLLATERAL_MISSING', /SEV-Milan/);
  // A Genoa chain under a Milan VCEK is not a chain.
  refuses(input('milan-vcek-2', { certs: [snpVector('milan-vcek-2').certs[0]!, ...snpVector('genoa-azure').certs.slice(1)] }), 'TEE_COLLATERAL_MISSING');
});

test('policy: VMPL, signer, minimum TCB, measurement, HOST_DATA, migration agent', () => {
  refuses(input('milan-vlek', { policy: { vmpls: [0] } }), 'TEE_POLICY_REFUSED', /VMPL 1/);
  assert.equal(verifySnpReport(input('milan-vlek', { policy: { vmpls: [1] } })).vmpl, 1);
  refuses(input('milan-vlek', { policy: { signers: ['VCEK'] } }), 'TEE_POLICY_REFUSED', /VLEK/);
  refuses(input('milan-vcek-2', { policy: { minTcb: { bootloader: 4 } } }), 'TEE_TCB_STATUS_REFUSED', /bootloader 3/);
  refuses(input('milan-vcek-2', { policy: { minTcb: { microcode: 116 } } }), 'TEE_TCB_STATUS_REFUSED');
  assert.ok(verifySnpReport(input('milan-vcek-2', { policy: { minTcb: { bootloader: 3, snp: 8, microcode: 115 } } })));
  const m = verifySnpReport(input('milan-vcek-2')).measurement;
  assert.equal(verifySnpReport(input('milan-vcek-2', { policy: { measurements: [m] } })).measurement, m);
  refuses(input('milan-vcek-2', { policy: { measurements: ['00'.repeat(48)] } }), 'MEASUREMENT_MISMATCH');
  refuses(input('milan-vcek-2', { policy: { measurements: [] } }), 'MEASUREMENT_MISMATCH');
  refuses(input('milan-vcek-2', { policy: { hostData: ['11'.repeat(32)] } }), 'TEE_POLICY_REFUSED', /HOST_DATA/);
  refuses(input('milan-vcek-2', { policy: { idKeyDigests: ['11'.repeat(48)] } }), 'TEE_POLICY_REFUSED', /ID key/);
});

test('report data must bind the expected nonce and keys', () => {
  const v = verifySnpReport(input('milan-vcek-2'));
  assert.ok(verifySnpReport(input('milan-vcek-2', { expectedReportData: Buffer.from(v.reportData, 'hex') })));
  refuses(input('milan-vcek-2', { expectedReportData: flip(Buffer.from(v.reportData, 'hex'), 63) }), 'TEE_REPORT_DATA_MISMATCH');
});

test('truncated and oversized reports are refused before anything else', () => {
  const r = snpVector('milan-vcek-2').evidence.bytes;
  for (const len of [0, 4, 0x29f, SNP_REPORT_SIZE - 1]) refuses(input('milan-vcek-2', { report: r.subarray(0, len) }), 'TEE_EVIDENCE_MALFORMED');
  refuses(input('milan-vcek-2', { report: Buffer.concat([r, Buffer.alloc(1)]) }), 'TEE_EVIDENCE_MALFORMED');
  const v9 = Buffer.from(r);
  v9.writeUInt32LE(9, 0);
  refuses(input('milan-vcek-2', { report: v9 }), 'TEE_EVIDENCE_MALFORMED', /version 9/);
  assert.throws(() => loadEvidenceBytes(Buffer.alloc(3000, 1)), (e: unknown) => isCdbpError(e, 'TEE_EVIDENCE_MALFORMED'));
  assert.throws(() => loadEvidenceBytes(Buffer.alloc(2 * 1024 * 1024)), (e: unknown) => isCdbpError(e, 'TEE_EVIDENCE_MALFORMED'));
});

test('Azure HCL report: the SNP report inside binds the HCL runtime data; tampered runtime data is refused', () => {
  const hcl = readFileSync(fixture('snp', 'genoa-azure', 'hcl-report.bin'));
  const { runtimeData } = unwrapAzureHcl(hcl);
  assert.match(runtimeData.toString('utf8'), /HCLAkPub/);
  assert.throws(() => unwrapAzureHcl(flip(hcl, 0x4d4 + 40)), (e: unknown) => isCdbpError(e, 'TEE_REPORT_DATA_MISMATCH'));
  assert.throws(() => unwrapAzureHcl(hcl.subarray(0, 0x4c0)), (e: unknown) => isCdbpError(e, 'TEE_EVIDENCE_MALFORMED'));
  const v = snpVector('genoa-azure');
  const verdict = verifyTeeEvidence({ evidence: v.evidence, certs: v.certs, now: v.at });
  assert.equal(verdict.tee, 'sev-snp');
  assert.match(verdict.format, /Azure HCL/);
});
