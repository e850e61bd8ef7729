/**
 * An encrypted directory: ciphertext on the untrusted volume, plaintext visible at a mount point only
 * while this (attested) process holds the key. PostgreSQL has no key plugin, so its whole instance
 * directory (data, WAL, temp files, log, socket) lives inside such a mount (docs/PG-AT-REST.md).
 *
 * Implementations: `GocryptfsDirectory` (FUSE, per-file AES-256-GCM, what this machine can run) and, in a
 * real confidential VM, dm-crypt/LUKS on a block device (documented, same contract). Every failure is a
 * `CdbpError` with code `STORAGE_UNAVAILABLE` or `STORAGE_KEY_INVALID` and `details.reason` from
 * `StorageFailureReason`; nothing ever falls back to plaintext.
 */

/** Why a mount is refused or lost; stable, shown on /v1/status. */
export type StorageFailureReason =
  | 'tool_missing' // gocryptfs / fusermount3 not installed
  | 'fuse_unavailable' // no /dev/fuse (container without the device)
  | 'wrong_key' // the directory does not open with any provisioned key
  | 'foreign_content' // the encrypted side holds something else (e.g. a plaintext PostgreSQL cluster)
  | 'missing' // no encrypted directory where one must exist
  | 'mountpoint_not_empty' // plaintext was written where only the mount may be
  | 'mount_failed' // the tool failed for another reason
  | 'mount_lost' // the mount disappeared while in use
  | 'unmount_failed';

/** What the encrypted side currently holds. */
export type EncryptedState = 'empty' | 'initialized' | 'foreign';

export interface StorageHealth {
  kind: string;
  mounted: boolean;
  /** Set when not mounted because something failed or vanished (never a key). */
  reason: string | null;
  encryptedPath: string;
  plaintextPath: string;
  /** Key version the mount was opened with (null when not mounted). */
  keyVersion: number | null;
}

/** A key candidate: a version and the 32-byte secret derived for storage from that DB key version. */
export interface StorageKey {
  version: number;
  secret: Buffer;
}

export interface EncryptedDirectory {
  readonly kind: string;
  /** Ciphertext on the untrusted volume (a directory for gocryptfs, a block device for dm-crypt). */
  readonly encryptedPath: string;
  /** Where the plaintext appears while mounted; empty (and unused) otherwise. */
  readonly plaintextPath: string;
  state(): EncryptedState;
  /**
   * Opens the directory with `key` (creating it first when `create` and the encrypted side is empty) and
   * resolves with the plaintext path once the mount is verified. A stale mount left by a crashed process
   * is cleared first. Throws STORAGE_KEY_INVALID (reason wrong_key) when the key does not open it.
   */
  mount(key: StorageKey, o?: { create?: boolean }): Promise<string>;
  /** Clean unmount; idempotent. */
  unmount(): Promise<void>;
  isMounted(): boolean;
  health(): StorageHealth;
  /** Called once per mount when the mount disappears without unmount() being called. */
  onLost(listener: (reason: string) => void): void;
}
