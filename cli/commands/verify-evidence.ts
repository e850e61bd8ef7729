/**
 * `cdbp verify --evidence FILE`: verifies real TEE evidence offline, with the same verifiers the CAS
 * uses (src/attestation/verify-evidence.ts), and shows the facts it carries. Exit 0 only if it verifies.
 *
 *   --evidence FILE     SEV-SNP report, Azure HCL report or TDX quote (binary or hex), or an evidence envelope
 *   --certs PATH        VCEK/VLEK, ASK/ASVK(, ARK): a PEM bundle, a DER file or a directory of them
 *   --collateral DIR    tcb-info.json, qe-identity.json, *-issuer-chain.pem, pck-crl.der, root-crl.der, AMD certificates
 *   --at ISO-TIME       verify as of this time (default now): collateral and certificates have windows
 *   --policy FILE       appraisal policy {"snp": {...}, "tdx": {...}} (or a policy with a "tee" part);
 *                       without it the production default applies (debug refused)
 *   --report-data HEX   the 64 bytes the report data must equal (the nonce/key binding you expect)
 *   --policy-hash HEX   the signed policy's hash HOST_DATA / MRCONFIGID must carry when the policy says
 *                       bindPolicyHash (default: the hash of --policy when it is a whole or signed policy)
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { CdbpError, asCdbpError } from '../../src/kernel/errors.ts';
import { loadCertificates, loadEvidenceFile, loadTdxCollateral } from '../../src/attestation/evidence-file.ts';
import { validateTeeAppraisalPolicy, type TeeAppraisalPolicy } from '../../src/attestation/tee-policy.ts';
import { verifyTeeEvidence, type TeeVerdict } from '../../src/attestation/verify-evidence.ts';
import { policyHash as hashOfPolicy, validatePolicy } from '../../src/provisioning/policy.ts';

export interface EvidenceCheckOptions {
  evidence: string;
  certs?: string;
  collateral?: string;
  at?: string;
  policy?: string;
  reportData?: string;
  policyHash?: string;
}

export interface EvidenceCheckResult {
  verified: boolean;
  at: string;
  policy: 'production default' | string;
  /** The policy hash HOST_DATA / MRCONFIGID was checked against (when the policy requires the launch binding). */
  launchBinding?: string;
  verdict?: Omit<TeeVerdict, 'details'> & { details: unknown };
  error?: { code: string; message: string };
}

export function loadAppraisalPolicy(file: string): TeeAppraisalPolicy {
  return loadPolicyFile(file).tee;
}

/** The appraisal part of --policy FILE, and the policy's hash when FILE is a whole (or signed) policy. */
export function loadPolicyFile(file: string): { tee: TeeAppraisalPolicy; policyHash?: string } {
  let doc: Record<string, any>;
  try {
    doc = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new CdbpError('CONFIG_INVALID', `--policy ${file}: ${(e as Error).message}`);
  }
  // A signed policy ({policy: {tee}}), a policy ({tee}) or the appraisal part itself ({snp, tdx}).
  const tee = validateTeeAppraisalPolicy(doc?.policy?.tee ?? doc?.tee ?? doc, '--policy');
  const whole = doc?.format === 'cdbp-signed-policy/1' ? doc.policy : doc?.format === 'cdbp-policy/1' ? doc : undefined;
  return whole ? { tee, policyHash: hashOfPolicy(validatePolicy(whole)) } : { tee };
}

export function checkEvidenceFile(o: EvidenceCheckOptions): EvidenceCheckResult {
  const now = o.at ? new Date(o.at) : new Date();
  if (Number.isNaN(now.getTime())) throw new CdbpError('CONFIG_INVALID', `--at ${o.at} is not an ISO time`);
  const result: EvidenceCheckResult = { verified: false, at: now.toISOString(), policy: o.policy ?? 'production default' };
  try {
    const loadedPolicy = o.policy ? loadPolicyFile(o.policy) : { tee: {} };
    const policy = loadedPolicy.tee;
    if (o.policyHash !== undefined && !/^[0-9a-f]{64}$/.test(o.policyHash)) throw new CdbpError('CONFIG_INVALID', '--policy-hash must be a lowercase hex SHA-256');
    const policyHash = o.policyHash ?? loadedPolicy.policyHash;
    const evidence = loadEvidenceFile(o.evidence);
    if (o.collateral && !(existsSync(o.collateral) && statSync(o.collateral).isDirectory())) {
      throw new CdbpError('CONFIG_INVALID', `--collateral ${o.collateral} is not a directory`);
    }
    const certs = [...(o.certs ? loadCertificates(o.certs) : []), ...(o.collateral ? loadCertificates(o.collateral) : [])];
    let expectedReportData: Buffer | undefined;
    if (o.reportData !== undefined) {
      if (!/^[0-9a-fA-F]{128}$/.test(o.reportData)) throw new CdbpError('CONFIG_INVALID', '--report-data must be 64 bytes of hex');
      expectedReportData = Buffer.from(o.reportData, 'hex');
    }
    const verdict = verifyTeeEvidence({
      evidence, certs, now, policy, ...(o.collateral ? { tdxCollateral: loadTdxCollateral(o.collateral) } : {}),
      ...(expectedReportData ? { expectedReportData } : {}), ...(policyHash ? { policyHash } : {}),
    });
    result.verdict = verdict;
    result.verified = true;
    const bound = verdict.tee === 'tdx' ? policy.tdx?.bindPolicyHash : policy.snp?.bindPolicyHash;
    if (bound && policyHash) result.launchBinding = policyHash;
  } catch (e) {
    const err = asCdbpError(e);
    result.error = { code: err.code, message: err.message };
  }
  return result;
}

export function formatEvidenceVerdict(r: EvidenceCheckResult): string {
  const lines: string[] = [];
  const v = r.verdict;
  if (v) {
    const d = v.details as Record<string, any>;
    lines.push(`  TEE           ${v.tee} — ${v.format}`,
      `  measurement   ${v.measurement}${v.tee === 'tdx' ? ' (MRTD)' : ''}`,
      `  TCB status    ${v.tcbStatus}`,
      `  signer        ${v.signer}`,
      `  debug         ${v.debug ? 'ALLOWED (policy permits it)' : 'off'}`,
      `  report data   ${v.reportData}`);
    if (v.tee === 'sev-snp') lines.push(`  VMPL          ${d.vmpl}`, `  guest policy  ${d.guestPolicy}`, `  HOST_DATA     ${d.hostData}`);
    if (v.tee === 'tdx') {
      (d.rtmr as string[]).forEach((x, i) => lines.push(`  RTMR${i}         ${x}`));
      lines.push(`  MRCONFIGID    ${d.mrConfigId}`, `  MROWNER       ${d.mrOwner}`);
    }
    if (r.launchBinding) lines.push(`  launched for the policy ${r.launchBinding} (${v.tee === 'tdx' ? 'MRCONFIGID' : 'HOST_DATA'} binds its hash)`);
    if (v.collateralAgeSeconds !== undefined) lines.push(`  collateral    ${Math.round(v.collateralAgeSeconds / 3600)} h old at ${r.at}`);
  }
  lines.push(r.verified
    ? `VERIFIED at ${r.at} under the ${r.policy === 'production default' ? 'production default policy' : `policy ${r.policy}`}.`
    : `NOT VERIFIED at ${r.at}: ${r.error?.code}: ${r.error?.message}`);
  return lines.join('\n');
}
