/**
 * Hashing, canonical JSON and constant-time comparison: the small pure pieces that policies, the audit
 * chain and attestation report data are built from.
 */
import { createHash, timingSafeEqual } from 'node:crypto';

export function sha256(...parts: Array<Buffer | string>): Buffer {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return h.digest();
}

export function sha256Hex(...parts: Array<Buffer | string>): string {
  return sha256(...parts).toString('hex');
}

export function sha512(...parts: Array<Buffer | string>): Buffer {
  const h = createHash('sha512');
  for (const p of parts) h.update(p);
  return h.digest();
}

/**
 * Constant-time equality for secrets and MACs. Different lengths return false without comparing
 * contents (the length of a MAC or token is not secret).
 */
export function constantTimeEqual(a: Buffer | string, b: Buffer | string): boolean {
  const x = typeof a === 'string' ? Buffer.from(a) : a;
  const y = typeof b === 'string' ? Buffer.from(b) : b;
  if (x.length !== y.length) return false;
  return timingSafeEqual(x, y);
}

/**
 * Canonical JSON: object keys sorted, no whitespace, no undefined members. Used wherever a hash or a
 * signature covers a JSON value, so that two parties serialising the same value get the same bytes.
 * Only plain JSON values are accepted (no Buffers, Dates, NaN).
 */
export function canonicalJson(value: unknown): string {
  if (value === null) return 'null';
  switch (typeof value) {
    case 'boolean':
      return value ? 'true' : 'false';
    case 'number':
      if (!Number.isFinite(value)) throw new TypeError('canonicalJson: non-finite number');
      return JSON.stringify(value);
    case 'string':
      return JSON.stringify(value);
    case 'object': {
      if (Array.isArray(value)) return `[${value.map((v) => canonicalJson(v)).join(',')}]`;
      const proto = Object.getPrototypeOf(value);
      if (proto !== Object.prototype && proto !== null) throw new TypeError('canonicalJson: not a plain object');
      const entries = Object.entries(value as Record<string, unknown>)
        .filter(([, v]) => v !== undefined)
        .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
      return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
    }
    default:
      throw new TypeError(`canonicalJson: unsupported ${typeof value}`);
  }
}

export function isHex(s: unknown, bytes?: number): s is string {
  if (typeof s !== 'string' || s.length % 2 !== 0 || !/^[0-9a-f]*$/.test(s)) return false;
  return bytes === undefined || s.length === bytes * 2;
}
