/**
 * `cdbp recover`: after a legitimate restore from backup, re-anchor the service's CAS counter to the
 * restored sealed freshness record (its epoch and digest). Owner-signed over a fresh CAS nonce and
 * audited by the CAS. This is the only way to move a counter backwards. With a replicated CAS (several
 * --cas URLs) every member is re-anchored and a majority must accept.
 *
 * `cdbp recover deployment`: the owner's signed, expiring permission for one member of a replicated CAS
 * that lost a majority of its members to reopen the deployment (`cdbp cas --ha-recover FILE`).
 */
import { readFileSync } from 'node:fs';
import { parseFlags } from '../../src/kernel/args.ts';
import { CdbpError } from '../../src/kernel/errors.ts';
import { sha256Fingerprint } from '../../src/crypto/x509.ts';
import { writeFileSync } from 'node:fs';
import { loadOwnerKey, COUNTER_DIGEST_RE, signHaRecovery, MAX_HA_RECOVERY_VALIDITY_MS } from '../../src/provisioning/policy.ts';
import { recoverCounter, recoverCounterOnMembers } from '../../src/cas-client/policy.ts';
import { peekRecordHeader, recordDigest } from '../../proxy/freshness/record.ts';

const USAGE = `usage: cdbp recover --cas URL[,URL..] --ca FILE --owner-key FILE --service S (--record FILE | --value N --digest HEX)
       cdbp recover deployment --ca FILE --owner-key FILE --out FILE [--valid-minutes 30] [--min-state-seq N]

Re-anchors the CAS counter of service S to (N, HEX): N is the epoch and HEX the digest of the sealed
freshness record you restored together with the data directory (--record reads both from that file).
Signed with the owner key; audited. Several URLs (a replicated CAS): every member, a majority must accept.

"deployment" writes the owner's signed permission (expiring, bound to the deployment's CA) for one
member of a replicated CAS that lost a majority of its members to reopen it: cdbp cas ... --ha-recover FILE.
Its counters start empty; re-anchor each service afterwards with the first form.`;

async function signDeployment(flags: Record<string, string | boolean | undefined>): Promise<number> {
  const missing = ['ca', 'owner-key', 'out'].filter((f) => typeof flags[f] !== 'string');
  if (missing.length > 0) throw new CdbpError('CONFIG_INVALID', `missing --${missing.join(', --')}\n${USAGE}`);
  const minutes = Number(flags['valid-minutes'] ?? 30);
  if (!Number.isFinite(minutes) || minutes <= 0 || minutes * 60_000 > MAX_HA_RECOVERY_VALIDITY_MS) throw new CdbpError('CONFIG_INVALID', '--valid-minutes must be > 0 and at most 1440');
  const minStateSeq = Number(flags['min-state-seq'] ?? 0);
  if (!Number.isSafeInteger(minStateSeq) || minStateSeq < 0) throw new CdbpError('CONFIG_INVALID', '--min-state-seq must be an integer ≥ 0');
  const ca = sha256Fingerprint(readFileSync(String(flags.ca)));
  const notAfter = new Date(Date.now() + minutes * 60_000).toISOString();
  const signed = await signHaRecovery({ ca, notAfter, minStateSeq }, loadOwnerKey(String(flags['owner-key'])));
  writeFileSync(String(flags.out), JSON.stringify(signed, null, 2) + '\n', { mode: 0o600 });
  console.log(`deployment recovery statement written to ${String(flags.out)} (valid until ${notAfter})`);
  return 0;
}

export async function run(argv: string[]): Promise<number> {
  const { flags, positionals } = parseFlags(argv, [], ['cas', 'ca', 'owner-key', 'service', 'value', 'digest', 'record', 'out', 'valid-minutes', 'min-state-seq'], { maxPositionals: 1 });
  if (flags.help) {
    console.log(USAGE);
    return 0;
  }
  if (positionals[0] === 'deployment') return signDeployment(flags);
  if (positionals.length > 0) throw new CdbpError('USAGE', `unexpected argument '${positionals[0]}'\n${USAGE}`);
  if (typeof flags.record === 'string') {
    const bytes = readFileSync(flags.record);
    flags.value = String(peekRecordHeader(bytes).epoch);
    flags.digest = recordDigest(bytes);
  }
  const missing = ['cas', 'ca', 'owner-key', 'service', 'value', 'digest'].filter((f) => typeof flags[f] !== 'string');
  if (missing.length > 0) throw new CdbpError('CONFIG_INVALID', `missing --${missing.join(', --')}\n${USAGE}`);
  const value = Number(flags.value);
  if (!Number.isSafeInteger(value) || value < 0) throw new CdbpError('CONFIG_INVALID', '--value must be an integer ≥ 0');
  const digest = String(flags.digest).toLowerCase();
  if (!COUNTER_DIGEST_RE.test(digest)) throw new CdbpError('CONFIG_INVALID', '--digest must be hex SHA-256/SHA-512 (or empty for value 0)');
  const urls = String(flags.cas).split(',').map((u) => u.trim()).filter((u) => u !== '');
  const caPem = readFileSync(String(flags.ca), 'utf8');
  const ownerKey = loadOwnerKey(String(flags['owner-key']));
  if (urls.length === 1) {
    const r = await recoverCounter({ casUrl: urls[0]!, caPem, ownerKey, service: String(flags.service), value, digest });
    console.log(`counter of ${String(flags.service)} re-anchored to ${r.value} (${r.digest || 'no digest'})`);
    return 0;
  }
  const failed = await recoverCounterOnMembers({ casUrls: urls, caPem, ownerKey, service: String(flags.service), value, digest });
  for (const f of failed) console.error(`cdbp recover: warning: ${f}`);
  console.log(`counter of ${String(flags.service)} re-anchored to ${value} (${digest || 'no digest'}) on ${urls.length - failed.length} of ${urls.length} CAS instances`);
  return 0;
}
