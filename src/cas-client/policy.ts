/**
 * Owner-side calls to the CAS: apply a signed policy, read the current policy (hash), and the
 * owner-signed counter recovery. The signing itself is in src/provisioning/policy.ts (pure).
 */
import type { SigningKeyPair } from '../crypto/ed25519.ts';
import type { Policy, SignedPolicy } from '../provisioning/policy.ts';
import { signRecovery } from '../provisioning/policy.ts';
import { CdbpError, asCdbpError, isCdbpError } from '../kernel/errors.ts';
import { casRequest } from './http.ts';
import { majority } from './quorum.ts';

export interface ApplyResult {
  service: string;
  policyHash: string;
  status: 'created' | 'updated' | 'unchanged';
  newKeys: string[];
}

export function applySignedPolicy(casUrl: string, caPem: string, signed: SignedPolicy): Promise<ApplyResult> {
  return casRequest<ApplyResult>(casUrl, 'POST', '/v1/policies', signed, { caPem });
}

export interface CurrentPolicy {
  service: string;
  policyHash: string;
  owner: string;
  signed: SignedPolicy;
  history: Array<{ policyHash: string; appliedAt: string }>;
}

/** The service's current policy, or undefined if it has none yet. */
export async function getCurrentPolicy(casUrl: string, caPem: string, service: string): Promise<(CurrentPolicy & { policy: Policy }) | undefined> {
  try {
    const r = await casRequest<CurrentPolicy>(casUrl, 'GET', `/v1/services/${encodeURIComponent(service)}/policy`, undefined, { caPem });
    return { ...r, policy: r.signed.policy };
  } catch (e) {
    if (isCdbpError(e, 'SERVICE_UNKNOWN')) return undefined;
    throw e;
  }
}

/** Hash of the current policy (the predecessor for the next update), or null if there is none. */
export async function getCurrentPolicyHash(casUrl: string, caPem: string, service: string): Promise<string | null> {
  return (await getCurrentPolicy(casUrl, caPem, service))?.policyHash ?? null;
}

/**
 * Re-anchors a service's counter to (value, digest) after a legitimate restore from backup. Owner-
 * signed over a fresh CAS nonce, so the signed request cannot be replayed; audited by the CAS.
 */
export async function recoverCounter(o: { casUrl: string; caPem: string; ownerKey: SigningKeyPair; service: string; value: number; digest: string }):
  Promise<{ value: number; digest: string }> {
  const { nonce } = await casRequest<{ nonce: string }>(o.casUrl, 'POST', '/v1/nonce', { purpose: 'recover' }, { caPem: o.caPem });
  const signed = await signRecovery({ service: o.service, value: o.value, digest: o.digest, nonce }, o.ownerKey);
  return casRequest(o.casUrl, 'POST', `/v1/services/${encodeURIComponent(o.service)}/recover`, signed, { caPem: o.caPem });
}

/**
 * The owner's re-anchoring on a replicated CAS: every member (each over its own nonce), acknowledged when
 * a majority accepted, like a counter advance. Returns the members that refused (the rest accepted).
 */
export async function recoverCounterOnMembers(o: { casUrls: string[]; caPem: string; ownerKey: SigningKeyPair; service: string; value: number; digest: string }): Promise<string[]> {
  const results = await Promise.all(o.casUrls.map((casUrl) => recoverCounter({ ...o, casUrl })
    .then(() => undefined, (e: unknown) => `${casUrl}: ${asCdbpError(e).code}: ${asCdbpError(e).message}`)));
  const failed = results.filter((r): r is string => r !== undefined);
  const needed = majority(o.casUrls.length);
  if (o.casUrls.length - failed.length < needed) {
    throw new CdbpError('CAS_QUORUM_UNAVAILABLE', `counter of ${o.service} re-anchored on ${o.casUrls.length - failed.length} of ${o.casUrls.length} CAS instances, ${needed} needed: ${failed.join('; ')}`);
  }
  return failed;
}
