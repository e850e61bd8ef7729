/**
 * Maps the BackendKeyData the proxy handed to a client (random per session) to the backend's real
 * key data. Clients never learn backend pids or secrets; a CancelRequest only reaches a backend when
 * it carries a key we issued. Secrets are compared in constant time.
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';

export interface BackendKey {
  processId: number;
  secretKey: number;
}

export interface IssuedKey extends BackendKey {
  /** Forgets the mapping (session closed). */
  release(): void;
}

export class CancelRegistry {
  private readonly byProcessId = new Map<number, { secret: Buffer; backend: BackendKey }>();

  /** Issues a fresh proxy-side key for a session whose backend key is `backend`. */
  issue(backend: BackendKey): IssuedKey {
    let processId: number;
    do {
      // Positive int32 (some clients treat the pid as signed), never 0.
      processId = randomBytes(4).readUInt32BE(0) & 0x7fffffff;
    } while (processId === 0 || this.byProcessId.has(processId));
    const secret = randomBytes(4);
    this.byProcessId.set(processId, { secret, backend: { ...backend } });
    return {
      processId,
      secretKey: secret.readUInt32BE(0),
      release: () => {
        this.byProcessId.delete(processId);
      },
    };
  }

  /** The backend key for a client's CancelRequest, or undefined when it names no live session. */
  lookup(processId: number, secretKey: number): BackendKey | undefined {
    const entry = this.byProcessId.get(processId >>> 0);
    if (!entry) return undefined;
    const given = Buffer.alloc(4);
    given.writeUInt32BE(secretKey >>> 0, 0);
    return timingSafeEqual(given, entry.secret) ? { ...entry.backend } : undefined;
  }

  get size(): number {
    return this.byProcessId.size;
  }
}
