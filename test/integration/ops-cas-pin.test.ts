/**
 * Issue 16, item 1, as an attacker with root runs it: real CAS, real proxy, real MariaDB.
 *
 *   1. the proxy attests through a TCP path the attacker controls (a forwarder standing in for the
 *      host's network: DNS, iptables, a restarted container on the same address);
 *   2. the attacker starts a fake CAS with its own CA, applies a policy there for the same service and
 *      measurement (simulated mode: root holds the platform key), overwrites the host-writable CA file
 *      with the fake CA, switches the network to the fake CAS, and forces a renewal;
 *   3. before the fix, the renewal re-read the file and trusted the fake CAS: every later write was
 *      sealed against the fake counter, and rolling the volume back to the swap lost them all while the
 *      real CAS saw it as fresh.
 *
 * Now: the renewal is refused (CAS_IDENTITY_INVALID, 502), the fake CAS never sees an attestation or a
 * counter request, no write is acknowledged after the swap, the proxy raises the alarm (error log,
 * metric, /v1/status, /readyz 503), and a restart with the right CA and the real CAS finds every
 * acknowledged row and a fresh volume.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import path from 'node:path';
import { copyFileSync, existsSync, mkdirSync, readFileSync } from 'node:fs';
import { tempDir } from '../support/tmp.ts';
import { startTestCas, type TestCas } from '../support/cas.ts';
import { applyProxyPolicy, startProxyProcess, type TestProxy } from '../support/proxy-process.ts';
import { parsePrometheus } from '../support/prometheus.ts';

const tmp = tempDir('ops-cas-pin');
const cleanups: Array<() => Promise<unknown> | unknown> = [];
after(async () => {
  for (const c of cleanups.reverse()) await Promise.resolve(c()).catch(() => undefined);
  tmp.remove();
});

/** A TCP forwarder whose target the test (the attacker) switches; switching cuts open connections. */
async function forwarder(targetPort: number) {
  let target = targetPort;
  const open = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(target, '127.0.0.1');
    open.add(client);
    open.add(upstream);
    client.pipe(upstream).pipe(client);
    const done = () => { client.destroy(); upstream.destroy(); open.delete(client); open.delete(upstream); };
    client.on('error', done).on('close', done);
    upstream.on('error', done).on('close', done);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as net.AddressInfo).port,
    switchTo(port: number) {
      target = port;
      for (const s of open) s.destroy();
    },
    close: () => new Promise<void>((r) => { for (const s of open) s.destroy(); server.close(() => r()); }),
  };
}

function auditEvents(cas: TestCas): Array<{ event: string; service?: string; outcome?: string }> {
  const file = path.join(cas.dir, 'audit.log');
  if (!existsSync(file)) return [];
  return readFileSync(file, 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as { event: string });
}

const urlPort = (u: string) => Number(new URL(u).port);

test('a swapped CA file and a fake CAS at the CAS address: renewal refused, nothing sealed against the fake counter, alarm raised', async () => {
  const real = await startTestCas({ root: path.join(tmp.path, 'real') });
  cleanups.push(() => real.stop());
  await applyProxyPolicy(real, { service: 'mariadb', lifetimeSeconds: 300 });
  const net0 = await forwarder(urlPort(real.url));
  cleanups.push(() => net0.close());

  // The CA file the proxy is configured with lives on a host-writable volume (compose: cas-public).
  const publicDir = path.join(tmp.path, 'cas-public');
  mkdirSync(publicDir, { recursive: true });
  const caFile = path.join(publicDir, 'ca.pem');
  copyFileSync(real.caFile, caFile);
  const casUrl = `https://127.0.0.1:${net0.port}`;
  const proxyRoot = path.join(tmp.path, 'proxy');
  const start = () => startProxyProcess({
    root: proxyRoot, cas: { url: casUrl, caFile, caPem: real.caPem, platformKeyFile: real.platformKeyFile },
    env: { CDBP_HOLD_TIMEOUT_MS: '1500', CDBP_LOG_LEVEL: 'info' },
  });
  let proxy: TestProxy = await start();
  cleanups.push(() => proxy.kill());
  await proxy.createUser('app', 'app-pw');

  const acked: number[] = [];
  const c = await proxy.connect({ user: 'app', password: 'app-pw' });
  await c.query('CREATE DATABASE app');
  await c.query('CREATE TABLE app.t (id INT PRIMARY KEY) ENGINE=InnoDB');
  for (let i = 1; i <= 20; i++) {
    await c.query('INSERT INTO app.t VALUES (?)', [i]);
    acked.push(i);
  }
  await c.end();

  // The attack: a fake CAS (own CA, same platform key, a policy for the same service and build) ...
  const fake = await startTestCas({ root: path.join(tmp.path, 'fake'), platformKeyFile: real.platformKeyFile });
  cleanups.push(() => fake.stop());
  // Only a key id the proxy does not have yet: a renewal adds it, so the keyring's "key versions are
  // immutable" check cannot stand in for the pin (the attacker only needs the counter).
  await applyProxyPolicy(fake, { service: 'mariadb', lifetimeSeconds: 300, dbKeys: [{ id: 99, versions: [1] }] });
  const fakeBefore = auditEvents(fake).length;
  // ... the CA file overwritten with the fake CA, the network switched to the fake CAS, a renewal forced.
  copyFileSync(fake.caFile, caFile);
  net0.switchTo(urlPort(fake.url));
  const renewed = await proxy.admin('renew');
  assert.equal(renewed.status, 502, JSON.stringify(renewed.body));
  assert.equal(renewed.body.error.code, 'CAS_IDENTITY_INVALID');

  // Writes after the swap: the counter at the CAS address is not the pinned CAS, so none is acknowledged.
  const w = await proxy.connect({ user: 'app', password: 'app-pw' });
  w.on('error', () => undefined);
  let ackedAfterSwap = 0;
  for (let i = 1001; i <= 1003; i++) {
    try {
      await w.query('INSERT INTO app.t VALUES (?)', [i]);
      ackedAfterSwap++;
    } catch { break; /* refused: the session is closed after a refused acknowledgment */ }
  }
  w.destroy();
  assert.equal(ackedAfterSwap, 0, 'no write acknowledged against the fake counter');

  // The fake CAS never saw an attestation or a counter request from the proxy.
  const seenByFake = auditEvents(fake).slice(fakeBefore);
  assert.deepEqual(seenByFake.filter((e) => e.event === 'attest' || e.event.startsWith('counter.')), [],
    `fake CAS audit after the swap: ${JSON.stringify(seenByFake)}`);

  // The alarm: status, readiness, metrics, error log.
  const status = (await proxy.get('/v1/status')).body;
  assert.equal(status.casTrust.caFileChanged, true);
  assert.ok(status.casTrust.impostorAlarms >= 1, JSON.stringify(status.casTrust));
  assert.match(status.casTrust.lastImpostor.message, /is not the pinned CAS/);
  assert.equal(status.certificate.renewals, 0);
  assert.match(status.certificate.renewalError, /^CAS_IDENTITY_INVALID: /);
  const readyz = await proxy.get('/readyz');
  assert.equal(readyz.status, 503);
  assert.ok(readyz.body.reasons.some((r: string) => /^CAS identity: .*counter can no longer be trusted/.test(r)), JSON.stringify(readyz.body));
  const m = parsePrometheus((await proxy.get('/metrics')).text);
  assert.ok(m.value('cdbp_cas_identity_alarms_total')! >= 1);
  assert.equal(m.value('cdbp_cas_ca_file_changed'), 1);
  assert.match(proxy.output(), /"level":(50|"error").*ALARM: a server at the CAS URL is not the pinned CAS/);
  assert.match(proxy.output(), /CAS CA file changed since start/);

  // The operator puts the real CA and network back and restarts: every acknowledged row is there and
  // the volume verifies as fresh against the real counter (nothing was counted anywhere else).
  copyFileSync(real.caFile, caFile);
  net0.switchTo(urlPort(real.url));
  assert.equal(await proxy.stop(), 0);
  proxy = await start();
  const r = await proxy.connect({ user: 'app', password: 'app-pw' });
  const rows = (await r.query('SELECT id FROM app.t WHERE id < 1000 ORDER BY id')).map((x: { id: number }) => x.id);
  await r.end();
  assert.deepEqual(rows, acked, 'every acknowledged write survived');
  const st = (await proxy.get('/v1/status')).body;
  assert.equal(st.freshness.verified, true);
  assert.equal(st.casTrust.impostorAlarms, 0);
  assert.equal(await proxy.stop(), 0);
});
