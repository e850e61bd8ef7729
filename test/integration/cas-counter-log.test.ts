/**
 * The counter log of a real `cdbp cas` (issue 17): advances are group-committed into one log with the
 * sealed record; no ca.sealed rewrite and no audit append per advance; a truncated or rolled-back
 * counter log stops the CAS at start (STATE_TAMPERED); the intact log restarts with every counter.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tempDir } from '../support/tmp.ts';
import { startTestCas, applyTestPolicy, runCdbp } from '../support/cas.ts';
import { SimulatedProvider } from '../../src/attestation/simulated.ts';
import { attestAndProvision } from '../../src/cas-client/index.ts';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

test('counter log: group commit with the record, no per-advance ca.sealed/audit write; truncation and rollback refused at start', async (t) => {
  const tmp = tempDir('cas-ctrlog');
  t.after(() => tmp.remove());
  const cas = await startTestCas({ root: tmp.path });
  await applyTestPolicy(cas, { service: 'x' });
  await applyTestPolicy(cas, { service: 'y' });
  const px = await attestAndProvision({ casUrl: cas.url, caPem: cas.caPem, service: 'x', provider: new SimulatedProvider(cas.platformKeyFile), tls: {} });
  const py = await attestAndProvision({ casUrl: cas.url, caPem: cas.caPem, service: 'y', provider: new SimulatedProvider(cas.platformKeyFile), tls: {} });
  const state = path.join(cas.dir, 'state');
  const caSealed = path.join(state, 'ca.sealed');
  const auditLog = path.join(cas.dir, 'audit.log');
  const rec = (n: number) => Buffer.from(`sealed-record-${n}`);
  await px.counter.advance(0, 1, sha(rec(1)), rec(1));
  const caBefore = statSync(caSealed).mtimeMs;
  const auditBefore = readFileSync(auditLog, 'utf8');
  const older = readFileSync(path.join(state, 'counters.log'));
  // Two services advancing concurrently: every advance durable, in order per service.
  const runs = [];
  for (const [p, from] of [[px, 1], [py, 0]] as const) {
    runs.push((async () => {
      for (let n = from; n < from + 20; n++) await p.counter.advance(n, n + 1, sha(rec(n + 1)), rec(n + 1));
    })());
  }
  await Promise.all(runs);
  assert.equal(statSync(caSealed).mtimeMs, caBefore, 'ca.sealed is not rewritten per advance');
  assert.equal(readFileSync(auditLog, 'utf8'), auditBefore, 'no audit append per accepted advance (the counter log is their trail)');
  const read = await px.counter.read();
  assert.equal(read.value, 21);
  assert.deepEqual(read.record, rec(21), 'the CAS keeps the sealed record with the counter');
  for (const p of [px, py]) (p.counter as { close?: () => void }).close?.();
  assert.equal(await cas.stop(), 0);

  const log = path.join(state, 'counters.log');
  const current = readFileSync(log);
  const lines = current.toString().trim().split('\n');
  const casArgs = ['cas', '--dir', cas.dir, '--port', '0'];
  for (const [what, text] of [
    ['tail truncated (last 5 entries)', lines.slice(0, -5).join('\n') + '\n'],
    ['rolled back to an older copy', older],
    ['deleted', undefined],
  ] as const) {
    if (text === undefined) rmSync(log); else writeFileSync(log, text);
    const r = await runCdbp(casArgs);
    assert.equal(r.code, 1, `${what}: ${r.output}`);
    assert.match(r.output, /STATE_TAMPERED.*counter log/, what);
  }
  writeFileSync(log, current);
  const again = await startTestCas({ root: tmp.path, dir: cas.dir, platformKeyFile: cas.platformKeyFile });
  const p2 = await attestAndProvision({ casUrl: again.url, caPem: again.caPem, service: 'y', provider: new SimulatedProvider(again.platformKeyFile), tls: {} });
  assert.equal((await p2.counter.read()).value, 20);
  (p2.counter as { close?: () => void }).close?.();
  assert.equal(await again.stop(), 0);
});
