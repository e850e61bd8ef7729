/**
 * Sealed inventory files on the untrusted volume: `inventory-<service>-<digest>.sealed`, one per sweep,
 * named by the SHA-256 of their bytes. The freshness record (anchored by the CAS counter) carries the
 * digest of the one it vouches for, so an older or edited inventory is simply not the one referenced.
 * Sealed with the freshness key (XChaCha20-Poly1305, header as associated data): the file names of the
 * schema do not leak from the volume. Files no record references are removed once a newer one is counted.
 */
import { createHash } from 'node:crypto';
import { readFileSync, readdirSync, unlinkSync } from 'node:fs';
import path from 'node:path';
import { CdbpError } from '../../../src/kernel/errors.ts';
import { aeadOpen, aeadSeal } from '../../../src/crypto/aead.ts';
import { writeFileDurable } from '../../../src/crypto/atomic-file.ts';
import type { Inventory, PgInventory } from './types.ts';

const MAGIC = Buffer.from('CDBPINV1', 'ascii');

export class InventoryStore {
  private readonly prefix: string;

  constructor(private readonly dir: string, service: string, private readonly key: Buffer, private readonly databaseId: string) {
    this.prefix = `inventory-${service}-`;
  }

  private header(): Buffer {
    return Buffer.concat([MAGIC, Buffer.from(this.databaseId, 'utf8')]);
  }

  fileFor(digest: string): string {
    return path.join(this.dir, `${this.prefix}${digest}.sealed`);
  }

  /** Seals and writes durably (tmp, fsync, rename, fsync dir); returns the digest the record will carry. */
  async write(inv: Inventory | PgInventory): Promise<string> {
    const bytes = Buffer.concat([MAGIC, await aeadSeal(this.key, Buffer.from(JSON.stringify(inv), 'utf8'), this.header())]);
    const digest = createHash('sha256').update(bytes).digest('hex');
    await writeFileDurable(this.fileFor(digest), bytes);
    return digest;
  }

  /** Reads the inventory a record references; ROLLBACK_DETECTED when it is missing, TAMPER_DETECTED when edited or foreign. */
  async read<T extends Inventory | PgInventory = Inventory>(digest: string): Promise<T> {
    let bytes: Buffer;
    try {
      bytes = readFileSync(this.fileFor(digest));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      // An older volume holds only older inventories: a rollback (or the file deleted), not a forgery.
      throw new CdbpError('ROLLBACK_DETECTED', `the data-file inventory the sealed record references (${digest.slice(0, 16)}…) is missing from the volume: an older volume is behind the counted record, or the file was deleted`);
    }
    if (createHash('sha256').update(bytes).digest('hex') !== digest || !bytes.subarray(0, MAGIC.length).equals(MAGIC)) {
      throw new CdbpError('TAMPER_DETECTED', `the data-file inventory ${digest.slice(0, 16)}… is not the one the sealed record references (edited)`);
    }
    try {
      return JSON.parse((await aeadOpen(this.key, bytes.subarray(MAGIC.length), this.header())).toString('utf8')) as T;
    } catch (e) {
      throw new CdbpError('TAMPER_DETECTED', `the data-file inventory ${digest.slice(0, 16)}… does not open with this database's key`, { cause: e });
    }
  }

  /** Removes every inventory file (and crash leftovers) except the given digests. */
  retain(keep: Iterable<string | undefined>): void {
    const names = new Set([...keep].filter((d): d is string => !!d).map((d) => path.basename(this.fileFor(d))));
    for (const name of readdirSync(this.dir)) {
      const ours = name.startsWith(this.prefix) || name.startsWith(`.${this.prefix}`);
      if (ours && !names.has(name)) {
        try { unlinkSync(path.join(this.dir, name)); } catch { /* already gone */ }
      }
    }
  }
}
