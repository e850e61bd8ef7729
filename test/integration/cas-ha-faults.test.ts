/**
 * A seeded fault schedule against the replicated CAS under a write load (issue 20): kill -9 + rejoin and
 * freeze + thaw of random members, one fault at a time (a majority stays alive), while two writers
 * advance their services' counters. After every step: counters never go back, no acknowledged advance is
 * lost (a majority read returns at least the last acknowledged epoch, with its digest when equal), and no
 * epoch ever has two digests (the read would refuse it as a fork).
 *
 * CDBP_HA_FAULT_SECONDS sets the length (default 45 s for CI; the issue's full run is 300).
 * CDBP_HA_FAULT_SEED replays a schedule.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, createHash } from 'node:crypto';
import { tempDir } from '../support/tmp.ts';
import { applyTestPolicy } from '../support/cas.ts';
import { startHaCluster, type HaCluster } from '../support/etcd-cas-ha.ts';
import { SimulatedProvider } from '../../src/attestation/simulated.ts';
import { attestAndProvisionAny, QuorumCounterClient } from '../../src/cas-client/quorum-counter.ts';
import { prng } from '../support/prng.ts';

const SECONDS = Number(process.env.CDBP_HA_FAULT_SECONDS ?? 45);
const SEED = Number(process.env.CDBP_HA_FAULT_SEED ?? Date.now() % 1_000_000);

const digestOf = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

test(`replicated CAS under a seeded fault schedule (${SECONDS} s, seed ${SEED})`, { timeout: (SECONDS + 180) * 1000 }, async (t) => {
  const tmp = tempDir('cas-ha-faults');
  let cluster: HaCluster | undefined;
  const clients: QuorumCounterClient[] = [];
  t.after(async () => { for (const c of clients) c.close(); await cluster?.stop(); tmp.remove(); });
  cluster = await startHaCluster(tmp.path, 3);
  const c = cluster;
  await c.start(1);
  await c.start(2);
  await c.start(3);
  const services = ['svc-a', 'svc-b'];
  for (const service of services) await applyTestPolicy({ url: c.urls[0]!, caPem: c.caPem }, { service, owner: c.owner });
  await new Promise((r) => setTimeout(r, 800));
  const provider = new SimulatedProvider(c.platformKeyFile);
  const idents: Array<{ keyPem: string; certPem: string }> = [];
  for (const service of services) {
    const p = await attestAndProvisionAny({ casUrls: c.urls, caPem: c.caPem, service, provider, tls: {}, timeoutMs: 1000 });
    clients.push(p.counter as QuorumCounterClient);
    idents.push(p.identity);
  }
  const rand = prng(SEED);
  const steps: string[] = [];
  const acked = services.map(() => ({ value: 0, digest: '' }));
  let stop = false;
  let advances = 0;
  const writers = clients.map(async (client, i) => {
    let current = 0;
    while (!stop) {
      const rec = randomBytes(48);
      try {
        await client.advance(current, current + 1, digestOf(rec), rec);
        current++;
        acked[i] = { value: current, digest: digestOf(rec) };
        advances++;
      } catch {
        // Not acknowledged: re-read (a conflict may be our own advance that landed on a minority).
        await new Promise((r) => setTimeout(r, 100));
        try { current = (await client.read()).value; } catch { /* no majority right now */ }
      }
    }
  });
  const each = async (i: number): Promise<string> => {
    const out: string[] = [];
    for (const url of c.urls) {
      const one = new QuorumCounterClient({ urls: [url], service: services[i]!, caPem: c.caPem, keyPem: idents[i]!.keyPem, certPem: idents[i]!.certPem, timeoutMs: 500 });
      out.push(await one.read().then((r) => `${url}=${r.value}`, (e: Error) => `${url}: ${e.message.slice(0, 60)}`));
      one.close();
    }
    return out.join(', ');
  };
  const check = async (step: string) => {
    for (const [i, client] of clients.entries()) {
      // What was acknowledged before the read started: the read must see at least that.
      const a = { ...acked[i]! };
      const r = await client.read();
      if (r.value < a.value) assert.fail(`${step}: ${services[i]} at ${r.value} below acknowledged ${a.value} (seed ${SEED}); members: ${await each(i)}; steps: ${steps.join('; ')}`);
      assert.ok(r.value >= a.value, `${step}: ${services[i]} went back to ${r.value} below acknowledged ${a.value} (seed ${SEED})`);
      if (r.value === a.value && a.value > 0) assert.equal(r.digest, a.digest, `${step}: acknowledged epoch ${a.value} has another digest (seed ${SEED})`);
    }
  };
  const end = Date.now() + SECONDS * 1000;
  try {
    while (Date.now() < end) {
      const m = 1 + Math.floor(rand() * 3);
      const kind = rand() < 0.5 ? 'kill' : 'freeze';
      const hold = 300 + Math.floor(rand() * 1500);
      steps.push(`${kind} ${m} ${hold}ms`);
      if (kind === 'kill') {
        c.kill(m);
        await new Promise((r) => setTimeout(r, hold));
        await check(`after kill ${m}`);
        await c.start(m);
      } else {
        c.members[m - 1]!.cas!.proc.kill('SIGSTOP');
        await new Promise((r) => setTimeout(r, hold));
        await check(`during freeze ${m}`);
        c.members[m - 1]!.cas!.proc.kill('SIGCONT');
      }
      await new Promise((r) => setTimeout(r, 200 + Math.floor(rand() * 500)));
      await check(`after ${kind} ${m}`);
    }
  } finally {
    stop = true;
    await Promise.all(writers);
  }
  await check('end');
  t.diagnostic(`seed ${SEED}: ${steps.length} faults, ${advances} acknowledged advances`);
  assert.ok(steps.length >= 3 && advances > 20, `${steps.length} faults, ${advances} advances`);
});
