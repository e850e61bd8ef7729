/**
 * Launch binding: the VM was started for *this* owner policy. The host that launches a confidential VM
 * sets one field the hardware then signs into every report, and which the guest cannot change:
 *
 *   SEV-SNP  HOST_DATA (32 bytes, SNP_LAUNCH_FINISH; AMD SEV-SNP ABI spec. 56860, Table "ATTESTATION_REPORT")
 *   TDX      MRCONFIGID (48 bytes, TDH.MNG.INIT; Intel TDX Module ABI: "software-defined ID for
 *            non-owner-defined configuration of the guest TD")
 *
 * We follow the Confidential Containers convention (trustee `kbs/docs/initdata.md`: the init-data digest
 * goes to SNP HOST_DATA and TDX MRCONFIGID, a shorter digest zero-padded to the field) rather than TDX's
 * MROWNERCONFIG, because MRCONFIGID is what the CoCo stack, QEMU (`tdx-guest,mrconfigid=`) and the Linux
 * TDX guest ABI (sysfs `measurements/mrconfigid`) expose for "the configuration this TD was launched for".
 *
 * The value is the policy hash the owner signs (src/provisioning/policy.ts `policyHash`: SHA-256 of the
 * canonical policy), so one number identifies the policy everywhere: HOST_DATA = policyHash,
 * MRCONFIGID = policyHash ‖ 0^16. Pure.
 */
import { CdbpError } from '../kernel/errors.ts';
import { constantTimeEqual } from '../crypto/hash.ts';

export type BoundField = 'HOST_DATA' | 'MRCONFIGID';

const FIELD_BYTES: Record<BoundField, number> = { HOST_DATA: 32, MRCONFIGID: 48 };

/** The bytes `field` must hold for a VM launched for the policy whose hash is `policyHash` (hex SHA-256). */
export function launchBindingValue(field: BoundField, policyHash: string): Buffer {
  if (!/^[0-9a-f]{64}$/.test(policyHash)) throw new CdbpError('POLICY_INVALID', `policy hash ${policyHash} is not a hex SHA-256`);
  const out = Buffer.alloc(FIELD_BYTES[field]);
  Buffer.from(policyHash, 'hex').copy(out);
  return out;
}

/**
 * Refuses (TEE_POLICY_BINDING_MISMATCH) unless `value` binds `policyHash`. Called only when the policy
 * requires the binding; a verifier that was not told which policy it is checking against fails closed.
 */
export function checkLaunchBinding(field: BoundField, value: Buffer, policyHash: string | undefined): void {
  if (policyHash === undefined) {
    throw new CdbpError('TEE_POLICY_BINDING_MISMATCH', `the policy requires ${field} to carry its hash, but the verifier was not given the policy hash to compare`);
  }
  const want = launchBindingValue(field, policyHash);
  if (value.length !== want.length || !constantTimeEqual(value, want)) {
    throw new CdbpError('TEE_POLICY_BINDING_MISMATCH',
      `${field} ${value.toString('hex')} does not bind the owner's policy ${policyHash} (expected ${want.toString('hex')}): the VM was launched for another policy`,
      { details: { field, have: value.toString('hex'), want: want.toString('hex'), policyHash } });
  }
}
