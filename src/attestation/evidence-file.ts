/**
 * Evidence as files: what `cdbp verify --evidence FILE [--certs PATH] [--collateral DIR]` reads, and the
 * format detection the CAS uses on a report's bytes. FILE is a raw SEV-SNP report, an Azure HCL report
 * (SNP inside), or a TDX quote — binary or hex text — or the project's evidence envelope (JSON
 * `{mode, report: base64, certs?: [base64 DER]}`). The collateral directory layout is the fixture
 * folders' (docs/ATTESTATION.md "Collateral directory"):
 *
 *   tcb-info.json, qe-identity.json            Intel PCS bodies as served
 *   tcb-info-issuer-chain.pem, qe-identity-issuer-chain.pem, pck-crl-issuer-chain.pem
 *   pck-crl.der, root-crl.der                  DER, PEM or hex
 *   *.pem, *.der, *.cer, *.crt                 AMD certificates (VCEK/VLEK, ASK/ASVK, ARK)
 */
import { createHash, type X509Certificate } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { CdbpError } from '../kernel/errors.ts';
import { constantTimeEqual } from '../crypto/hash.ts';
import { parseCertificate, parsePemBundle } from './chain.ts';
import { SNP_REPORT_SIZE } from './snp/report.ts';
import { TDX_QUOTE_MAX_SIZE, TDX_TEE_TYPE } from './tdx/quote.ts';
import type { TdxCollateral } from './tdx/verify.ts';

export const EVIDENCE_FILE_MAX_SIZE = 1024 * 1024;

export type EvidenceFormat = 'snp-report' | 'azure-snp-hcl' | 'tdx-quote';

export interface LoadedEvidence {
  format: EvidenceFormat;
  /** The SNP report or TDX quote (for Azure: the SNP report inside the HCL report). */
  bytes: Buffer;
  /** Certificates that came with the evidence (the envelope's, or SNP's certificate table). */
  certs: X509Certificate[];
  /** Azure: the HCL runtime data (JSON text), bound by the SNP report's report data. */
  azureRuntimeData?: Buffer;
}

const HCL_MAGIC = Buffer.from('HCLA', 'latin1');
const HCL_SNP_OFFSET = 0x20;
const HCL_IGVM_OFFSET = 0x4c0;

/** Binary, or hex text of it (whitespace ignored). */
export function decodeMaybeHex(data: Buffer): Buffer {
  const text = data.toString('latin1').replace(/\s+/g, '');
  if (text.length > 0 && text.length % 2 === 0 && /^[0-9a-fA-F]+$/.test(text)) return Buffer.from(text, 'hex');
  return data;
}

/** Classifies raw evidence bytes. Anything else is TEE_EVIDENCE_MALFORMED. */
export function detectFormat(bytes: Buffer): EvidenceFormat {
  if (bytes.length >= 8 && bytes.subarray(0, 4).equals(HCL_MAGIC)) return 'azure-snp-hcl';
  if (bytes.length >= 8 && (bytes.readUInt16LE(0) === 4 || bytes.readUInt16LE(0) === 5) && bytes.readUInt32LE(4) === TDX_TEE_TYPE) return 'tdx-quote';
  if (bytes.length >= 4 && bytes.readUInt32LE(0) >= 2 && bytes.readUInt32LE(0) <= 5 && Math.abs(bytes.length - SNP_REPORT_SIZE) <= 64) return 'snp-report';
  throw new CdbpError('TEE_EVIDENCE_MALFORMED', `${bytes.length} bytes that are neither an SEV-SNP report, an Azure HCL report nor a TDX quote`);
}

/**
 * The SNP report inside an Azure HCL report, and the runtime data its report data binds
 * (report_data = SHA-256(runtime data) ‖ 0^32 for hash type 1). The vTPM quote over the nonce, by the
 * attestation key named in the runtime data, is not verified here (docs/ATTESTATION.md says what is bound).
 */
export function unwrapAzureHcl(hcl: Buffer): { report: Buffer; runtimeData: Buffer } {
  const bad = (why: string): never => { throw new CdbpError('TEE_EVIDENCE_MALFORMED', `Azure HCL report: ${why}`); };
  if (hcl.length < HCL_IGVM_OFFSET + 20) bad('truncated');
  const report = Buffer.from(hcl.subarray(HCL_SNP_OFFSET, HCL_SNP_OFFSET + SNP_REPORT_SIZE));
  const hashType = hcl.readUInt32LE(HCL_IGVM_OFFSET + 12);
  const varSize = hcl.readUInt32LE(HCL_IGVM_OFFSET + 16);
  const start = HCL_IGVM_OFFSET + 20;
  if (start + varSize > hcl.length) bad('runtime data runs past the end');
  if (hashType !== 1) bad(`runtime data hash type ${hashType} is not SHA-256 (1)`);
  const runtimeData = Buffer.from(hcl.subarray(start, start + varSize));
  const expected = Buffer.concat([createHash('sha256').update(runtimeData).digest(), Buffer.alloc(32)]);
  if (!constantTimeEqual(report.subarray(0x50, 0x90), expected)) {
    throw new CdbpError('TEE_REPORT_DATA_MISMATCH', 'Azure HCL report: the SNP report data does not bind the HCL runtime data');
  }
  return { report, runtimeData };
}

function readBounded(file: string, max: number, what: string): Buffer {
  let size: number;
  try {
    size = statSync(file).size;
  } catch (e) {
    throw new CdbpError('CONFIG_INVALID', `cannot read ${what} ${file}: ${(e as Error).message}`);
  }
  if (size > max) throw new CdbpError('TEE_EVIDENCE_MALFORMED', `${what} ${file} is ${size} bytes, more than any evidence (${max})`);
  return readFileSync(file);
}

/** Parses evidence bytes as they come (file contents or an envelope's report). */
export function loadEvidenceBytes(data: Buffer): LoadedEvidence {
  if (data.length > EVIDENCE_FILE_MAX_SIZE) throw new CdbpError('TEE_EVIDENCE_MALFORMED', `evidence of ${data.length} bytes is too large`);
  const text = data.subarray(0, 1).toString('latin1');
  if (text === '{') return loadEnvelope(data);
  const bytes = decodeMaybeHex(data);
  if (bytes.length > TDX_QUOTE_MAX_SIZE) throw new CdbpError('TEE_EVIDENCE_MALFORMED', `${bytes.length} bytes is larger than any report or quote`);
  const format = detectFormat(bytes);
  if (format === 'azure-snp-hcl') {
    const { report, runtimeData } = unwrapAzureHcl(bytes);
    return { format, bytes: report, certs: [], azureRuntimeData: runtimeData };
  }
  return { format, bytes, certs: [] };
}

function loadEnvelope(data: Buffer): LoadedEvidence {
  let doc: Record<string, unknown>;
  try {
    doc = JSON.parse(data.toString('utf8')) as Record<string, unknown>;
  } catch (e) {
    throw new CdbpError('TEE_EVIDENCE_MALFORMED', `evidence envelope is not JSON: ${(e as Error).message}`);
  }
  // The endpoint's /v1/attestation answer wraps the envelope as {evidence: {...}}.
  const env = (doc.evidence && typeof doc.evidence === 'object' ? doc.evidence : doc) as Record<string, unknown>;
  if (typeof env.report !== 'string') throw new CdbpError('TEE_EVIDENCE_MALFORMED', 'evidence envelope has no "report" (base64)');
  const inner = loadEvidenceBytes(Buffer.from(env.report, 'base64'));
  const certs = Array.isArray(env.certs)
    ? env.certs.map((c, i) => parseCertificate(Buffer.from(String(c), 'base64'), `envelope certificate #${i + 1}`)) : [];
  return { ...inner, certs: [...inner.certs, ...certs] };
}

export function loadEvidenceFile(file: string): LoadedEvidence {
  return loadEvidenceBytes(readBounded(file, EVIDENCE_FILE_MAX_SIZE, 'evidence file'));
}

const CERT_EXT = /\.(pem|der|cer|crt)$/i;
const NOT_CERTS = /(issuer-chain|crl)/i;

/** Certificates from a file (PEM bundle or DER) or from every certificate file in a directory. */
export function loadCertificates(p: string): X509Certificate[] {
  if (!existsSync(p)) throw new CdbpError('CONFIG_INVALID', `--certs ${p} does not exist`);
  const files = statSync(p).isDirectory()
    ? readdirSync(p).filter((f) => CERT_EXT.test(f) && !NOT_CERTS.test(f)).sort().map((f) => path.join(p, f)) : [p];
  return files.flatMap((f) => {
    const data = readBounded(f, 256 * 1024, 'certificate file');
    const text = data.toString('latin1');
    return text.includes('-----BEGIN CERTIFICATE-----') ? parsePemBundle(text, f) : [parseCertificate(data, f)];
  });
}

/** Intel collateral from a directory laid out like the fixture folders; absent files stay absent. */
export function loadTdxCollateral(dir: string): TdxCollateral {
  const opt = (f: string) => (existsSync(path.join(dir, f)) ? readBounded(path.join(dir, f), 1024 * 1024, 'collateral file') : undefined);
  const chain = (f: string) => {
    const b = opt(f);
    return b ? parsePemBundle(b.toString('latin1'), f) : undefined;
  };
  const out: TdxCollateral = {};
  const tcbInfo = opt('tcb-info.json');
  const qeIdentity = opt('qe-identity.json');
  const pckCrl = opt('pck-crl.der') ?? opt('pck-crl.pem');
  const rootCrl = opt('root-crl.der') ?? opt('root-crl.pem');
  const tcbChain = chain('tcb-info-issuer-chain.pem');
  const qeChain = chain('qe-identity-issuer-chain.pem');
  if (tcbInfo) out.tcbInfo = tcbInfo;
  if (qeIdentity) out.qeIdentity = qeIdentity;
  if (pckCrl) out.pckCrl = pckCrl;
  if (rootCrl) out.rootCrl = rootCrl;
  if (tcbChain) out.tcbInfoIssuerChain = tcbChain;
  if (qeChain) out.qeIdentityIssuerChain = qeChain;
  return out;
}
