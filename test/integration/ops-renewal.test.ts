/**
 * Zero-downtime certificate renewal with the real binary, and `cdbp verify` against it:
 *   - renewal (triggered on the loopback admin port) while a TLS session runs queries across it: the
 *     session never notices, new handshakes get the new certificate (different serial), strict
 *     freshness keeps counting over mTLS with the new certificate;
 *   - `cdbp verify` checks TLS + evidence bound to the key actually presented, before and after;
 *     a wrong measurement or a missing platform key is NOT VERIFIED;
 *   - a failed renewal (CAS gone) keeps the old certificate, shows in /v1/status and /metrics, and
 *     the proxy stays ready while that certificate is valid.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { tempDir } from '../support/tmp.ts';
import { startTestCas, runCdbp, type TestCas } from '../support/cas.ts';
import { applyProxyPolicy, startProxyProcess, type TestProxy } from '../support/proxy-process.ts';
import { parsePrometheus } from '../support/prometheus.ts';
import { presentedCertificate } from '../../cli/commands/verify.ts';

const tmp = tempDir('ops-renewal');
let cas: TestCas;
let proxy: TestProxy;
const USER = { user: 'app', password: 'app-pw-renewal' };

before(async () => {
  cas = await startTestCas({ root: tmp.path });
  // The CAS's minimum lifetime (300 s): renewal is forced through the admin port, not waited for.
  await applyProxyPolicy(cas, { service: 'mariadb', lifetimeSeconds: 300 });
  proxy = await startProxyProcess({ root: tmp.path, cas });
  await proxy.createUser(USER.user, USER.password);
});

after(async () => {
  await proxy?.kill();
  await cas?.stop();
  tmp.remove();
});

const serialNow = async () => (await presentedCertificate({ host: '127.0.0.1', port: proxy.mysql.port, protocol: 'mysql', caPem: cas.caPem })).serialNumber;
const metrics = async () => parsePrometheus((await proxy.get('/metrics')).text);

function verifyArgs(extra: string[] = []): string[] {
  return ['verify', '--ops', proxy.opsUrl, '--ca', cas.caFile, '--port', String(proxy.mysql.port), '--host', '127.0.0.1',
    '--platform-public-key', cas.platformPublicKeyFile, ...extra];
}

test('cdbp verify: VERIFIED (SIMULATED) for the right measurement, NOT VERIFIED otherwise', async () => {
  const ok = await runCdbp(verifyArgs(['--measurement', 'local']));
  assert.equal(ok.code, 0, ok.output);
  assert.match(ok.output, /OK {4}tls +mysql endpoint 127\.0\.0\.1:\d+ presented a certificate that chains to the CAS CA/);
  assert.match(ok.output, /OK {4}evidence +SIMULATED report/);
  assert.match(ok.output, /^VERIFIED — SIMULATED TEE/m);

  const wrong = await runCdbp(verifyArgs(['--measurement', '00'.repeat(32)]));
  assert.equal(wrong.code, 1);
  assert.match(wrong.output, /^NOT VERIFIED \(SIMULATED TEE\): MEASUREMENT_MISMATCH/m);

  const noKey = await runCdbp(['verify', '--ops', proxy.opsUrl, '--ca', cas.caFile, '--port', String(proxy.mysql.port), '--measurement', 'local']);
  assert.equal(noKey.code, 1);
  assert.match(noKey.output, /NOT VERIFIED.*--platform-public-key/);

  // Another CA (not the CAS's): the TLS check fails before any evidence is trusted.
  const other = await startTestCas({ root: `${tmp.path}/other` });
  try {
    const wrongCa = await runCdbp(['verify', '--ops', proxy.opsUrl, '--ca', other.caFile, '--port', String(proxy.mysql.port),
      '--platform-public-key', cas.platformPublicKeyFile, '--measurement', 'local']);
    assert.equal(wrongCa.code, 1);
    assert.match(wrongCa.output, /FAIL +failed +PROTOCOL_VIOLATION: TLS to 127\.0\.0\.1:\d+ failed verification against the CAS CA/);
  } finally {
    await other.stop();
  }
});

test('renewal while a session runs queries: no error, new handshakes see a new serial, freshness keeps counting', async () => {
  const before = await serialNow();
  const statusBefore = (await proxy.get('/v1/status')).body;
  assert.equal(statusBefore.certificate.serial, before);
  assert.equal(statusBefore.certificate.renewals, 0);

  const session = await proxy.connect({ ...USER });
  await session.query('CREATE DATABASE IF NOT EXISTS app');
  await session.query('CREATE TABLE IF NOT EXISTS app.r (id INT PRIMARY KEY AUTO_INCREMENT, v INT)');
  // Queries run back to back on the open session while the renewal happens.
  let stop = false;
  let queries = 0;
  const loop = (async () => {
    while (!stop) {
      await session.query('INSERT INTO app.r (v) VALUES (?)', [queries]);
      await session.query('SELECT COUNT(*) AS n FROM app.r');
      queries++;
    }
  })();
  await new Promise((r) => setTimeout(r, 300));
  const renewed = await proxy.admin('renew');
  assert.equal(renewed.status, 200, JSON.stringify(renewed.body));
  const queriesAtRenewal = queries;
  await new Promise((r) => setTimeout(r, 500));
  stop = true;
  await loop;
  assert.ok(queries > queriesAtRenewal, `the session kept working after the renewal (${queriesAtRenewal} → ${queries})`);
  const [{ n }] = await session.query('SELECT COUNT(*) AS n FROM app.r');
  assert.equal(Number(n), queries);

  const after = await serialNow();
  assert.notEqual(after, before, 'new handshakes use the new certificate');
  assert.equal(renewed.body.serial, after);
  const status = (await proxy.get('/v1/status')).body;
  assert.equal(status.certificate.serial, after);
  assert.equal(status.certificate.renewals, 1);
  assert.equal(status.certificate.renewalError, undefined);
  assert.equal(status.ready, true);

  // A new client connects with the new certificate; strict writes are still counted (mTLS to the CAS
  // now uses the renewed certificate).
  const counterBefore = (await metrics()).value('cdbp_freshness_counter')!;
  const fresh = await proxy.connect({ ...USER });
  await fresh.query('INSERT INTO app.r (v) VALUES (-1)');
  await fresh.end();
  const m = await metrics();
  assert.ok(m.value('cdbp_freshness_counter')! > counterBefore, 'counter advanced after the renewal');
  assert.equal(m.value('cdbp_cert_renewals_total'), 1);
  assert.equal(m.value('cdbp_cert_renewal_failing'), 0);
  assert.ok(m.value('cdbp_cert_expiry_seconds')! > 250);
  await session.end();

  const verified = await runCdbp(verifyArgs(['--measurement', 'local']));
  assert.equal(verified.code, 0, verified.output);
  assert.match(verified.output, new RegExp(`serial ${after}`));
});

test('failed renewal keeps the old certificate and shows in status and metrics; still ready while valid', async () => {
  const serial = await serialNow();
  assert.equal(await cas.stop(), 0);
  const r = await proxy.admin('renew');
  assert.equal(r.status, 503, JSON.stringify(r.body));
  assert.equal(r.body.error.code, 'CAS_UNREACHABLE');
  const status = (await proxy.get('/v1/status')).body;
  assert.match(status.certificate.renewalError, /^CAS_UNREACHABLE: /);
  assert.equal(status.certificate.renewalFailures, 1);
  assert.equal(status.certificate.serial, serial);
  assert.equal(status.ready, true, 'the current certificate is still valid');
  assert.equal((await proxy.get('/readyz')).status, 200);
  const m = await metrics();
  assert.equal(m.value('cdbp_cert_renewal_failing'), 1);
  assert.equal(m.value('cdbp_cert_renewal_failures'), 1);
  assert.equal(await serialNow(), serial, 'handshakes keep the current certificate');
  const cli = await runCdbp(['status', '--url', proxy.opsUrl]);
  assert.match(cli.output, /RENEWAL FAILING: CAS_UNREACHABLE/);
  // Clean stop even with the CAS gone (the final seal fails and is logged; the data stays consistent).
  assert.equal(await proxy.stop(), 0);
  assert.equal(proxy.mariadbPid(), undefined);
});
