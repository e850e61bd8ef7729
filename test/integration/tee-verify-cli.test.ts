/**
 * `cdbp verify --evidence` as an operator runs it: the real CLI process on the real vectors; exit 0 only
 * when the evidence verifies, the facts on stdout, a stable code when it does not.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { fixture } from '../support/tee-vectors.ts';
import { tempDir } from '../support/tmp.ts';

const CDBP = path.resolve(import.meta.dirname, '../../bin/cdbp.js');

function cdbp(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile('node', [CDBP, 'verify', ...args], { timeout: 60_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr });
    });
  });
}

test('cdbp verify --evidence: SNP (hex report + collateral dir), VLEK at a time in its window, Azure HCL; the facts are shown', async () => {
  const snp = await cdbp(['--evidence', fixture('snp/milan-vcek-2/report.hex'), '--collateral', fixture('snp/milan-vcek-2')]);
  assert.equal(snp.code, 0, snp.stdout + snp.stderr);
  assert.match(snp.stdout, /sev-snp — SEV-SNP report v2/);
  assert.match(snp.stdout, /measurement +7a1e5c266c0108db/);
  assert.match(snp.stdout, /signer +VCEK ← SEV-Milan ← ARK-Milan/);
  assert.match(snp.stdout, /VERIFIED .* production default policy/);

  const vlek = await cdbp(['--evidence', fixture('snp/milan-vlek/report.bin'), '--certs', fixture('snp/milan-vlek'), '--at', '2025-06-01T00:00:00Z', '--json']);
  assert.equal(vlek.code, 0, vlek.stdout);
  const doc = JSON.parse(vlek.stdout);
  assert.equal(doc.verdict.details.signer, 'VLEK');
  assert.equal(doc.verdict.details.vmpl, 1);
  // The same VLEK today: expired.
  const vlekNow = await cdbp(['--evidence', fixture('snp/milan-vlek/report.bin'), '--certs', fixture('snp/milan-vlek'), '--at', '2026-06-01T00:00:00Z']);
  assert.equal(vlekNow.code, 1);
  assert.match(vlekNow.stdout, /NOT VERIFIED.*TEE_CERT_EXPIRED/);
});

test('cdbp verify --evidence: debug vectors are refused by default and accepted only by a policy that allows debug', async () => {
  const snp = await cdbp(['--evidence', fixture('snp/milan-vcek/report.bin'), '--certs', fixture('snp/milan-vcek')]);
  assert.equal(snp.code, 1);
  assert.match(snp.stdout, /TEE_DEBUG_REFUSED/);

  const tdxArgs = ['--evidence', fixture('tdx/quote-4/quote.dat'), '--collateral', fixture('tdx/spr-v4'), '--at', '2023-07-01T00:00:00Z'];
  const refused = await cdbp(tdxArgs);
  assert.equal(refused.code, 1);
  assert.match(refused.stdout, /TEE_DEBUG_REFUSED/);
  const dir = tempDir('tee-policy');
  try {
    const policy = path.join(dir.path, 'debug-ok.json');
    writeFileSync(policy, JSON.stringify({ tdx: { allowDebug: true } }));
    const ok = await cdbp([...tdxArgs, '--policy', policy]);
    assert.equal(ok.code, 0, ok.stdout);
    assert.match(ok.stdout, /tdx — TDX quote v4 \(TDX 1.0\)/);
    assert.match(ok.stdout, /TCB status +UpToDate/);
    assert.match(ok.stdout, /FMSPC 50806f000000/);
    assert.match(ok.stdout, /collateral +\d+ h old/);
    // Today the same collateral is long past its nextUpdate.
    const stale = await cdbp(['--evidence', fixture('tdx/quote-4/quote.dat'), '--collateral', fixture('tdx/spr-v4'), '--policy', policy]);
    assert.equal(stale.code, 1);
    assert.match(stale.stdout, /TEE_COLLATERAL_EXPIRED/);
  } finally {
    dir.remove();
  }
});

test('cdbp verify --evidence: garbage and missing certificates are clear refusals, not crashes', async () => {
  const r = await cdbp(['--evidence', fixture('NOTICE')]);
  assert.equal(r.code, 1);
  assert.match(r.stdout, /TEE_EVIDENCE_MALFORMED/);
  const noCerts = await cdbp(['--evidence', fixture('snp/milan-vcek-2/report.hex')]);
  assert.equal(noCerts.code, 1);
  assert.match(noCerts.stdout, /TEE_COLLATERAL_MISSING.*VCEK/);
});
