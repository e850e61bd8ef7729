/**
 * The CAS's verifier for real TEE evidence (sev-snp, tdx): the evidence envelope's report is checked by
 * the same code as `cdbp verify --evidence` (verify-evidence.ts), against the pinned vendor roots, the
 * collateral the operator keeps in a directory, the time now, and the owner's appraisal policy.
 *
 * Collateral directory (CDBP_TEE_COLLATERAL_DIR, filled by `cdbp collateral` or by hand):
 *   snp/                     AMD certificates: ASK/ASVK + ARK per product, VCEKs/VLEKs if the guest sends none
 *   tdx/                     root-crl.der, qe-identity.json, *-issuer-chain.pem (shared by every platform)
 *   tdx/<fmspc>/             tcb-info.json, pck-crl.der (per platform; overrides tdx/)
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { CdbpError } from '../kernel/errors.ts';
import { constantTimeEqual } from '../crypto/hash.ts';
import type { X509Certificate } from 'node:crypto';
import { cn, parseCertificate } from './chain.ts';
import { loadCertificates, loadEvidenceBytes, loadTdxCollateral } from './evidence-file.ts';
import { parseTdxQuote } from './tdx/quote.ts';
import { readPckExtension } from './tdx/pck.ts';
import { parsePemBundle } from './chain.ts';
import type { TdxCollateral } from './tdx/verify.ts';
import { findCachedVcek } from './snp/kds.ts';
import { parseSnpReport, productFromCpuid } from './snp/report.ts';
import type { TeeAppraisalPolicy } from './tee-policy.ts';
import type { Evidence, EvidenceVerifier, TeeFacts } from './types.ts';
import { verifyTeeEvidence } from './verify-evidence.ts';

export class TeeEvidenceVerifier implements EvidenceVerifier {
  constructor(readonly mode: 'sev-snp' | 'tdx', private readonly collateralDir?: string, private readonly clock: () => Date = () => new Date()) {}

  async verify(evidence: Evidence, expectedReportData: Buffer, appraisal?: TeeAppraisalPolicy, context?: { policyHash?: string }):
    Promise<{ measurement: string; tee: TeeFacts }> {
    if (evidence.mode !== this.mode) throw new CdbpError('EVIDENCE_INVALID', `evidence is for ${String(evidence.mode)}, this verifier for ${this.mode}`);
    if (typeof evidence.report !== 'string' || evidence.report.length > 128 * 1024) throw new CdbpError('TEE_EVIDENCE_MALFORMED', 'report missing or too large');
    // Without a pinned measurement any VM image would pass: the policy must name one (validatePolicy
    // requires it for new policies; this covers policies stored before the field existed).
    if (this.mode === 'sev-snp' && !appraisal?.snp?.measurements?.length) {
      throw new CdbpError('ATTESTATION_REFUSED', 'the policy allows sev-snp but pins no launch measurement (tee.snp.measurements)');
    }
    if (this.mode === 'tdx' && !appraisal?.tdx?.mrtd?.length) {
      throw new CdbpError('ATTESTATION_REFUSED', 'the policy allows tdx but pins no MRTD (tee.tdx.mrtd)');
    }
    const loaded = loadEvidenceBytes(Buffer.from(evidence.report, 'base64'));
    const isTdx = loaded.format === 'tdx-quote';
    if (isTdx !== (this.mode === 'tdx')) throw new CdbpError('EVIDENCE_INVALID', `a ${loaded.format} is not ${this.mode} evidence`);
    const certs = [...loaded.certs, ...(evidence.certs ?? []).slice(0, 8).map((c, i) => parseCertificate(Buffer.from(String(c), 'base64'), `evidence certificate #${i + 1}`))];
    const dir = this.collateralDir;
    if (dir && !isTdx && existsSync(path.join(dir, 'snp'))) certs.push(...loadCertificates(path.join(dir, 'snp')));
    if (dir && (loaded.format === 'snp-report' || loaded.format === 'azure-snp-hcl')) certs.push(...TeeEvidenceVerifier.cachedVcekFor(dir, loaded.bytes, certs));
    const verdict = verifyTeeEvidence({
      evidence: loaded, certs, now: this.clock(), ...(appraisal ? { policy: appraisal } : {}), expectedReportData,
      ...(context?.policyHash ? { policyHash: context.policyHash } : {}),
      ...(isTdx ? { tdxCollateral: this.tdxCollateral(loaded.bytes) } : {}),
    });
    // The envelope's unsigned copies must agree with what was verified.
    if (evidence.measurement !== verdict.measurement || !constantTimeEqual(Buffer.from(String(evidence.reportData), 'hex'), expectedReportData)) {
      throw new CdbpError('EVIDENCE_INVALID', 'the evidence envelope disagrees with the signed report');
    }
    return {
      measurement: verdict.measurement,
      tee: { tcbStatus: verdict.tcbStatus, tcb: verdict.tee === 'tdx' ? verdict.tcbStatus : `snp-${(verdict.details as { reportedTcb: { raw: string } }).reportedTcb.raw}`, signer: verdict.signer, ...(verdict.collateralAgeSeconds !== undefined ? { collateralAgeSeconds: verdict.collateralAgeSeconds } : {}) },
    };
  }

  /**
   * A VCEK-signed report whose evidence brought no VCEK: the one for its chip and TCB from the cache
   * (snp/vcek/, filled by `cdbp collateral fetch --vcek-for`). A miss is refused with the KDS URL, unless
   * VCEKs sit in snp/ itself (the older flat layout), where the verifier picks the matching one.
   */
  private static cachedVcekFor(dir: string, reportBytes: Buffer, have: X509Certificate[]): X509Certificate[] {
    let report;
    try {
      report = parseSnpReport(reportBytes);
    } catch {
      return []; // the verifier reports the real problem
    }
    if (report.signingKey !== 0 || report.maskChipKey) return [];
    const vceks = have.filter((c) => cn(c) === 'SEV-VCEK');
    try {
      return loadCertificates(findCachedVcek(dir, report.chipId, report.reportedTcbRaw, productFromCpuid(report.cpuid)));
    } catch (e) {
      if (vceks.length > 0) return [];
      throw e;
    }
  }

  private tdxCollateral(quote: Buffer): TdxCollateral {
    const dir = this.collateralDir;
    if (!dir) return {};
    const base = existsSync(path.join(dir, 'tdx')) ? loadTdxCollateral(path.join(dir, 'tdx')) : {};
    let fmspc: string;
    try {
      fmspc = readPckExtension(parsePemBundle(parseTdxQuote(quote).pckChainPem, 'PCK chain')[0]!).fmspc;
    } catch {
      return base; // the verifier reports the real problem
    }
    const own = path.join(dir, 'tdx', fmspc);
    return existsSync(own) ? { ...base, ...loadTdxCollateral(own) } : base;
  }
}
