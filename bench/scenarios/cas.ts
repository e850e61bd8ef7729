/**
 * CAS: a real `cdbp cas` process over loopback HTTPS.
 *   1. attest-and-provision round trips per second with N concurrent clients (one service);
 *   2. opt-in (services > 0): time for S services to provision — S owner-signed policies applied, then each
 *      attested once. It takes about a minute for 6000, so by default the last committed figure is reused
 *      (and the report says so).
 * Every round trip is the full client path (P-256 key + CSR, X25519 key, nonce, simulated evidence, verify +
 * unseal), so client CPU is part of the number: client and CAS share this machine's cores.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { startTestCas } from '../../test/support/cas.ts';
import { tempDir } from '../../test/support/tmp.ts';
import { attestAndProvision } from '../../src/cas-client/index.ts';
import { SimulatedProvider } from '../../src/attestation/simulated.ts';
import { measureShippedCode } from '../../src/attestation/measurement.ts';
import { generateSigningKeyPair } from '../../src/crypto/ed25519.ts';
import { buildPolicy, signPolicy } from '../../src/provisioning/policy.ts';
import { applySignedPolicy } from '../../src/cas-client/policy.ts';
import { scenario, quantile, round, fmt, pool, REPO, type ScenarioResult } from '../lib/common.ts';

export interface CasOptions { clients: number[]; seconds: number; services: number; concurrency: number; log?: (line: string) => void }
export interface CasThroughput { clients: number; roundTrips: number; perSecond: number; p50Ms: number; p95Ms: number; p99Ms: number }
export interface CasProvisioning { services: number; concurrency: number; applySeconds: number; attestSeconds: number; totalSeconds: number; source: string }
export interface CasSummary { throughput: CasThroughput[]; provisioning?: CasProvisioning }

/** The newest committed 6000-service figure (bench/results/cas-*.json from the earlier standalone script, or a run.ts result with --cas-services). */
export function committedProvisioning(): CasProvisioning | undefined {
  const dir = path.join(REPO, 'bench', 'results');
  const files = readdirSync(dir).filter((f) => f.endsWith('.json')).sort().reverse();
  for (const f of files) {
    try {
      const j = JSON.parse(readFileSync(path.join(dir, f), 'utf8'));
      const p = j.provisioning ?? j.scenarios?.cas?.summary?.provisioning;
      if (p && typeof p.attestSeconds === 'number' && !String(p.source ?? '').startsWith('reused')) {
        return { ...p, source: `reused from bench/results/${f} (${j.env?.date ?? j.startedAt ?? 'earlier run'})` };
      }
    } catch { /* not a result file */ }
  }
  return undefined;
}

export function runCas(o: CasOptions): Promise<ScenarioResult<CasSummary, CasThroughput>> {
  const log = o.log ?? (() => undefined);
  return scenario('cas', { ...o, log: undefined }, async ({ notes, unmeasured }) => {
    const tmp = tempDir('bench-cas');
    const cas = await startTestCas({ root: tmp.path, env: { CDBP_LOG_LEVEL: 'error' } });
    const provider = new SimulatedProvider(cas.platformKeyFile);
    const measurement = measureShippedCode();
    const owner = await generateSigningKeyPair();
    const throughput: CasThroughput[] = [];
    let provisioning: CasProvisioning | undefined;
    try {
      await applySignedPolicy(cas.url, cas.caPem, await signPolicy(buildPolicy({ service: 'bench', measurements: [measurement], teeModes: ['simulated'] }), owner));
      for (const n of o.clients) {
        const latencies: number[] = [];
        const end = Date.now() + o.seconds * 1000;
        const t0 = performance.now();
        await Promise.all(Array.from({ length: n }, async () => {
          while (Date.now() < end) {
            const s = performance.now();
            const p = await attestAndProvision({ casUrl: cas.url, caPem: cas.caPem, service: 'bench', provider, tls: {} });
            (p.counter as unknown as { close(): void }).close();
            latencies.push(performance.now() - s);
          }
        }));
        const elapsed = (performance.now() - t0) / 1000;
        latencies.sort((a, b) => a - b);
        const row = { clients: n, roundTrips: latencies.length, perSecond: round(latencies.length / elapsed, 1),
          p50Ms: round(quantile(latencies, 0.5), 1), p95Ms: round(quantile(latencies, 0.95), 1), p99Ms: round(quantile(latencies, 0.99), 1) };
        throughput.push(row);
        log(`cas clients=${n}: ${row.perSecond}/s (p50 ${row.p50Ms} ms, p99 ${row.p99Ms} ms)`);
      }
      if (o.services > 0) {
        const names = Array.from({ length: o.services }, (_, i) => `svc-${String(i).padStart(5, '0')}`);
        const tApply = performance.now();
        await pool(names, o.concurrency, async (service) => {
          await applySignedPolicy(cas.url, cas.caPem, await signPolicy(buildPolicy({ service, measurements: [measurement], teeModes: ['simulated'] }), owner));
        });
        const applySeconds = (performance.now() - tApply) / 1000;
        const tAttest = performance.now();
        await pool(names, o.concurrency, async (service) => {
          const p = await attestAndProvision({ casUrl: cas.url, caPem: cas.caPem, service, provider, tls: {} });
          (p.counter as unknown as { close(): void }).close();
        });
        const attestSeconds = (performance.now() - tAttest) / 1000;
        provisioning = { services: o.services, concurrency: o.concurrency, applySeconds: round(applySeconds, 1), attestSeconds: round(attestSeconds, 1),
          totalSeconds: round(applySeconds + attestSeconds, 1), source: 'measured in this run' };
        log(`cas: ${o.services} services in ${provisioning.totalSeconds} s`);
      } else {
        provisioning = committedProvisioning();
        if (provisioning) notes.push(`The ${provisioning.services}-service figure was NOT measured in this run: ${provisioning.source}. Pass --cas-services 6000 to measure it (~60 s).`);
        else unmeasured.push('time for 6000 services: not measured in this run and no committed result found (pass --cas-services 6000).');
      }
    } finally {
      await cas.stop();
      tmp.remove();
    }
    return { summary: { throughput, ...(provisioning ? { provisioning } : {}) }, runs: throughput };
  });
}

export function renderCas(r: ScenarioResult<CasSummary, CasThroughput>): string[] {
  const c = r.config as unknown as CasOptions;
  const p = r.summary.provisioning;
  return [
    `Attest-and-provision round trips against a real \`cdbp cas\` process (full client path, two fresh TLS connections each, audit fsync), ${c.seconds} s per row.`,
    'There is no baseline to divide by: this is the CAS\'s own capacity, client and CAS on the same 2 cores.',
    '',
    '| concurrent clients | round trips/s | p50 ms | p95 ms | p99 ms | round trips |',
    '|---:|---:|---:|---:|---:|---:|',
    ...r.summary.throughput.map((x) => `| ${x.clients} | **${fmt(x.perSecond, 1)}** | ${fmt(x.p50Ms, 1)} | ${fmt(x.p95Ms, 1)} | ${fmt(x.p99Ms, 1)} | ${x.roundTrips} |`),
    '',
    ...(p ? [
      `${p.services} services (concurrency ${p.concurrency}; ${p.source}): apply policies ${p.applySeconds} s, attest + provision each once ${p.attestSeconds} s, **total ${p.totalSeconds} s** (${fmt(p.services / p.attestSeconds, 1)} provisions/s).`,
    ] : ['Time for 6000 services: not measured.']),
  ];
}
