import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { SimulatedProvider, SimulatedVerifier, generatePlatformKey, loadPlatformKey } from '../../src/attestation/simulated.ts';
import { FailClosedProvider, FailClosedVerifier } from '../../src/attestation/fail-closed.ts';
import { selectProvider, selectVerifiers } from '../../src/attestation/select.ts';
import { measureShippedCode, measuredFiles } from '../../src/attestation/measurement.ts';
import { isCdbpError } from '../../src/kernel/errors.ts';
import { tempDir } from '../support/tmp.ts';
import { mkdirSync, writeFileSync } from 'node:fs';

test('simulated evidence verifies only for the bound report data and the trusted platform key', async (t) => {
  const d = tempDir('att');
  t.after(() => d.remove());
  const file = path.join(d.path, 'platform.key');
  await generatePlatformKey(file);
  await assert.rejects(generatePlatformKey(file), (e: unknown) => isCdbpError(e, 'CONFIG_INVALID'));
  const kp = loadPlatformKey(file);
  const provider = new SimulatedProvider(file, 'ab'.repeat(32));
  const rd = Buffer.alloc(64, 3);
  const ev = await provider.collect(rd);
  const verifier = new SimulatedVerifier(kp.publicKey);
  assert.deepEqual(await verifier.verify(ev, rd), { measurement: 'ab'.repeat(32) });
  await assert.rejects(verifier.verify(ev, Buffer.alloc(64, 4)), (e: unknown) => isCdbpError(e, 'EVIDENCE_INVALID'));
  await assert.rejects(verifier.verify({ ...ev, measurement: 'cd'.repeat(32) }, rd), (e: unknown) => isCdbpError(e, 'EVIDENCE_INVALID'));
  await assert.rejects(verifier.verify({ ...ev, report: 'bm90IGpzb24=' }, rd), (e: unknown) => isCdbpError(e, 'EVIDENCE_INVALID'));
  const other = await generatePlatformKey(path.join(d.path, 'other.key'));
  await assert.rejects(new SimulatedVerifier(Buffer.from(other.publicKeyHex, 'hex')).verify(ev, rd), (e: unknown) => isCdbpError(e, 'EVIDENCE_INVALID'));
});

test('fail-closed provider and verifier always refuse', async () => {
  await assert.rejects(new FailClosedProvider().collect(Buffer.alloc(64)), (e: unknown) => isCdbpError(e, 'ATTESTATION_UNAVAILABLE'));
  await assert.rejects(new FailClosedVerifier().verify({ mode: 'none', measurement: '', reportData: '', report: '' }, Buffer.alloc(64)),
    (e: unknown) => isCdbpError(e, 'ATTESTATION_UNAVAILABLE'));
});

test('selectProvider: simulated needs an explicit opt-in; unconfigured fails closed', async (t) => {
  const d = tempDir('att');
  t.after(() => d.remove());
  const file = path.join(d.path, 'platform.key');
  await generatePlatformKey(file);
  assert.throws(() => selectProvider({ mode: 'simulated', platformKeyFile: file, env: {} }), (e: unknown) => isCdbpError(e, 'SIMULATION_NOT_ALLOWED'));
  assert.equal(selectProvider({ mode: 'simulated', platformKeyFile: file, allowSimulated: true, measurement: 'ab'.repeat(32), env: {} }).mode, 'simulated');
  assert.equal(selectProvider({ mode: 'simulated', platformKeyFile: file, measurement: 'ab'.repeat(32), env: { CDBP_ALLOW_SIMULATED: '1' } }).mode, 'simulated');
  assert.ok(selectProvider({ env: {} }) instanceof FailClosedProvider);
  // A real mode has only its real provider: without configfs-tsm it fails closed, never simulated.
  const snp = selectProvider({ mode: 'sev-snp', tsmRoot: path.join(d.path, 'no-configfs'), env: { CDBP_ALLOW_SIMULATED: '1' } });
  assert.equal(snp.mode, 'sev-snp');
  await assert.rejects(snp.collect(Buffer.alloc(64)), (e: unknown) => isCdbpError(e, 'ATTESTATION_UNAVAILABLE'));
  assert.ok(selectProvider({ mode: 'auto', tsmRoot: path.join(d.path, 'no-configfs'), env: { CDBP_ALLOW_SIMULATED: '1' } }) instanceof FailClosedProvider);
  assert.ok(selectVerifiers({ env: {} }).get('simulated') instanceof FailClosedVerifier);
  assert.throws(() => selectVerifiers({ allowSimulated: true, env: {} }), (e: unknown) => isCdbpError(e, 'CONFIG_INVALID'));
});

test('measurement covers shipped code only and changes with content and paths', (t) => {
  const d = tempDir('meas');
  t.after(() => d.remove());
  const w = (rel: string, s: string) => { mkdirSync(path.dirname(path.join(d.path, rel)), { recursive: true }); writeFileSync(path.join(d.path, rel), s); };
  w('src/a.ts', 'a'); w('cli/b.js', 'b'); w('package-lock.json', '{}'); w('src/test/x.ts', 'x'); w('src/a.test.ts', 't'); w('docs/d.ts', 'd'); w('src/readme.md', 'r');
  assert.deepEqual(measuredFiles(d.path), ['cli/b.js', 'package-lock.json', 'src/a.ts']);
  const m1 = measureShippedCode(d.path);
  assert.match(m1, /^[0-9a-f]{64}$/);
  assert.equal(measureShippedCode(d.path), m1); // cached
  assert.match(measureShippedCode(), /^[0-9a-f]{64}$/);
});
