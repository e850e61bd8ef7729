/**
 * A small JSON-over-HTTPS client for the CAS: pinned CA, the CAS role required of the server's
 * certificate (not just a certificate from the CA for the host: services get those too), optional client
 * certificate (counter routes), bounded response size, and CAS errors turned back into CdbpErrors with
 * the server's code.
 */
import https from 'node:https';
import { CdbpError, type ErrorCode } from '../kernel/errors.ts';
import { checkCasServerIdentity } from '../crypto/x509.ts';

const MAX_RESPONSE = 1024 * 1024;

/**
 * OpenSSL verification results that mean "the server's certificate is not from the CA we pinned" (or
 * is not a certificate for the CAS at all). Anything else on the way (refused, reset, timeout) is the
 * network; these are an identity question: someone else answers at the CAS's address.
 */
const IDENTITY_FAILURES = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'UNABLE_TO_GET_ISSUER_CERT', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN', 'DEPTH_ZERO_SELF_SIGNED_CERT', 'CERT_SIGNATURE_FAILURE', 'CERT_UNTRUSTED',
  'CERT_REJECTED', 'INVALID_CA', 'ERR_TLS_CERT_ALTNAME_INVALID',
]);

/** What a CAS client reports when the server at the CAS URL is not the CAS it pinned. */
export interface CasIdentityAlarm {
  casUrl: string;
  /** OpenSSL's verdict (e.g. UNABLE_TO_VERIFY_LEAF_SIGNATURE) or CAS_IDENTITY_INVALID (wrong role). */
  reason: string;
  message: string;
}

const identityListeners = new Set<(a: CasIdentityAlarm) => void>();

/**
 * Every verified CAS request (provisioning, renewal, the counter client, policy tools) reports here when
 * the server fails the pinned CA or the CAS role. One seam for the alarm, whoever made the request: the
 * counter client and re-attestation need no alarm plumbing of their own. Returns the unsubscribe.
 */
export function onCasIdentityAlarm(listener: (a: CasIdentityAlarm) => void): () => void {
  identityListeners.add(listener);
  return () => { identityListeners.delete(listener); };
}

function raiseIdentityAlarm(a: CasIdentityAlarm): void {
  for (const l of identityListeners) {
    try { l(a); } catch { /* a listener's failure must not hide the refusal */ }
  }
}

export interface CasHttpOptions {
  caPem?: string;
  /** Only for the CA bootstrap (fetchCaPem): accept any server certificate. */
  insecure?: boolean;
  agent?: https.Agent;
  timeoutMs?: number;
}

export function casAgent(o: { caPem: string; keyPem?: string; certPem?: string; keepAlive?: boolean }): https.Agent {
  return new https.Agent({
    ca: o.caPem, key: o.keyPem, cert: o.certPem, keepAlive: o.keepAlive ?? true, maxSockets: 4, checkServerIdentity: checkCasServerIdentity,
  });
}

export async function casRequest<T>(baseUrl: string, method: 'GET' | 'POST', path: string, body: unknown, o: CasHttpOptions): Promise<T> {
  const url = new URL(path, baseUrl);
  if (url.protocol !== 'https:') throw new CdbpError('CONFIG_INVALID', `CAS URL must be https: ${baseUrl}`);
  const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
  return new Promise<T>((resolve, reject) => {
    const req = https.request(url, {
      method,
      agent: o.agent,
      ...(o.agent ? {} : { ca: o.caPem, rejectUnauthorized: !o.insecure, ...(o.insecure ? {} : { checkServerIdentity: checkCasServerIdentity }) }),
      headers: payload ? { 'content-type': 'application/json', 'content-length': payload.length } : {},
      timeout: o.timeoutMs ?? 30_000,
    }, (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (c: Buffer) => {
        size += c.length;
        if (size > MAX_RESPONSE) {
          req.destroy(new CdbpError('PROTOCOL_VIOLATION', 'CAS response too large'));
          return;
        }
        chunks.push(c);
      });
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let parsed: unknown;
        try {
          parsed = text.length > 0 ? JSON.parse(text) : undefined;
        } catch {
          reject(new CdbpError('PROTOCOL_VIOLATION', `CAS answered ${res.statusCode} with non-JSON`));
          return;
        }
        const status = res.statusCode ?? 0;
        if (status >= 200 && status < 300) {
          resolve(parsed as T);
          return;
        }
        const err = (parsed as { error?: { code?: string; message?: string; details?: Record<string, unknown> } } | undefined)?.error;
        reject(new CdbpError((err?.code ?? 'INTERNAL') as ErrorCode, `CAS: ${err?.message ?? `HTTP ${status}`}`,
          { details: { status, ...err?.details } }));
      });
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new CdbpError('CAS_UNREACHABLE', `CAS ${baseUrl} did not answer in time`)));
    req.on('error', (e) => reject(casConnectionError(e, baseUrl, !o.insecure)));
    req.end(payload);
  });
}

/**
 * A failed connection to the CAS as a CdbpError: a server failing the pinned CA or the CAS role is
 * CAS_IDENTITY_INVALID (and raises the impostor alarm), anything else on the way is CAS_UNREACHABLE.
 * Shared by the HTTPS requests and the counter channel (counter-channel.ts).
 */
export function casConnectionError(e: Error, baseUrl: string, verified: boolean): CdbpError {
  const code = (e as { code?: string }).code ?? '';
  if (verified && (IDENTITY_FAILURES.has(code) || (e instanceof CdbpError && e.code === 'CAS_IDENTITY_INVALID'))) {
    const reason = e instanceof CdbpError ? e.code : code;
    const err = new CdbpError('CAS_IDENTITY_INVALID',
      `the server at ${baseUrl} is not the pinned CAS (${reason}: ${e.message}); refusing to talk to it`,
      { cause: e, details: { reason } });
    raiseIdentityAlarm({ casUrl: baseUrl, reason, message: err.message });
    return err;
  }
  if (e instanceof CdbpError) return e;
  return new CdbpError('CAS_UNREACHABLE', `cannot reach the CAS at ${baseUrl}: ${e.message}`, { cause: e });
}

