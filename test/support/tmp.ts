import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/** A private temp dir removed after the test unless CDBP_KEEP_TMP is set (for post-mortems). */
export function tempDir(prefix: string): { path: string; remove(): void } {
  const p = mkdtempSync(path.join(os.tmpdir(), `cdbp-${prefix}-`));
  // Traversable, not listable: mariadbd and PostgreSQL run as their own OS users (mysql, postgres) when
  // the tests run as root, and must reach their directories below this one.
  chmodSync(p, 0o711);
  return {
    path: p,
    remove() {
      if (!process.env.CDBP_KEEP_TMP) rmSync(p, { recursive: true, force: true });
    },
  };
}
