/**
 * TDX quote verification, pure: quote bytes + collateral + `now` + the owner's appraisal policy → the
 * verified facts, or a CdbpError with one stable code per reason. The steps follow Intel's Quote
 * Verification Library:
 *
 *   1. parse (v4/v5, ECDSA P-256, TDX, lengths exact)                          TEE_EVIDENCE_MALFORMED
 *   2. PCK chain in the quote → the pinned Intel SGX Root CA, valid at `now`   TEE_CERT_CHAIN_INVALID / TEE_UNTRUSTED_ROOT / TEE_CERT_EXPIRED
 *   3. root CRL (signed by the root) and PCK CRL (signed by the PCK CA):
 *      in their window, neither the PCK CA nor the PCK is revoked              TEE_COLLATERAL_* / TEE_PCK_REVOKED
 *   4. QE report signed by the PCK key                                          TEE_SIGNATURE_INVALID
 *   5. QE report data = SHA-256(attestation key ‖ QE auth data) ‖ 0^32          TEE_QE_BINDING_INVALID
 *   6. quote signature by the attestation key over header ‖ body               TEE_SIGNATURE_INVALID
 *   7. TCB info and QE identity: signed by the TCB Signing chain, in window,
 *      for this FMSPC / PCE-ID; QE identity matches the QE report              TEE_COLLATERAL_* / TEE_FMSPC_MISMATCH / TEE_QE_IDENTITY_MISMATCH
 *   8. TCB level → status; the policy's accepted statuses                       TEE_TCB_STATUS_REFUSED
 *      TEE_TCB_SVN ≥ the policy's minimum, byte by byte                        TEE_TCB_STATUS_REFUSED
 *   9. TD attributes (debug), MRTD, RTMR0-3, MRCONFIGID, MROWNER              TEE_DEBUG_REFUSED / MEASUREMENT_MISMATCH / TEE_POLICY_REFUSED
 *      MRCONFIGID = the signed policy's hash when the policy requires it      TEE_POLICY_BINDING_MISMATCH
 *  10. report data = the expected binding                                       TEE_REPORT_DATA_MISMATCH
 */
import { createHash, type X509Certificate } from 'node:crypto';
import { CdbpError } from '../../kernel/errors.ts';
import { constantTimeEqual } from '../../crypto/hash.ts';
import { cn, parsePemBundle, verifyChainToPinnedRoot } from '../chain.ts';
import { checkCrl, parseCrl, serialHex } from '../crl.ts';
import { p256PublicKeyFromRaw, verifyP1363 } from '../ecdsa.ts';
import { allowedBy, DEFAULT_TDX_TCB_STATUSES, svnBelow, type TcbStatus, type TdxAppraisalPolicy } from '../tee-policy.ts';
import { checkLaunchBinding } from '../policy-binding.ts';
import { checkCollateralWindow, parseQeIdentity, parseTcbInfo, verifyCollateralSignature } from './collateral.ts';
import { readPckExtension, type PckExtension } from './pck.ts';
import { parseTdxQuote, type TdxQuote } from './quote.ts';
import { evaluateTdxTcb, type TcbEvaluation } from './tcb.ts';
import { pinnedIntelRoot } from './roots.ts';

/** What the CAS or `cdbp verify --collateral DIR` holds for the quote's platform (files as Intel serves them). */
export interface TdxCollateral {
  tcbInfo?: Buffer;
  tcbInfoIssuerChain?: X509Certificate[];
  qeIdentity?: Buffer;
  qeIdentityIssuerChain?: X509Certificate[];
  pckCrl?: Buffer;
  rootCrl?: Buffer;
}

export interface TdxVerifyInput {
  quote: Buffer;
  collateral: TdxCollateral;
  now: Date;
  policy?: TdxAppraisalPolicy;
  expectedReportData?: Buffer;
  /** Hex SHA-256 of the signed policy being applied: MRCONFIGID must carry it if the policy says `bindPolicyHash`. */
  policyHash?: string;
  /** The trust anchor; default the pinned Intel SGX Root CA. Only tests pass another one. */
  root?: X509Certificate;
}

export interface TdxVerdict {
  tee: 'tdx';
  quoteVersion: 4 | 5;
  tdxVersion: '1.0' | '1.5';
  /** "PCK ← Intel SGX PCK Platform CA ← Intel SGX Root CA" */
  chain: string;
  fmspc: string;
  mrTd: string;
  rtmr: string[];
  mrConfigId: string;
  mrOwner: string;
  mrOwnerConfig: string;
  mrSeam: string;
  teeTcbSvn: string;
  tdAttributes: string;
  debug: boolean;
  reportData: string;
  tcb: TcbEvaluation;
  collateral: { tcbInfoIssued: string; tcbInfoNextUpdate: string; qeIdentityIssued: string; qeIdentityNextUpdate: string;
    pckCrlNextUpdate?: string; rootCrlNextUpdate?: string; ageSeconds: number };
}

export function verifyTdxQuote(input: TdxVerifyInput): TdxVerdict {
  const policy = input.policy ?? {};
  const grace = policy.collateralGraceSeconds ?? 0;
  const root = input.root ?? pinnedIntelRoot();
  const { quote, pck, pckCa, pckExt } = verifyTdxQuoteSignatures(input.quote, input.now, root);

  // 3: revocation. Without CRLs nothing says the PCK (or its CA) was not revoked since it was issued.
  const c = input.collateral;
  if (!c.rootCrl) throw new CdbpError('TEE_COLLATERAL_MISSING', 'no root CRL (the Intel SGX Root CA\'s CRL) was supplied');
  if (!c.pckCrl) throw new CdbpError('TEE_COLLATERAL_MISSING', `no PCK CRL (issued by ${cn(pckCa)}) was supplied`);
  const rootCrl = parseCrl(c.rootCrl, 'root CRL');
  checkCrl(rootCrl, root, input.now, grace, 'root CRL');
  if (rootCrl.revoked.has(serialHex(pckCa))) throw new CdbpError('TEE_PCK_REVOKED', `${cn(pckCa)} (serial ${serialHex(pckCa)}) is revoked by the root CRL`);
  const pckCrl = parseCrl(c.pckCrl, 'PCK CRL');
  checkCrl(pckCrl, pckCa, input.now, grace, 'PCK CRL');
  if (pckCrl.revoked.has(serialHex(pck))) {
    throw new CdbpError('TEE_PCK_REVOKED', `the PCK certificate (serial ${serialHex(pck)}) is revoked by the PCK CRL`, { details: { serial: serialHex(pck) } });
  }

  // 7: collateral.
  if (!c.tcbInfo) throw new CdbpError('TEE_COLLATERAL_MISSING', `no TCB info for FMSPC ${pckExt.fmspc} was supplied`);
  if (!c.qeIdentity) throw new CdbpError('TEE_COLLATERAL_MISSING', 'no QE identity was supplied');
  const tcbInfo = parseTcbInfo(c.tcbInfo);
  verifyCollateralSignature(tcbInfo, c.tcbInfoIssuerChain ?? [], root, input.now, 'TCB info');
  if (tcbInfo.body.fmspc.toLowerCase() !== pckExt.fmspc) {
    throw new CdbpError('TEE_FMSPC_MISMATCH', `the TCB info is for FMSPC ${tcbInfo.body.fmspc.toLowerCase()}, the PCK certificate's platform is ${pckExt.fmspc}`,
      { details: { tcbInfo: tcbInfo.body.fmspc.toLowerCase(), pck: pckExt.fmspc } });
  }
  if (tcbInfo.body.pceId.toLowerCase() !== pckExt.pceId) {
    throw new CdbpError('TEE_FMSPC_MISMATCH', `the TCB info is for PCE-ID ${tcbInfo.body.pceId}, the PCK certificate's is ${pckExt.pceId}`);
  }
  const tcbWindow = checkCollateralWindow(tcbInfo.body.issueDate, tcbInfo.body.nextUpdate, input.now, grace, 'TCB info');
  const qeIdentity = parseQeIdentity(c.qeIdentity);
  verifyCollateralSignature(qeIdentity, c.qeIdentityIssuerChain ?? c.tcbInfoIssuerChain ?? [], root, input.now, 'QE identity');
  const qeWindow = checkCollateralWindow(qeIdentity.body.issueDate, qeIdentity.body.nextUpdate, input.now, grace, 'QE identity');

  // 8: status.
  const tcb = evaluateTdxTcb(tcbInfo.body, qeIdentity.body, pckExt.tcb, quote.body, quote.qeReport);
  const accepted: TcbStatus[] = policy.tcbStatuses ?? DEFAULT_TDX_TCB_STATUSES;
  if (tcb.status === 'Revoked' || !accepted.includes(tcb.status)) {
    throw new CdbpError('TEE_TCB_STATUS_REFUSED', `TCB status ${tcb.status} (platform ${tcb.platformStatus}, QE ${tcb.qeStatus}) is not accepted (policy: ${accepted.join(', ')})`,
      { details: { status: tcb.status, advisoryIds: tcb.advisoryIds } });
  }
  if (policy.minTeeTcbSvn !== undefined) {
    const i = svnBelow(quote.body.teeTcbSvn, policy.minTeeTcbSvn);
    if (i >= 0) {
      throw new CdbpError('TEE_TCB_STATUS_REFUSED',
        `TEE_TCB_SVN ${quote.body.teeTcbSvn.toString('hex')} is below the policy's minimum ${policy.minTeeTcbSvn} at byte ${i} (${quote.body.teeTcbSvn[i]} < ${Buffer.from(policy.minTeeTcbSvn, 'hex')[i]}); TCB status ${tcb.status}`,
        { details: { status: tcb.status, teeTcbSvn: quote.body.teeTcbSvn.toString('hex'), min: policy.minTeeTcbSvn, byte: i } });
    }
  }

  // 9-10: the TD itself.
  const b = quote.body;
  const debug = (b.tdAttributes[0]! & 1) === 1;
  if (debug && policy.allowDebug !== true) throw new CdbpError('TEE_DEBUG_REFUSED', 'the TD is a debug TD (TDATTRIBUTES.DEBUG): the host can read its memory');
  const mrTd = b.mrTd.toString('hex');
  if (!allowedBy(policy.mrtd, mrTd)) throw new CdbpError('MEASUREMENT_MISMATCH', `MRTD ${mrTd} is not one the policy allows`, { details: { mrTd } });
  const rtmr = b.rtmr.map((r) => r.toString('hex'));
  (policy.rtmr ?? []).forEach((allowed, i) => {
    if (allowed && !allowed.includes(rtmr[i]!)) throw new CdbpError('MEASUREMENT_MISMATCH', `RTMR${i} ${rtmr[i]} is not one the policy allows`);
  });
  const mrConfigId = b.mrConfigId.toString('hex');
  const mrOwner = b.mrOwner.toString('hex');
  if (!allowedBy(policy.mrConfigId, mrConfigId)) throw new CdbpError('TEE_POLICY_REFUSED', `MRCONFIGID ${mrConfigId} is not one the policy allows`);
  if (!allowedBy(policy.mrOwner, mrOwner)) throw new CdbpError('TEE_POLICY_REFUSED', `MROWNER ${mrOwner} is not one the policy allows`);
  if (policy.bindPolicyHash === true) checkLaunchBinding('MRCONFIGID', b.mrConfigId, input.policyHash);
  if (input.expectedReportData && !constantTimeEqual(b.reportData, input.expectedReportData)) {
    throw new CdbpError('TEE_REPORT_DATA_MISMATCH', 'the quote\'s report data does not bind this nonce and these keys');
  }
  const oldest = Math.min(tcbWindow.issued.getTime(), qeWindow.issued.getTime());
  return {
    tee: 'tdx', quoteVersion: quote.version, tdxVersion: quote.bodyType === 3 ? '1.5' : '1.0',
    chain: `PCK ← ${cn(pckCa)} ← ${cn(root)}`, fmspc: pckExt.fmspc, mrTd, rtmr, mrConfigId, mrOwner,
    mrOwnerConfig: b.mrOwnerConfig.toString('hex'), mrSeam: b.mrSeam.toString('hex'), teeTcbSvn: b.teeTcbSvn.toString('hex'),
    tdAttributes: b.tdAttributes.toString('hex'), debug, reportData: b.reportData.toString('hex'), tcb,
    collateral: {
      tcbInfoIssued: tcbWindow.issued.toISOString(), tcbInfoNextUpdate: tcbWindow.nextUpdate.toISOString(),
      qeIdentityIssued: qeWindow.issued.toISOString(), qeIdentityNextUpdate: qeWindow.nextUpdate.toISOString(),
      ...(pckCrl.nextUpdate ? { pckCrlNextUpdate: pckCrl.nextUpdate.toISOString() } : {}),
      ...(rootCrl.nextUpdate ? { rootCrlNextUpdate: rootCrl.nextUpdate.toISOString() } : {}),
      ageSeconds: Math.max(0, Math.round((input.now.getTime() - oldest) / 1000)),
    },
  };
}

/**
 * Steps 1, 2, 4-6: the quote is well-formed, its PCK chain reaches `root` at `now`, the PCK key signed
 * the QE report, the QE report binds the attestation key, and that key signed the TD report. Everything
 * except revocation and the TCB appraisal (which need collateral).
 */
export function verifyTdxQuoteSignatures(bytes: Buffer, now: Date, root: X509Certificate = pinnedIntelRoot()):
  { quote: TdxQuote; pck: X509Certificate; pckCa: X509Certificate; pckExt: PckExtension } {
  const quote = parseTdxQuote(bytes);
  const pem = parsePemBundle(quote.pckChainPem, 'PCK chain');
  if (pem.length < 2) throw new CdbpError('TEE_CERT_CHAIN_INVALID', `the quote's PCK chain has ${pem.length} certificate(s); expected PCK, PCK CA, root`);
  const [pck, pckCa] = pem as [X509Certificate, X509Certificate];
  verifyChainToPinnedRoot(pem.map((c, i) => ({ cert: c, name: i === 0 ? 'PCK certificate' : cn(c) })), [root], now);
  const pckExt = readPckExtension(pck);
  if (!verifyP1363('sha256', quote.qeReport.raw, pck.publicKey, quote.qeReportSignature)) {
    throw new CdbpError('TEE_SIGNATURE_INVALID', 'the QE report signature does not verify with the PCK key');
  }
  const binding = createHash('sha256').update(quote.attestationKey).update(quote.qeAuthData).digest();
  if (!constantTimeEqual(quote.qeReport.reportData.subarray(0, 32), binding) || !quote.qeReport.reportData.subarray(32).every((b) => b === 0)) {
    throw new CdbpError('TEE_QE_BINDING_INVALID', 'the QE report does not bind this attestation key (report data ≠ SHA-256(key ‖ QE auth data))');
  }
  let akOk = false;
  try {
    akOk = verifyP1363('sha256', quote.signedBytes, p256PublicKeyFromRaw(quote.attestationKey), quote.signature);
  } catch {
    akOk = false;
  }
  if (!akOk) throw new CdbpError('TEE_SIGNATURE_INVALID', 'the quote signature does not verify with the attestation key');
  return { quote, pck, pckCa, pckExt };
}
