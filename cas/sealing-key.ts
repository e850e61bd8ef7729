/**
 * Where the CAS's state sealing key comes from: a trust boundary. In a real TEE the key is derived
 * from the hardware (bound to the CAS's measurement) and never touches the disk. The `file` provider
 * keeps it in a file in the CAS's trusted directory: that protects nothing against someone who can read
 * that directory, and says so loudly. The fail-closed provider refuses, so a CAS without a configured
 * key source never starts.
 */
import { readFile, writeFile, rename } from 'node:fs/promises';
import { randomBytes, hkdfSync } from 'node:crypto';
import type { Logger } from '../src/kernel/log.ts';
import { CdbpError } from '../src/kernel/errors.ts';
import { isHex } from '../src/crypto/hash.ts';

export interface SealingKeyProvider {
  readonly kind: 'file' | 'fail-closed';
  /** True when the key is not protected by hardware. */
  readonly simulated: boolean;
  /** The 32-byte master sealing key. */
  masterKey(): Promise<Buffer>;
  /** Seals `key` as this instance's master key from now on (a replicated CAS member that joined keeps the deployment's). */
  keep?(key: Buffer): Promise<void>;
}

export const SEALING_KEY_WARNING = 'SIMULATED SEALING: the CAS state key is a file on disk, not derived from TEE hardware. '
  + 'Whoever reads it can read and forge the CAS state. Development and CI only.';

export class FileSealingKeyProvider implements SealingKeyProvider {
  readonly kind = 'file' as const;
  readonly simulated = true;
  constructor(private readonly file: string, private readonly log?: Logger) {}

  async masterKey(): Promise<Buffer> {
    let text: string | undefined;
    try {
      text = (await readFile(this.file, 'utf8')).trim();
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw new CdbpError('SEALING_UNAVAILABLE', `cannot read sealing key ${this.file}: ${(e as Error).message}`);
    }
    if (text === undefined) {
      text = randomBytes(32).toString('hex');
      await writeFile(this.file, text + '\n', { mode: 0o600, flag: 'wx' });
      this.log?.warn({ file: this.file }, 'created a new simulated state sealing key file');
    }
    if (!isHex(text, 32)) throw new CdbpError('SEALING_UNAVAILABLE', `${this.file} does not hold a 32-byte hex key`);
    this.log?.warn({ sealing: 'file' }, SEALING_KEY_WARNING);
    return Buffer.from(text, 'hex');
  }

  async keep(key: Buffer): Promise<void> {
    const tmp = `${this.file}.tmp`;
    await writeFile(tmp, key.toString('hex') + '\n', { mode: 0o600 });
    await rename(tmp, this.file);
  }
}

export class FailClosedSealingKeyProvider implements SealingKeyProvider {
  readonly kind = 'fail-closed' as const;
  readonly simulated = false;
  async masterKey(): Promise<Buffer> {
    throw new CdbpError('SEALING_UNAVAILABLE', 'no state sealing key source is configured (use --sealing file for development)');
  }
}

/** Separate keys per purpose, so the audit MAC key can never open the state and vice versa. */
export function deriveKey(master: Buffer, purpose: 'state' | 'audit' | 'counters'): Buffer {
  return Buffer.from(hkdfSync('sha256', master, Buffer.alloc(0), `cdbp-cas/${purpose}/1`, 32));
}
