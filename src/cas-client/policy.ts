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
import { fetchMemberKey } from './member-key.ts';
import { counterAnswerMessage, verifyAnswer } from '../provisioning/answers.ts';

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
  Promise<RecoveryAnswer> {
  const { nonce } = await casRequest<{ nonce: string }>(o.casUrl, 'POST', '/v1/nonce', { purpose: 'recover' }, { caPem: o.caPem });
  const signed = await signRecovery({ service: o.service, value: o.value, digest: o.digest, nonce }, o.ownerKey);
  const answer = await casRequest<Omit<RecoveryAnswer, 'nonce'>>(o.casUrl, 'POST', `/v1/services/${encodeURIComponent(o.service)}/recover`, signed, { caPem: o.caPem });
  return { ...answer, nonce };
}

/** The CAS's answer to a recovery: the counter now, signed over the owner's nonce (a member also signs its membership view). */
export interface RecoveryAnswer { value: number; digest: string; nonce: string; signature?: string; membership?: string }

/**
 * Which member re-anchored: its answer must be signed by the answer key its certificate (under the
 * deployment CA) names, over this recovery's nonce and the value asked for. Returns its slot.
 */
async function recoveredSlot(url: string, caPem: string, service: string, want: { value: number; digest: string }, a: RecoveryAnswer): Promise<{ slot: number; members: number }> {
  if (a.value !== want.value || a.digest !== want.digest || typeof a.membership !== 'string') {
    throw new CdbpError('PROTOCOL_VIOLATION', `${url}: the recovery answer names another counter, or no membership view`);
  }
  const k = await fetchMemberKey(url, { caPem });
  const msg = counterAnswerMessage({ service, op: 'recover', nonce: a.nonce, value: a.value, digest: a.digest, membership: a.membership });
  if (!verifyAnswer(k.key, msg, a.signature)) throw new CdbpError('CAS_IDENTITY_INVALID', `${url}: the recovery answer is not signed by that member's answer key`);
  return { slot: k.incarnation.slot, members: k.incarnation.members };
}

/**
 * The owner's re-anchoring on a replicated CAS: every member (each over its own nonce), acknowledged when
 * a majority accepted, like a counter advance. Returns the members that refused (the rest accepted).
 */
export async function recoverCounterOnMembers(o: { casUrls: string[]; caPem: string; ownerKey: SigningKeyPair; service: string; value: number; digest: string }): Promise<string[]> {
  const results = await Promise.all(o.casUrls.map((casUrl) => recoverCounter({ ...o, casUrl })
    .then((a) => recoveredSlot(casUrl, o.caPem, o.service, o, a))
    .then((r) => ({ url: casUrl, ...r }), (e: unknown) => `${casUrl}: ${asCdbpError(e).code}: ${asCdbpError(e).message}`)));
  const failed = results.filter((r): r is string => typeof r === 'string');
  const done = results.filter((r): r is { url: string; slot: number; members: number } => typeof r !== 'string');
  // A majority of the deployment's slots (its size from the members' certificates), each counted once:
  // URLs the host points at one member do not add up to a majority.
  const slots = new Set(done.map((r) => r.slot));
  const size = Math.max(o.casUrls.length, ...done.map((r) => r.members));
  const needed = majority(size);
  if (slots.size < needed) {
    const dup = done.length > slots.size ? ` (${done.length} URLs answered for ${slots.size} distinct member slot(s))` : '';
    throw new CdbpError('CAS_QUORUM_UNAVAILABLE', `counter of ${o.service} re-anchored on ${slots.size} of ${size} CAS members, ${needed} needed${dup}${failed.length ? `: ${failed.join('; ')}` : ''}`);
  }
  return failed;
}
