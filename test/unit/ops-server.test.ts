/**
 * The ops and admin servers through app.inject(): every endpoint, the readiness rules, the nonce
 * validation, evidence that a client can verify, and the admin port's refusals.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, generateKeyPairSync } from 'node:crypto';
import { buildOpsServer, buildAdminServer, newAdminToken, isLoopbackAddress, type Readiness } from '../../src/ops/server.ts';
import { endpointReportData, verifyEndpointEvidence } from '../../src/ops/evidence.ts';
import { Lifecycle } from '../../src/kernel/lifecycle.ts';
import { MetricsRegistry } from '../../src/kernel/metrics.ts';
import { CdbpError } from '../../src/kernel/errors.ts';
import { createLogger } from '../../src/kernel/log.ts';
import { SimulatedProvider, SimulatedVerifier } from '../../src/attestation/simulated.ts';
import { generateSigningKeyPair } from '../../src/crypto/ed25519.ts';
import { parsePrometheus } from '../support/prometheus.ts';

const log = createLogger({ name: 'ops-test', level: 'silent' });
const MEASUREMENT = 'ab'.repeat(32);

async function build(o: { readiness?: () => Readiness; attestation?: boolean; status?: () => Record<string, unknown> } = {}) {
  const lifecycle = new Lifecycle();
  const metrics = new MetricsRegistry();
  metrics.gauge('cdbp_mode', 'mode', (g) => g.set(1, { mode: 'simulated' }));
  metrics.counter('cdbp_connections_total', 'accepted').inc({ protocol: 'mysql' }, 3);
  const platform = await generateSigningKeyPair();
  const provider = new SimulatedProvider(platform, MEASUREMENT);
  const { publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const spki = publicKey.export({ type: 'spki', format: 'der' });
  const app = buildOpsServer({
    role: 'proxy', version: '9.9.9', lifecycle, metrics, log,
    ...(o.readiness ? { readiness: o.readiness } : {}),
    status: o.status ?? (() => ({ mode: 'simulated', measurement: MEASUREMENT })),
    ...(o.attestation === false ? {} : {
      attestation: async (nonce: Buffer) => ({ evidence: await provider.collect(endpointReportData(nonce, spki)) }),
    }),
  });
  return { app, lifecycle, metrics, platform, spki };
}

function toReady(l: Lifecycle): void {
  for (const s of ['attesting', 'provisioned', 'verifying', 'starting_backend', 'ready'] as const) l.advance(s);
}

test('livez is 200 in every state, including failed', async () => {
  const { app, lifecycle } = await build();
  assert.equal((await app.inject('/livez')).statusCode, 200);
  lifecycle.fail({ code: 'ROLLBACK_DETECTED', message: 'x' });
  const r = await app.inject('/livez');
  assert.equal(r.statusCode, 200);
  assert.deepEqual(r.json(), { status: 'alive' });
});

test('startupz: 503 until the role was ready once, then 200 (also while draining)', async () => {
  const { app, lifecycle } = await build();
  const before = await app.inject('/startupz');
  assert.equal(before.statusCode, 503);
  assert.deepEqual(before.json(), { started: false, state: 'starting' });
  toReady(lifecycle);
  assert.equal((await app.inject('/startupz')).statusCode, 200);
  lifecycle.advance('draining');
  assert.equal((await app.inject('/startupz')).statusCode, 200);
});

test('readyz follows the lifecycle and the role\'s extra conditions, with reasons', async () => {
  let extra: Readiness = { ready: true, reasons: [] };
  const { app, lifecycle } = await build({ readiness: () => extra });
  const starting = await app.inject('/readyz');
  assert.equal(starting.statusCode, 503);
  assert.deepEqual(starting.json().reasons, ['lifecycle is starting']);
  toReady(lifecycle);
  const ready = await app.inject('/readyz');
  assert.equal(ready.statusCode, 200);
  assert.deepEqual(ready.json(), { ready: true, state: 'ready', reasons: [] });
  extra = { ready: false, reasons: ['certificate expired at 2020-01-01T00:00:00.000Z'] };
  const expired = await app.inject('/readyz');
  assert.equal(expired.statusCode, 503);
  assert.deepEqual(expired.json().reasons, ['certificate expired at 2020-01-01T00:00:00.000Z']);
  extra = { ready: true, reasons: [] };
  lifecycle.advance('draining');
  const draining = await app.inject('/readyz');
  assert.equal(draining.statusCode, 503);
  assert.deepEqual(draining.json().reasons, ['lifecycle is draining']);
});

test('readyz after a failure names the code and message', async () => {
  const { app, lifecycle } = await build();
  lifecycle.advance('verifying');
  lifecycle.fail({ code: 'ROLLBACK_DETECTED', message: 'record epoch 3 is behind the CAS counter 5' });
  const r = await app.inject('/readyz');
  assert.equal(r.statusCode, 503);
  assert.equal(r.json().state, 'failed');
  assert.deepEqual(r.json().reasons, ['failed: ROLLBACK_DETECTED: record epoch 3 is behind the CAS counter 5']);
});

test('metrics: Prometheus text that the strict parser accepts', async () => {
  const { app } = await build();
  const r = await app.inject('/metrics');
  assert.equal(r.statusCode, 200);
  assert.match(String(r.headers['content-type']), /^text\/plain; version=0\.0\.4/);
  const m = parsePrometheus(r.body);
  assert.equal(m.value('cdbp_mode', { mode: 'simulated' }), 1);
  assert.equal(m.value('cdbp_connections_total', { protocol: 'mysql' }), 3);
  assert.equal(m.family('cdbp_connections_total')?.type, 'counter');
});

test('v1/status: role, version, lifecycle with since and history, readiness, and the role\'s facts', async () => {
  const { app, lifecycle } = await build({ readiness: () => ({ ready: false, reasons: ['draining'] }) });
  toReady(lifecycle);
  const r = await app.inject('/v1/status');
  assert.equal(r.statusCode, 200);
  const s = r.json();
  assert.equal(s.role, 'proxy');
  assert.equal(s.version, '9.9.9');
  assert.equal(s.lifecycle.state, 'ready');
  assert.ok(!Number.isNaN(Date.parse(s.lifecycle.since)));
  assert.deepEqual(s.lifecycle.history.map((h: { state: string }) => h.state),
    ['starting', 'attesting', 'provisioned', 'verifying', 'starting_backend', 'ready']);
  assert.equal(s.ready, false);
  assert.deepEqual(s.reasons, ['draining']);
  assert.equal(s.mode, 'simulated');
  assert.equal(s.measurement, MEASUREMENT);
});

test('v1/attestation: evidence binds the client nonce and the certificate key; a client verifies it', async () => {
  const { app, platform, spki } = await build();
  const nonce = randomBytes(32);
  const r = await app.inject(`/v1/attestation?nonce=${nonce.toString('hex')}`);
  assert.equal(r.statusCode, 200);
  const { evidence } = r.json();
  const verifier = new SimulatedVerifier(platform.publicKey);
  const ok = await verifyEndpointEvidence({ evidence, nonce, presentedSpki: spki, verifier, expectedMeasurement: MEASUREMENT });
  assert.equal(ok.measurement, MEASUREMENT);
  // Another nonce (replay), another key (a different endpoint), another measurement: all refused.
  await assert.rejects(verifyEndpointEvidence({ evidence, nonce: randomBytes(32), presentedSpki: spki, verifier, expectedMeasurement: MEASUREMENT }),
    (e: CdbpError) => e.code === 'EVIDENCE_INVALID');
  const other = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'der' });
  await assert.rejects(verifyEndpointEvidence({ evidence, nonce, presentedSpki: other, verifier, expectedMeasurement: MEASUREMENT }),
    (e: CdbpError) => e.code === 'EVIDENCE_INVALID');
  await assert.rejects(verifyEndpointEvidence({ evidence, nonce, presentedSpki: spki, verifier, expectedMeasurement: 'cd'.repeat(32) }),
    (e: CdbpError) => e.code === 'MEASUREMENT_MISMATCH');
  // A different platform key does not verify it.
  const stranger = new SimulatedVerifier((await generateSigningKeyPair()).publicKey);
  await assert.rejects(verifyEndpointEvidence({ evidence, nonce, presentedSpki: spki, verifier: stranger, expectedMeasurement: MEASUREMENT }),
    (e: CdbpError) => e.code === 'EVIDENCE_INVALID');
});

test('v1/attestation: malformed nonces are 400 with a stable code', async () => {
  const { app } = await build();
  for (const q of ['', '?nonce=', '?nonce=abc', '?nonce=zz' + '00'.repeat(10), '?nonce=' + '00'.repeat(7), '?nonce=' + '00'.repeat(65), '?nonce=' + '0'.repeat(33)]) {
    const r = await app.inject(`/v1/attestation${q}`);
    assert.equal(r.statusCode, 400, q);
    assert.equal(r.json().error.code, 'BAD_REQUEST', q);
  }
});

test('v1/attestation: 404 for a role without evidence, 503 before attestation, 5xx details hidden', async () => {
  const none = await build({ attestation: false });
  const r = await none.app.inject(`/v1/attestation?nonce=${'00'.repeat(32)}`);
  assert.equal(r.statusCode, 404);
  assert.equal(r.json().error.code, 'NOT_FOUND');

  const lifecycle = new Lifecycle();
  let thrown: Error = new CdbpError('ATTESTATION_UNAVAILABLE', 'not attested yet');
  const app = buildOpsServer({
    role: 'proxy', version: '1', lifecycle, metrics: new MetricsRegistry(), log, status: () => ({}),
    attestation: async () => { throw thrown; },
  });
  const early = await app.inject(`/v1/attestation?nonce=${'00'.repeat(32)}`);
  assert.equal(early.statusCode, 503);
  assert.deepEqual(early.json(), { error: { code: 'ATTESTATION_UNAVAILABLE', message: 'not attested yet' } });
  thrown = new Error('secret internal detail /etc/key');
  const boom = await app.inject(`/v1/attestation?nonce=${'00'.repeat(32)}`);
  assert.equal(boom.statusCode, 500);
  assert.deepEqual(boom.json(), { error: { code: 'INTERNAL', message: 'internal error' } });
});

test('unknown paths and methods are a JSON 404', async () => {
  const { app } = await build();
  const r = await app.inject('/v1/nope');
  assert.equal(r.statusCode, 404);
  assert.deepEqual(r.json(), { error: { code: 'NOT_FOUND', message: 'no such endpoint' } });
  assert.equal((await app.inject({ method: 'POST', url: '/v1/admin/drain' })).statusCode, 404, 'no admin action on the ops port');
});

const TOKEN = 'per-start-admin-token-0123456789';
/** What `cdbp admin` sends: loopback, the token, JSON, no Origin. */
const OK_HEADERS = { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' };

function adminApp(o: { renew?: () => Promise<Record<string, unknown>> } = {}) {
  const calls: string[] = [];
  const app = buildAdminServer({
    drain: () => calls.push('drain'),
    quit: () => calls.push('quit'),
    ...(o.renew ? { renew: o.renew } : {}),
  }, log, { token: TOKEN });
  return { app, calls };
}

function post(app: ReturnType<typeof adminApp>['app'], action: string, o: { headers?: Record<string, string>; payload?: string; remoteAddress?: string } = {}) {
  return app.inject({ method: 'POST', url: `/v1/admin/${action}`, remoteAddress: o.remoteAddress ?? '127.0.0.1', headers: o.headers ?? OK_HEADERS, payload: o.payload ?? '{}' });
}

test('admin: drain, quit and renew from loopback with the token and a JSON body', async () => {
  const { app, calls } = adminApp({ renew: async () => ({ serial: '01' }) });
  const drain = await post(app, 'drain');
  assert.equal(drain.statusCode, 200);
  assert.deepEqual(drain.json(), { ok: true, action: 'drain' });
  const quit = await post(app, 'quit', { remoteAddress: '::1' });
  assert.equal(quit.statusCode, 200);
  await new Promise((r) => setImmediate(r));
  const renew = await post(app, 'renew');
  assert.deepEqual(renew.json(), { ok: true, action: 'renew', serial: '01' });
  assert.deepEqual(calls, ['drain', 'quit']);
  const charset = await post(app, 'drain', { headers: { ...OK_HEADERS, 'content-type': 'application/json; charset=utf-8' } });
  assert.equal(charset.statusCode, 200);
});

test('admin: refused from a non-loopback address, and nothing happens', async () => {
  const { app, calls } = adminApp();
  for (const addr of ['10.1.2.3', '192.168.0.5', '::ffff:10.0.0.1', 'fe80::1', '128.0.0.1']) {
    const r = await post(app, 'drain', { remoteAddress: addr });
    assert.equal(r.statusCode, 403, addr);
    assert.equal(r.json().error.code, 'FORBIDDEN');
  }
  assert.deepEqual(calls, []);
});

test('admin: GET cannot trigger an action (a web page cannot fire it with an <img>)', async () => {
  const { app, calls } = adminApp();
  const r = await app.inject({ method: 'GET', url: '/v1/admin/drain', remoteAddress: '127.0.0.1', headers: { authorization: `Bearer ${TOKEN}` } });
  assert.equal(r.statusCode, 404);
  assert.deepEqual(calls, []);
});

test('admin: the cross-site quit of issue 16 (text/plain, foreign Origin) is refused, and each refusal has its status and code', async () => {
  const { app, calls } = adminApp({ renew: async () => ({ serial: '01' }) });
  const cases: Array<{ what: string; o: Parameters<typeof post>[2]; status: number; code: string }> = [
    { what: 'the reported attack: text/plain + Origin, no token', o: { headers: { 'content-type': 'text/plain', origin: 'https://evil.example' }, payload: 'x' }, status: 403, code: 'ORIGIN_REFUSED' },
    { what: 'any Origin, even with the token and JSON', o: { headers: { ...OK_HEADERS, origin: 'http://127.0.0.1:9090' } }, status: 403, code: 'ORIGIN_REFUSED' },
    { what: 'Origin: null (sandboxed frame)', o: { headers: { ...OK_HEADERS, origin: 'null' } }, status: 403, code: 'ORIGIN_REFUSED' },
    { what: 'no token', o: { headers: { 'content-type': 'application/json' } }, status: 401, code: 'UNAUTHORIZED' },
    { what: 'wrong token', o: { headers: { ...OK_HEADERS, authorization: 'Bearer nope' } }, status: 401, code: 'UNAUTHORIZED' },
    { what: 'token without Bearer', o: { headers: { ...OK_HEADERS, authorization: TOKEN } }, status: 401, code: 'UNAUTHORIZED' },
    { what: 'text/plain with the token', o: { headers: { ...OK_HEADERS, 'content-type': 'text/plain' }, payload: '{}' }, status: 415, code: 'UNSUPPORTED_MEDIA_TYPE' },
    { what: 'a form', o: { headers: { ...OK_HEADERS, 'content-type': 'application/x-www-form-urlencoded' }, payload: 'a=1' }, status: 415, code: 'UNSUPPORTED_MEDIA_TYPE' },
    { what: 'multipart', o: { headers: { ...OK_HEADERS, 'content-type': 'multipart/form-data; boundary=x' }, payload: '--x--' }, status: 415, code: 'UNSUPPORTED_MEDIA_TYPE' },
    { what: 'no content type', o: { headers: { authorization: `Bearer ${TOKEN}` }, payload: '' }, status: 415, code: 'UNSUPPORTED_MEDIA_TYPE' },
    { what: 'application/jsonx', o: { headers: { ...OK_HEADERS, 'content-type': 'application/jsonx' } }, status: 415, code: 'UNSUPPORTED_MEDIA_TYPE' },
    { what: 'malformed JSON', o: { payload: '{nope' }, status: 400, code: 'BAD_REQUEST' },
    { what: 'empty JSON body', o: { payload: '' }, status: 400, code: 'BAD_REQUEST' },
    { what: 'a body over 1 KiB', o: { payload: JSON.stringify({ pad: 'x'.repeat(4096) }) }, status: 413, code: 'BODY_TOO_LARGE' },
  ];
  for (const action of ['quit', 'drain', 'renew']) {
    for (const c of cases) {
      const r = await post(app, action, c.o);
      assert.equal(r.statusCode, c.status, `${action}: ${c.what}: ${r.body}`);
      assert.equal(r.json().error.code, c.code, `${action}: ${c.what}`);
    }
  }
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(calls, [], 'no refused request did anything');
});

test('admin: no server without a real token', () => {
  assert.throws(() => buildAdminServer({ drain: () => undefined, quit: () => undefined }, log, { token: '' }), /token/);
  assert.throws(() => buildAdminServer({ drain: () => undefined, quit: () => undefined }, log, { token: 'short' }), /token/);
  assert.notEqual(newAdminToken(), newAdminToken());
  assert.ok(newAdminToken().length >= 43, '256-bit token');
});

test('admin: a failing renewal answers with its code; a role without renewal says 404', async () => {
  const failing = adminApp({ renew: async () => { throw new CdbpError('CAS_UNREACHABLE', 'connect ECONNREFUSED'); } });
  const r = await post(failing.app, 'renew');
  assert.equal(r.statusCode, 503);
  assert.equal(r.json().error.code, 'CAS_UNREACHABLE');
  const none = adminApp();
  assert.equal((await post(none.app, 'renew')).statusCode, 404);
});

test('isLoopbackAddress', () => {
  for (const a of ['127.0.0.1', '127.1.2.3', '::1', '::ffff:127.0.0.1']) assert.ok(isLoopbackAddress(a), a);
  for (const a of ['10.0.0.1', '0.0.0.0', '::', '::ffff:10.0.0.1', '1127.0.0.1', '127.0.0.1.evil', '']) assert.ok(!isLoopbackAddress(a), a);
});
