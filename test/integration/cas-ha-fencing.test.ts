/**
 * Fencing of replaced member incarnations (docs/CAS.md "Membership"), as an attack with real processes.
 * The operator starts two extra GENUINE members (same code, simulated TEE) that join legitimately and
 * take slots 1 and 2 over, rewrites a proxy's CAS URL list to name only those two, lets them acknowledge
 * advances, kills them, and points the proxy back at the original three members, which never saw those
 * advances. Without fencing, the original three are a majority holding the older counter: a silent
 * rollback. With it, member 3 (which admitted both newcomers) retires members 1 and 2 in every answer:
 * the read fails closed, a restarted member 1 cannot rejoin, and the old incarnations never count.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { randomBytes, createHash } from 'node:crypto';
import { tempDir } from '../support/tmp.ts';
import { startTestCas, runCdbp, type TestCas } from '../support/cas.ts';
import { startHaCluster, type HaCluster } from '../support/etcd-cas-ha.ts';
import { freePort } from '../support/etcd.ts';
import { SimulatedProvider } from '../../src/attestation/simulated.ts';
import { attestAndProvisionAny, joinReportData, QuorumCounterClient } from '../../src/cas-client/quorum-counter.ts';
import { casRequest } from '../../src/cas-client/http.ts';
import { generateSealingKeyPair } from '../../src/crypto/box.ts';
import { isCdbpError } from '../../src/kernel/errors.ts';

const digestOf = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

test('replicated CAS: extra genuine members that took slots over, then died, cannot make the old members roll a counter back', { timeout: 240_000 }, async (t) => {
  const tmp = tempDir('cas-ha-fencing');
  let cluster: HaCluster | undefined;
  const extra: TestCas[] = [];
  const clients: QuorumCounterClient[] = [];
  t.after(async () => {
    for (const cl of clients) cl.close();
    for (const x of extra) if (x.proc.exitCode === null && x.proc.signalCode === null) await x.stop();
    await cluster?.stop();
    tmp.remove();
  });
  cluster = await startHaCluster(tmp.path, 3);
  const c = cluster;
  await c.startAll(['orders']);
  const provider = new SimulatedProvider(c.platformKeyFile);
  const prov = await attestAndProvisionAny({ casUrls: c.urls, caPem: c.caPem, service: 'orders', provider, tls: {}, timeoutMs: 1500 });
  const counter = prov.counter as QuorumCounterClient;
  clients.push(counter);
  let acked = { value: 0, digest: '' };
  const advanceOn = async (client: QuorumCounterClient) => {
    const rec = randomBytes(48);
    await client.advance(acked.value, acked.value + 1, digestOf(rec), rec);
    acked = { value: acked.value + 1, digest: digestOf(rec) };
  };
  for (let i = 0; i < 5; i++) await advanceOn(counter);

  await t.test('a genuine joiner\'s evidence sent with another slot, generation, size or instance is refused (the claim is in the report data)', async () => {
    const { nonce } = await casRequest<{ nonce: string }>(c.urls[2]!, 'POST', '/v1/replication/nonce', {}, { caPem: c.caPem });
    const sealing = await generateSealingKeyPair();
    const claim = { instance: randomBytes(8).toString('hex'), slot: 1, gen: Date.now() + 1e9, members: 3 };
    const evidence = await provider.collect(joinReportData(Buffer.from(nonce, 'hex'), sealing.publicKey, claim));
    // Each altered field alone, over a fresh nonce each (a refused join consumes its nonce).
    for (const altered of [{ slot: 2 }, { gen: claim.gen + 1 }, { members: 5 }, { instance: randomBytes(8).toString('hex') }]) {
      const n = (await casRequest<{ nonce: string }>(c.urls[2]!, 'POST', '/v1/replication/nonce', {}, { caPem: c.caPem })).nonce;
      const ev = await provider.collect(joinReportData(Buffer.from(n, 'hex'), sealing.publicKey, claim));
      await assert.rejects(casRequest(c.urls[2]!, 'POST', '/v1/replication/join', { ...claim, ...altered, nonce: n, sealingPublicKey: sealing.publicKey.toString('hex'), evidence: ev }, { caPem: c.caPem }),
        (e: unknown) => isCdbpError(e, 'EVIDENCE_INVALID'), JSON.stringify(altered));
    }
    await assert.rejects(casRequest(c.urls[2]!, 'POST', '/v1/replication/join', { ...claim, slot: 2, nonce, sealingPublicKey: sealing.publicKey.toString('hex'), evidence }, { caPem: c.caPem }),
      (e: unknown) => isCdbpError(e, 'EVIDENCE_INVALID'));
    // Nothing was admitted: the proxy's counter still counts on all three.
    await advanceOn(counter);
  });

  // The adversary's members X (slot 1) and Y (slot 2): genuine code, legitimately admitted.
  const [portX, portY] = [await freePort(), await freePort()];
  const [urlX, urlY] = [`https://127.0.0.1:${portX}`, `https://127.0.0.1:${portY}`];
  const memberArgs = (port: number, slot: number, peers: string[]): string[] => ['--port', String(port), '--ha-members', '3', '--ha-slot', String(slot),
    '--ha-peers', peers.join(','), '--etcd', c.etcd.endpoints.join(','), '--owner', c.owner.publicKey.toString('hex'),
    '--ha-ca', c.caFile, '--ha-platform-key', c.platformKeyFile];
  extra.push(await startTestCas({ root: tmp.path, dir: path.join(tmp.path, 'cas-x'), platformKeyFile: c.platformKeyFile, extraArgs: memberArgs(portX, 1, [c.urls[1]!, c.urls[2]!]) }));
  extra.push(await startTestCas({ root: tmp.path, dir: path.join(tmp.path, 'cas-y'), platformKeyFile: c.platformKeyFile, extraArgs: memberArgs(portY, 2, [urlX, c.urls[2]!]) }));

  // The proxy's (host-controlled) URL list now names only X and Y: a majority of the deployment's slots.
  const hijacked = new QuorumCounterClient({ urls: [urlX, urlY], service: 'orders', caPem: c.caPem, keyPem: prov.identity.keyPem, certPem: prov.identity.certPem });
  clients.push(hijacked);
  for (let i = 0; i < 5; i++) await advanceOn(hijacked);
  assert.equal(acked.value, 11);

  // Their memory dies with them.
  for (const x of extra) x.proc.kill('SIGKILL');
  await new Promise((r) => setTimeout(r, 300));

  await t.test('the original members do not answer with the older counter: members 1 and 2 are retired, the read fails closed', async () => {
    await assert.rejects(counter.read(), (e: unknown) => {
      assert.ok(isCdbpError(e, 'CAS_QUORUM_UNAVAILABLE'), `expected a refusal, got ${String(e)}`);
      return true;
    });
    await assert.rejects(counter.advance(5, 6, digestOf(Buffer.from('old')), Buffer.from('old')), (e: unknown) => isCdbpError(e, 'CAS_QUORUM_UNAVAILABLE') || isCdbpError(e, 'COUNTER_CONFLICT'));
  });

  await t.test('a restarted member 1 cannot rejoin from member 2 (retired) and member 3: one current slot is not enough', async () => {
    c.kill(1);
    await new Promise((r) => setTimeout(r, 300));
    const r = await runCdbp(c.joinArgs(1, path.join(tmp.path, 'cas1-fresh')));
    assert.notEqual(r.code, 0);
    assert.match(r.output, /cannot join: 1 of the 2 other members admitted this instance, 2 are needed/);
    assert.match(r.output, /replaced in slot 2 by a newer incarnation/);
  });
});
