/** The real SEV-SNP and TDX vectors in test/fixtures/tee (NOTICE there), loaded for the verifier tests. */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { X509Certificate } from 'node:crypto';
import { loadCertificates, loadTdxCollateral, loadEvidenceFile, type LoadedEvidence } from '../../src/attestation/evidence-file.ts';
import type { TdxCollateral } from '../../src/attestation/tdx/verify.ts';

export const TEE_FIXTURES = path.resolve(import.meta.dirname, '../fixtures/tee');
export const fixture = (...p: string[]) => path.join(TEE_FIXTURES, ...p);

export interface SnpVector {
  name: string;
  evidence: LoadedEvidence;
  certs: X509Certificate[];
  /** A time inside every certificate's validity. */
  at: Date;
}

const SNP: Array<[string, string, string[], string]> = [
  ['milan-vcek', 'report.bin', ['milan-vcek/vcek.der', 'milan-vcek/ask-ark.pem'], '2026-01-01T00:00:00Z'],
  ['milan-vcek-2', 'report.hex', ['milan-vcek-2/vcek.der', 'milan-vcek-2/ask-ark.pem'], '2026-01-01T00:00:00Z'],
  ['milan-vcek-3', 'report.bin', ['milan-vcek-3/vcek.der', 'milan-vcek/ask-ark.pem'], '2026-01-01T00:00:00Z'],
  ['milan-vlek', 'report.bin', ['milan-vlek/vlek.der', 'milan-vlek/asvk-ark.pem'], '2025-06-01T00:00:00Z'],
  ['genoa-azure', 'hcl-report.bin', ['genoa-azure/vcek.pem', 'genoa-azure/ask-ark.pem'], '2026-01-01T00:00:00Z'],
  ['milan-azure', 'hcl-report.bin', ['milan-azure/vcek-ask-ark.pem'], '2026-01-01T00:00:00Z'],
];

export function snpVectors(): SnpVector[] {
  return SNP.map(([name, file, certs, at]) => ({
    name, evidence: loadEvidenceFile(fixture('snp', name, file)),
    certs: certs.flatMap((c) => loadCertificates(fixture('snp', c))), at: new Date(at),
  }));
}

export function snpVector(name: string): SnpVector {
  return snpVectors().find((v) => v.name === name)!;
}

/** tdx/spr-v4's collateral: complete and valid at SPR_V4_AT (VECTORS.md). */
export const SPR_V4_AT = new Date('2023-07-01T00:00:00Z');
export function sprV4Collateral(): TdxCollateral {
  return loadTdxCollateral(fixture('tdx', 'spr-v4'));
}

export function tdxQuote(name: string): Buffer {
  return readFileSync(fixture('tdx', name, 'quote.dat'));
}

/** A copy with bit `bit` of byte `offset` flipped. */
export function flip(buf: Buffer, offset: number, bit = 0): Buffer {
  const out = Buffer.from(buf);
  out[offset] = out[offset]! ^ (1 << bit);
  return out;
}
