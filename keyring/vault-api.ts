/**
 * The subset of the HashiCorp Vault KV v2 HTTP API that MariaDB's `hashicorp_key_management` plugin
 * (10.11) calls, as pure functions: request target → parsed request, key → response body.
 * Facts behind every choice here: docs/KEYRING.md and /work/shared/docs/mariadb-keyring.md.
 *
 *   GET /v1/sys/mounts/<mount>/tune          → { "options": { "version": "2" } }   (check-kv-version=ON)
 *   GET /v1/<mount>/data/<id>                → latest version of key <id>
 *   GET /v1/<mount>/data/<id>?version=<v>    → that exact version
 *
 * Anything else is `malformed`; the server never answers it with HTTP (it resets the connection).
 */

/** Largest request target we accept; the plugin's are < 100 bytes. */
export const MAX_TARGET_LENGTH = 512;
/** Key ids and versions are unsigned 32-bit in the plugin API; ~0 is ENCRYPTION_KEY_VERSION_INVALID. */
export const MAX_KEY_ID = 0xffff_fffe;
export const MAX_KEY_VERSION = 0xffff_fffe;
/** Mount names we agree to serve: a single path segment, no dots, no escapes. */
export const MOUNT_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;

export type VaultRequest =
  | { kind: 'tune' }
  | { kind: 'key'; id: number; version: number | 'latest' }
  | { kind: 'malformed'; reason: string };

/** Digits only, no sign, no leading zeros, no exponent: what the plugin's `%u` produces. */
const DECIMAL = /^(0|[1-9][0-9]{0,9})$/;

function parseDecimal(s: string, max: number): number | undefined {
  if (!DECIMAL.test(s)) return undefined;
  const n = Number(s);
  return n >= 1 && n <= max ? n : undefined;
}

/**
 * Parses one request line. Pure: no token, no key store. The mount is compared exactly; percent-escapes,
 * dot segments and duplicate slashes are malformed rather than normalised, so there is one spelling of
 * each resource and nothing to confuse.
 */
export function parseVaultRequest(method: string | undefined, target: string | undefined, mount: string): VaultRequest {
  if (method !== 'GET') return { kind: 'malformed', reason: 'method' };
  if (target === undefined || target.length === 0 || target.length > MAX_TARGET_LENGTH) {
    return { kind: 'malformed', reason: 'target_length' };
  }
  if (!/^[A-Za-z0-9/_?=-]+$/.test(target)) return { kind: 'malformed', reason: 'target_charset' };
  const q = target.indexOf('?');
  const path = q === -1 ? target : target.slice(0, q);
  const query = q === -1 ? undefined : target.slice(q + 1);

  if (path === `/v1/sys/mounts/${mount}/tune`) {
    return query === undefined ? { kind: 'tune' } : { kind: 'malformed', reason: 'query' };
  }
  const prefix = `/v1/${mount}/data/`;
  if (!path.startsWith(prefix)) return { kind: 'malformed', reason: 'path' };
  const id = parseDecimal(path.slice(prefix.length), MAX_KEY_ID);
  if (id === undefined) return { kind: 'malformed', reason: 'key_id' };
  if (query === undefined) return { kind: 'key', id, version: 'latest' };
  const m = /^version=([0-9]+)$/.exec(query);
  const version = m ? parseDecimal(m[1]!, MAX_KEY_VERSION) : undefined;
  if (version === undefined) return { kind: 'malformed', reason: 'query' };
  return { kind: 'key', id, version };
}

/** Mount tune answer: the plugin only reads top-level `options.version` (must be ≥ 2). */
export function tuneBody(): string {
  return JSON.stringify({ type: 'kv', options: { version: '2' }, description: 'cdbp keyring' });
}

/**
 * A KV v2 secret read. `metadata.version` MUST be a JSON number: a string aborts mariadbd start-up and
 * dumps the whole body (key included) into its error log.
 */
export function keyBody(key: Buffer, version: number): string {
  return JSON.stringify({ data: { data: { data: key.toString('hex') }, metadata: { version } } });
}

/** What the plugin treats as "key not found" (a 404 with an empty error list). */
export function notFoundBody(): string {
  return JSON.stringify({ errors: [] });
}
