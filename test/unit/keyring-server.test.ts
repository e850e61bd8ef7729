import { test, before, after } from 'node:test';
import { TlsIdentityHolder } from '../../src/crypto/tls-identity.ts';
import assert from 'node:assert/strict';
import https from 'node:https';
import tls from 'node:tls';
import { randomBytes } from 'node:crypto';
import { Writable } from 'node:stream';
import { createKeyring, type Keyring, type KeyringAuditEvent } from '../../keyring/index.ts';
import { createLogger } from '../../src/kernel/log.ts';
import { MetricsRegistry } from '../../src/kernel/metrics.ts';
import { makeTestPki, type TestPki } from '../support/test-pki.ts';

type Answer = { status: number; body: any } | { error: string };

function get(port: number, ca: string, path: string, headers: Record<string, string> = {}): Promise<Answer> {
  return new Promise((resolve) => {
    const req = https.get({ host: '127.0.0.1', port, path, ca, headers, agent: false }, (res) => {
      let raw = '';
      res.on('data', (c) => (raw += c));
      res.on('end', () => resolve({ status: res.statusCode!, body: raw ? JSON.parse(raw) : undefined }));
    });
    req.on('error', (e: NodeJS.ErrnoException) => resolve({ error: e.code ?? e.message }));
  });
}

/** Sends raw bytes over TLS and reports what came back before the close. */
function raw(port: number, ca: string, payload: string | Buffer): Promise<{ data: string; closedBy: string; ms: number }> {
  return new Promise((resolve) => {
    const t0 = Date.now();
    let data = '';
    const s = tls.connect({ host: '127.0.0.1', port, ca, servername: 'localhost' }, () => s.write(payload));
    s.on('data', (c) => (data += c.toString('latin1')));
    let err = '';
    s.on('error', (e: NodeJS.ErrnoException) => (err = e.code ?? e.message));
    s.on('close', () => resolve({ data, closedBy: err || 'close', ms: Date.now() - t0 }));
  });
}

let pki: TestPki;
let identity: TlsIdentityHolder;
let keyring: Keyring;
let port: number;
let token: string;
const metrics = new MetricsRegistry();
const audit: KeyringAuditEvent[] = [];
const logLines: string[] = [];
const k1v1 = randomBytes(32);
const k1v2 = randomBytes(32);
const k2v1 = randomBytes(32);

before(async () => {
  pki = makeTestPki();
  identity = new TlsIdentityHolder(pki);
  const destination = new Writable({ write(chunk, _enc, cb) { logLines.push(chunk.toString()); cb(); } });
  keyring = createKeyring({
    keys: [{ id: 1, version: 1, key: k1v1 }, { id: 1, version: 2, key: k1v2 }, { id: 2, version: 1, key: k2v1 }],
    tls: identity, log: createLogger({ name: 'test', level: 'debug', destination }), metrics, audit: (e) => audit.push(e),
    limits: { headersTimeoutMs: 500, requestTimeoutMs: 800, handshakeTimeoutMs: 500, maxConnections: 8 },
  });
  const l = await keyring.listen();
  port = l.port;
  assert.equal(l.url, `https://127.0.0.1:${port}/v1/cdbp`);
});

after(async () => {
  await keyring.close();
});

test('before a token is issued every request is refused at the connection level', async () => {
  const a = await get(port, pki.caPem, '/v1/cdbp/data/1', { 'x-vault-token': 'anything' });
  assert.ok('error' in a, `no HTTP answer expected, got ${JSON.stringify(a)}`);
  assert.equal(audit.at(-1)?.reason, 'not_ready');
  token = keyring.issueToken();
});

test('mount tune, latest and specific versions are served in the shape the plugin needs', async () => {
  const tune = await get(port, pki.caPem, '/v1/sys/mounts/cdbp/tune', { 'x-vault-token': token });
  assert.deepEqual(tune, { status: 200, body: { type: 'kv', options: { version: '2' }, description: 'cdbp keyring' } });
  const latest = await get(port, pki.caPem, '/v1/cdbp/data/1', { 'x-vault-token': token });
  assert.ok('status' in latest);
  assert.equal(latest.status, 200);
  assert.equal(latest.body.data.data.data, k1v2.toString('hex'));
  assert.equal(latest.body.data.metadata.version, 2, 'version is a JSON number');
  const v1 = await get(port, pki.caPem, '/v1/cdbp/data/1?version=1', { 'x-vault-token': token });
  assert.ok('status' in v1 && v1.body.data.data.data === k1v1.toString('hex') && v1.body.data.metadata.version === 1);
  const other = await get(port, pki.caPem, '/v1/cdbp/data/2?version=1', { 'x-vault-token': token });
  assert.ok('status' in other && other.body.data.data.data === k2v1.toString('hex'));
});

test('an unknown key id with the valid token gets 404 {"errors":[]}', async () => {
  const a = await get(port, pki.caPem, '/v1/cdbp/data/77', { 'x-vault-token': token });
  assert.deepEqual(a, { status: 404, body: { errors: [] } });
  assert.deepEqual(audit.at(-1), { id: 77, version: 'latest', outcome: 'not_found', reason: 'unknown_id' });
});

test('refusals never get an HTTP answer: wrong/missing token, unknown version of a known id, garbage paths, bodies', async () => {
  const cases: Array<[string, Record<string, string>, string]> = [
    ['/v1/cdbp/data/1', { 'x-vault-token': token + 'x' }, 'token'],
    ['/v1/cdbp/data/1', {}, 'token'],
    ['/v1/cdbp/data/1?version=9', { 'x-vault-token': token }, 'unknown_version'],
    ['/v1/cdbp/data/1?version=0', { 'x-vault-token': token }, 'query'],
    ['/v1/cdbp/data/01', { 'x-vault-token': token }, 'key_id'],
    ['/v1/other/data/1', { 'x-vault-token': token }, 'path'],
    ['/v1/cdbp/data/%31', { 'x-vault-token': token }, 'target_charset'],
    ['/v1/cdbp/data/../1', { 'x-vault-token': token }, 'target_charset'],
    ['/v1/cdbp/data/1', { 'x-vault-token': token, 'content-length': '3' }, 'body'],
  ];
  for (const [path, headers, reason] of cases) {
    const a = await get(port, pki.caPem, path, headers);
    assert.ok('error' in a, `${path}: expected a reset, got ${JSON.stringify(a)}`);
    assert.equal(a.error, 'ECONNRESET', path);
    assert.equal(audit.at(-1)?.outcome, 'refused', path);
    assert.equal(audit.at(-1)?.reason, reason, path);
  }
});

test('malformed HTTP, oversized headers and slow headers are cut without any HTTP status line', async () => {
  const garbage = await raw(port, pki.caPem, 'NOT HTTP AT ALL\r\n\r\n');
  assert.equal(garbage.data, '', 'no 400 written');
  const big = await raw(port, pki.caPem, `GET /v1/cdbp/data/1 HTTP/1.1\r\nhost: x\r\nx-pad: ${'a'.repeat(8192)}\r\n\r\n`);
  assert.equal(big.data, '', 'no 431 written');
  const post = await raw(port, pki.caPem, `POST /v1/cdbp/data/1 HTTP/1.1\r\nhost: x\r\nx-vault-token: ${token}\r\ncontent-length: 0\r\n\r\n`);
  assert.equal(post.data, '', 'POST gets no answer');
  // Headers never finished: the keyring closes the connection itself (no 408), it does not hang.
  const slow = await raw(port, pki.caPem, 'GET /v1/cdbp/data/1 HTTP/1.1\r\nhost: x\r\n');
  assert.equal(slow.data, '');
  assert.ok(slow.ms < 10_000, `slow request closed by the server (${slow.ms} ms)`);
  // Still serving afterwards.
  const ok = await get(port, pki.caPem, '/v1/cdbp/data/2', { 'x-vault-token': token });
  assert.ok('status' in ok && ok.status === 200);
});

test('a TCP client that never starts TLS is dropped by the handshake timeout', async () => {
  const net = await import('node:net');
  const ms = await new Promise<number>((resolve) => {
    const t0 = Date.now();
    const s = net.connect(port, '127.0.0.1');
    s.on('error', () => {});
    s.on('close', () => resolve(Date.now() - t0));
  });
  assert.ok(ms < 10_000, `closed after ${ms} ms`);
});

test('issueToken revokes the previous token', async () => {
  const old = token;
  token = keyring.issueToken();
  assert.notEqual(old, token);
  const a = await get(port, pki.caPem, '/v1/cdbp/data/1', { 'x-vault-token': old });
  assert.ok('error' in a);
  const b = await get(port, pki.caPem, '/v1/cdbp/data/1', { 'x-vault-token': token });
  assert.ok('status' in b && b.status === 200);
});

test('addKeys: a new version becomes latest; existing (id,version) bytes cannot change; bad lengths refused', async () => {
  const k1v3 = randomBytes(32);
  keyring.addKeys([{ id: 1, version: 3, key: k1v3 }]);
  keyring.addKeys([{ id: 1, version: 3, key: Buffer.from(k1v3) }]); // identical re-add is fine
  assert.throws(() => keyring.addKeys([{ id: 1, version: 1, key: randomBytes(32) }]), /immutable/);
  assert.throws(() => keyring.addKeys([{ id: 5, version: 1, key: randomBytes(20) }]), /32 bytes/);
  // All-or-nothing: the good entry of a bad batch is not added.
  assert.throws(() => keyring.addKeys([{ id: 6, version: 1, key: randomBytes(32) }, { id: 1, version: 2, key: randomBytes(32) }]));
  const six = await get(port, pki.caPem, '/v1/cdbp/data/6', { 'x-vault-token': token });
  assert.ok('status' in six && six.status === 404);
  const latest = await get(port, pki.caPem, '/v1/cdbp/data/1', { 'x-vault-token': token });
  assert.ok('status' in latest && latest.body.data.metadata.version === 3 && latest.body.data.data.data === k1v3.toString('hex'));
  const v1 = await get(port, pki.caPem, '/v1/cdbp/data/1?version=1', { 'x-vault-token': token });
  assert.ok('status' in v1 && v1.body.data.data.data === k1v1.toString('hex'), 'old versions stay served');
});

test('a swap of the identity holder changes the certificate for new connections; a broken one keeps the old', async () => {
  const other = makeTestPki();
  assert.throws(() => identity.set({ keyPem: 'garbage', certPem: other.certPem }), /TLS identity rejected/);
  const stillOld = await get(port, pki.caPem, '/v1/cdbp/data/1', { 'x-vault-token': token });
  assert.ok('status' in stillOld && stillOld.status === 200);
  identity.set(other);
  const oldCa = await get(port, pki.caPem, '/v1/cdbp/data/1', { 'x-vault-token': token });
  assert.ok('error' in oldCa, 'the old CA no longer verifies');
  const newCa = await get(port, other.caPem, '/v1/cdbp/data/1', { 'x-vault-token': token });
  assert.ok('status' in newCa && newCa.status === 200);
  identity.set(pki);
});

test('metrics count outcomes; logs carry neither key bytes nor the token', async () => {
  const text = metrics.render();
  for (const outcome of ['served', 'not_found', 'refused']) {
    assert.match(text, new RegExp(`cdbp_keyring_requests_total\\{outcome="${outcome}"\\} [1-9]`));
  }
  const served = audit.filter((e) => e.outcome === 'served').length;
  assert.match(text, new RegExp(`cdbp_keyring_requests_total\\{outcome="served"\\} ${served}\\b`));
  const all = logLines.join('');
  assert.ok(all.length > 0);
  for (const secret of [k1v1, k1v2, k2v1]) {
    assert.ok(!all.includes(secret.toString('hex')) && !all.includes(secret.toString('base64')), 'no key bytes in logs');
  }
  assert.ok(!all.includes(token), 'no token in logs');
  assert.ok(audit.every((e) => !('key' in e)), 'audit events carry no key');
});

test('max connections: extra connections are dropped, the keyring keeps serving after they go', async () => {
  const net = await import('node:net');
  const held = await Promise.all(Array.from({ length: 8 }, () => new Promise<import('node:net').Socket>((resolve) => {
    const s = net.connect(port, '127.0.0.1', () => resolve(s));
    s.on('error', () => {});
  })));
  const extra = await get(port, pki.caPem, '/v1/cdbp/data/1', { 'x-vault-token': token });
  assert.ok('error' in extra, 'ninth connection dropped');
  for (const s of held) s.destroy();
  await new Promise((r) => setTimeout(r, 100));
  const ok = await get(port, pki.caPem, '/v1/cdbp/data/1', { 'x-vault-token': token });
  assert.ok('status' in ok && ok.status === 200);
});

test('configuration errors: non-loopback host and bad mount are refused at creation', () => {
  assert.throws(() => createKeyring({ keys: [], tls: pki, log: createLogger({ name: 't', level: 'silent' }), host: '0.0.0.0' }), /loopback/);
  assert.throws(() => createKeyring({ keys: [], tls: pki, log: createLogger({ name: 't', level: 'silent' }), mount: '../x' }), /mount/);
});
