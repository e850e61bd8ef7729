/**
 * Endpoint evidence: what a running proxy serves on GET /v1/attestation?nonce=... so that a client
 * can check the endpoint itself, without trusting the CAS's word (the certificate) alone.
 *
 *   reportData = SHA-512("cdbp-endpoint-evidence-v1" ‖ nonce ‖ SPKI DER of the serving certificate)
 *
 * The client picks the nonce (freshness: no replay of old evidence) and compares the SPKI with the one
 * its own TLS handshake saw (binding: the evidence is about the process holding that TLS key). The
 * domain prefix keeps this evidence apart from CAS attestation evidence, whose report data binds a CAS
 * nonce and the sealing key instead.
 */
import { createHash } from 'node:crypto';
import { CdbpError } from '../kernel/errors.ts';
import type { Evidence, EvidenceVerifier } from '../attestation/types.ts';

export const ENDPOINT_EVIDENCE_DOMAIN = 'cdbp-endpoint-evidence-v1';

export function endpointReportData(nonce: Buffer, spkiDer: Buffer): Buffer {
  return createHash('sha512').update(Buffer.from(ENDPOINT_EVIDENCE_DOMAIN)).update(nonce).update(spkiDer).digest();
}

export interface EndpointEvidenceCheck {
  evidence: Evidence;
  /** The nonce the client sent. */
  nonce: Buffer;
  /** SPKI DER of the certificate the TLS endpoint actually presented. */
  presentedSpki: Buffer;
  verifier: EvidenceVerifier;
  /** Hex measurement the client expects. */
  expectedMeasurement: string;
}

/** Verifies signature, binding and measurement; throws EVIDENCE_INVALID / MEASUREMENT_MISMATCH. */
export async function verifyEndpointEvidence(c: EndpointEvidenceCheck): Promise<{ measurement: string; mode: string }> {
  if (c.evidence?.mode !== c.verifier.mode) {
    throw new CdbpError('EVIDENCE_INVALID', `evidence is for TEE mode '${String(c.evidence?.mode)}', verifier is for '${c.verifier.mode}'`);
  }
  const { measurement } = await c.verifier.verify(c.evidence, endpointReportData(c.nonce, c.presentedSpki));
  if (measurement.toLowerCase() !== c.expectedMeasurement.toLowerCase()) {
    throw new CdbpError('MEASUREMENT_MISMATCH', `measurement ${measurement} is not the expected ${c.expectedMeasurement}`);
  }
  return { measurement, mode: c.evidence.mode };
}
