/**
 * `cdbp recover`: after a legitimate restore from backup, re-anchor the service's CAS counter to the
 * restored sealed freshness record (its epoch and digest). Owner-signed over a fresh CAS nonce and
 * audited by the CAS. This is the only way to move a counter backwards.
 */
import { readFileSync } from 'node:fs';
import { parseFlags } from '../../src/kernel/args.ts';
import { CdbpError } from '../../src/kernel/errors.ts';
import { loadOwnerKey, COUNTER_DIGEST_RE } from '../../src/provisioning/policy.ts';
import { recoverCounter } from '../../src/cas-client/policy.ts';
import { peekRecordHeader, recordDigest } from '../../proxy/freshness/record.ts';

const USAGE = `usage: cdbp recover --cas URL --ca FILE --owner-key FILE --service S (--record FILE | --value N --digest HEX)

Re-anchors the CAS counter of service S to (N, HEX): N is the epoch and HEX the digest of the sealed
freshness record you restored together with the data directory (--record reads both from that file).
Signed with the owner key; audited.`;

export async function run(argv: string[]): Promise<number> {
  const { flags } = parseFlags(argv, [], ['cas', 'ca', 'owner-key', 'service', 'value', 'digest', 'record'], { maxPositionals: 0 });
  if (flags.help) {
    console.log(USAGE);
    return 0;
  }
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
  const r = await recoverCounter({
    casUrl: String(flags.cas), caPem: readFileSync(String(flags.ca), 'utf8'), ownerKey: loadOwnerKey(String(flags['owner-key'])),
    service: String(flags.service), value, digest,
  });
  console.log(`counter of ${String(flags.service)} re-anchored to ${r.value} (${r.digest || 'no digest'})`);
  return 0;
}
