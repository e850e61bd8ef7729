/**
 * Azure confidential VMs with SEV-SNP expose attestation through a vTPM run by the paravisor (HCL):
 *   - the HCL report (TPM NV index 0x01400001) holds the SNP report, whose REPORT_DATA is SHA-256 of the
 *     HCL runtime data (a JSON with the vTPM's attestation key "HCLAkPub");
 *   - a TPM2 quote (TPMS_ATTEST, TPM 2.0 Library Part 2 §10.12) by that key carries the caller's nonce in
 *     extraData and the digest of the selected PCRs.
 * So the chain is: AMD root → VCEK → SNP report → runtime data → AK → quote → nonce and PCRs.
 * Evidence: trustee's az-snp-vtpm JSON `{ quote: { message, signature, pcrs }, report, vcek }` (byte arrays).
 */
import { createHash, createPublicKey, verify, type KeyObject, type X509Certificate } from 'node:crypto';
import { CdbpError } from '../../kernel/errors.ts';
import { constantTimeEqual } from '../../crypto/hash.ts';
import { parseCertificate } from '../chain.ts';
import { unwrapAzureHcl } from '../evidence-file.ts';
import { verifySnpReport, type SnpVerdict } from '../snp/verify.ts';
import type { SnpAppraisalPolicy } from '../tee-policy.ts';

const TPM_GENERATED_VALUE = 0xff544347;
const TPM_ST_ATTEST_QUOTE = 0x8018;
const TPM_ALG_SHA256 = 0x000b;

export interface TpmQuote {
  nonce: Buffer;
  pcrSelection: Array<{ hash: number; pcrs: number[] }>;
  pcrDigest: Buffer;
}

function bad(why: string): never {
  throw new CdbpError('TEE_EVIDENCE_MALFORMED', `TPM2 quote: ${why}`);
}

/** TPMS_ATTEST of a quote (big-endian, TPM2B = u16 size + bytes). */
export function parseTpmQuote(m: Buffer): TpmQuote {
  let o = 0;
  const need = (n: number) => { if (o + n > m.length) bad('truncated'); };
  const u16 = () => { need(2); const v = m.readUInt16BE(o); o += 2; return v; };
  const u32 = () => { need(4); const v = m.readUInt32BE(o); o += 4; return v; };
  const b2 = () => { const n = u16(); need(n); const v = m.subarray(o, o + n); o += n; return Buffer.from(v); };
  if (u32() !== TPM_GENERATED_VALUE) bad('magic is not TPM_GENERATED_VALUE');
  if (u16() !== TPM_ST_ATTEST_QUOTE) bad('type is not TPM_ST_ATTEST_QUOTE');
  b2(); // qualifiedSigner
  const nonce = b2();
  need(17 + 8);
  o += 17 + 8; // clockInfo, firmwareVersion
  const count = u32();
  if (count > 8) bad('too many PCR selections');
  const pcrSelection: TpmQuote['pcrSelection'] = [];
  for (let i = 0; i < count; i++) {
    const hash = u16();
    need(1);
    const size = m[o++]!;
    need(size);
    const sel = m.subarray(o, o + size);
    o += size;
    const pcrs: number[] = [];
    for (let p = 0; p < size * 8; p++) if (sel[p >> 3]! & (1 << (p & 7))) pcrs.push(p);
    pcrSelection.push({ hash, pcrs });
  }
  const pcrDigest = b2();
  if (o !== m.length) bad('trailing bytes');
  return { nonce, pcrSelection, pcrDigest };
}

export interface AzureVtpmEvidence {
  hclReport: Buffer;
  quote: { message: Buffer; signature: Buffer; pcrs: Buffer[] };
  certs: X509Certificate[];
}

export function parseAzureVtpmEvidence(json: Buffer): AzureVtpmEvidence {
  let d: any;
  try {
    d = JSON.parse(json.toString('utf8'));
  } catch (e) {
    return bad(`evidence is not JSON (${(e as Error).message})`);
  }
  const bytes = (v: unknown, what: string, max: number): Buffer => {
    if (!Array.isArray(v) || v.length > max || !v.every((x) => Number.isInteger(x) && x >= 0 && x <= 255)) bad(`${what} is not a byte array`);
    return Buffer.from(v as number[]);
  };
  if (!d?.quote || !Array.isArray(d.quote.pcrs) || d.quote.pcrs.length > 24) bad('quote.pcrs missing');
  return {
    hclReport: bytes(d.report, 'report', 16 * 1024),
    quote: { message: bytes(d.quote.message, 'quote.message', 4096), signature: bytes(d.quote.signature, 'quote.signature', 1024),
      pcrs: (d.quote.pcrs as unknown[]).map((p, i) => bytes(p, `pcrs[${i}]`, 64)) },
    certs: typeof d.vcek === 'string' ? [parseCertificate(d.vcek, 'evidence VCEK')] : [],
  };
}

export interface AzureVerdict {
  snp: SnpVerdict;
  nonce: string;
  pcrs: Record<number, string>;
}

export function verifyAzureSnpVtpm(i: { evidence: AzureVtpmEvidence; certs?: X509Certificate[]; now: Date; policy?: SnpAppraisalPolicy;
  expectedNonce?: Buffer; expectedPcrs?: Record<number, string>; policyHash?: string }): AzureVerdict {
  const { report, runtimeData } = unwrapAzureHcl(i.evidence.hclReport);
  const snp = verifySnpReport({ report, certs: [...i.evidence.certs, ...(i.certs ?? [])], now: i.now, ...(i.policy ? { policy: i.policy } : {}),
    ...(i.policyHash ? { policyHash: i.policyHash } : {}) });
  let ak: KeyObject;
  try {
    const rt = JSON.parse(runtimeData.toString('utf8')) as { keys?: Array<Record<string, unknown>> };
    const jwk = rt.keys?.find((k) => k.kid === 'HCLAkPub');
    if (!jwk) throw new Error('no HCLAkPub');
    ak = createPublicKey({ key: jwk as never, format: 'jwk' });
  } catch (e) {
    throw new CdbpError('TEE_EVIDENCE_MALFORMED', `HCL runtime data names no usable attestation key: ${(e as Error).message}`);
  }
  let ok = false;
  try {
    ok = verify('sha256', i.evidence.quote.message, ak, i.evidence.quote.signature);
  } catch {
    ok = false;
  }
  if (!ok) throw new CdbpError('TEE_SIGNATURE_INVALID', 'the TPM2 quote is not signed by the attestation key the SNP report binds');
  const q = parseTpmQuote(i.evidence.quote.message);
  const pcrs: Record<number, string> = {};
  const parts: Buffer[] = [];
  for (const s of q.pcrSelection) {
    if (s.hash !== TPM_ALG_SHA256) throw new CdbpError('TEE_EVIDENCE_MALFORMED', `PCR bank 0x${s.hash.toString(16)} is not SHA-256`);
    for (const p of s.pcrs) {
      const v = i.evidence.quote.pcrs[p];
      if (!v || v.length !== 32) throw new CdbpError('TEE_EVIDENCE_MALFORMED', `PCR ${p} value missing`);
      parts.push(v);
      pcrs[p] = v.toString('hex');
    }
  }
  if (!constantTimeEqual(createHash('sha256').update(Buffer.concat(parts)).digest(), q.pcrDigest)) {
    throw new CdbpError('TEE_SIGNATURE_INVALID', 'the PCR values do not match the digest the TPM signed');
  }
  for (const [p, want] of Object.entries(i.expectedPcrs ?? {})) {
    if (pcrs[Number(p)] !== want) throw new CdbpError('MEASUREMENT_MISMATCH', `PCR ${p} is ${pcrs[Number(p)] ?? 'not quoted'}, the policy expects ${want}`);
  }
  if (i.expectedNonce && !constantTimeEqual(q.nonce, i.expectedNonce)) {
    throw new CdbpError('TEE_REPORT_DATA_MISMATCH', 'the TPM2 quote does not carry this nonce');
  }
  return { snp, nonce: q.nonce.toString('hex'), pcrs };
}

/**
 * The TPM2 quote nonce that binds a report data. A TPM's qualifying data (TPM2B_DATA) holds at most one
 * digest of the largest hash it implements: 48 bytes on a SHA-384 vTPM such as Azure's, so the CAS's
 * 64-byte binding (a SHA-512 output, docs/ATTESTATION.md "Report data") goes in as its first 48 bytes,
 * still 384 bits of the hash. Shorter report data (`cdbp verify --report-data`) is compared as given.
 */
export const AZURE_VTPM_NONCE_BYTES = 48;
export function azureVtpmNonce(reportData: Buffer): Buffer {
  return reportData.length > AZURE_VTPM_NONCE_BYTES ? reportData.subarray(0, AZURE_VTPM_NONCE_BYTES) : reportData;
}
