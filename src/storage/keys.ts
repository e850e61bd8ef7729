/**
 * Storage keys from CAS-provisioned DB keys. The storage secret is derived (HKDF-SHA256, own label) from
 * one DB key id rather than used as is, so the bytes that open the directory are never the bytes a
 * keyring could serve for the same id. Every provisioned version is a candidate, newest first: a
 * directory created under version n still opens after the owner adds n+1 (and then should be
 * re-encrypted, docs/PG-AT-REST.md).
 */
import { hkdfSync } from 'node:crypto';
import type { DbKey } from '../provisioning/types.ts';
import type { StorageKey } from './types.ts';
import { CdbpError } from '../kernel/errors.ts';

/** Key id used for PostgreSQL storage (the policy's default table key). */
export const STORAGE_KEY_ID = 1;
const LABEL = 'cdbp/encrypted-directory/v1';

export function deriveStorageSecret(key: Buffer): Buffer {
  return Buffer.from(hkdfSync('sha256', key, Buffer.alloc(0), LABEL, 32));
}

export function storageKeyCandidates(dbKeys: DbKey[], id = STORAGE_KEY_ID): StorageKey[] {
  const versions = dbKeys.filter((k) => k.id === id).sort((a, b) => b.version - a.version);
  if (versions.length === 0) {
    throw new CdbpError('STORAGE_KEY_INVALID', `the policy provisions no DB key id ${id}: the encrypted directory has no key`,
      { details: { reason: 'wrong_key', keyId: id } });
  }
  return versions.map((k) => ({ version: k.version, secret: deriveStorageSecret(k.key) }));
}
