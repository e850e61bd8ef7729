/**
 * The managed PostgreSQL's encrypted directory (docs/PG-AT-REST.md), in the order the trust model
 * demands: attest → freshness → key → mount. What is decided here:
 * - a new encrypted directory is created only when no WAL position was ever sealed (the database's first
 *   start); a sealed position with no directory is refused, never silently re-created empty;
 * - a directory left mid-rotation is recovered first;
 * - when it opens only with an older key version and `rekey` is on, it is re-encrypted with the newest
 *   before PostgreSQL starts.
 * The caller (the proxy role) keeps the lifecycle: it watches `storage.onLost` and fails closed.
 */
import path from 'node:path';
import { chmodSync, mkdirSync, statSync } from 'node:fs';
import type { Logger } from '../kernel/log.ts';
import type { DbKey } from '../provisioning/types.ts';
import { GocryptfsDirectory } from './gocryptfs.ts';
import { openEncryptedDirectory } from './open.ts';
import { storageKeyCandidates } from './keys.ts';
import { reencryptDirectory, recoverInterruptedRotation } from './rotate.ts';

/** Where PostgreSQL lives inside the mount. */
export interface PostgresLayout {
  dir: string;
  datadir: string;
  socketDir: string;
}

export interface PostgresStorageOptions {
  /** The run directory; the plaintext mount point is `plain/` below it. */
  runDir: string;
  /** The ciphertext directory (CDBP_DATADIR). */
  encryptedDir: string;
  /** PostgreSQL's OS user when running as root (owns the mount). */
  owner: { uid: number; gid: number } | undefined;
  log: Logger;
}

/**
 * The directory object at once (so the caller can report and unmount it even if opening fails), and
 * `open()` that mounts it and returns PostgreSQL's layout inside.
 */
export function postgresStorage(o: PostgresStorageOptions): {
  storage: GocryptfsDirectory;
  open(keys: { dbKeys: DbKey[]; sealedWalLsn: string | undefined; rekey: boolean }): Promise<PostgresLayout>;
} {
  const { runDir, encryptedDir, owner, log } = o;
  mkdirSync(runDir, { recursive: true, mode: 0o711 });
  // PostgreSQL's OS user must reach the mount point below the run dir (traverse only, no listing).
  if (owner) chmodSync(runDir, (statSync(runDir).mode & 0o777) | 0o011);
  const make = (encryptedPath: string, plaintextPath: string) => new GocryptfsDirectory({ encryptedPath, plaintextPath, owner, log });
  const storage = make(encryptedDir, path.join(runDir, 'plain'));
  return {
    storage,
    async open({ dbKeys, sealedWalLsn, rekey }) {
      const recovered = recoverInterruptedRotation(encryptedDir);
      if (recovered) log.warn({ dir: encryptedDir }, `key rotation: ${recovered}`);
      const keys = storageKeyCandidates(dbKeys);
      const opened = await openEncryptedDirectory(storage, keys, {
        create: sealedWalLsn === undefined,
        refuseCreateBecause: `the freshness record says this database has data (WAL position ${sealedWalLsn})`,
        log,
      });
      if (opened.version !== keys[0]!.version && rekey) {
        // Rotation: the owner provisioned a newer key version. PostgreSQL is not running yet: copy now.
        log.warn({ from: opened.version, to: keys[0]!.version }, 'key rotation: re-encrypting the PostgreSQL directory with the newest key version');
        await reencryptDirectory({ current: storage, newKey: keys[0]!, scratchMountPoint: path.join(runDir, 'rekey'), makeDirectory: make, log });
        await storage.mount(keys[0]!);
      }
      const dir = path.join(storage.plaintextPath, 'pg');
      return { dir, datadir: path.join(dir, 'data'), socketDir: path.join(dir, 'run') };
    },
  };
}
