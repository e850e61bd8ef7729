/**
 * The replicated CAS with real processes on loopback (docs/CAS.md "Replicated CAS"): three `cdbp cas`
 * members over a real etcd, a proxy-side QuorumCounterClient attested like a proxy (simulated TEE).
 * One cluster, steps in order: write load while a member is killed (-9) and rejoins; a member started on
 * an old copy of a disk; two members frozen (fail closed, resume); an old etcd snapshot restored under a
 * running majority (detected, refused, alarmed); two members killed (fail closed; a restart cannot join).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { randomBytes, createHash } from 'node:crypto';
import { tempDir } from '../support/tmp.ts';
import { applyTestPolicy, runCdbp } from '../support/cas.ts';
import { startHaCluster, readMember, type HaCluster } from '../support/etcd-cas-ha.ts';
import { SimulatedProvider } from '../../src/attestation/simulated.ts';
import { attestAndProvisionAny, QuorumCounterClient } from '../../src/cas-client/quorum-counter.ts';
import { casRequest } from '../../src/cas-client/http.ts';
import { attestAndProvision } from '../../src/cas-client/index.ts';
import { isCdbpError } from '../../src/kernel/errors.ts';
import type { CounterClient, CounterState } from '../../src/provisioning/types.ts';

const digestOf = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** A strict writer: advances one epoch at a time, as the freshness guard does, remembering each acknowledged one. */
class Writer {
  acked: CounterState[] = [];
  failures: string[] = [];
  constructor(private readonly c: CounterClient, private current: number) {}
  get value(): number { return this.current; }
  async step(): Promise<void> {
    const record = randomBytes(64);
    const next = this.current + 1;
    const r = await this.c.advance(this.current, next, digestOf(record), record);
    assert.equal(r.value, next);
    this.current = next;
    this.acked.push({ value: next, digest: digestOf(record) });
  }
  /** Steps until `n` more are acknowledged; a failed step is retried (the guard retries every 250 ms). */
  async run(n: number, during?: (i: number) => void | Promise<void>): Promise<void> {
    for (let i = 0; i < n; i++) {
      await during?.(i);
      for (let attempt = 0; ; attempt++) {
        try { await this.step(); break; } catch (e) {
          this.failures.push((e as Error).message);
          if (attempt > 20) throw e;
          await new Promise((r) => setTimeout(r, 250));
        }
      }
    }
  }
}

async function status(url: string, caPem: string): Promise<{ instance: string; stateSeq: number; rollback: string | null }> {
  return casRequest(url, 'GET', '/v1/replication/status', undefined, { caPem });
}

test('replicated CAS: kill -9 one member under strict writes, rejoin, old disk, majority loss, etcd rollback', { timeout: 240_000 }, async (t) => {
  const tmp = tempDir('cas-ha');
  let cluster: HaCluster | undefined;
  t.after(async () => { await cluster?.stop(); tmp.remove(); });
  cluster = await startHaCluster(tmp.path, 3);
  const c = cluster;
  // Policies before the others join: they receive them from etcd when joining; later ones by polling.
  await c.startAll(['orders']);
  const oldDisk = path.join(tmp.path, 'cas3-old-copy');
  cpSync(c.members[2]!.dir, oldDisk, { recursive: true });

  const provider = new SimulatedProvider(c.platformKeyFile);
  const prov = await attestAndProvisionAny({ casUrls: c.urls, caPem: c.caPem, service: 'orders', provider, tls: {}, timeoutMs: 1500 });
  const counter = prov.counter as QuorumCounterClient;
  t.after(() => counter.close());
  assert.equal((await counter.read()).value, 0);
  // A proxy pointed at one member (CDBP_CAS_URL is host-controlled) is refused: one receipt is not a majority.
  await assert.rejects(attestAndProvision({ casUrl: c.urls[0]!, caPem: c.caPem, service: 'orders', provider, tls: {} }),
    (e: unknown) => isCdbpError(e, 'CAS_IDENTITY_INVALID') && /one member of a replicated CAS/.test((e as Error).message));
  const w = new Writer(counter, 0);

  await t.test('kill -9 one member during strict writes: every write is acknowledged, none lost', async () => {
    await w.run(60, (i) => { if (i === 20) c.kill(2); });
    assert.equal(w.acked.length, 60);
    // Receipts travel over each member's counter channel (MAC per frame, membership signed at opening).
    assert.deepEqual(Object.values(counter.transports()), ['channel', 'channel', 'channel']);
    const r = await counter.read();
    assert.deepEqual({ value: r.value, digest: r.digest }, w.acked.at(-1));
  });

  await t.test('the killed member rejoins as a new incarnation and holds every acknowledged write', async () => {
    const before = await status(c.urls[0]!, c.caPem).catch(() => undefined);
    await c.start(2);
    const s2 = await status(c.urls[1]!, c.caPem);
    assert.notEqual(s2.instance, before?.instance);
    await w.run(10);
    // With member 3 gone, the rejoined member and member 1 are the majority: nothing acknowledged is lost.
    c.kill(3);
    const r = await counter.read();
    assert.deepEqual({ value: r.value, digest: r.digest }, w.acked.at(-1));
    assert.equal((await readMember(c.urls[1]!, 'orders', { ...prov.identity, caPem: c.caPem })).value, w.value, 'the rejoined member caught up');
    await w.run(10);
  });

  await t.test('a member started on an old copy of its disk cannot bring back old state', async () => {
    // Bootstrapping on it is refused (the deployment exists; the directory is not empty) ...
    const boot = await runCdbp([...c.joinArgs(3, oldDisk), '--ha-bootstrap']);
    assert.notEqual(boot.code, 0);
    assert.match(boot.output, /ha-bootstrap needs an empty directory|already holds a CAS deployment/);
    // ... and joining with it ignores it: the member counts only after catching up from the majority.
    await c.start(3, { dir: oldDisk });
    const r = await readMember(c.urls[2]!, 'orders', { ...prov.identity, caPem: c.caPem });
    assert.deepEqual({ value: r.value, digest: r.digest }, w.acked.at(-1));
    await w.run(5);
  });

  await t.test('two proxies on a forked volume race for one epoch: exactly one wins, the other sees the winner (as with one CAS)', async () => {
    const twin = new QuorumCounterClient({ urls: c.urls, service: 'orders', caPem: c.caPem, keyPem: prov.identity.keyPem, certPem: prov.identity.certPem });
    const [a, b] = [randomBytes(32), randomBytes(32)];
    const res = await Promise.allSettled([counter.advance(w.value, w.value + 1, digestOf(a), a), twin.advance(w.value, w.value + 1, digestOf(b), b)]);
    twin.close();
    const won = res.filter((r) => r.status === 'fulfilled');
    assert.equal(won.length, 1, JSON.stringify(res.map((r) => r.status === 'rejected' ? String(r.reason) : 'ok')));
    const lost = res.find((r) => r.status === 'rejected') as PromiseRejectedResult;
    assert.ok(isCdbpError(lost.reason, 'COUNTER_CONFLICT'), String(lost.reason));
    const winner = res[0]!.status === 'fulfilled' ? digestOf(a) : digestOf(b);
    assert.equal((lost.reason as unknown as { details: { digest: string } }).details.digest, winner);
    const r = await counter.read();
    assert.deepEqual({ value: r.value, digest: r.digest }, { value: w.value + 1, digest: winner });
    w.acked.push({ value: w.value + 1, digest: winner });
    (w as unknown as { current: number }).current = w.value + 1;
  });

  await t.test('two members frozen: seals fail closed with a clear reason, and resume when one returns', async () => {
    c.members[1]!.cas!.proc.kill('SIGSTOP');
    c.members[2]!.cas!.proc.kill('SIGSTOP');
    const started = Date.now();
    await assert.rejects(counter.advance(w.value, w.value + 1, digestOf(Buffer.from('x')), Buffer.from('x')), (e: unknown) => {
      assert.ok(isCdbpError(e, 'CAS_QUORUM_UNAVAILABLE'), String(e));
      assert.match((e as Error).message, /1 of 3 CAS instances accepted, a majority \(2\) is needed/);
      return true;
    });
    assert.ok(Date.now() - started < 5000);
    c.members[1]!.cas!.proc.kill('SIGCONT');
    // Member 1 accepted that advance alone (never acknowledged): the writer's retry finds it and goes on.
    const r = await counter.read();
    assert.ok(r.value === w.value || r.value === w.value + 1);
    const w2 = new Writer(counter, r.value);
    await w2.run(5);
    w.acked.push(...w2.acked);
    (w as unknown as { current: number }).current = w2.value;
    c.members[2]!.cas!.proc.kill('SIGCONT');
  });

  await t.test('an old etcd snapshot restored under a running majority is detected, refused and alarmed', async () => {
    const snap = path.join(tmp.path, 'etcd-old.db');
    c.etcd.snapshot(snap);
    await applyTestPolicy({ url: c.urls[0]!, caPem: c.caPem }, { service: 'billing', owner: c.owner });
    const newest = path.join(tmp.path, 'etcd-newest.db');
    c.etcd.snapshot(newest);
    await c.etcd.restore(snap);
    await new Promise((r) => setTimeout(r, 1500));
    for (const url of c.urls) {
      const s = await status(url, c.caPem);
      assert.match(s.rollback ?? '', /older than version/);
    }
    await assert.rejects(applyTestPolicy({ url: c.urls[0]!, caPem: c.caPem }, { service: 'payroll', owner: c.owner }),
      (e: unknown) => isCdbpError(e, 'STATE_ROLLED_BACK'));
    const audit = readFileSync(path.join(c.members[0]!.dir, 'audit.log'), 'utf8');
    assert.match(audit, /"event":"ha.state-rollback"/);
    // Counters live in the members' memory: seals go on.
    await w.run(5);
    // The operator puts the newest state back: accepted again.
    await c.etcd.restore(newest);
    await new Promise((r) => setTimeout(r, 1500));
    for (const url of c.urls) assert.equal((await status(url, c.caPem)).rollback, null);
    await applyTestPolicy({ url: c.urls[1]!, caPem: c.caPem }, { service: 'payroll', owner: c.owner });
  });

  await t.test('two members killed: seals fail closed, and a restarted member cannot join from one survivor', async () => {
    c.kill(2);
    c.kill(3);
    await new Promise((r) => setTimeout(r, 300));
    await assert.rejects(counter.advance(w.value, w.value + 1, digestOf(Buffer.from('y')), Buffer.from('y')), (e: unknown) => isCdbpError(e, 'CAS_QUORUM_UNAVAILABLE'));
    await assert.rejects(counter.read(), (e: unknown) => isCdbpError(e, 'CAS_QUORUM_UNAVAILABLE'));
    const rejoin = await runCdbp(c.joinArgs(2, path.join(tmp.path, 'cas2-fresh')));
    assert.notEqual(rejoin.code, 0);
    assert.match(rejoin.output, /cannot join: 1 of the 2 other members admitted this instance, 2 are needed/);
  });
});
