/**
 * What runs where no attestation is configured: refuses everything. Choosing it is always safe; it can
 * never hand out a certificate or a secret.
 */
import { CdbpError } from '../kernel/errors.ts';
import type { AttestationProvider, Evidence, EvidenceVerifier, TeeMode } from './types.ts';

export class FailClosedProvider implements AttestationProvider {
  readonly mode: TeeMode = 'none';
  constructor(private readonly reason = 'no attestation provider is configured') {}
  measurement(): string {
    throw new CdbpError('ATTESTATION_UNAVAILABLE', this.reason);
  }
  async collect(_reportData: Buffer): Promise<Evidence> {
    throw new CdbpError('ATTESTATION_UNAVAILABLE', this.reason);
  }
}

export class FailClosedVerifier implements EvidenceVerifier {
  constructor(readonly mode: TeeMode = 'none', private readonly reason = 'no verifier is configured for this TEE mode') {}
  async verify(_evidence: Evidence, _expected: Buffer): Promise<{ measurement: string }> {
    throw new CdbpError('ATTESTATION_UNAVAILABLE', `${this.reason} (${this.mode})`);
  }
}
