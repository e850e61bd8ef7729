/**
 * Two attacks on the owner's reopen of a replicated CAS (review of 2026-12-03), with real members over
 * a real etcd and a TCP forwarder in front of each member (the host's network):
 * - An old member hidden from the reopen: member 2 is cut off (it misses advances), the other two die,
 *   the owner reopens member 1 (member 2 does not answer, so the reopen goes ahead), then the host lets
 *   member 2 back. A joiner that catches up from it would take its older counter for an anchored one and
 *   a proxy would read it: the reopen retires every earlier incarnation, so the joiner learns nothing
 *   from it and the counter stays unanchored.
 * - A re-anchoring held back: the host keeps the owner's signed recovery for two members, the owner
 *   retries and the proxy advances, then the host delivers the held ones. They are stale (their nonces
 *   were issued before the counter changed) and refused: the counter does not go back.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { randomBytes, createHash } from 'node:crypto';
import { tempDir } from '../support/tmp.ts';
import { runCdbp } from '../support/cas.ts';
import { readMember, startHaCluster, type HaCluster } from '../support/etcd-cas-ha.ts';
import { SimulatedProvider } from '../../src/attestation/simulated.ts';
import { attestAndProvisionAny, QuorumCounterClient } from '../../src/cas-client/quorum-counter.ts';
import { casRequest } from '../../src/cas-client/http.ts';
import { isCdbpError } from '../../src/kernel/errors.ts';
import { writeSigningKeyFile } from '../../src/crypto/ed25519.ts';
import { signRecovery } from '../../src/provisioning/policy.ts';

const digestOf = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

test('replicated CAS reopen: a hidden old member does not anchor a joiner; a held-back re-anchoring is stale', { timeout: 300_000 }, async (t) => {
  const tmp = tempDir('cas-ha-reopen-attacks');
  let cluster: HaCluster | undefined;
  const clients: QuorumCounterClient[] = [];
  t.after(async () => { for (const c of clients) c.close(); await cluster?.stop(); tmp.remove(); });
  cluster = await startHaCluster(tmp.path, 3, { delayable: true });
  const c = cluster;
  await c.startAll(['orders']);
  const ownerKeyFile = path.join(tmp.path, 'owner.key');
  writeSigningKeyFile(ownerKeyFile, c.owner, 'cdbp-owner-key/1');
  const provider = new SimulatedProvider(c.platformKeyFile);
  const provision = async () => {
    const p = await attestAndProvisionAny({ casUrls: c.urls, caPem: c.caPem, service: 'orders', provider, tls: {}, timeoutMs: 1500 });
    clients.push(p.counter as QuorumCounterClient);
    return p;
  };
  let prov = await provision();
  let last = { value: 0, digest: '' };
  const advance = async () => {
    const rec = randomBytes(48);
    await prov.counter.advance(last.value, last.value + 1, digestOf(rec), rec);
    last = { value: last.value + 1, digest: digestOf(rec) };
  };
  for (let i = 0; i < 3; i++) await advance();
  const seenByMember2 = last.value;
  c.partition(2);
  for (let i = 0; i < 4; i++) await advance();
  assert.equal((await readMember(c.urls[0]!, 'orders', { ...prov.identity, caPem: c.caPem })).value, 7);

  await t.test('a member hidden from the reopen is retired: the joiner catching up from it stays unanchored', async () => {
    c.kill(1);
    c.kill(3);
    const statement = path.join(tmp.path, 'recover.json');
    const signed = await runCdbp(['recover', 'deployment', '--ca', c.caFile, '--owner-key', ownerKeyFile, '--out', statement, '--valid-minutes', '10']);
    assert.equal(signed.code, 0, signed.output);
    await c.start(1, { extraArgs: ['--ha-recover', statement] });
    c.heal(2); // the old member 2, still holding epoch 3, answers again
    assert.equal(seenByMember2, 3);
    await c.start(3);
    prov = await provision();
    // Member 3 joined from member 1 only; member 2's older counter is no anchor, and no majority reads it.
    await assert.rejects(readMember(c.urls[2]!, 'orders', { ...prov.identity, caPem: c.caPem }), (e: unknown) => isCdbpError(e, 'COUNTER_UNANCHORED'));
    await assert.rejects(prov.counter.read(), (e: unknown) => isCdbpError(e, 'COUNTER_UNANCHORED'), 'not epoch 3 from {member 2, member 3}');
  });

  await t.test('a signed re-anchoring the host held back is refused once the counter moved', async () => {
    // The owner's first try: the host keeps the signed requests for the two current members (1 and 3).
    const held = await Promise.all([c.urls[0]!, c.urls[2]!].map(async (url) => {
      const { nonce } = await casRequest<{ nonce: string }>(url, 'POST', '/v1/nonce', { purpose: 'recover' }, { caPem: c.caPem });
      return { url, body: await signRecovery({ service: 'orders', value: 2, digest: 'ab'.repeat(32), nonce }, c.owner) };
    }));
    // The owner retries, the proxy advances.
    const r = await runCdbp(['recover', '--cas', [c.urls[0], c.urls[2]].join(','), '--ca', c.caFile, '--owner-key', ownerKeyFile, '--service', 'orders',
      '--value', String(last.value), '--digest', last.digest]);
    assert.equal(r.code, 0, r.output);
    await advance();
    for (const h of held) {
      await assert.rejects(casRequest(h.url, 'POST', '/v1/services/orders/recover', h.body, { caPem: c.caPem }),
        (e: unknown) => isCdbpError(e, 'COUNTER_CONFLICT') && /changed after this recovery's nonce was issued/.test((e as Error).message), h.url);
    }
    assert.equal((await prov.counter.read()).value, last.value);
  });
});
