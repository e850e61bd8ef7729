/**
 * Evidence verification throughput, per format: how many SEV-SNP reports and TDX quotes one CAS core
 * verifies per second (the CAS must not become the bottleneck when thousands of sidecars restart). The
 * real vectors (test/fixtures/tee) are verified in a loop, inside their validity windows, with the same
 * code the CAS runs; the simulated verifier (one Ed25519 check) is the baseline in the same run.
 * Single-threaded, in this process: the CAS verifies on its event loop.
 */
import { scenario, round, fmt, type ScenarioResult } from '../lib/common.ts';
import { verifyTeeEvidence } from '../../src/attestation/verify-evidence.ts';
import { SimulatedProvider, SimulatedVerifier } from '../../src/attestation/simulated.ts';
import { generateSigningKeyPair } from '../../src/crypto/ed25519.ts';
import { readFileSync } from 'node:fs';
import { fixture, snpVector, sprV4Collateral, SPR_V4_AT, tdxQuote } from '../../test/support/tee-vectors.ts';
import { loadEvidenceBytes } from '../../src/attestation/evidence-file.ts';

export interface AttestOptions { seconds: number; log?: (line: string) => void }
export interface AttestRow { format: string; verifications: number; perSecond: number; usPerVerification: number; vsSimulated: number }

async function loop(seconds: number, fn: () => unknown | Promise<unknown>): Promise<{ n: number; s: number }> {
  for (let i = 0; i < 20; i++) await fn(); // warm-up
  const start = performance.now();
  const end = start + seconds * 1000;
  let n = 0;
  while (performance.now() < end) {
    await fn();
    n++;
  }
  return { n, s: (performance.now() - start) / 1000 };
}

export function runAttest(o: AttestOptions): Promise<ScenarioResult<AttestRow[], AttestRow>> {
  const log = o.log ?? (() => undefined);
  return scenario('attest', { seconds: o.seconds }, async () => {
    const kp = await generateSigningKeyPair();
    const rd = Buffer.alloc(64, 7);
    const simEv = await new SimulatedProvider(kp, 'ab'.repeat(32)).collect(rd);
    const sim = new SimulatedVerifier(kp.publicKey);
    const vcek = snpVector('milan-vcek-2');
    const vlek = snpVector('milan-vlek');
    const azure = snpVector('genoa-azure');
    const hcl = readFileSync(fixture('snp', 'genoa-azure', 'hcl-report.bin'));
    const quote = loadEvidenceBytes(tdxQuote('quote-4'));
    const collateral = sprV4Collateral();
    const arms: Array<[string, () => unknown | Promise<unknown>]> = [
      ['simulated (baseline)', () => sim.verify(simEv, rd)],
      ['SEV-SNP report v2, VCEK (Milan)', () => verifyTeeEvidence({ evidence: vcek.evidence, certs: vcek.certs, now: vcek.at })],
      ['SEV-SNP report v3, VLEK (Milan)', () => verifyTeeEvidence({ evidence: vlek.evidence, certs: vlek.certs, now: vlek.at })],
      ['SEV-SNP v3 in Azure HCL (Genoa; HCL parse + runtime-data binding)', () => verifyTeeEvidence({ evidence: loadEvidenceBytes(hcl), certs: azure.certs, now: azure.at })],
      ['TDX quote v4 + collateral (CRLs, TCB info, QE identity)', () => verifyTeeEvidence({ evidence: quote, tdxCollateral: collateral, now: SPR_V4_AT, policy: { tdx: { allowDebug: true } } })],
    ];
    const rows: AttestRow[] = [];
    let base = 0;
    for (const [format, fn] of arms) {
      const { n, s } = await loop(o.seconds, fn);
      const perSecond = n / s;
      if (!base) base = perSecond;
      rows.push({ format, verifications: n, perSecond: round(perSecond, 0), usPerVerification: round(1e6 / perSecond, 0), vsSimulated: round(perSecond / base, 3) });
      log(`attest ${format}: ${fmt(perSecond, 0)}/s`);
    }
    return { summary: rows, runs: rows };
  });
}

export function renderAttest(r: ScenarioResult<AttestRow[], AttestRow>): string[] {
  return [
    `Evidence verifications per second on one core (the CAS verifies on its event loop), ${String(r.config.seconds)} s per format; every`,
    'verification is complete: certificate chain to the pinned root (RSA-PSS for AMD), report/quote signature, TCB checks, and for TDX',
    'both CRLs, QE report, binding and the two collateral signatures. Baseline: the simulated verifier (one Ed25519 check).',
    '',
    '| format | verifications/s | µs each | vs simulated | verifications |',
    '|---|---:|---:|---:|---:|',
    ...r.summary.map((x) => `| ${x.format} | **${fmt(x.perSecond, 0)}** | ${fmt(x.usPerVerification, 0)} | ${fmt(x.vsSimulated, 3)} | ${x.verifications} |`),
  ];
}
