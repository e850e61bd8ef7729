/**
 * Replicated CAS: the CAS's part of a seal (one counter compare-and-advance, as the freshness guard makes
 * per epoch) against 3 members that hold counters in memory and answer by majority, vs the single CAS
 * (group-committed counter log, fdatasync per batch) in the same run, arms interleaved.
 *   - latency: one service advancing back to back (p50/p99 per advance);
 *   - throughput: `services` services advancing concurrently (advances/s);
 *   - attest-and-provision round trips per second with `attestClients` concurrent clients (one service);
 *   - opt-in (`provision` > 0): time for that many services to provision — policies applied by the owner,
 *     then each service attests and is provisioned once (the 6,000-sidecar deployment of issue 20).
 * Real processes on loopback: `cdbp cas` (1) and three `cdbp cas --ha-*` members over a real etcd.
 *
 *   npx tsx bench/scenarios/cas-ha.ts [seconds] [services] [provision]    (standalone; prints JSON)
 */
import { randomBytes, createHash } from 'node:crypto';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { tempDir } from '../../test/support/tmp.ts';
import { applyTestPolicy, startTestCas } from '../../test/support/cas.ts';
import { startHaCluster } from '../../test/support/etcd-cas-ha.ts';
import { SimulatedProvider } from '../../src/attestation/simulated.ts';
import { attestAndProvision } from '../../src/cas-client/index.ts';
import { attestAndProvisionAny } from '../../src/cas-client/quorum-counter.ts';
import type { CounterClient } from '../../src/provisioning/types.ts';
import { scenario, quantile, round, fmt, pool, type ScenarioResult } from '../lib/common.ts';
import { applySignedPolicy } from '../../src/cas-client/index.ts';
import { buildPolicy, signPolicy } from '../../src/provisioning/policy.ts';
import { measureShippedCode } from '../../src/attestation/measurement.ts';

export interface CasHaOptions {
  seconds: number; services: number; rounds: number;
  /** Concurrent attest-and-provision clients (default 4). */
  attestClients?: number;
  /** Services to provision from scratch per arm (0 = skip; 6000 is the figure). */
  provision?: number;
  log?: (line: string) => void;
}
type Arm = '1 CAS (counter log)' | '3 members (memory, majority)';
export interface CasHaRow { arm: Arm; round: number; p50Ms: number; p99Ms: number; advances: number; concurrentPerSecond: number }
export interface CasHaAttestRow { arm: Arm; round: number; clients: number; perSecond: number; p50Ms: number; p99Ms: number }
export interface CasHaProvisionRow { arm: Arm; services: number; concurrency: number; applySeconds: number; attestSeconds: number; totalSeconds: number }
export interface CasHaSummary {
  p50Ratio: number; p99Ratio: number; throughputRatio: number; rows: CasHaRow[];
  attest: CasHaAttestRow[]; attestRatio: number; provisioning: CasHaProvisionRow[];
}

const PROVISION_CONCURRENCY = 16;

const digest = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

async function measure(clients: CounterClient[], seconds: number): Promise<{ p50: number; p99: number; n: number; perSecond: number }> {
  const values = new Map<CounterClient, number>();
  for (const c of clients) values.set(c, (await c.read()).value);
  const step = async (c: CounterClient) => {
    const rec = randomBytes(96);
    const v = values.get(c)!;
    await c.advance(v, v + 1, digest(rec), rec);
    values.set(c, v + 1);
  };
  // Latency: one service, back to back.
  const lat: number[] = [];
  const one = clients[0]!;
  for (let i = 0; i < 20; i++) await step(one);
  let end = performance.now() + seconds * 500;
  while (performance.now() < end) {
    const s = performance.now();
    await step(one);
    lat.push(performance.now() - s);
  }
  lat.sort((a, b) => a - b);
  // Throughput: every service at once, each sequential (as one proxy per service).
  let n = 0;
  const t0 = performance.now();
  end = t0 + seconds * 500;
  await Promise.all(clients.map(async (c) => { while (performance.now() < end) { await step(c); n++; } }));
  return { p50: quantile(lat, 0.5), p99: quantile(lat, 0.99), n: lat.length, perSecond: n / ((performance.now() - t0) / 1000) };
}

export function runCasHa(o: CasHaOptions): Promise<ScenarioResult<CasHaSummary, CasHaRow>> {
  const log = o.log ?? (() => undefined);
  return scenario('cas-ha', { ...o, log: undefined }, async ({ notes }) => {
    const tmp = tempDir('bench-cas-ha');
    const single = await startTestCas({ root: path.join(tmp.path, 'single'), env: { CDBP_LOG_LEVEL: 'error' } });
    const ha = await startHaCluster(path.join(tmp.path, 'ha'), 3);
    const rows: CasHaRow[] = [];
    const attest: CasHaAttestRow[] = [];
    const provisioning: CasHaProvisionRow[] = [];
    const opened: CounterClient[] = [];
    try {
      await ha.start(1);
      await ha.start(2);
      await ha.start(3);
      const names = Array.from({ length: o.services }, (_, i) => `bench-${i}`);
      const singleClients: CounterClient[] = [];
      const haClients: CounterClient[] = [];
      for (const service of names) {
        await applyTestPolicy(single, { service });
        await applyTestPolicy({ url: ha.urls[0]!, caPem: ha.caPem }, { service, owner: ha.owner });
      }
      await new Promise((r) => setTimeout(r, 1000)); // the other members install the policies from etcd
      for (const service of names) {
        singleClients.push((await attestAndProvision({ casUrl: single.url, caPem: single.caPem, service, provider: new SimulatedProvider(single.platformKeyFile), tls: {} })).counter);
        haClients.push((await attestAndProvisionAny({ casUrls: ha.urls, caPem: ha.caPem, service, provider: new SimulatedProvider(ha.platformKeyFile), tls: {} })).counter);
      }
      opened.push(...singleClients, ...haClients);
      for (let round_ = 1; round_ <= o.rounds; round_++) {
        for (const [arm, clients] of [['1 CAS (counter log)', singleClients], ['3 members (memory, majority)', haClients]] as const) {
          const m = await measure(clients, o.seconds);
          const row: CasHaRow = { arm, round: round_, p50Ms: round(m.p50, 3), p99Ms: round(m.p99, 3), advances: m.n, concurrentPerSecond: round(m.perSecond, 0) };
          rows.push(row);
          log(`cas-ha ${arm} round ${round_}: p50 ${fmt(row.p50Ms, 3)} ms, p99 ${fmt(row.p99Ms, 3)} ms, ${fmt(row.concurrentPerSecond, 0)} advances/s with ${o.services} services`);
        }
      }
      notes.push('A seal also writes nothing else on the CAS side in either arm; the proxy-side record write is not included.');

      // Attest-and-provision: the full client path (attestation, certificate, secrets, counter channel).
      const attestOnce: Record<Arm, (i: number) => Promise<void>> = {
        '1 CAS (counter log)': async () => {
          const p = await attestAndProvision({ casUrl: single.url, caPem: single.caPem, service: names[0]!, provider: new SimulatedProvider(single.platformKeyFile), tls: {} });
          (p.counter as { close?: () => void }).close?.();
        },
        // A proxy tries the members in its configured order; clients here start at different members.
        '3 members (memory, majority)': async (i) => {
          const urls = [...ha.urls.slice(i % 3), ...ha.urls.slice(0, i % 3)];
          const p = await attestAndProvisionAny({ casUrls: urls, caPem: ha.caPem, service: names[0]!, provider: new SimulatedProvider(ha.platformKeyFile), tls: {} });
          (p.counter as { close?: () => void }).close?.();
        },
      };
      const clients = o.attestClients ?? 4;
      for (let round_ = 1; round_ <= o.rounds; round_++) {
        for (const arm of ['1 CAS (counter log)', '3 members (memory, majority)'] as const) {
          const lat: number[] = [];
          const end = performance.now() + o.seconds * 1000;
          const t0 = performance.now();
          await Promise.all(Array.from({ length: clients }, async (_, c) => {
            for (let i = c; performance.now() < end; i += clients) {
              const s0 = performance.now();
              await attestOnce[arm](i);
              lat.push(performance.now() - s0);
            }
          }));
          lat.sort((a, b) => a - b);
          const row: CasHaAttestRow = { arm, round: round_, clients, perSecond: round(lat.length / ((performance.now() - t0) / 1000), 1), p50Ms: round(quantile(lat, 0.5), 1), p99Ms: round(quantile(lat, 0.99), 1) };
          attest.push(row);
          log(`cas-ha attest ${arm} round ${round_}: ${fmt(row.perSecond, 1)}/s with ${clients} clients (p50 ${fmt(row.p50Ms, 1)} ms)`);
        }
      }

      if ((o.provision ?? 0) > 0) {
        const measurement = measureShippedCode();
        for (const arm of ['1 CAS (counter log)', '3 members (memory, majority)'] as const) {
          const target = arm === '1 CAS (counter log)'
            ? { urls: [single.url], caPem: single.caPem, owner: single.owner, platformKeyFile: single.platformKeyFile }
            : { urls: ha.urls, caPem: ha.caPem, owner: ha.owner, platformKeyFile: ha.platformKeyFile };
          const many = Array.from({ length: o.provision! }, (_, i) => `prov-${String(i).padStart(5, '0')}`);
          const tApply = performance.now();
          // The owner applies through one member (as `cdbp policy apply --cas URL` does): state writes are
          // linearised by etcd's revision check, so applies spread over members would only race and retry.
          await pool(many, PROVISION_CONCURRENCY, async (service) => {
            const signed = await signPolicy(buildPolicy({ service, measurements: [measurement], teeModes: ['simulated'] }), target.owner);
            await applySignedPolicy(target.urls[0]!, target.caPem, signed);
          });
          const applySeconds = (performance.now() - tApply) / 1000;
          const provider = new SimulatedProvider(target.platformKeyFile);
          const tAttest = performance.now();
          await pool(many.map((service, i) => ({ service, i })), PROVISION_CONCURRENCY, async ({ service, i }) => {
            const p = arm === '1 CAS (counter log)'
              ? await attestAndProvision({ casUrl: single.url, caPem: single.caPem, service, provider, tls: {} })
              // A member that has not installed the policy from etcd yet refuses it: retried.
              : await attestAndProvisionAnyUntil([...ha.urls.slice(i % 3), ...ha.urls.slice(0, i % 3)], ha.caPem, service, provider);
            (p.counter as { close?: () => void }).close?.();
          });
          const attestSeconds = (performance.now() - tAttest) / 1000;
          const row: CasHaProvisionRow = { arm, services: o.provision!, concurrency: PROVISION_CONCURRENCY, applySeconds: round(applySeconds, 1), attestSeconds: round(attestSeconds, 1), totalSeconds: round(applySeconds + attestSeconds, 1) };
          provisioning.push(row);
          log(`cas-ha provisioning ${arm}: ${row.services} services in ${row.totalSeconds} s (apply ${row.applySeconds} s, attest ${row.attestSeconds} s)`);
        }
      }
    } finally {
      for (const c of opened) (c as { close?: () => void }).close?.();
      await ha.stop();
      await single.stop();
      tmp.remove();
    }
    const med = (arm: CasHaRow['arm'], k: 'p50Ms' | 'p99Ms' | 'concurrentPerSecond') => quantile(rows.filter((r) => r.arm === arm).map((r) => r[k]).sort((a, b) => a - b), 0.5);
    const ratio = (k: 'p50Ms' | 'p99Ms' | 'concurrentPerSecond') => round(med('3 members (memory, majority)', k) / med('1 CAS (counter log)', k), 2);
    const attestMed = (arm: Arm) => quantile(attest.filter((r) => r.arm === arm).map((r) => r.perSecond).sort((a, b) => a - b), 0.5);
    return {
      summary: {
        p50Ratio: ratio('p50Ms'), p99Ratio: ratio('p99Ms'), throughputRatio: ratio('concurrentPerSecond'), rows,
        attest, attestRatio: round(attestMed('3 members (memory, majority)') / attestMed('1 CAS (counter log)'), 2), provisioning,
      },
      runs: rows,
    };
  });
}

export function renderCasHa(r: ScenarioResult<CasHaSummary, CasHaRow>): string[] {
  const s = r.summary;
  return [
    'One counter advance (the CAS part of a seal): 3 replicated members (memory, majority receipts) vs the single CAS (counter log, fdatasync per batch), same run, arms interleaved.',
    '',
    '| arm | round | p50 ms | p99 ms | advances/s (all services) |',
    '|---|---:|---:|---:|---:|',
    ...s.rows.map((x) => `| ${x.arm} | ${x.round} | ${fmt(x.p50Ms, 3)} | ${fmt(x.p99Ms, 3)} | ${fmt(x.concurrentPerSecond, 0)} |`),
    '',
    `3 members / 1 CAS: p50 ×${s.p50Ratio}, p99 ×${s.p99Ratio}, throughput ×${s.throughputRatio}.`,
    '',
    'Attest-and-provision (full client path: evidence, certificate, secrets, counter channel), one service, concurrent clients:',
    '',
    '| arm | round | clients | provisions/s | p50 ms | p99 ms |',
    '|---|---:|---:|---:|---:|---:|',
    ...s.attest.map((x) => `| ${x.arm} | ${x.round} | ${x.clients} | ${fmt(x.perSecond, 1)} | ${fmt(x.p50Ms, 1)} | ${fmt(x.p99Ms, 1)} |`),
    '',
    `3 members / 1 CAS: attest throughput ×${s.attestRatio}.`,
    ...(s.provisioning.length > 0 ? [
      '',
      `Provisioning from scratch (owner applies each policy, then each service attests once; ${PROVISION_CONCURRENCY} at a time; target < 30 s for 6,000):`,
      '',
      '| arm | services | apply s | attest s | total s |',
      '|---|---:|---:|---:|---:|',
      ...s.provisioning.map((x) => `| ${x.arm} | ${x.services} | ${fmt(x.applySeconds, 1)} | ${fmt(x.attestSeconds, 1)} | **${fmt(x.totalSeconds, 1)}** |`),
    ] : []),
  ];
}

/** attestAndProvisionAny, retried while the policy has not reached the members yet (etcd poll lag: up to a minute after thousands of applies). */
async function attestAndProvisionAnyUntil(urls: string[], caPem: string, service: string, provider: SimulatedProvider): Promise<{ counter: CounterClient }> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await attestAndProvisionAny({ casUrls: urls, caPem, service, provider, tls: {} });
    } catch (e) {
      if (attempt >= 600 || !/SERVICE_UNKNOWN|no policy/.test(String((e as Error).message) + String((e as { code?: string }).code))) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const seconds = Number(process.argv[2] ?? 6);
  const services = Number(process.argv[3] ?? 8);
  const provision = Number(process.argv[4] ?? 0);
  const r = await runCasHa({ seconds, services, rounds: 2, provision, log: (l) => console.error(l) });
  console.log(JSON.stringify(r, null, 2));
  console.error(renderCasHa(r).join('\n'));
}
