/**
 * Attestation is a trust boundary: one interface, several providers, and only the entry point picks
 * one. `simulated` stands in for TEE hardware and must be impossible to mistake for the real thing.
 */
export type TeeMode = 'simulated' | 'sev-snp' | 'tdx' | 'none';

/** What a process presents to the CAS. `reportData` binds the CAS nonce and the process's public keys. */
export interface Evidence {
  mode: TeeMode;
  /** Hex SHA-256 of the measured code. */
  measurement: string;
  /** Hex; = SHA-512(nonce ‖ tls public key ‖ ephemeral sealing key), see docs/ATTESTATION.md. */
  reportData: string;
  /** Provider-specific signed report (base64). */
  report: string;
  /** Real TEEs: certificates that came with the report (SNP's certificate table: VCEK/VLEK, ASK, ARK), base64 DER. */
  certs?: string[];
}

/** Runs inside the attested process. */
export interface AttestationProvider {
  readonly mode: TeeMode;
  /** The measurement this process will present. */
  measurement(): string;
  /** Produces evidence binding `reportData` (64 bytes). Fails closed if the platform cannot attest. */
  collect(reportData: Buffer): Promise<Evidence>;
}

/** What a real TEE verifier found besides the measurement (shown in the CAS's audit log and answers). */
export interface TeeFacts {
  /** TDX: the evaluated TCB status; SEV-SNP: the reported TCB the VCEK/VLEK certifies. */
  tcbStatus: string;
  /** The same as a URN-safe token: TDX "UpToDate", SEV-SNP "snp-0300000000000873" (the reported TCB). */
  tcb: string;
  signer: string;
  collateralAgeSeconds?: number;
}

/** Runs in the CAS. */
export interface EvidenceVerifier {
  readonly mode: TeeMode;
  /**
   * Verifies the report's signature chain and that it binds exactly `expectedReportData`. Real TEE
   * verifiers also apply the owner's appraisal policy (`appraisal`: the signed policy's `tee` part);
   * `context.policyHash` (the signed policy's hash) is what SNP HOST_DATA / TDX MRCONFIGID must carry
   * when the policy requires the launch binding (policy-binding.ts).
   */
  verify(evidence: Evidence, expectedReportData: Buffer, appraisal?: import('./tee-policy.ts').TeeAppraisalPolicy,
    context?: { policyHash?: string }): Promise<{ measurement: string; tee?: TeeFacts }>;
}
