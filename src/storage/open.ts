/**
 * Opening an encrypted directory with the provisioned keys: create it only when allowed (first start),
 * otherwise try every provisioned version, newest first, and say plainly which case failed.
 */
import { CdbpError, isCdbpError } from '../kernel/errors.ts';
import type { Logger } from '../kernel/log.ts';
import type { EncryptedDirectory, StorageKey } from './types.ts';

export interface OpenOptions {
  /** May an empty/missing encrypted side be created (the database's first start)? */
  create: boolean;
  /** Why creation is not allowed, for the error message. */
  refuseCreateBecause?: string;
  log?: Logger;
}

export async function openEncryptedDirectory(dir: EncryptedDirectory, candidates: StorageKey[], o: OpenOptions): Promise<{ path: string; version: number }> {
  if (candidates.length === 0) throw new CdbpError('STORAGE_KEY_INVALID', 'no storage key provisioned', { details: { reason: 'wrong_key' } });
  const state = dir.state();
  if (state === 'empty') {
    if (!o.create) {
      throw new CdbpError('STORAGE_UNAVAILABLE',
        `encrypted directory ${dir.encryptedPath} is missing or empty${o.refuseCreateBecause ? ` but ${o.refuseCreateBecause}` : ''}: refusing to create a new one`,
        { details: { reason: 'missing', encryptedPath: dir.encryptedPath } });
    }
    const p = await dir.mount(candidates[0]!, { create: true });
    return { path: p, version: candidates[0]!.version };
  }
  for (const key of candidates) {
    try {
      const p = await dir.mount(key);
      if (key !== candidates[0]) {
        o.log?.warn({ keyVersion: key.version, latest: candidates[0]!.version }, 'encrypted directory opened with an older key version: re-encrypt it (docs/PG-AT-REST.md)');
      }
      return { path: p, version: key.version };
    } catch (e) {
      if (!isCdbpError(e, 'STORAGE_KEY_INVALID')) throw e;
    }
  }
  throw new CdbpError('STORAGE_KEY_INVALID',
    `encrypted directory ${dir.encryptedPath} does not open with any provisioned key (versions ${candidates.map((k) => k.version).join(', ')}): wrong key or a substituted directory`,
    { details: { reason: 'wrong_key', encryptedPath: dir.encryptedPath, versionsTried: candidates.map((k) => k.version) } });
}
