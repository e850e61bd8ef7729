/**
 * One error hierarchy for the whole project. Every error carries a stable, machine-readable `code`
 * (documented in docs/ERRORS.md) so that edges can map it to their own protocol: a MySQL ERR packet,
 * a PostgreSQL ErrorResponse, or an HTTP JSON error. Mapping happens only at those edges.
 */
export type ErrorCode =
  // configuration and environment
  | 'CONFIG_INVALID'
  | 'BINARY_MISSING'
  // attestation and CAS
  | 'ATTESTATION_REFUSED'
  | 'ATTESTATION_UNAVAILABLE'
  | 'SIMULATION_NOT_ALLOWED'
  | 'MEASUREMENT_MISMATCH'
  | 'NONCE_INVALID'
  | 'EVIDENCE_INVALID'
  | 'POLICY_INVALID'
  | 'POLICY_SIGNATURE_INVALID'
  | 'POLICY_CHAIN_BROKEN'
  | 'POLICY_OWNER_MISMATCH'
  | 'SERVICE_UNKNOWN'
  | 'COUNTER_CONFLICT'
  | 'FORBIDDEN'
  | 'BAD_REQUEST'
  | 'NOT_FOUND'
  | 'STATE_TAMPERED'
  | 'AUDIT_CHAIN_BROKEN'
  | 'CAS_UNREACHABLE'
  // sealing and freshness
  | 'SEAL_INVALID'
  | 'ROLLBACK_DETECTED'
  | 'TAMPER_DETECTED'
  // protocol edges
  | 'PROTOCOL_VIOLATION'
  | 'FRAME_TOO_LARGE'
  | 'INSECURE_TRANSPORT'
  | 'TOO_MANY_CONNECTIONS'
  | 'HANDSHAKE_TIMEOUT'
  | 'BACKEND_UNAVAILABLE'
  // keyring
  | 'KEYRING_UNAVAILABLE'
  // the MariaDB behind the proxy does not encrypt (src/db/mariadb-encryption-check.ts)
  | 'BACKEND_NOT_ENCRYPTED'
  // lifecycle
  | 'LIFECYCLE_INVALID_TRANSITION'
  | 'CHILD_FAILED'
  | 'INTERNAL'
  // appended by the CAS
  | 'BODY_TOO_LARGE'
  | 'RATE_LIMITED'
  | 'SEALING_UNAVAILABLE'
  // appended by the CAS hardening
  | 'CAS_IDENTITY_INVALID'
  // HTTP edges: admin authentication, cross-site refusal, media type (issue 16)
  | 'UNAUTHORIZED'
  | 'ORIGIN_REFUSED'
  | 'UNSUPPORTED_MEDIA_TYPE'
  // the command line: an unknown or malformed option or argument (exit 2)
  | 'USAGE'
  // real TEE evidence (SEV-SNP, TDX): src/attestation/, docs/ATTESTATION.md "Errors"
  | 'TEE_EVIDENCE_MALFORMED'
  | 'TEE_SIGNATURE_INVALID'
  | 'TEE_CERT_CHAIN_INVALID'
  | 'TEE_UNTRUSTED_ROOT'
  | 'TEE_CERT_EXPIRED'
  | 'TEE_TCB_MISMATCH'
  | 'TEE_PCK_REVOKED'
  | 'TEE_QE_BINDING_INVALID'
  | 'TEE_QE_IDENTITY_MISMATCH'
  | 'TEE_COLLATERAL_MISSING'
  | 'TEE_COLLATERAL_INVALID'
  | 'TEE_COLLATERAL_EXPIRED'
  | 'TEE_FMSPC_MISMATCH'
  | 'TEE_TCB_STATUS_REFUSED'
  | 'TEE_DEBUG_REFUSED'
  | 'TEE_POLICY_REFUSED'
  | 'TEE_REPORT_DATA_MISMATCH'
  // appended for PostgreSQL at rest (src/storage/, issue 19)
  | 'STORAGE_UNAVAILABLE'
  | 'STORAGE_KEY_INVALID'
  // another process holds this state directory (src/kernel/state-lock.ts)
  | 'STATE_LOCKED'
  // the report's launch field (SNP HOST_DATA / TDX MRCONFIGID) does not carry the owner's policy hash (src/attestation/policy-binding.ts)
  | 'TEE_POLICY_BINDING_MISMATCH'
  // replicated CAS (cas/replication/, issue 20)
  | 'CAS_QUORUM_UNAVAILABLE'
  | 'STATE_STORE_UNAVAILABLE'
  | 'STATE_STORE_CONFLICT'
  | 'STATE_ROLLED_BACK'
  // a deployment recovery (--ha-recover) that may not go ahead: members still run, statement expired, ...
  | 'HA_RECOVERY_REFUSED'
  // a reopened replicated CAS lost this service's counter: the owner re-anchors it
  | 'COUNTER_UNANCHORED';

export class CdbpError extends Error {
  readonly code: ErrorCode;
  /** Extra, non-secret facts for logs and status (expected vs seen, ids, ...). */
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown; details?: Record<string, unknown> }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'CdbpError';
    this.code = code;
    this.details = options?.details;
  }

  /** Prefixes context, keeping the code: `withContext('opening sealed record')`. */
  withContext(context: string): CdbpError {
    return new CdbpError(this.code, `${context}: ${this.message}`, { cause: this, details: this.details });
  }
}

export function isCdbpError(e: unknown, code?: ErrorCode): e is CdbpError {
  return e instanceof CdbpError && (code === undefined || e.code === code);
}

/** Wraps anything thrown into a CdbpError so callers can rely on `.code`. */
export function asCdbpError(e: unknown, fallback: ErrorCode = 'INTERNAL'): CdbpError {
  if (e instanceof CdbpError) return e;
  const message = e instanceof Error ? e.message : String(e);
  return new CdbpError(fallback, message, { cause: e });
}

/** HTTP status for an error code, used by the Fastify edges (CAS, ops, keyring never uses it). */
export function httpStatusFor(code: ErrorCode): number {
  switch (code) {
    case 'BAD_REQUEST':
    case 'INSECURE_TRANSPORT':
    case 'USAGE':
    case 'CONFIG_INVALID':
    case 'POLICY_INVALID':
    case 'PROTOCOL_VIOLATION':
    case 'EVIDENCE_INVALID':
    case 'NONCE_INVALID':
    case 'TEE_EVIDENCE_MALFORMED':
      return 400;
    case 'TEE_SIGNATURE_INVALID':
    case 'TEE_CERT_CHAIN_INVALID':
    case 'TEE_UNTRUSTED_ROOT':
    case 'TEE_CERT_EXPIRED':
    case 'TEE_TCB_MISMATCH':
    case 'TEE_PCK_REVOKED':
    case 'TEE_QE_BINDING_INVALID':
    case 'TEE_QE_IDENTITY_MISMATCH':
    case 'TEE_FMSPC_MISMATCH':
    case 'TEE_TCB_STATUS_REFUSED':
    case 'TEE_DEBUG_REFUSED':
    case 'TEE_POLICY_REFUSED':
    case 'TEE_REPORT_DATA_MISMATCH':
    case 'TEE_POLICY_BINDING_MISMATCH':
      return 401;
    // The CAS's own collateral is missing or stale: the operator refreshes it (cdbp collateral).
    case 'TEE_COLLATERAL_MISSING':
    case 'TEE_COLLATERAL_INVALID':
    case 'TEE_COLLATERAL_EXPIRED':
      return 503;
    case 'POLICY_SIGNATURE_INVALID':
    case 'ATTESTATION_REFUSED':
    case 'MEASUREMENT_MISMATCH':
    case 'SIMULATION_NOT_ALLOWED':
    case 'UNAUTHORIZED':
      return 401;
    case 'FORBIDDEN':
    case 'ORIGIN_REFUSED':
    case 'POLICY_OWNER_MISMATCH':
      return 403;
    case 'NOT_FOUND':
    case 'SERVICE_UNKNOWN':
      return 404;
    case 'COUNTER_CONFLICT':
    case 'COUNTER_UNANCHORED':
    case 'POLICY_CHAIN_BROKEN':
    case 'STATE_LOCKED':
    case 'STATE_STORE_CONFLICT':
      return 409;
    case 'FRAME_TOO_LARGE':
    case 'BODY_TOO_LARGE':
      return 413;
    case 'UNSUPPORTED_MEDIA_TYPE':
      return 415;
    case 'TOO_MANY_CONNECTIONS':
    case 'RATE_LIMITED':
      return 429;
    case 'ATTESTATION_UNAVAILABLE':
    case 'CAS_UNREACHABLE':
    case 'BACKEND_UNAVAILABLE':
    case 'BACKEND_NOT_ENCRYPTED':
    case 'KEYRING_UNAVAILABLE':
    case 'SEALING_UNAVAILABLE':
    case 'STORAGE_UNAVAILABLE':
    case 'CAS_QUORUM_UNAVAILABLE':
    case 'STATE_STORE_UNAVAILABLE':
      return 503;
    case 'CAS_IDENTITY_INVALID':
      // An upstream answered that is not the pinned CAS: a gateway error, not ours and not the caller's.
      return 502;
    default:
      return 500;
  }
}
