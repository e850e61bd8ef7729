/**
 * The persistent counter channel against a real `cdbp cas` process over real mutual TLS 1.3: read and
 * advance, pipelined advances answered in order, conflicts carrying the CAS's value, the digest check
 * that keeps a pipelined advance off another instance's record, refusals at open (no certificate, another
 * service's certificate), a forged frame ending the session, and the CAS's audit of the refusals.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import https from 'node:https';
import { createHash, randomBytes } from 'node:crypto';
import type { TLSSocket } from 'node:tls';
import type { IncomingMessage } from 'node:http';
import { tempDir } from '../support/tmp.ts';
import { startTestCas, applyTestPolicy, runCdbp } from '../support/cas.ts';
import { attestAndProvision } from '../../src/cas-client/index.ts';
import { ChannelCounterClient } from '../../src/cas-client/counter-channel.ts';
import { SimulatedProvider } from '../../src/attestation/simulated.ts';
import { isCdbpError } from '../../src/kernel/errors.ts';
import { checkCasServerIdentity } from '../../src/crypto/x509.ts';
import { CHANNEL_PROTOCOL, Dir, EXPORTER_MAC_LABEL, Kind, encodeRequest, sealFrame } from '../../src/cas-client/counter-channel-wire.ts';
import path from 'node:path';
import { readFileSync, writeFileSync, copyFileSync } from 'node:fs';

const rec = (n: number) => Buffer.from(`sealed record ${n} `.repeat(8));
const dig = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** Opens the upgrade by hand (to send what a correct client never would). */
function rawOpen(url: string, o: { caPem: string; keyPem?: string; certPem?: string }): Promise<{ status: number; body: string; socket?: TLSSocket; nonce: Buffer }> {
  const nonce = randomBytes(32);
  return new Promise((resolve, reject) => {
    const req = https.request(`${url}?nonce=${nonce.toString('hex')}`, {
      agent: false, ca: o.caPem, key: o.keyPem, cert: o.certPem, checkServerIdentity: checkCasServerIdentity,
      headers: { connection: 'Upgrade', upgrade: CHANNEL_PROTOCOL },
    });
    req.on('upgrade', (_res, socket) => resolve({ status: 101, body: '', socket: socket as TLSSocket, nonce }));
    req.on('response', (res: IncomingMessage) => {
      let body = '';
      res.on('data', (c: Buffer) => { body += c.toString(); });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, nonce }));
    });
    req.on('error', reject);
    req.end();
  });
}

test('counter channel: ordered pipelined advances, conflicts, refusals, forged frames', async (t) => {
  const tmp = tempDir('ctr-chan');
  const cas = await startTestCas({ root: tmp.path });
  t.after(async () => { await cas.stop(); tmp.remove(); });
  await applyTestPolicy(cas, { service: 'orders' });
  await applyTestPolicy(cas, { service: 'other' });
  const provider = new SimulatedProvider(cas.platformKeyFile);
  const p = await attestAndProvision({ casUrl: cas.url, caPem: cas.caPem, service: 'orders', provider, tls: {} });
  const c = p.counter as ChannelCounterClient;
  t.after(() => c.close());
  assert.ok(c instanceof ChannelCounterClient);
  assert.equal(c.ordered, true);

  assert.deepEqual(await c.read(), { value: 0, digest: '' });
  assert.equal(c.transport, 'channel');
  assert.deepEqual(await c.advance(0, 1, dig(rec(1)), rec(1), ''), { value: 1, digest: dig(rec(1)) });

  // Pipelined: 1→2, 2→3 … 1→… sent back to back, each naming the digest of the one before; all land, in order.
  const sent = [2, 3, 4, 5, 6].map((n) => c.advance(n - 1, n, dig(rec(n)), rec(n), dig(rec(n - 1))));
  const answers = await Promise.all(sent);
  assert.deepEqual(answers.map((a) => a.value), [2, 3, 4, 5, 6]);
  const now = await c.read();
  assert.equal(now.value, 6);
  assert.equal(now.digest, dig(rec(6)));
  assert.deepEqual(now.record, rec(6), 'the CAS keeps the record with the counter');

  // A stale expected value: COUNTER_CONFLICT with the CAS's durable value and digest.
  await assert.rejects(c.advance(5, 6, dig(rec(60)), rec(60)), (e: unknown) => isCdbpError(e, 'COUNTER_CONFLICT')
    && (e.details as { value?: number }).value === 6 && (e.details as { digest?: string }).digest === dig(rec(6)));
  // The right value but another record at it (what a fork racing a pipelined advance looks like): refused.
  await assert.rejects(c.advance(6, 7, dig(rec(7)), rec(7), dig(rec(60))), (e: unknown) => isCdbpError(e, 'COUNTER_CONFLICT'));
  // A pipeline behind a refused advance: the refusal does not let the next one land on someone else's value.
  const [bad, after] = await Promise.allSettled([
    c.advance(6, 7, dig(rec(7)), rec(7), dig(rec(60))),
    c.advance(7, 8, dig(rec(8)), rec(8), dig(rec(7))),
  ]);
  assert.equal(bad.status, 'rejected');
  assert.equal(after.status, 'rejected');
  assert.equal((await c.read()).value, 6);

  // A second attested instance of the same service (a fork) shares the counter and loses the race.
  const fork = await attestAndProvision({ casUrl: cas.url, caPem: cas.caPem, service: 'orders', provider, tls: {} });
  t.after(() => (fork.counter as ChannelCounterClient).close());
  await fork.counter.advance(6, 7, dig(rec(70)), rec(70), dig(rec(6)));
  await assert.rejects(c.advance(6, 7, dig(rec(7)), rec(7), dig(rec(6))), (e: unknown) => isCdbpError(e, 'COUNTER_CONFLICT')
    && (e.details as { digest?: string }).digest === dig(rec(70)));

  // Refusals at open: no client certificate; a certificate for another service.
  const url = `${cas.url}/v1/services/orders/counter-channel`;
  const none = await rawOpen(url, { caPem: cas.caPem });
  assert.equal(none.status, 403);
  assert.match(none.body, /FORBIDDEN/);
  const other = await attestAndProvision({ casUrl: cas.url, caPem: cas.caPem, service: 'other', provider, tls: {} });
  (other.counter as ChannelCounterClient).close();
  const wrong = await rawOpen(url, { caPem: cas.caPem, keyPem: other.identity.keyPem, certPem: other.identity.certPem });
  assert.equal(wrong.status, 403);
  assert.match(wrong.body, /belongs to other/);

  // A frame with a wrong MAC (here: keyed with garbage) ends the session without an answer.
  const raw = await rawOpen(url, { caPem: cas.caPem, keyPem: p.identity.keyPem, certPem: p.identity.certPem });
  assert.equal(raw.status, 101);
  const sock = raw.socket!;
  const closed = new Promise<Buffer>((resolve) => {
    const got: Buffer[] = [];
    sock.on('data', (d: Buffer) => got.push(d));
    sock.on('close', () => resolve(Buffer.concat(got)));
  });
  sock.write(sealFrame(randomBytes(32), Dir.ToCas, 0, encodeRequest({ kind: Kind.Read, id: 1 })));
  assert.equal((await closed).length, 0, 'no answer to a forged frame');
  // The right key but a replayed sequence number (frame 0 twice): the second one ends the session.
  const raw2 = await rawOpen(url, { caPem: cas.caPem, keyPem: p.identity.keyPem, certPem: p.identity.certPem });
  const key = raw2.socket!.exportKeyingMaterial(32, EXPORTER_MAC_LABEL, raw2.nonce);
  const frame = sealFrame(key, Dir.ToCas, 0, encodeRequest({ kind: Kind.Read, id: 1 }));
  let answered = 0;
  const first = new Promise<void>((resolve) => raw2.socket!.once('data', () => resolve()));
  raw2.socket!.on('data', (d: Buffer) => { answered += d.length; });
  const closed2 = new Promise<void>((resolve) => raw2.socket!.on('close', () => resolve()));
  raw2.socket!.write(frame);
  await first;
  const once = answered;
  assert.ok(once > 0, 'the genuine frame is answered');
  raw2.socket!.write(frame);
  await closed2;
  assert.equal(answered, once, 'the replayed frame is not answered; the session ends');

  const counterLog = readFileSync(path.join(cas.dir, 'state', 'counters.log'), 'utf8').trim().split('\n');
  assert.equal(counterLog.length, 7, 'one log entry per landed advance');
  // The refusal's audit entry is appended after the session is ended (the refusal does not wait for the
  // disk), so it may land a moment after the close seen here.
  const auditFile = path.join(cas.dir, 'audit.log');
  for (const deadline = Date.now() + 5_000; !/"code":"PROTOCOL_VIOLATION"/.test(readFileSync(auditFile, 'utf8')) && Date.now() < deadline;) {
    await new Promise((r) => setTimeout(r, 50));
  }
  const audit = readFileSync(auditFile, 'utf8');
  assert.match(audit, /"code":"FORBIDDEN"/);
  assert.match(audit, /"code":"PROTOCOL_VIOLATION"/);

  // `cdbp cas audit verify` checks the counter log too: OK as written, refused once entries are cut off.
  const ok = await runCdbp(['cas', 'audit', 'verify', '--dir', cas.dir]);
  assert.equal(ok.code, 0, ok.output);
  assert.match(ok.output, /counter log OK: 7 entries for 1 service\(s\), MACs verified/);
  const logFile = path.join(cas.dir, 'state', 'counters.log');
  copyFileSync(logFile, `${logFile}.orig`);
  writeFileSync(logFile, counterLog.slice(0, 3).join('\n') + '\n');
  const cut = await runCdbp(['cas', 'audit', 'verify', '--dir', cas.dir]);
  copyFileSync(`${logFile}.orig`, logFile);
  assert.equal(cut.code, 1, cut.output);
  assert.match(cut.output, /counter log BROKEN \(STATE_TAMPERED\): counter log truncated or rolled back/);
});

test('counter channel: a CAS restart breaks the channel; the client reopens it and a lost answer is recognisable', async (t) => {
  const tmp = tempDir('ctr-chan-rs');
  let cas = await startTestCas({ root: tmp.path });
  t.after(async () => { await cas.stop(); tmp.remove(); });
  await applyTestPolicy(cas, { service: 'orders' });
  const provider = new SimulatedProvider(cas.platformKeyFile);
  const p = await attestAndProvision({ casUrl: cas.url, caPem: cas.caPem, service: 'orders', provider, tls: {} });
  const c = p.counter as ChannelCounterClient;
  t.after(() => c.close());
  await c.advance(0, 1, dig(rec(1)), rec(1), '');
  const port = new URL(cas.url).port;
  // A clean stop ends the open channel instead of waiting for it (exit 0, not a kill after a time-out).
  assert.equal(await cas.stop(), 0);
  await assert.rejects(c.read(), (e: unknown) => isCdbpError(e, 'CAS_UNREACHABLE'));
  cas = await startTestCas({ root: tmp.path, dir: cas.dir, extraArgs: ['--port', port] });
  const again = await c.read();
  assert.equal(again.value, 1);
  assert.deepEqual(again.record, rec(1));
  assert.equal(c.transport, 'channel');
});

test('the guard pipelines its seals over the real channel: several advances in flight, every held ack released, the counter at its epoch', async (t) => {
  const { FreshnessGuard } = await import('../../proxy/freshness/guard.ts');
  const { RecordStore } = await import('../../proxy/freshness/store.ts');
  const { CurrentCounter } = await import('../../src/cas-client/current-counter.ts');
  const { silentLogger } = await import('../../src/kernel/log.ts');
  const { MetricsRegistry } = await import('../../src/kernel/metrics.ts');
  const tmp = tempDir('ctr-chan-guard');
  const cas = await startTestCas({ root: tmp.path });
  t.after(async () => { await cas.stop(); tmp.remove(); });
  await applyTestPolicy(cas, { service: 'orders' });
  const p = await attestAndProvision({ casUrl: cas.url, caPem: cas.caPem, service: 'orders', provider: new SimulatedProvider(cas.platformKeyFile), tls: {} });
  const counter = new CurrentCounter();
  counter.set(p.counter);
  t.after(() => counter.close());
  const metrics = new MetricsRegistry();
  const g = new FreshnessGuard({
    store: new RecordStore(path.join(tmp.path, 'f.sealed')), key: p.secrets.freshnessKey, databaseId: p.secrets.databaseId, counter,
    mode: 'strict', log: silentLogger(), metrics, holdTimeoutMs: 20_000, sealIntervalMs: 60_000,
  });
  await g.verifyAtStartup();
  let lsn = 1000;
  g.startRuntime({ read: async () => ({ engine: 'mariadb', lsnFlushed: String(lsn), lsnCheckpoint: String(lsn), gtid: `0-1-${lsn}` }), close: async () => {} });
  let maxInFlight = 0;
  const sampler = setInterval(() => {
    const m = /cdbp_freshness_advances_in_flight (\d+)/.exec(metrics.render());
    maxInFlight = Math.max(maxInFlight, Number(m?.[1] ?? 0));
  }, 1);
  // 8 writers in closed loops, as 8 client connections committing.
  const deadline = Date.now() + 3000;
  let acked = 0;
  await Promise.all(Array.from({ length: 8 }, async () => {
    while (Date.now() < deadline) {
      lsn += 10;
      await g.holdAck();
      acked++;
    }
  }));
  clearInterval(sampler);
  const epoch = g.status().epoch as number;
  assert.equal((await counter.read()).value, epoch);
  assert.ok(acked > 8, `${acked} acks`);
  assert.ok(maxInFlight >= 2, `advances in flight peaked at ${maxInFlight}`);
  t.diagnostic(`${acked} acks, ${epoch} epochs (${(acked / Math.max(1, epoch - 1)).toFixed(1)} per advance), up to ${maxInFlight} advances in flight`);
  await g.stop();
});
