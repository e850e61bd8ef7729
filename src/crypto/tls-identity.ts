/**
 * The one TLS identity of a TEE process: every listener (MySQL Node and native planes, PostgreSQL, keyring)
 * reads it from here, and renewal changes it in one call (the shape of ghostunnel's certificate loader).
 *
 * Stable API:
 *   const holder = new TlsIdentityHolder({ keyPem, certPem });   // throws CONFIG_INVALID on a bad pair
 *   identityHolder(source)    // a holder as is, or a new one around a PEM pair (tests, single listeners)
 *   holder.context            // tls.SecureContext for NEW handshakes (pass as `secureContext`)
 *   holder.pem                // the current pair, for a consumer that builds its own context (native plane)
 *   holder.onChange(fn)       // fn(pem) after each successful swap; returns the unsubscribe function
 *   holder.set({ keyPem, certPem })  // validates first; on failure throws and KEEPS the old identity
 *   holder.generation         // increments on each successful swap (for logs / status)
 *   holder.certificate        // the current leaf as an X509Certificate (expiry for /v1/status)
 *   TLS_SERVER_DEFAULTS       // ciphers/curves/versions used for every context
 *
 * Open sessions keep the context they were created with (OpenSSL holds a reference), so renewal never
 * drops a connection. Session-ticket keys are generated once per holder and survive swaps, so clients
 * resuming with a ticket issued before a renewal can still resume.
 */
import tls from 'node:tls';
import { randomBytes, X509Certificate } from 'node:crypto';
import { CdbpError } from '../kernel/errors.ts';

export interface TlsIdentityPem {
  keyPem: string;
  certPem: string;
}

/**
 * Why these settings: TLS 1.2+ only; AES-GCM first (hardware AES on every server CPU we target, and the
 * cheapest AEAD there), ChaCha20 kept for clients without AES-NI; X25519 then P-256 for ECDHE. Order is
 * the server's so clients do not pick AES-256 when AES-128 gives the same security margin here.
 */
export const TLS_SERVER_DEFAULTS = {
  minVersion: 'TLSv1.2' as const,
  ciphers: [
    'TLS_AES_128_GCM_SHA256', 'TLS_AES_256_GCM_SHA384', 'TLS_CHACHA20_POLY1305_SHA256',
    'ECDHE-ECDSA-AES128-GCM-SHA256', 'ECDHE-RSA-AES128-GCM-SHA256',
    'ECDHE-ECDSA-AES256-GCM-SHA384', 'ECDHE-RSA-AES256-GCM-SHA384',
    'ECDHE-ECDSA-CHACHA20-POLY1305', 'ECDHE-RSA-CHACHA20-POLY1305',
  ].join(':'),
  ecdhCurve: 'X25519:P-256',
  honorCipherOrder: true,
  sessionTimeout: 300,
};

export type TlsIdentitySource = TlsIdentityHolder | TlsIdentityPem;

/** The holder itself, or a private holder around a fixed pair (a listener used on its own, tests). */
export function identityHolder(source: TlsIdentitySource): TlsIdentityHolder {
  return source instanceof TlsIdentityHolder ? source : new TlsIdentityHolder(source);
}

export class TlsIdentityHolder {
  private current: tls.SecureContext;
  private cert: X509Certificate;
  private pair: TlsIdentityPem;
  private gen = 0;
  private readonly ticketKeys = randomBytes(48);
  private readonly listeners = new Set<(pem: TlsIdentityPem) => void>();

  constructor(identity: TlsIdentityPem) {
    const { context, cert } = this.build(identity);
    this.current = context;
    this.cert = cert;
    this.pair = { keyPem: identity.keyPem, certPem: identity.certPem };
  }

  get pem(): TlsIdentityPem {
    return this.pair;
  }

  onChange(listener: (pem: TlsIdentityPem) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  get context(): tls.SecureContext {
    return this.current;
  }

  get generation(): number {
    return this.gen;
  }

  get certificate(): X509Certificate {
    return this.cert;
  }

  /**
   * Validated before anything changes, so a bad pair leaves every listener on the old identity. A consumer
   * that then fails to take the new pair (it validated here with the same OpenSSL, so this is not expected)
   * does not stop the others: the first such error is thrown after all were told.
   */
  set(identity: TlsIdentityPem): void {
    const { context, cert } = this.build(identity);
    this.current = context;
    this.cert = cert;
    this.pair = { keyPem: identity.keyPem, certPem: identity.certPem };
    this.gen++;
    let failure: unknown;
    for (const listener of this.listeners) {
      try { listener(this.pair); } catch (e) { failure ??= e; }
    }
    if (failure !== undefined) throw failure;
  }

  private build(identity: TlsIdentityPem): { context: tls.SecureContext; cert: X509Certificate } {
    try {
      const cert = new X509Certificate(identity.certPem);
      const context = tls.createSecureContext({ key: identity.keyPem, cert: identity.certPem, ...TLS_SERVER_DEFAULTS });
      // createSecureContext checks the key against the certificate (OpenSSL "key values mismatch").
      context.context.setTicketKeys(this.ticketKeys);
      return { context, cert };
    } catch (e) {
      throw new CdbpError('CONFIG_INVALID', `TLS identity rejected: ${(e as Error).message}`, { cause: e });
    }
  }
}
