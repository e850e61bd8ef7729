/**
 * Reopening a replicated CAS deployment that lost a majority of its members at once (docs/CAS.md
 * "Losing a majority"), with real members over a real etcd. Every member killed -9: their counters are
 * gone by design, so nothing restarts by joining; the owner signs an expiring, deployment-bound
 * statement (`cdbp recover deployment`), one member reopens etcd's state with its own sealed state key
 * and EMPTY counters (audited), the others join it, and the owner re-anchors each service on a majority
 * (`cdbp recover --cas URL,URL,URL`). Refused: while other members still run, unsigned by an owner,
 * expired, for another deployment, against an etcd older than the statement allows, by a member that
 * never held the state key.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { randomBytes, createHash } from 'node:crypto';
import { sha256Fingerprint } from '../../src/crypto/x509.ts';
import { tempDir } from '../support/tmp.ts';
import { runCdbp } from '../support/cas.ts';
import { readMember, startHaCluster, type HaCluster } from '../support/etcd-cas-ha.ts';
import { SimulatedProvider } from '../../src/attestation/simulated.ts';
import { attestAndProvisionAny, QuorumCounterClient } from '../../src/cas-client/quorum-counter.ts';
import { isCdbpError } from '../../src/kernel/errors.ts';
import { generateSigningKeyPair, writeSigningKeyFile } from '../../src/crypto/ed25519.ts';
import { signHaRecovery } from '../../src/provisioning/policy.ts';

const digestOf = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

test('replicated CAS: owner-signed recovery after every member was killed', { timeout: 300_000 }, async (t) => {
  const tmp = tempDir('cas-ha-recovery');
  let cluster: HaCluster | undefined;
  const clients: QuorumCounterClient[] = [];
  t.after(async () => { for (const c of clients) c.close(); await cluster?.stop(); tmp.remove(); });
  cluster = await startHaCluster(tmp.path, 3);
  const c = cluster;
  await c.startAll(['orders', 'idle']);
  const ownerKeyFile = path.join(tmp.path, 'owner.key');
  writeSigningKeyFile(ownerKeyFile, c.owner, 'cdbp-owner-key/1');
  const caFingerprint = sha256Fingerprint(c.caPem);
  const statementFile = path.join(tmp.path, 'recover.json');
  const signed = await runCdbp(['recover', 'deployment', '--ca', c.caFile, '--owner-key', ownerKeyFile, '--out', statementFile, '--valid-minutes', '10']);
  assert.equal(signed.code, 0, signed.output);

  const provider = new SimulatedProvider(c.platformKeyFile);
  const prov = await attestAndProvisionAny({ casUrls: c.urls, caPem: c.caPem, service: 'orders', provider, tls: {}, timeoutMs: 1500 });
  let counter = prov.counter as QuorumCounterClient;
  clients.push(counter);
  let last = { value: 0, digest: '' };
  const advance = async () => {
    const rec = randomBytes(48);
    await counter.advance(last.value, last.value + 1, digestOf(rec), rec);
    last = { value: last.value + 1, digest: digestOf(rec) };
  };
  for (let i = 0; i < 12; i++) await advance();

  await t.test('refused while other members still run (a running majority holds counters the reopened member would lack)', async () => {
    const copy = path.join(tmp.path, 'cas1-copy');
    cpSync(c.members[0]!.dir, copy, { recursive: true });
    rmSync(path.join(copy, '.lock'), { force: true });
    const r = await runCdbp([...c.joinArgs(1, copy), '--ha-recover', statementFile]);
    assert.notEqual(r.code, 0);
    assert.match(r.output, /HA_RECOVERY_REFUSED/);
    assert.match(r.output, /other members still run/);
    // Nothing changed for the proxy.
    await advance();
  });

  c.kill(1);
  c.kill(2);
  c.kill(3);
  await new Promise((r) => setTimeout(r, 300));
  await assert.rejects(counter.read(), (e: unknown) => isCdbpError(e, 'CAS_QUORUM_UNAVAILABLE'));

  await t.test('refused: a statement of another owner, an expired one, one for another deployment, one requiring newer etcd state', async () => {
    const stranger = await generateSigningKeyPair();
    const cases: Array<[string, object, RegExp]> = [
      ['stranger', await signHaRecovery({ ca: caFingerprint, notAfter: new Date(Date.now() + 600_000).toISOString(), minStateSeq: 0 }, stranger), /not an owner of this deployment/],
      ['expired', await signHaRecovery({ ca: caFingerprint, notAfter: new Date(Date.now() - 1000).toISOString(), minStateSeq: 0 }, c.owner), /expired/],
      ['other-ca', await signHaRecovery({ ca: 'ab'.repeat(32), notAfter: new Date(Date.now() + 600_000).toISOString(), minStateSeq: 0 }, c.owner), /another deployment/],
      ['newer-state', await signHaRecovery({ ca: caFingerprint, notAfter: new Date(Date.now() + 600_000).toISOString(), minStateSeq: 1_000_000 }, c.owner), /below version 1000000/],
    ];
    for (const [name, statement, why] of cases) {
      const f = path.join(tmp.path, `recover-${name}.json`);
      writeFileSync(f, JSON.stringify(statement));
      const r = await runCdbp([...c.joinArgs(1), '--ha-recover', f]);
      assert.notEqual(r.code, 0, name);
      assert.match(r.output, why, `${name}: ${r.output.slice(-600)}`);
    }
    // A member directory that never held the deployment's state key cannot reopen it.
    const empty = path.join(tmp.path, 'cas-never-member');
    mkdirSync(empty);
    const r = await runCdbp([...c.joinArgs(2, empty), '--ha-recover', statementFile]);
    assert.notEqual(r.code, 0);
    assert.match(r.output, /only a member that held the deployment's state key can reopen it/);
  });

  await t.test('reopened by a valid statement: counters start empty (audited), the others join, the owner re-anchors on a majority', async () => {
    await c.start(1, { extraArgs: ['--ha-recover', statementFile] });
    const audit = readFileSync(path.join(c.members[0]!.dir, 'audit.log'), 'utf8');
    assert.match(audit, /"event":"ha.recover","outcome":"ok"/);
    await c.start(2);
    await c.start(3);
    counter.close();
    const again = await attestAndProvisionAny({ casUrls: c.urls, caPem: c.caPem, service: 'orders', provider, tls: {}, timeoutMs: 1500 });
    counter = again.counter as QuorumCounterClient;
    clients.push(counter);
    // The counters died with the members. "No counter" must not read as "never advanced" (a proxy whose
    // record was deleted would take any data directory for a first start): unanchored until re-anchored,
    // on the reopened member and on the members that joined it (the mark travels with the catch-up).
    await assert.rejects(counter.read(), (e: unknown) => isCdbpError(e, 'COUNTER_UNANCHORED') && /cdbp recover/.test((e as Error).message));
    await assert.rejects(counter.advance(0, 1, 'ab'.repeat(32)), /not re-anchored yet/);
    for (const url of c.urls) {
      await assert.rejects(readMember(url, 'orders', { ...again.identity, caPem: c.caPem }), (e: unknown) => isCdbpError(e, 'COUNTER_UNANCHORED'), url);
    }
    // The owner's word for a service that never started: "never advanced".
    const idle = await runCdbp(['recover', '--cas', c.urls.join(','), '--ca', c.caFile, '--owner-key', ownerKeyFile, '--service', 'idle', '--value', '0', '--digest', '']);
    assert.equal(idle.code, 0, idle.output);
    const idleProv = await attestAndProvisionAny({ casUrls: c.urls, caPem: c.caPem, service: 'idle', provider, tls: {}, timeoutMs: 1500 });
    clients.push(idleProv.counter as QuorumCounterClient);
    assert.equal((await idleProv.counter.read()).value, 0);
    for (const url of c.urls) assert.equal((await readMember(url, 'idle', { ...idleProv.identity, caPem: c.caPem })).value, 0, url);
    // Three URLs the host points at one member are one member: the owner's tool counts signed answer keys.
    const aliased = await runCdbp(['recover', '--cas', [c.urls[0], c.urls[0], c.urls[0]].join(','), '--ca', c.caFile, '--owner-key', ownerKeyFile, '--service', 'orders',
      '--value', String(last.value), '--digest', last.digest]);
    assert.notEqual(aliased.code, 0, aliased.output);
    // (One of the three lands; the others were signed over nonces issued before it changed the counter.)
    assert.match(aliased.output, /re-anchored on 1 of 3 CAS members, 2 needed/);
    await assert.rejects(counter.read(), (e: unknown) => isCdbpError(e, 'COUNTER_UNANCHORED'), 'the other two still refuse');
    const r = await runCdbp(['recover', '--cas', c.urls.join(','), '--ca', c.caFile, '--owner-key', ownerKeyFile, '--service', 'orders',
      '--value', String(last.value), '--digest', last.digest]);
    assert.equal(r.code, 0, r.output);
    assert.match(r.output, /on 3 of 3 CAS instances/);
    const now = await counter.read();
    assert.deepEqual({ value: now.value, digest: now.digest }, last);
    await advance();
    assert.equal((await counter.read()).value, last.value);
    for (const m of c.members) {
      const entries = readFileSync(path.join(m.dir, 'audit.log'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { event: string; outcome: string; details: { toValue?: number } });
      assert.ok(entries.some((e) => e.event === 'counter.recover' && e.outcome === 'ok' && e.details.toValue === last.value - 1), `member ${m.index} audited the re-anchoring`);
    }
  });

  await t.test('a member that joined keeps the state key sealed: it can reopen the deployment the next time', async () => {
    for (let i = 0; i < 5; i++) await advance();
    c.kill(1);
    c.kill(2);
    c.kill(3);
    await new Promise((r) => setTimeout(r, 300));
    await c.start(3, { extraArgs: ['--ha-recover', statementFile] });
    await c.start(1);
    await c.start(2);
    await assert.rejects(counter.read(), (e: unknown) => isCdbpError(e, 'COUNTER_UNANCHORED'));
  });
});
