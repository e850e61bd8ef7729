/**
 * The one file of the freshness record on the untrusted volume. Writes are atomic and durable
 * (src/crypto/atomic-file.ts: tmp → fsync → rename → fsync dir), and no older copy is ever left beside
 * it (a `.old` file would turn a rollback into a rename).
 */
import { readFileSync, readdirSync, unlinkSync } from 'node:fs';
import path from 'node:path';
import { writeFileDurable } from '../../src/crypto/atomic-file.ts';

export class RecordStore {
  constructor(readonly file: string) {}

  read(): Buffer | undefined {
    try {
      return readFileSync(this.file);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw e;
    }
  }

  write(bytes: Buffer): Promise<void> {
    return writeFileDurable(this.file, bytes);
  }

  /** Removes temp files left by a crash mid-write (they never were the record). */
  cleanup(): void {
    const dir = path.dirname(this.file);
    const prefix = `.${path.basename(this.file)}.`;
    for (const name of readdirSync(dir)) {
      if (name.startsWith(prefix) && name.endsWith('.tmp')) unlinkSync(path.join(dir, name));
    }
  }
}
