/**
 * A seeded fault schedule against the replicated CAS under a write load (issue 20): kill -9 + rejoin,
 * freeze + thaw, network delay and network partition of random members, one fault at a time (a majority
 * stays reachable), while two writers advance their services' counters. Delays and partitions come from
 * a TCP forwarder in front of each member (test/support/tcp-delay-proxy.ts): a delay of 50–1500 ms (with
 * up to a quarter of it as jitter) on everything that reaches the member and its answers, or nothing
 * getting through at all. After every step: counters never go back, no acknowledged advance is
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
import { startHaCluster, readMember, type HaCluster } from '../support/etcd-cas-ha.ts';
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
  cluster = await startHaCluster(tmp.path, 3, { delayable: true });
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
  const ran = { kill: 0, freeze: 0, delay: 0, partition: 0 };
  const kinds = Object.keys(ran) as Array<keyof typeof ran>;
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
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
  /** Service i's counter as one member sees it (a fresh client: new connections, new TLS handshakes). */
  const readVia = async (i: number, url: string, timeoutMs: number): Promise<{ value?: number; error?: string; ms: number }> => {
    const t0 = Date.now();
    try {
      return { value: (await readMember(url, services[i]!, { ...idents[i]!, caPem: c.caPem }, timeoutMs)).value, ms: Date.now() - t0 };
    } catch (e) {
      return { error: (e as Error).message, ms: Date.now() - t0 };
    }
  };
  const each = async (i: number): Promise<string> => {
    const out: string[] = [];
    for (const url of c.urls) {
      const r = await readVia(i, url, 500);
      out.push(r.error === undefined ? `${url}=${r.value}` : `${url}: ${r.error.slice(0, 60)}`);
    }
    return out.join(', ');
  };
  // The forwarders are really in the way (of clients here; the members' peer lists name the same URLs).
  c.partition(1);
  const cut = await readVia(0, c.urls[0]!, 500);
  c.heal(1);
  assert.ok(cut.error !== undefined, `a read through partitioned member 1 answered: ${cut.value}`);
  c.delay(1, 200);
  const slow = await readVia(0, c.urls[0]!, 10_000);
  c.heal(1);
  // A handshake, the signing-certificate fetch and the read: several round trips of 2 × 200 ms.
  assert.ok(slow.error === undefined && slow.ms >= 400, `a read through member 1 delayed by 200 ms: ${slow.error ?? `${slow.ms} ms`}`);
  const check = async (step: string) => {
    for (const [i, client] of clients.entries()) {
      // What was acknowledged before the read started: the read must see at least that.
      const a = { ...acked[i]! };
      const r = await client.read().catch(async (e: Error) => {
        assert.fail(`${step}: ${services[i]} read failed: ${e.message} (seed ${SEED}); members: ${await each(i)}; steps: ${steps.join('; ')}`);
      });
      if (r.value < a.value) assert.fail(`${step}: ${services[i]} at ${r.value} below acknowledged ${a.value} (seed ${SEED}); members: ${await each(i)}; steps: ${steps.join('; ')}`);
      assert.ok(r.value >= a.value, `${step}: ${services[i]} went back to ${r.value} below acknowledged ${a.value} (seed ${SEED})`);
      if (r.value === a.value && a.value > 0) assert.equal(r.digest, a.digest, `${step}: acknowledged epoch ${a.value} has another digest (seed ${SEED})`);
    }
  };
  const end = Date.now() + SECONDS * 1000;
  try {
    while (Date.now() < end) {
      const m = 1 + Math.floor(rand() * 3);
      const kind = kinds[Math.floor(rand() * kinds.length)]!;
      const hold = 300 + Math.floor(rand() * 1500);
      // What a fault leaves behind must be gone before the next one, or two members are out at once.
      let settle = 200 + Math.floor(rand() * 500);
      switch (kind) {
        case 'kill':
          steps.push(`kill ${m} ${hold}ms`);
          c.kill(m);
          await sleep(hold);
          await check(`after kill ${m}`);
          await c.start(m);
          break;
        case 'freeze':
          steps.push(`freeze ${m} ${hold}ms`);
          c.members[m - 1]!.cas!.proc.kill('SIGSTOP');
          await sleep(hold);
          await check(`during freeze ${m}`);
          c.members[m - 1]!.cas!.proc.kill('SIGCONT');
          break;
        case 'delay': {
          const ms = 50 + Math.floor(rand() * 1450);
          const jitter = Math.floor(rand() * ms / 4);
          // Long enough that answers delayed by up to 2 × 1.9 s (there and back) arrive during it.
          const span = hold + 2 * (ms + jitter);
          steps.push(`delay ${m} ${ms}+${jitter}ms ${span}ms`);
          c.delay(m, ms, jitter);
          await sleep(span);
          await check(`during delay ${m}`);
          c.heal(m);
          // Chunks already queued still leave at their time (a delay never drops or reorders).
          settle += ms + jitter;
          break;
        }
        case 'partition':
          steps.push(`partition ${m} ${hold}ms`);
          c.partition(m);
          await sleep(hold);
          await check(`during partition ${m}`);
          c.heal(m);
          break;
        default: {
          const never: never = kind;
          throw new Error(`unknown fault ${String(never)}`);
        }
      }
      ran[kind]++;
      await sleep(settle);
      await check(`after ${kind} ${m}`);
    }
  } finally {
    stop = true;
    await Promise.all(writers);
  }
  await check('end');
  t.diagnostic(`seed ${SEED}: ${steps.length} faults (${kinds.map((k) => `${ran[k]} ${k}`).join(', ')}), ${advances} acknowledged advances`);
  assert.ok(steps.length >= 3 && advances > 20, `${steps.length} faults, ${advances} advances`);
});
