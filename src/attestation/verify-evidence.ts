/**
 * One entry for real TEE evidence: picks the verifier by the evidence's format and returns the facts
 * everyone shows (TEE type, measurement, TCB status, signer, collateral age). Used by `cdbp verify
 * --evidence` and meant for the CAS's attestation check; pure except nothing — the caller loads files.
 */
import type { X509Certificate } from 'node:crypto';
import type { LoadedEvidence } from './evidence-file.ts';
import { verifySnpReport, type SnpVerdict } from './snp/verify.ts';
import { azureVtpmNonce, parseAzureVtpmEvidence, verifyAzureSnpVtpm } from './azure/vtpm.ts';
import { verifyTdxQuote, type TdxCollateral, type TdxVerdict } from './tdx/verify.ts';
import type { TeeAppraisalPolicy } from './tee-policy.ts';

export interface TeeVerdict {
  tee: 'sev-snp' | 'tdx';
  format: string;
  /** SNP: MEASUREMENT; TDX: MRTD (both 48 bytes, hex). */
  measurement: string;
  /** SNP has no collateral-based status: "n/a (VCEK certifies the reported TCB)"; TDX: the evaluated status. */
  tcbStatus: string;
  signer: string;
  debug: boolean;
  reportData: string;
  collateralAgeSeconds?: number;
  details: SnpVerdict | TdxVerdict;
}

export interface VerifyEvidenceInput {
  evidence: LoadedEvidence;
  /** Extra certificates (--certs, the collateral directory's AMD certificates). */
  certs?: X509Certificate[];
  tdxCollateral?: TdxCollateral;
  now: Date;
  policy?: TeeAppraisalPolicy;
  expectedReportData?: Buffer;
  /** Hex SHA-256 of the signed policy being applied (the launch binding, policy-binding.ts). */
  policyHash?: string;
}

export function verifyTeeEvidence(i: VerifyEvidenceInput): TeeVerdict {
  if (i.evidence.format === 'tdx-quote') {
    const v = verifyTdxQuote({ quote: i.evidence.bytes, collateral: i.tdxCollateral ?? {}, now: i.now,
      ...(i.policy?.tdx ? { policy: i.policy.tdx } : {}), ...(i.expectedReportData ? { expectedReportData: i.expectedReportData } : {}),
      ...(i.policyHash ? { policyHash: i.policyHash } : {}) });
    return {
      tee: 'tdx', format: `TDX quote v${v.quoteVersion} (TDX ${v.tdxVersion})`, measurement: v.mrTd, tcbStatus: v.tcb.status,
      signer: `${v.chain} (FMSPC ${v.fmspc})`, debug: v.debug, reportData: v.reportData, collateralAgeSeconds: v.collateral.ageSeconds, details: v,
    };
  }
  if (i.evidence.format === 'azure-snp-vtpm') {
    const a = verifyAzureSnpVtpm({ evidence: parseAzureVtpmEvidence(i.evidence.bytes), certs: i.certs ?? [], now: i.now,
      ...(i.policy?.snp ? { policy: i.policy.snp } : {}), ...(i.expectedReportData ? { expectedNonce: azureVtpmNonce(i.expectedReportData) } : {}),
      ...(i.policyHash ? { policyHash: i.policyHash } : {}) });
    const v = a.snp;
    return {
      tee: 'sev-snp', format: `Azure SNP vTPM: SEV-SNP report v${v.reportVersion} → HCL runtime data → vTPM AK → TPM2 quote (nonce ${a.nonce})`,
      measurement: v.measurement, tcbStatus: `reported TCB ${v.reportedTcb.raw} certified by the ${v.signer}`,
      signer: `${v.chain} → HCLAkPub`, debug: v.debug, reportData: v.reportData, details: v,
    };
  }
  const v = verifySnpReport({ report: i.evidence.bytes, certs: [...i.evidence.certs, ...(i.certs ?? [])], now: i.now,
    ...(i.policy?.snp ? { policy: i.policy.snp } : {}), ...(i.expectedReportData ? { expectedReportData: i.expectedReportData } : {}),
    ...(i.policyHash ? { policyHash: i.policyHash } : {}) });
  return {
    tee: 'sev-snp',
    format: `SEV-SNP report v${v.reportVersion}${i.evidence.format === 'azure-snp-hcl' ? ' in an Azure HCL report' : ''}`,
    measurement: v.measurement, tcbStatus: `reported TCB ${v.reportedTcb.raw} certified by the ${v.signer}`,
    signer: `${v.chain}`, debug: v.debug, reportData: v.reportData, details: v,
  };
}
