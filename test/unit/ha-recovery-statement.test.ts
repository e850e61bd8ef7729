/**
 * The owner's statement that reopens a replicated CAS after a majority loss (src/provisioning/policy.ts):
 * signed by an owner of the deployment, for this deployment's CA, not expired, not valid for more than
 * 24 h, and nothing added to or changed in what was signed.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { generateSigningKeyPair } from '../../src/crypto/ed25519.ts';
import { signHaRecovery, verifySignedHaRecovery, type SignedHaRecovery } from '../../src/provisioning/policy.ts';
import { isCdbpError, type ErrorCode } from '../../src/kernel/errors.ts';

const CA = 'cd'.repeat(32);
const now = new Date('2026-12-03T12:00:00Z');
const inMinutes = (m: number): string => new Date(now.getTime() + m * 60_000).toISOString();

test('deployment recovery statement: accepted only as signed, by an owner, for this CA, within its time', async () => {
  const owner = await generateSigningKeyPair();
  const other = await generateSigningKeyPair();
  const owners = [owner.publicKey.toString('hex')];
  const good = await signHaRecovery({ ca: CA, notAfter: inMinutes(30), minStateSeq: 4 }, owner);
  assert.deepEqual(await verifySignedHaRecovery(good, { owners, caFingerprint: CA, now }), good.statement);

  const refused = async (input: SignedHaRecovery, code: ErrorCode, why: RegExp, caFingerprint = CA) => {
    await assert.rejects(verifySignedHaRecovery(input, { owners, caFingerprint, now }), (e: unknown) => isCdbpError(e, code) && why.test((e as Error).message));
  };
  await refused(await signHaRecovery({ ca: CA, notAfter: inMinutes(30), minStateSeq: 0 }, other), 'POLICY_OWNER_MISMATCH', /not an owner/);
  await refused(good, 'POLICY_OWNER_MISMATCH', /another deployment/, 'ef'.repeat(32));
  await refused(await signHaRecovery({ ca: CA, notAfter: inMinutes(-1), minStateSeq: 0 }, owner), 'HA_RECOVERY_REFUSED', /expired/);
  await refused(await signHaRecovery({ ca: CA, notAfter: inMinutes(25 * 60), minStateSeq: 0 }, owner), 'HA_RECOVERY_REFUSED', /more than 24 h/);
  // Changed after signing: a later expiry, a lower state floor, an extra field.
  await refused({ ...good, statement: { ...good.statement, notAfter: inMinutes(60) } }, 'POLICY_SIGNATURE_INVALID', /does not verify/);
  await refused({ ...good, statement: { ...good.statement, minStateSeq: 0 } }, 'POLICY_SIGNATURE_INVALID', /does not verify/);
  await refused({ ...good, statement: { ...good.statement, extra: 1 } as never }, 'BAD_REQUEST', /malformed/);
  await refused({ ...good, statement: { ...good.statement, format: 'cdbp-recovery/1' } as never }, 'BAD_REQUEST', /malformed/);
  await refused({ ...good, owner: other.publicKey.toString('hex') }, 'POLICY_SIGNATURE_INVALID', /does not verify/);
});
