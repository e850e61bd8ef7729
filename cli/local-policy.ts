/**
 * What the owner does for the local stack, done programmatically by `cdbp up`: keep an owner key, and
 * keep the service's policy allowing exactly this build's measurement (a rebuilt proxy has a new
 * measurement, so the policy is re-signed naming its predecessor; key versions already issued stay).
 */
import { existsSync } from 'node:fs';
import { buildPolicy, generateOwnerKey, loadOwnerKey, signPolicy, type Policy } from '../src/provisioning/policy.ts';
import { applySignedPolicy, getCurrentPolicy } from '../src/cas-client/policy.ts';

export async function ensureOwnerKey(file: string): Promise<void> {
  if (!existsSync(file)) await generateOwnerKey(file);
}

export interface LocalPolicyOptions {
  casUrl: string;
  caPem: string;
  ownerKeyFile: string;
  service: string;
  measurement: string;
  /** Certificate lifetime; short so renewal is exercised in normal use. */
  lifetimeSeconds?: number;
}

export async function ensureServicePolicy(o: LocalPolicyOptions): Promise<{ changed: boolean; policyHash: string }> {
  const current = await getCurrentPolicy(o.casUrl, o.caPem, o.service);
  const previous: Policy | undefined = current?.policy;
  const wanted = buildPolicy({
    service: o.service,
    predecessor: current?.policyHash ?? null,
    measurements: [o.measurement],
    teeModes: ['simulated'],
    dnsNames: ['localhost'],
    ipAddresses: ['127.0.0.1'],
    lifetimeSeconds: o.lifetimeSeconds ?? 86_400,
    // Key 1 = default table key, key 2 = temporary files (MariaDB's conventions); versions kept forever.
    dbKeys: previous?.dbKeys ?? [{ id: 1, versions: [1] }, { id: 2, versions: [1] }],
  });
  if (previous && current && samePolicy(previous, wanted)) return { changed: false, policyHash: current.policyHash };
  const signed = await signPolicy(wanted, loadOwnerKey(o.ownerKeyFile));
  const result = await applySignedPolicy(o.casUrl, o.caPem, signed);
  return { changed: result.status !== 'unchanged', policyHash: result.policyHash };
}

function samePolicy(a: Policy, b: Policy): boolean {
  const strip = (p: Policy) => JSON.stringify({ ...p, predecessor: null });
  return strip(a) === strip(b);
}
