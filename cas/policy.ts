/**
 * The CAS's policy update rules. The signed-policy format itself (validation, hashing, signing) is the
 * contract both sides share and lives in src/provisioning/policy.ts.
 */
import { CdbpError } from '../src/kernel/errors.ts';
import type { Policy, SignedPolicy } from '../src/provisioning/policy.ts';

/** What the CAS holds for a service, as far as the update rules need it. */
export interface CurrentPolicy {
  owner: string;
  policyHash: string;
  policy: Policy;
}

export type UpdateDecision = { kind: 'create' } | { kind: 'update' } | { kind: 'unchanged' };

/**
 * The chain rules: the first policy binds the owner and has no predecessor; an update is signed by the
 * same owner and names the current policy's hash; key versions are never removed. Re-applying the
 * current policy is a no-op (idempotent deployments).
 */
export function checkPolicyUpdate(current: CurrentPolicy | undefined, next: SignedPolicy): UpdateDecision {
  if (!current) {
    if (next.policy.predecessor !== null) {
      throw new CdbpError('POLICY_CHAIN_BROKEN', `service ${next.policy.service} has no policy yet; the first policy must have predecessor null`);
    }
    return { kind: 'create' };
  }
  if (next.owner !== current.owner) {
    throw new CdbpError('POLICY_OWNER_MISMATCH', `policy for ${next.policy.service} is signed by a different owner than the one bound at first apply`);
  }
  if (next.policyHash === current.policyHash) return { kind: 'unchanged' };
  if (next.policy.predecessor !== current.policyHash) {
    throw new CdbpError('POLICY_CHAIN_BROKEN', `policy update must name the current policy ${current.policyHash} as predecessor`,
      { details: { expected: current.policyHash, got: next.policy.predecessor } });
  }
  const removed: string[] = [];
  for (const k of current.policy.dbKeys) {
    const nk = next.policy.dbKeys.find((x) => x.id === k.id);
    for (const v of k.versions) if (!nk?.versions.includes(v)) removed.push(`${k.id}v${v}`);
  }
  if (removed.length > 0) {
    throw new CdbpError('POLICY_INVALID', `key versions are kept forever; the update removes ${removed.join(', ')}`, { details: { removed } });
  }
  return { kind: 'update' };
}

