/** `cdbp status` output: what an operator reads at a glance. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { formatStatus } from '../../cli/commands/status.ts';
import { formatVerdict } from '../../cli/commands/verify.ts';

const base = {
  role: 'proxy', version: '0.1.0', ready: true, reasons: [],
  lifecycle: { state: 'ready', since: '2026-01-01T00:00:00.000Z' },
  mode: 'simulated', measurement: 'ab'.repeat(32),
  certificate: { subject: 'CN=mariadb', notAfter: '2026-01-02T00:00:00.000Z', expiresInSeconds: 86000, serial: '0A' },
  freshness: { mode: 'strict', verified: true, epoch: 7, lastSealAgeSeconds: 1.25, writesHeld: 0 },
  backend: { managed: true, socket: '/run/m.sock', running: true },
  listeners: { mysql: { host: '127.0.0.1', port: 3307 } },
  connections: { mysql: { open: 2, total: 10, refused: 1 } },
};

test('a ready simulated proxy: state, SIMULATED warning, cert, freshness, connections', () => {
  const out = formatStatus(base);
  assert.match(out, /^proxy 0\.1\.0 {2}READY {2}\(ready since 2026-01-01T00:00:00\.000Z\)/);
  assert.match(out, /TEE mode: +simulated +<-- SIMULATED: not protected by hardware/);
  assert.match(out, /certificate: +CN=mariadb, expires 2026-01-02T00:00:00\.000Z \(86000 s\)/);
  assert.match(out, /freshness: +strict, verified, epoch 7, last seal 1\.3 s ago, 0 writes held/);
  assert.match(out, /connections: +2 open, 10 total, 1 refused/);
  assert.doesNotMatch(out, /not ready|VIOLATION|RENEWAL/);
});

test('a rolled-back proxy: NOT READY with every reason and the violation', () => {
  const out = formatStatus({
    ...base, ready: false,
    lifecycle: { state: 'failed', since: 'x' },
    reasons: ['failed: ROLLBACK_DETECTED: record epoch 2 is behind the CAS counter 3'],
    freshness: { ...base.freshness, verified: false, violation: { kind: 'rollback', message: 'record epoch 2 is behind the CAS counter 3' } },
    certificate: { ...base.certificate, renewalError: 'CAS_UNREACHABLE: connect ECONNREFUSED' },
  });
  assert.match(out, /NOT READY {2}\(failed since x\)/);
  assert.match(out, /not ready: +failed: ROLLBACK_DETECTED/);
  assert.match(out, /VIOLATION: +rollback: record epoch 2/);
  assert.match(out, /RENEWAL FAILING: CAS_UNREACHABLE/);
  assert.match(out, /NOT verified/);
});

test('a proxy over a replicated CAS: one line per member, a failing one says so', () => {
  const out = formatStatus({
    ...base,
    casMembers: [
      { url: 'https://a:1', transport: 'channel', slot: 1, instance: 'aa', lastAnswerAt: 't1', lastError: null, lastErrorAt: null },
      { url: 'https://b:2', transport: 'channel', slot: 2, instance: 'bb', lastAnswerAt: 't0', lastError: 'connect ECONNREFUSED', lastErrorAt: 't2' },
      { url: 'https://c:3', transport: 'none yet', slot: null, instance: null, lastAnswerAt: null, lastError: null, lastErrorAt: null },
    ],
  });
  assert.match(out, /CAS member: +https:\/\/a:1 \(slot 1, channel\)$/m);
  assert.match(out, /CAS member: +https:\/\/b:2 \(slot 2, channel\) {2}FAILING since t2: connect ECONNREFUSED$/m);
  assert.match(out, /CAS member: +https:\/\/c:3 \(not answered yet\)$/m);
  assert.doesNotMatch(formatStatus(base), /CAS member/);
});

test('verify verdicts: simulated success is loud, failure names the reason', () => {
  const ok = formatVerdict({ verified: true, simulated: true, checks: [{ name: 'tls', ok: true, detail: 'fine' }] });
  assert.match(ok, /VERIFIED — SIMULATED TEE/);
  assert.match(ok, /NOTHING about a real TEE/);
  const bad = formatVerdict({ verified: false, simulated: true, checks: [], error: { code: 'MEASUREMENT_MISMATCH', message: 'x' } });
  assert.match(bad, /^NOT VERIFIED \(SIMULATED TEE\): MEASUREMENT_MISMATCH: x$/m);
  assert.doesNotMatch(bad, /^VERIFIED/m);
});
