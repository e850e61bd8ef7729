/**
 * CAS benchmark: a real `cdbp cas` process over HTTPS on loopback.
 *   1. attest-and-provision round trips per second with N concurrent clients (one service);
 *   2. time for S services to provision: S policies applied (owner-signed), then each attested once.
 * Every round trip is the full client path (P-256 key + CSR, X25519 key, nonce, simulated evidence,
 * verify + unseal), so client CPU is part of the number: client and CAS share this machine's cores.
 *
 *   npx tsx bench/cas.ts [--clients 1,4,16] [--seconds 10] [--services 6000] [--concurrency 8]
 * Results: bench/results/cas-<date>.md and .json.
 */
import os from 'node:os';
import path from 'node:path';
import { execSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { startTestCas } from '../test/support/cas.ts';
import { tempDir } from '../test/support/tmp.ts';
import { attestAndProvision } from '../src/cas-client/index.ts';
import { SimulatedProvider } from '../src/attestation/simulated.ts';
import { measureShippedCode } from '../src/attestation/measurement.ts';
import { generateSigningKeyPair } from '../src/crypto/ed25519.ts';
import { applySignedPolicy, buildPolicy, signPolicy } from '../cas/policy.ts';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const { values } = parseArgs({ options: {
  clients: { type: 'string', default: '1,4,16' }, seconds: { type: 'string', default: '10' },
  services: { type: 'string', default: '6000' }, concurrency: { type: 'string', default: '8' },
} });
const clientCounts = values.clients.split(',').map(Number);
const seconds = Number(values.seconds);
const services = Number(values.services);
const concurrency = Number(values.concurrency);

function pct(sorted: number[], q: number): number {
  return sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

async function pool<T>(items: T[], width: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < items.length) await fn(items[next++]!);
  }));
}

const tmp = tempDir('bench-cas');
const cas = await startTestCas({ root: tmp.path, env: { CDBP_LOG_LEVEL: 'error' } });
const provider = new SimulatedProvider(cas.platformKeyFile);
const measurement = measureShippedCode();
const owner = await generateSigningKeyPair();
const results: Record<string, unknown> = {};
try {
  // 1. Round trips per second.
  await applySignedPolicy(cas.url, cas.caPem, await signPolicy(buildPolicy({ service: 'bench', measurements: [measurement], teeModes: ['simulated'] }), owner));
  const throughput: Array<Record<string, number>> = [];
  for (const n of clientCounts) {
    const latencies: number[] = [];
    const end = Date.now() + seconds * 1000;
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
    const row = { clients: n, roundTrips: latencies.length, seconds: +elapsed.toFixed(2), perSecond: +(latencies.length / elapsed).toFixed(1),
      p50ms: +pct(latencies, 0.5).toFixed(1), p95ms: +pct(latencies, 0.95).toFixed(1), p99ms: +pct(latencies, 0.99).toFixed(1) };
    throughput.push(row);
    console.log(`clients=${n}: ${row.perSecond}/s (p50 ${row.p50ms} ms, p95 ${row.p95ms} ms, ${row.roundTrips} round trips)`);
  }
  results.throughput = throughput;

  // 2. S services: apply all policies, then attest each once.
  const names = Array.from({ length: services }, (_, i) => `svc-${String(i).padStart(5, '0')}`);
  const tApply = performance.now();
  await pool(names, concurrency, async (service) => {
    await applySignedPolicy(cas.url, cas.caPem, await signPolicy(buildPolicy({ service, measurements: [measurement], teeModes: ['simulated'] }), owner));
  });
  const applySeconds = (performance.now() - tApply) / 1000;
  console.log(`${services} policies applied in ${applySeconds.toFixed(1)} s (${(services / applySeconds).toFixed(1)}/s)`);
  const tAttest = performance.now();
  await pool(names, concurrency, async (service) => {
    const p = await attestAndProvision({ casUrl: cas.url, caPem: cas.caPem, service, provider, tls: {} });
    (p.counter as unknown as { close(): void }).close();
  });
  const attestSeconds = (performance.now() - tAttest) / 1000;
  console.log(`${services} services attested+provisioned in ${attestSeconds.toFixed(1)} s (${(services / attestSeconds).toFixed(1)}/s)`);
  results.provisioning = { services, concurrency, applySeconds: +applySeconds.toFixed(1), attestSeconds: +attestSeconds.toFixed(1),
    totalSeconds: +(applySeconds + attestSeconds).toFixed(1) };
} finally {
  await cas.stop();
  tmp.remove();
}

const pkgVersion = (name: string): string => (JSON.parse(readFileSync(path.join(REPO, 'node_modules', name, 'package.json'), 'utf8')) as { version: string }).version;
let commit = 'unknown';
try { commit = execSync('git rev-parse --short HEAD', { cwd: REPO }).toString().trim(); } catch { /* not a checkout */ }
const env = {
  date: new Date().toISOString(), commit, cpu: os.cpus()[0]?.model ?? 'unknown', cores: os.cpus().length, memoryGiB: Math.round(os.totalmem() / 2 ** 30),
  node: process.version, fastify: pkgVersion('fastify'), libsodium: pkgVersion('libsodium-wrappers'), nodeForge: pkgVersion('node-forge'),
  args: { clients: clientCounts, seconds, services, concurrency },
};
const out = { env, ...results };
const day = env.date.slice(0, 10);
mkdirSync(path.join(REPO, 'bench', 'results'), { recursive: true });
writeFileSync(path.join(REPO, 'bench', 'results', `cas-${day}.json`), JSON.stringify(out, null, 2) + '\n');
const t = results.throughput as Array<Record<string, number>>;
const prov = results.provisioning as { services: number; concurrency: number; applySeconds: number; attestSeconds: number; totalSeconds: number };
writeFileSync(path.join(REPO, 'bench', 'results', `cas-${day}.md`), `# CAS benchmark ${day}

Machine: ${env.cpu}, ${env.cores} cores (shared with other work: numbers are noisy), ${env.memoryGiB} GiB.
Node ${env.node}, fastify ${env.fastify}, libsodium-wrappers ${env.libsodium}, node-forge ${env.nodeForge}; commit ${commit}.
Client and CAS run on the same machine over loopback HTTPS; each round trip is the full client path
(P-256 key + CSR, X25519 key, nonce request, simulated evidence, attest, verify, unseal) with two fresh
TLS connections, and the CAS fsyncs its audit log before answering.

## Attest-and-provision round trips (${seconds} s per row, one service)

| clients | round trips/s | p50 ms | p95 ms | p99 ms | round trips |
| --- | --- | --- | --- | --- | --- |
${t.map((r) => `| ${r.clients} | ${r.perSecond} | ${r.p50ms} | ${r.p95ms} | ${r.p99ms} | ${r.roundTrips} |`).join('\n')}

## ${prov.services} services provisioned (concurrency ${prov.concurrency})

| step | seconds | per second |
| --- | --- | --- |
| apply ${prov.services} owner-signed policies (each: verify, draw key, seal + fsync state, audit) | ${prov.applySeconds} | ${(prov.services / prov.applySeconds).toFixed(1)} |
| attest + provision each once | ${prov.attestSeconds} | ${(prov.services / prov.attestSeconds).toFixed(1)} |
| total | ${prov.totalSeconds} | |

Command: \`npx tsx bench/cas.ts --clients ${clientCounts.join(',')} --seconds ${seconds} --services ${services} --concurrency ${concurrency}\`
`);
console.log(`results written to bench/results/cas-${day}.{md,json}`);
