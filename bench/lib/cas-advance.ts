/**
 * The CAS counter's compare-and-advance latency in isolation: a fresh `cdbp cas`, one simulated-TEE
 * attestation for its mTLS counter client, then N sequential advances and N reads. What a strict-mode seal
 * waits for at the CAS, without the database, sysbench or the proxy competing.
 */
import { startTestCas } from '../../test/support/cas.ts';
import { tempDir } from '../../test/support/tmp.ts';
import { attestAndProvision } from '../../src/cas-client/index.ts';
import { SimulatedProvider } from '../../src/attestation/simulated.ts';
import { measureShippedCode } from '../../src/attestation/measurement.ts';
import { generateSigningKeyPair } from '../../src/crypto/ed25519.ts';
import { buildPolicy, signPolicy } from '../../src/provisioning/policy.ts';
import { applySignedPolicy } from '../../src/cas-client/policy.ts';
import { quantile, round } from './common.ts';

export interface CasAdvanceLatency { advanceP50Ms: number; advanceP90Ms: number; readP50Ms: number; readP90Ms: number; samples: number }

export async function measureCasAdvance(samples = 100): Promise<CasAdvanceLatency> {
  const tmp = tempDir('bench-cas-adv');
  const cas = await startTestCas({ root: tmp.path, env: { CDBP_LOG_LEVEL: 'error' } });
  try {
    const owner = await generateSigningKeyPair();
    await applySignedPolicy(cas.url, cas.caPem, await signPolicy(buildPolicy({ service: 'adv', measurements: [measureShippedCode()], teeModes: ['simulated'] }), owner));
    const p = await attestAndProvision({ casUrl: cas.url, caPem: cas.caPem, service: 'adv', provider: new SimulatedProvider(cas.platformKeyFile), tls: {} });
    const counter = p.counter;
    try {
      let v = (await counter.read()).value;
      const adv: number[] = [];
      const rd: number[] = [];
      for (let i = 0; i < samples; i++) {
        const t = performance.now();
        await counter.advance(v, v + 1, 'ab'.repeat(32));
        v++;
        adv.push(performance.now() - t);
      }
      for (let i = 0; i < samples; i++) {
        const t = performance.now();
        await counter.read();
        rd.push(performance.now() - t);
      }
      adv.sort((a, b) => a - b);
      rd.sort((a, b) => a - b);
      return { advanceP50Ms: round(quantile(adv, 0.5), 2), advanceP90Ms: round(quantile(adv, 0.9), 2), readP50Ms: round(quantile(rd, 0.5), 2), readP90Ms: round(quantile(rd, 0.9), 2), samples };
    } finally {
      (counter as unknown as { close(): void }).close();
    }
  } finally {
    await cas.stop();
    tmp.remove();
  }
}
