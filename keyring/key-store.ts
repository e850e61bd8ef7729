import { timingSafeEqual } from 'node:crypto';
import { CdbpError } from '../src/kernel/errors.ts';
import type { DbKey } from '../src/provisioning/types.ts';
import { MAX_KEY_ID, MAX_KEY_VERSION } from './vault-api.ts';

/**
 * The provisioned DB keys, in memory only. Append-only by construction: every (id, version) is immutable
 * and never removed, because the redo log, old binlogs and Aria files keep the version they were written
 * with (removing or changing one makes MariaDB unable to start, or loses tables for good).
 */
export const KEY_LENGTH = 32;

export type KeyLookup =
  | { found: true; version: number; key: Buffer }
  /** The id was never provisioned: the plugin expects a 404. */
  | { found: false; reason: 'unknown_id' }
  /** The id exists but not this version: never a 404 (the database may depend on it), refuse instead. */
  | { found: false; reason: 'unknown_version' };

export class KeyStore {
  /** id → version → private copy of the key bytes. */
  private readonly keys = new Map<number, Map<number, Buffer>>();
  private readonly latest = new Map<number, number>();

  constructor(keys: DbKey[] = []) {
    this.add(keys);
  }

  /**
   * Adds key versions. All-or-nothing: the whole batch is validated first, so a bad entry leaves the store
   * unchanged. Re-adding identical bytes is a no-op; different bytes for an existing (id, version) throw.
   */
  add(keys: DbKey[]): { added: number } {
    const staged = new Map<string, DbKey>();
    for (const k of keys) {
      validateKey(k);
      const slot = `${k.id}/${k.version}`;
      const existing = this.keys.get(k.id)?.get(k.version) ?? staged.get(slot)?.key;
      if (existing && !sameBytes(existing, k.key)) {
        throw new CdbpError('CONFIG_INVALID', `key ${slot} is already provisioned with different bytes; key versions are immutable`,
          { details: { id: k.id, version: k.version } });
      }
      if (!existing) staged.set(slot, k);
    }
    for (const k of staged.values()) {
      let versions = this.keys.get(k.id);
      if (!versions) this.keys.set(k.id, (versions = new Map()));
      versions.set(k.version, Buffer.from(k.key)); // own copy: the caller's buffer may be reused or wiped
      if (k.version > (this.latest.get(k.id) ?? 0)) this.latest.set(k.id, k.version);
    }
    return { added: staged.size };
  }

  get(id: number, version: number | 'latest'): KeyLookup {
    const versions = this.keys.get(id);
    if (!versions) return { found: false, reason: 'unknown_id' };
    const v = version === 'latest' ? this.latest.get(id)! : version;
    const key = versions.get(v);
    return key ? { found: true, version: v, key } : { found: false, reason: 'unknown_version' };
  }

  /** Non-secret summary for status/logs: id → latest version. */
  summary(): Record<number, { latest: number; versions: number }> {
    const out: Record<number, { latest: number; versions: number }> = {};
    for (const [id, versions] of this.keys) out[id] = { latest: this.latest.get(id)!, versions: versions.size };
    return out;
  }

  get size(): number {
    let n = 0;
    for (const v of this.keys.values()) n += v.size;
    return n;
  }
}

function validateKey(k: DbKey): void {
  if (!Number.isInteger(k.id) || k.id < 1 || k.id > MAX_KEY_ID) {
    throw new CdbpError('CONFIG_INVALID', `DB key id must be an integer in 1..${MAX_KEY_ID}`, { details: { id: k.id } });
  }
  if (!Number.isInteger(k.version) || k.version < 1 || k.version > MAX_KEY_VERSION) {
    throw new CdbpError('CONFIG_INVALID', `DB key version must be an integer in 1..${MAX_KEY_VERSION}`,
      { details: { id: k.id, version: k.version } });
  }
  // Only 32 bytes: MariaDB accepts 20-byte keys and then crashes on the first page flush.
  if (!Buffer.isBuffer(k.key) || k.key.length !== KEY_LENGTH) {
    throw new CdbpError('CONFIG_INVALID', `DB key ${k.id}/${k.version} must be exactly ${KEY_LENGTH} bytes`,
      { details: { id: k.id, version: k.version, length: Buffer.isBuffer(k.key) ? k.key.length : null } });
  }
}

function sameBytes(a: Buffer, b: Buffer): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}
