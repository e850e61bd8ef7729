/**
 * The contract between the CAS (which provisions) and the roles that consume what it provisions
 * (proxy listeners, keyring, freshness guard). Nothing here touches disk: provisioned secrets live in
 * memory only.
 */
import type { TeeMode } from '../attestation/types.ts';

/** One immutable DB encryption key version. */
export interface DbKey {
  id: number;
  version: number;
  /** 32 bytes. Never logged, never written. */
  key: Buffer;
}

export interface ProvisionedSecrets {
  /** Every (id, version) the policy ever issued, oldest first; versions are kept forever. */
  dbKeys: DbKey[];
  /** Base secret for the keyring; per-start tokens are derived from it or drawn fresh. */
  keyringToken: string;
  /** 32-byte key that authenticates the sealed freshness record. */
  freshnessKey: Buffer;
  /** Stable id of the database this service protects (bound into the freshness record). */
  databaseId: string;
}

export interface TlsIdentity {
  keyPem: string;
  certPem: string;
  /** The CAS root CA clients trust. */
  caPem: string;
  notAfter: Date;
  subject: string;
}

/** Result of a successful attest-and-provision round trip. */
export interface Provision {
  service: string;
  mode: TeeMode;
  measurement: string;
  policyHash: string;
  identity: TlsIdentity;
  secrets: ProvisionedSecrets;
}

/** The CAS's monotonic counter for one service, as the attested holder sees it. */
export interface CounterState {
  value: number;
  /** Hex digest of the sealed record that this value anchors ('' for value 0). */
  digest: string;
  /** The sealed record itself, when the CAS keeps it with the counter (checked: its hash is `digest`). */
  record?: Buffer;
}

export interface CounterClient {
  read(): Promise<CounterState>;
  /**
   * Compare-and-advance: succeeds only if the counter is still `expected` (and, when given, still anchors
   * `expectedDigest`: a pipelined advance lands only on the caller's own previous record); throws
   * COUNTER_CONFLICT otherwise.
   */
  advance(expected: number, next: number, digest: string, record?: Buffer, expectedDigest?: string): Promise<CounterState>;
  /** True when answers come back in request order, so the guard may send the next advance before the last is answered. */
  readonly ordered?: boolean;
  /** Reports a detected rollback/tamper/fork so the CAS audits it (best effort: the proxy fails closed anyway). */
  reportAlarm?(alarm: FreshnessAlarm): Promise<void>;
  /** A replicated CAS: how each member is reached and whether it answers (ops status; one CAS: absent). */
  memberStatus?(): CasMemberStatus[] | undefined;
}

export interface CasMemberStatus {
  url: string;
  /** 'channel' once its counter channel was used, 'https' for a member without one. */
  transport: 'channel' | 'https' | 'none yet';
  /** The slot and incarnation of its answer key, once it answered. */
  slot: number | null;
  instance: string | null;
  lastAnswerAt: string | null;
  /** The last request it did not answer (a refusal, a time-out, a broken connection), if later than its last answer. */
  lastError: string | null;
  lastErrorAt: string | null;
}

export interface FreshnessAlarm {
  kind: 'rollback' | 'tamper' | 'fork';
  message: string;
  expectedEpoch?: number;
  seenEpoch?: number;
}
