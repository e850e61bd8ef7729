/**
 * What the ops API exposes, with the ProxyRole in-process (so the provisioned secrets are at hand):
 *   - /metrics parses strictly and carries every series operators rely on;
 *   - no endpoint (ops or admin) ever returns a DB key, the keyring token, the freshness key or the
 *     TLS private key, in hex, base64 or base64url;
 *   - an expired certificate makes the proxy unready with the reason;
 * and the CAS's own ops server (cdbp cas --ops-port) on its plain-HTTP loopback port.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { readFileSync, statSync } from 'node:fs';
import mariadb from 'mariadb';
import { tempDir } from '../support/tmp.ts';
import { startTestCas, type TestCas } from '../support/cas.ts';
import { applyProxyPolicy } from '../support/proxy-process.ts';
import { parsePrometheus } from '../support/prometheus.ts';
import { loadConfig } from '../../src/kernel/config.ts';
import { createLogger } from '../../src/kernel/log.ts';
import { freePort } from '../../src/kernel/net.ts';
import { selectProvider } from '../../src/attestation/select.ts';
import { PROXY_SCHEMA } from '../../cli/settings.ts';
import { ProxyRole } from '../../cli/proxy-role.ts';

const tmp = tempDir('ops-secrets');
let cas: TestCas;
let casOps: string;
let role: ProxyRole;

before(async () => {
  const port = await freePort();
  cas = await startTestCas({ root: tmp.path, extraArgs: ['--ops-port', String(port)] });
  casOps = `http://127.0.0.1:${port}`;
  await applyProxyPolicy(cas, { service: 'mariadb' });
  const root = tmp.path;
  const config = loadConfig(PROXY_SCHEMA, {
    casUrl: cas.url, casCaFile: cas.caFile, service: 'mariadb',
    teeMode: 'simulated', allowSimulated: true, platformKeyFile: cas.platformKeyFile,
    mysqlPort: 0, opsPort: 0, adminPort: 0,
    manageMariadb: true, mariadbRunDir: path.join(root, 'run', 'mariadb'), datadir: path.join(root, 'untrusted', 'mariadb'),
    untrustedDir: path.join(root, 'untrusted'), volatileDir: path.join(root, 'volatile'), drainDelayMs: 0,
  }, {});
  const log = createLogger({ name: 'proxy', level: 'warn' });
  const provider = selectProvider({ mode: config.teeMode, allowSimulated: config.allowSimulated, platformKeyFile: config.platformKeyFile, log });
  role = new ProxyRole({ config, provider, log });
  await role.start();
});

after(async () => {
  await role?.shutdown('test over');
  await cas?.stop();
  tmp.remove();
});

/** Every encoding a secret could leak in. */
function encodings(b: Buffer): string[] {
  return [b.toString('hex'), b.toString('hex').toUpperCase(), b.toString('base64'), b.toString('base64url')];
}

async function fetchAll(): Promise<Array<{ what: string; status: number; text: string }>> {
  const ops = role.addresses.ops!;
  const out: Array<{ what: string; status: number; text: string }> = [];
  for (const p of ['/livez', '/startupz', '/readyz', '/metrics', '/v1/status', `/v1/attestation?nonce=${randomBytes(32).toString('hex')}`, '/nope']) {
    const res = await fetch(ops + p);
    out.push({ what: p, status: res.status, text: await res.text() });
  }
  const token = readFileSync(role.addresses.adminTokenFile!, 'utf8').trim();
  const res = await fetch(`${role.addresses.admin}/v1/admin/renew`, {
    method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: '{}',
  });
  out.push({ what: 'admin renew', status: res.status, text: await res.text() });
  return out;
}

test('metrics: strict Prometheus text with every operator series', async () => {
  const stat = (await (await fetch(`${role.addresses.ops}/v1/status`)).json()) as any;
  // Traffic first, so the per-protocol series carry values: one session, one failed TLS client.
  const socket = stat.backend.socket as string;
  const admin = await mariadb.createConnection({ socketPath: socket, user: 'root' });
  await admin.query(`CREATE USER IF NOT EXISTS 'm'@'%' IDENTIFIED BY 'm-pw'`);
  await admin.end();
  const { port } = role.addresses.mysql!;
  const c = await mariadb.createConnection({ host: '127.0.0.1', port, user: 'm', password: 'm-pw', ssl: { ca: cas.caPem } });
  await c.query('SELECT 1');
  await c.end();
  await assert.rejects(mariadb.createConnection({ host: '127.0.0.1', port, user: 'm', password: 'wrong', ssl: { ca: cas.caPem } }));

  const res = await fetch(`${role.addresses.ops}/metrics`);
  assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
  const m = parsePrometheus(await res.text());
  const mysql = { protocol: 'mysql' };
  assert.equal(m.value('cdbp_mode', { mode: 'simulated' }), 1);
  assert.equal(m.value('cdbp_ready'), 1);
  assert.equal(m.value('cdbp_connections_open', mysql), 0);
  assert.ok(m.value('cdbp_connections_total', mysql)! >= 2);
  assert.equal(m.family('cdbp_connections_refused_total')?.type, 'counter');
  assert.ok(m.value('cdbp_bytes_total', { protocol: 'mysql', direction: 'in' })! > 0);
  assert.ok(m.value('cdbp_bytes_total', { protocol: 'mysql', direction: 'out' })! > 0);
  assert.ok(m.value('cdbp_tls_handshakes_total', mysql)! >= 2);
  assert.equal(m.family('cdbp_tls_handshake_failures_total')?.type, 'counter');
  assert.equal(m.value('cdbp_auth_failures_total', mysql), 1);
  assert.equal(m.family('cdbp_handshake_timeouts_total')?.type, 'counter');
  assert.ok(m.samples('cdbp_keyring_requests_total').reduce((a, s) => a + s.value, 0) > 0, 'mariadbd fetched its keys');
  assert.ok(m.value('cdbp_freshness_epoch')! >= 1);
  assert.equal(m.value('cdbp_freshness_counter'), m.value('cdbp_freshness_epoch'));
  assert.ok(m.value('cdbp_freshness_last_seal_age_seconds')! >= 0);
  assert.equal(m.value('cdbp_freshness_writes_held'), 0);
  assert.equal(m.value('cdbp_freshness_verified'), 1);
  const expiry = m.value('cdbp_cert_expiry_seconds')!;
  assert.ok(expiry > 3600 && expiry <= 86_400, String(expiry));
  assert.equal(m.value('cdbp_cert_renewal_failing'), 0);
});

test('no endpoint returns a provisioned secret in any encoding', async () => {
  const provision = (role as any).provision as { secrets: { dbKeys: Array<{ key: Buffer }>; keyringToken: string; freshnessKey: Buffer }; identity: { keyPem: string } };
  const secrets: string[] = [
    ...provision.secrets.dbKeys.flatMap((k) => encodings(k.key)),
    ...encodings(provision.secrets.freshnessKey),
    provision.secrets.keyringToken, ...encodings(Buffer.from(provision.secrets.keyringToken)),
    // The admin token is in its 0600 file and in memory, never in an answer.
    readFileSync(role.addresses.adminTokenFile!, 'utf8').trim(),
  ];
  assert.ok(provision.secrets.dbKeys.length >= 2 && provision.secrets.keyringToken.length > 0);
  const answers = await fetchAll();
  // The renewal replaced the private key: check the one that served the requests before it too.
  const keyPems = [provision.identity.keyPem, (role as any).provision.identity.keyPem as string];
  for (const pem of keyPems) {
    const body = pem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, '');
    secrets.push(body, body.slice(0, 40), body.slice(-40));
  }
  for (const a of answers) {
    assert.ok(a.status < 500, `${a.what}: ${a.status} ${a.text}`);
    for (const s of secrets) assert.ok(!a.text.includes(s), `${a.what} leaks a secret (${s.slice(0, 6)}…)`);
  }
  assert.ok(answers.find((a) => a.what === 'admin renew')!.status === 200);
  assert.equal(statSync(role.addresses.adminTokenFile!).mode & 0o777, 0o600, 'admin token file is 0600');
  // The status still says what an operator needs.
  const status = JSON.parse(answers.find((a) => a.what === '/v1/status')!.text);
  assert.equal(status.mode, 'simulated');
  assert.match(status.warning, /SIMULATED/);
  assert.match(status.measurement, /^[0-9a-f]{64}$/);
  assert.equal(status.certificate.renewals, 0, 'status fetched before the renewal');
});

test('an expired certificate makes the proxy unready with the reason, and the metric goes negative', async () => {
  const identity = (role as any).provision.identity as { notAfter: Date };
  const real = identity.notAfter;
  identity.notAfter = new Date(Date.now() - 1000);
  try {
    const r = await fetch(`${role.addresses.ops}/readyz`);
    assert.equal(r.status, 503);
    const body = (await r.json()) as { reasons: string[] };
    assert.ok(body.reasons.some((x) => /^certificate expired at /.test(x)), JSON.stringify(body));
    const m = parsePrometheus(await (await fetch(`${role.addresses.ops}/metrics`)).text());
    assert.ok(m.value('cdbp_cert_expiry_seconds')! < 0);
    assert.equal(m.value('cdbp_ready'), 1, 'cdbp_ready reflects the lifecycle; readyz adds the certificate');
  } finally {
    identity.notAfter = real;
  }
  assert.equal((await fetch(`${role.addresses.ops}/readyz`)).status, 200);
});

test('the CAS ops server: plain HTTP on its own loopback port, same endpoints, role cas', async () => {
  assert.deepEqual(await (await fetch(`${casOps}/livez`)).json(), { status: 'alive' });
  assert.equal((await fetch(`${casOps}/startupz`)).status, 200);
  const ready = await fetch(`${casOps}/readyz`);
  assert.equal(ready.status, 200);
  const status = (await (await fetch(`${casOps}/v1/status`)).json()) as any;
  assert.equal(status.role, 'cas');
  assert.equal(status.mode, 'simulated');
  assert.equal(status.url, cas.url);
  assert.equal(status.lifecycle.state, 'ready');
  const m = parsePrometheus(await (await fetch(`${casOps}/metrics`)).text());
  assert.equal(m.value('cdbp_mode', { mode: 'simulated' }), 1);
  assert.ok(m.samples('cdbp_cas_attestations_total').some((s) => s.labels.outcome === 'ok' && s.value >= 1));
  const evidence = await fetch(`${casOps}/v1/attestation?nonce=${'00'.repeat(32)}`);
  assert.equal(evidence.status, 404);
});
