import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';

/**
 * The keyring's bearer token. One token is valid at a time: `issue()` draws a fresh random one for each
 * mariadbd start and invalidates the previous, so a token read from an old process (e.g. /proc/PID/environ)
 * is useless after a restart.
 *
 * Comparison is constant-time over SHA-256 digests, so neither the content nor the length of the
 * presented token influences timing (timingSafeEqual alone needs equal lengths).
 */
export class TokenGate {
  private digest: Buffer | undefined;

  /** 32 random bytes, base64url (43 chars): safe in an environment variable and an HTTP header. */
  issue(): string {
    const token = randomBytes(32).toString('base64url');
    this.digest = sha256(token);
    return token;
  }

  /** No token issued yet (or revoked): every request is refused. */
  get ready(): boolean {
    return this.digest !== undefined;
  }

  revoke(): void {
    this.digest = undefined;
  }

  check(presented: string | string[] | undefined): boolean {
    const current = this.digest;
    if (current === undefined || typeof presented !== 'string') return false;
    return timingSafeEqual(sha256(presented), current);
  }
}

function sha256(s: string): Buffer {
  return createHash('sha256').update(s, 'utf8').digest();
}
