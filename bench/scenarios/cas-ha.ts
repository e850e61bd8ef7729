/**
 * Replicated CAS: the CAS's part of a seal (one counter compare-and-advance, as the freshness guard makes
 * per epoch) against 3 members that hold counters in memory and answer by majority, vs the single CAS
 * (group-committed counter log, fdatasync per batch) in the same run, arms interleaved.
 *   - latency: one service advancing back to back (p50/p99 per advance);
 *   - throughput: `services` services advancing concurrently (advances/s).
 * Real processes on loopback: `cdbp cas` (1) and three `cdbp cas --ha-*` members over a real etcd.
 *
 *   npx tsx bench/scenarios/cas-ha.ts [seconds] [services]     (standalone; prints JSON)
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
import { scenario, quantile, round, fmt, type ScenarioResult } from '../lib/common.ts';

export interface CasHaOptions { seconds: number; services: number; rounds: number; log?: (line: string) => void }
export interface CasHaRow { arm: '1 CAS (counter log)' | '3 members (memory, majority)'; round: number; p50Ms: number; p99Ms: number; advances: number; concurrentPerSecond: number }
export interface CasHaSummary { p50Ratio: number; p99Ratio: number; throughputRatio: number; rows: CasHaRow[] }

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
    } finally {
      for (const c of opened) (c as { close?: () => void }).close?.();
      await ha.stop();
      await single.stop();
      tmp.remove();
    }
    const med = (arm: CasHaRow['arm'], k: 'p50Ms' | 'p99Ms' | 'concurrentPerSecond') => quantile(rows.filter((r) => r.arm === arm).map((r) => r[k]).sort((a, b) => a - b), 0.5);
    const ratio = (k: 'p50Ms' | 'p99Ms' | 'concurrentPerSecond') => round(med('3 members (memory, majority)', k) / med('1 CAS (counter log)', k), 2);
    return { summary: { p50Ratio: ratio('p50Ms'), p99Ratio: ratio('p99Ms'), throughputRatio: ratio('concurrentPerSecond'), rows }, runs: rows };
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
  ];
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const seconds = Number(process.argv[2] ?? 6);
  const services = Number(process.argv[3] ?? 8);
  const r = await runCasHa({ seconds, services, rounds: 2, log: (l) => console.error(l) });
  console.log(JSON.stringify(r, null, 2));
  console.error(renderCasHa(r).join('\n'));
}
