/**
 * What the proxy role says about itself on the ops port, as pure functions over facts the role gathers:
 * the readiness decision (/readyz reasons) and the certificate block of /v1/status. The role
 * (cli/proxy-role.ts) only collects the facts; the decisions and the wording live here, next to the
 * server that serves them (docs/OPERATIONS.md "/readyz", "/v1/status").
 */
import { X509Certificate } from 'node:crypto';

/** What the status needs of the renewal's bookkeeping (src/cas-client/renewal.ts RenewalStatus; structural, so ops does not depend on the CAS client). */
export interface RenewalFacts {
  renewals: number;
  lastRenewalAt: Date | undefined;
  nextRenewalAt: Date | undefined;
  error: string | undefined;
  consecutiveFailures: number;
}

export interface ProxyReadinessFacts {
  now: number;
  draining: boolean;
  /** The serving certificate's expiry, once provisioned. */
  certificateNotAfter: Date | undefined;
  /** The last renewal failure while renewals fail (RenewalStatus.error). */
  renewalError: string | undefined;
  freshnessViolation: { kind: string; message: string } | undefined;
  /** A server at the CAS URL failed the pinned CA. */
  casImpostor: { message: string } | undefined;
  lifecycleReady: boolean;
  /** A managed mariadbd: whether it is running (undefined when not managed). */
  mariadbRunning: boolean | undefined;
  /** The managed PostgreSQL's encrypted directory, when there is one. */
  storage: { mounted: boolean; reason?: string | null } | undefined;
}

/** /readyz: ready only when nothing below stands in the way; each reason says what does. */
export function proxyReadiness(f: ProxyReadinessFacts): { ready: boolean; reasons: string[] } {
  const reasons: string[] = [];
  if (f.draining) reasons.push('draining');
  if (f.certificateNotAfter && f.certificateNotAfter.getTime() <= f.now) {
    reasons.push(`certificate expired at ${f.certificateNotAfter.toISOString()}${f.renewalError ? ` (renewal failing: ${f.renewalError})` : ''}`);
  }
  const v = f.freshnessViolation;
  if (v) reasons.push(`freshness ${v.kind}: ${v.message}`);
  if (f.casImpostor) reasons.push(`CAS identity: ${f.casImpostor.message} (the counter can no longer be trusted; restart once the CAS is the real one again)`);
  if (f.lifecycleReady && f.mariadbRunning === false) reasons.push('backend: mariadbd is not running');
  if (f.storage && !f.storage.mounted && f.storage.reason) reasons.push(`storage: ${f.storage.reason}`);
  return { ready: reasons.length === 0, reasons };
}

/** The /v1/status `certificate` block: public facts of the serving certificate and of its renewal. */
export function certificateStatus(
  identity: { certPem: string; subject: string; notAfter: Date },
  renewal: Readonly<RenewalFacts>,
  now: number,
): Record<string, unknown> {
  return {
    ...certificateFacts(identity.certPem), subject: identity.subject,
    notAfter: identity.notAfter.toISOString(),
    expiresInSeconds: Math.round((identity.notAfter.getTime() - now) / 1000),
    ...renewalFacts(renewal),
  };
}

/** The renewal part of the certificate's /v1/status facts. */
function renewalFacts(r: Readonly<RenewalFacts>): Record<string, unknown> {
  return {
    renewals: r.renewals,
    lastRenewalAt: r.lastRenewalAt?.toISOString() ?? null,
    nextRenewalAt: r.nextRenewalAt?.toISOString() ?? null,
    ...(r.error ? { renewalError: r.error, renewalFailures: r.consecutiveFailures } : {}),
  };
}

/** Public facts about a certificate for status and logs. */
export function certificateFacts(certPem: string): { serial: string; notBefore: string; fingerprint256: string } {
  const c = new X509Certificate(certPem);
  return { serial: c.serialNumber, notBefore: new Date(c.validFrom).toISOString(), fingerprint256: c.fingerprint256 };
}
