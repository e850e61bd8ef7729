/**
 * SEV-SNP report verification, pure: report bytes + the certificates that came with it (VCEK or VLEK,
 * ASK or ASVK, optionally the ARK) + `now` + the owner's appraisal policy → the verified facts, or a
 * CdbpError with one stable code per reason. Order matters: nothing from the report is trusted (or even
 * named in a policy refusal) before its signature chains to a pinned ARK.
 *
 *   1. parse (1184 bytes, version 2/3, signature algorithm ECDSA P-384)      TEE_EVIDENCE_MALFORMED
 *   2. the signing key the report names (VCEK or VLEK) is among the certs      TEE_COLLATERAL_MISSING
 *   3. leaf ← ASK/ASVK ← pinned ARK, RSA-PSS, valid at `now`                   TEE_CERT_CHAIN_INVALID / TEE_UNTRUSTED_ROOT / TEE_CERT_EXPIRED
 *   4. report signature by the leaf key                                         TEE_SIGNATURE_INVALID
 *   5. the leaf's TCB extensions = reported_tcb; VCEK hwID = chip_id            TEE_TCB_MISMATCH
 *   6. policy: debug, migration agent, VMPL, signer, minimum TCB                TEE_DEBUG_REFUSED / TEE_POLICY_REFUSED / TEE_TCB_STATUS_REFUSED
 *   7. measurement, HOST_DATA, ID key digest against the policy                 MEASUREMENT_MISMATCH / TEE_POLICY_REFUSED
 *      HOST_DATA = the signed policy's hash when the policy requires it       TEE_POLICY_BINDING_MISMATCH
 *   8. report data = the expected binding (nonce and keys)                      TEE_REPORT_DATA_MISMATCH
 */
import type { X509Certificate } from 'node:crypto';
import { CdbpError, type ErrorCode } from '../../kernel/errors.ts';
import { constantTimeEqual } from '../../crypto/hash.ts';
import { certificateExtensions, decodeSmallUint, derRead, TAG } from '../asn1.ts';
import { readDer } from '../../crypto/der.ts';
import { cn, verifyChainToPinnedRoot } from '../chain.ts';
import { snpSignaturePaddingIsZero, snpSignatureToP1363, verifyP1363 } from '../ecdsa.ts';
import { allowedBy, type SnpAppraisalPolicy } from '../tee-policy.ts';
import { checkLaunchBinding } from '../policy-binding.ts';
import { decodeSnpTcb, parseSnpReport, productFromCpuid, SNP_POLICY, SNP_SIG_ALGO_ECDSA_P384_SHA384,
  type SnpProduct, type SnpReport, type SnpTcb } from './report.ts';
import { pinnedArks } from './roots.ts';

/** AMD's VCEK/VLEK X.509 extensions (AMD "Versioned Chip Endorsement Key (VCEK) Certificate and KDS Interface Specification", pub. 57230). */
const OID = {
  productName: '1.3.6.1.4.1.3704.1.2',
  blSpl: '1.3.6.1.4.1.3704.1.3.1',
  teeSpl: '1.3.6.1.4.1.3704.1.3.2',
  snpSpl: '1.3.6.1.4.1.3704.1.3.3',
  ucodeSpl: '1.3.6.1.4.1.3704.1.3.8',
  fmcSpl: '1.3.6.1.4.1.3704.1.3.9',
  hwId: '1.3.6.1.4.1.3704.1.4',
} as const;

export type SnpSigner = 'VCEK' | 'VLEK';

export interface SnpVerifyInput {
  report: Buffer;
  /** Everything that came with the report: VCEK/VLEK, ASK/ASVK, ARK (optional: the pinned one is used). */
  certs: X509Certificate[];
  now: Date;
  policy?: SnpAppraisalPolicy;
  /** 64 bytes the report data must equal (the nonce/key binding); omitted only by `cdbp verify` on a bare file. */
  expectedReportData?: Buffer;
  /** Hex SHA-256 of the signed policy being applied: HOST_DATA must carry it if the policy says `bindPolicyHash`. */
  policyHash?: string;
  /** The trust anchors per product; default the pinned ARKs. Only tests pass others. */
  arks?: Map<SnpProduct, X509Certificate>;
}

export interface SnpVerdict {
  tee: 'sev-snp';
  reportVersion: number;
  product: SnpProduct;
  signer: SnpSigner;
  /** "VCEK ← SEV-Milan ← ARK-Milan" */
  chain: string;
  measurement: string;
  reportData: string;
  hostData: string;
  idKeyDigest: string;
  vmpl: number;
  guestPolicy: string;
  debug: boolean;
  migrationAgent: boolean;
  reportedTcb: SnpTcb;
  chipId: string;
  /** The leaf certificate's validity end (VLEKs are short-lived). */
  signerNotAfter: string;
}

export function verifySnpReport(input: SnpVerifyInput): SnpVerdict {
  const report = parseSnpReport(input.report);
  if (report.signatureAlgo !== SNP_SIG_ALGO_ECDSA_P384_SHA384) {
    throw new CdbpError('TEE_EVIDENCE_MALFORMED', `SEV-SNP signature algorithm ${report.signatureAlgo} is not ECDSA P-384/SHA-384`);
  }
  const signer: SnpSigner = report.signingKey === 0 ? 'VCEK' : report.signingKey === 1 ? 'VLEK'
    : fail('TEE_EVIDENCE_MALFORMED', `SEV-SNP report names signing key ${report.signingKey} (neither VCEK nor VLEK): it is unsigned`);

  // 2-3: the chain. The leaf is picked by the key the report names; its issuer decides the product.
  const candidates = input.certs.filter((c) => cn(c) === `SEV-${signer}`);
  if (candidates.length === 0) {
    fail('TEE_COLLATERAL_MISSING', `the report is signed by a ${signer}, and no ${signer} certificate was supplied (--certs, the evidence's certificate table, or the collateral directory)`);
  }
  // Several (a directory of VCEKs for many chips and TCBs): the one for this chip and TCB; if none is,
  // the first, so the refusal names the mismatch.
  const leaf = candidates.find((c) => leafFits(c, signer, report)) ?? candidates[0]!;
  const issuerCn = /(?:^|\n)CN=([^\n]*)/.exec(leaf.issuer)?.[1] ?? '';
  const product = (/^SEV-(?:VLEK-)?(Milan|Genoa|Turin)$/.exec(issuerCn)?.[1] as SnpProduct | undefined)
    ?? fail('TEE_CERT_CHAIN_INVALID', `the ${signer} is issued by "${issuerCn}", not by an AMD ${signer === 'VCEK' ? 'ASK' : 'ASVK'}`);
  const expectedIssuer = signer === 'VCEK' ? `SEV-${product}` : `SEV-VLEK-${product}`;
  if (issuerCn !== expectedIssuer) fail('TEE_CERT_CHAIN_INVALID', `a ${signer} must be issued by ${expectedIssuer}, this one by ${issuerCn}`);
  const ask = input.certs.find((c) => c.subject === leaf.issuer)
    ?? fail('TEE_COLLATERAL_MISSING', `no ${expectedIssuer} certificate (the ${signer === 'VCEK' ? 'ASK' : 'ASVK'}) was supplied`);
  const ark = (input.arks ?? pinnedArks()).get(product) ?? fail('TEE_UNTRUSTED_ROOT', `no pinned ARK for ${product}`);
  const suppliedArk = input.certs.find((c) => c.subject === ask.issuer);
  const links = [{ cert: leaf, name: signer }, { cert: ask, name: expectedIssuer }];
  if (suppliedArk) links.push({ cert: suppliedArk, name: `supplied ARK (${cn(suppliedArk)})` });
  // Only the product's own ARK anchors it: a Milan ASK under the Genoa ARK is not a chain.
  verifyChainToPinnedRoot(links, [ark], input.now);
  const cpuProduct = productFromCpuid(report.cpuid);
  if (cpuProduct && cpuProduct !== product) {
    fail('TEE_CERT_CHAIN_INVALID', `the report comes from a ${cpuProduct} CPU, its ${signer} chains to ARK-${product}`);
  }

  // 4: the signature over bytes 0x000-0x29F.
  if (!snpSignaturePaddingIsZero(report.signature)
    || !verifyP1363('sha384', report.signedBytes, leaf.publicKey, snpSignatureToP1363(report.signature))) {
    fail('TEE_SIGNATURE_INVALID', `the SEV-SNP report signature does not verify with the ${signer} key`);
  }

  // 5: the certificate is for exactly this TCB (and, for a VCEK, this chip).
  const reportedTcb = decodeSnpTcb(report.reportedTcbRaw, product);
  checkLeafMatchesReport(leaf, signer, product, report, reportedTcb);

  // 6-8: the owner's policy.
  const policy = input.policy ?? {};
  const debug = (report.policy & SNP_POLICY.DEBUG) !== 0n;
  const migrationAgent = (report.policy & SNP_POLICY.MIGRATE_MA) !== 0n;
  if (debug && policy.allowDebug !== true) {
    fail('TEE_DEBUG_REFUSED', `the guest policy 0x${report.policy.toString(16)} allows debugging (bit 19): the host can read the VM's memory`);
  }
  if (migrationAgent && policy.allowMigrationAgent !== true) {
    fail('TEE_POLICY_REFUSED', `the guest policy 0x${report.policy.toString(16)} allows a migration agent (bit 18)`);
  }
  if (policy.vmpls && !policy.vmpls.includes(report.vmpl)) fail('TEE_POLICY_REFUSED', `the report comes from VMPL ${report.vmpl}; the policy allows ${policy.vmpls.join(', ')}`);
  if (policy.signers && !policy.signers.includes(signer)) fail('TEE_POLICY_REFUSED', `the report is signed by a ${signer}; the policy allows ${policy.signers.join(', ')}`);
  for (const [k, min] of Object.entries(policy.minTcb ?? {})) {
    const have = reportedTcb[k as keyof SnpMinTcbKeys];
    if (have === undefined || have < (min as number)) {
      fail('TEE_TCB_STATUS_REFUSED', `reported TCB ${k} ${have ?? 'absent'} is below the policy's minimum ${min as number} (reported TCB ${reportedTcb.raw}: ${describeTcb(reportedTcb)})`,
        { component: k, have, min, reportedTcb: reportedTcb.raw });
    }
  }
  const measurement = report.measurement.toString('hex');
  if (!allowedBy(policy.measurements, measurement)) {
    fail('MEASUREMENT_MISMATCH', `measurement ${measurement} is not one the policy allows`, { measurement });
  }
  const hostData = report.hostData.toString('hex');
  if (!allowedBy(policy.hostData, hostData)) fail('TEE_POLICY_REFUSED', `HOST_DATA ${hostData} is not one the policy allows`);
  if (policy.bindPolicyHash === true) checkLaunchBinding('HOST_DATA', report.hostData, input.policyHash);
  const idKeyDigest = report.idKeyDigest.toString('hex');
  if (!allowedBy(policy.idKeyDigests, idKeyDigest)) fail('TEE_POLICY_REFUSED', `ID key digest ${idKeyDigest} is not one the policy allows`);
  if (input.expectedReportData && !constantTimeEqual(report.reportData, input.expectedReportData)) {
    fail('TEE_REPORT_DATA_MISMATCH', 'the report data does not bind this nonce and these keys');
  }
  return {
    tee: 'sev-snp', reportVersion: report.version, product, signer,
    chain: `${signer} ← ${expectedIssuer} ← ARK-${product}`,
    measurement, reportData: report.reportData.toString('hex'), hostData, idKeyDigest,
    vmpl: report.vmpl, guestPolicy: '0x' + report.policy.toString(16), debug, migrationAgent, reportedTcb,
    chipId: report.chipId.toString('hex'), signerNotAfter: new Date(leaf.validTo).toISOString(),
  };
}

/** Whether `c` certifies this report's chip and reported TCB (no signature checked: the chain is next). */
function leafFits(c: X509Certificate, signer: SnpSigner, report: SnpReport): boolean {
  const product = /(?:^|\n)CN=SEV-(?:VLEK-)?(Milan|Genoa|Turin)(?:\n|$)/.exec(c.issuer)?.[1] as SnpProduct | undefined;
  if (!product) return false;
  try {
    checkLeafMatchesReport(c, signer, product, report, decodeSnpTcb(report.reportedTcbRaw, product));
    return true;
  } catch {
    return false;
  }
}

const describeTcb = (t: SnpTcb): string =>
  `bootloader ${t.bootloader}, tee ${t.tee}, snp ${t.snp}, microcode ${t.microcode}${t.fmc !== undefined ? `, fmc ${t.fmc}` : ''}`;

type SnpMinTcbKeys = { bootloader: number; tee: number; snp: number; microcode: number; fmc: number };

function checkLeafMatchesReport(leaf: X509Certificate, signer: SnpSigner, product: SnpProduct, report: SnpReport, tcb: SnpTcb): void {
  const ext = derRead('TEE_CERT_CHAIN_INVALID', `${signer} extensions`, () => certificateExtensions(leaf.raw));
  const int = (oid: string, name: string): number | undefined => {
    const v = ext.get(oid);
    return v === undefined ? undefined : derRead('TEE_CERT_CHAIN_INVALID', `${signer} ${name}`, () => decodeSmallUint(readDer(v)));
  };
  const productName = ext.get(OID.productName);
  if (productName) {
    const name = derRead('TEE_CERT_CHAIN_INVALID', `${signer} product name`, () => readDer(productName));
    if (name.tag === TAG.IA5 && !name.content.toString('latin1').startsWith(product)) {
      fail('TEE_CERT_CHAIN_INVALID', `the ${signer} is for product ${name.content.toString('latin1')}, its chain for ${product}`);
    }
  }
  const pairs: Array<[string, number | undefined, number | undefined]> = [
    ['bootloader', int(OID.blSpl, 'blSPL'), tcb.bootloader],
    ['tee', int(OID.teeSpl, 'teeSPL'), tcb.tee],
    ['snp', int(OID.snpSpl, 'snpSPL'), tcb.snp],
    ['microcode', int(OID.ucodeSpl, 'ucodeSPL'), tcb.microcode],
  ];
  if (product === 'Turin') pairs.push(['fmc', int(OID.fmcSpl, 'fmcSPL'), tcb.fmc]);
  for (const [name, cert, rep] of pairs) {
    if (cert === undefined) fail('TEE_CERT_CHAIN_INVALID', `the ${signer} has no ${name} SPL extension`);
    if (cert !== rep) {
      fail('TEE_TCB_MISMATCH', `the ${signer} certifies ${name} SPL ${cert}, the report's reported TCB says ${rep}: this ${signer} is for another TCB`,
        { component: name, certificate: cert, report: rep });
    }
  }
  if (signer === 'VCEK') {
    const hw = ext.get(OID.hwId) ?? fail('TEE_CERT_CHAIN_INVALID', 'the VCEK has no hwID extension');
    // Milan/Genoa: the 64-byte chip id as the OCTET STRING's content; Turin: the first 8 bytes.
    const hwId = hw.length === 64 || hw.length === 8 ? hw : derRead('TEE_CERT_CHAIN_INVALID', 'VCEK hwID', () => readDer(hw).content);
    if (!report.maskChipKey && !constantTimeEqual(hwId, report.chipId.subarray(0, hwId.length))) {
      fail('TEE_TCB_MISMATCH', 'the VCEK is for another chip (hwID ≠ the report\'s CHIP_ID)');
    }
  }
}

function fail(code: ErrorCode, message: string, details?: Record<string, unknown>): never {
  throw new CdbpError(code, message, details ? { details } : undefined);
}
