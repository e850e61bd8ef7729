/**
 * The one file of the freshness record on the untrusted volume. Writes are atomic and durable:
 * tmp → fsync → rename → fsync(dir), and no older copy is ever left beside it (a `.old` file would
 * turn a rollback into a rename).
 */
import { openSync, writeSync, fsyncSync, closeSync, renameSync, readFileSync, unlinkSync, existsSync } from 'node:fs';
import path from 'node:path';

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

  write(bytes: Buffer): void {
    const tmp = `${this.file}.tmp`;
    const fd = openSync(tmp, 'w', 0o600);
    try {
      writeSync(fd, bytes);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, this.file);
    const dirFd = openSync(path.dirname(this.file), 'r');
    try {
      fsyncSync(dirFd);
    } finally {
      closeSync(dirFd);
    }
  }

  /** Removes a stale tmp left by a crash mid-write (it was never the record). */
  cleanup(): void {
    const tmp = `${this.file}.tmp`;
    if (existsSync(tmp)) unlinkSync(tmp);
  }
}
