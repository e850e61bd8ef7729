/**
 * What the CAS attested, read back from the certificate it issued: the TEE type (`urn:cdbp:tee:`),
 * the TCB (`urn:cdbp:tcb:`, TDX: the evaluated status such as "UpToDate"; SEV-SNP: "snp-<reported TCB>",
 * the TCB the VCEK/VLEK certifies, since SNP has no status) and the collateral age at issue
 * (`urn:cdbp:collateral-age:<seconds>`, when the verifier knew it). The certificate is signed by the CAS
 * CA and its hash by the CAS's answer signature, so these are the CAS's words, not the proxy's.
 * Simulated attestation says `simulated` in every field, so no dashboard can mistake it for a TEE.
 */
import { X509Certificate } from 'node:crypto';
import { sanUris } from '../crypto/x509.ts';

export interface AttestedTee {
  /** 'sev-snp' | 'tdx' | 'simulated', or 'unknown' if the certificate names none. */
  tee: string;
  /** TDX TCB status, SEV-SNP "snp-<reported TCB>", 'simulated', or 'unknown'. */
  tcbStatus: string;
  /** The launch measurement (SNP MEASUREMENT / TDX MRTD) the CAS verified, as its certificate names it. */
  measurement?: string;
  /** Age of the TCB collateral (TDX TCB info / QE identity) when the CAS verified the evidence. */
  collateralAgeAtIssueSeconds?: number;
  simulated: boolean;
}

export const COLLATERAL_AGE_URN = 'urn:cdbp:collateral-age:';

/** Reads the attestation facts out of a certificate issued by the CAS (PEM). Pure; never throws on missing URNs. */
export function attestedTeeFromCertificate(certPem: string): AttestedTee {
  return attestedTeeFromUris(sanUris(new X509Certificate(certPem).subjectAltName));
}

export function attestedTeeFromUris(uris: string[]): AttestedTee {
  const one = (prefix: string): string | undefined => {
    const u = uris.find((x) => x.startsWith(prefix));
    return u === undefined ? undefined : u.slice(prefix.length);
  };
  const tee = one('urn:cdbp:tee:') || 'unknown';
  if (tee === 'simulated') return { tee, tcbStatus: 'simulated', simulated: true };
  const age = one(COLLATERAL_AGE_URN);
  const measurement = one('urn:cdbp:measurement:');
  const ageSeconds = age !== undefined && /^\d{1,12}$/.test(age) ? Number(age) : undefined;
  return {
    tee,
    tcbStatus: one('urn:cdbp:tcb:') || 'unknown',
    ...(measurement !== undefined && /^[0-9a-f]{1,128}$/.test(measurement) ? { measurement } : {}),
    ...(ageSeconds !== undefined ? { collateralAgeAtIssueSeconds: ageSeconds } : {}),
    simulated: false,
  };
}

/** Before the CAS has issued a certificate only the provider's mode is known (and simulated is always simulated). */
export function attestedTeeOf(certPem: string | undefined, providerMode: string): AttestedTee {
  if (certPem !== undefined) return attestedTeeFromCertificate(certPem);
  return providerMode === 'simulated' ? { tee: 'simulated', tcbStatus: 'simulated', simulated: true }
    : { tee: providerMode, tcbStatus: 'unknown', simulated: false };
}
