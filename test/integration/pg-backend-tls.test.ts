import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import tls from 'node:tls';
import pg from 'pg';
import { serialize } from 'pg-protocol';
import { makeTestPki } from '../support/test-pki.ts';
import { hasMessage, psql, RawPg, startProxyUnderTest, type ProxyUnderTest } from './pg-support.ts';

/**
 * Backend reached over TCP + TLS (a database in another pod): the backend then offers
 * SCRAM-SHA-256-PLUS, which the proxy must hide because channel binding cannot cross it.
 */
const backendPki = makeTestPki();
let t: ProxyUnderTest;
before(async () => {
  t = await startProxyUnderTest({}, { tcp: true, tls: { certPem: backendPki.certPem, keyPem: backendPki.keyPem } });
  const b = t.db.server;
  const viaTls = await t.extraProxy({ backend: { host: '127.0.0.1', port: b.port, tls: { caPem: backendPki.caPem } } });
  tlsBackendPort = viaTls.port;
});
after(async () => {
  await t?.stop();
});
let tlsBackendPort = 0;

async function mechanismsAt(port: number, direct: boolean): Promise<string[]> {
  const raw = direct ? await directToBackend() : await RawPg.overTls(port, t.pki.caPem);
  raw.write(serialize.startup({ user: 'app', database: 'test' }));
  await raw.until(() => hasMessage(raw, 'authenticationSASL'));
  raw.end();
  return raw.messages.find((m) => m.name === 'authenticationSASL').mechanisms;
}

async function directToBackend(): Promise<RawPg> {
  const raw = await RawPg.plain(t.db.server.port, false);
  raw.write(Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]));
  await raw.until(() => raw.bytes.length > 0);
  raw.socket.removeAllListeners('data');
  const s = tls.connect({ socket: raw.socket, ca: backendPki.caPem, servername: 'localhost' });
  await new Promise((r) => s.once('secureConnect', r));
  return new RawPg(s);
}

test('the TLS backend offers SCRAM-SHA-256-PLUS; through the proxy only SCRAM-SHA-256 is offered', async () => {
  assert.deepEqual(await mechanismsAt(0, true), ['SCRAM-SHA-256-PLUS', 'SCRAM-SHA-256']);
  assert.deepEqual(await mechanismsAt(tlsBackendPort, false), ['SCRAM-SHA-256']);
});

test('SCRAM through a TLS backend leg works for clients that do not claim channel binding support', async () => {
  const c = new pg.Client({ host: 'localhost', port: tlsBackendPort, user: 'app', password: t.db.accounts.scram.password, database: 'test', ssl: { ca: t.pki.caPem } });
  await c.connect();
  const r = await c.query('SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()');
  assert.equal(r.rows[0].ssl, true, 'the proxy → database leg is TLS');
  await c.end();
  const ok = await psql(`host=localhost port=${tlsBackendPort} user=app dbname=test sslmode=verify-full sslrootcert=${t.files.caFile} channel_binding=disable`,
    ['-Atc', 'SELECT 1'], { PGPASSWORD: t.db.accounts.scram.password });
  assert.equal(ok.stdout.trim(), '1', ok.stderr);
  // md5 accounts are unaffected by channel binding
  const md5 = await psql(`host=localhost port=${tlsBackendPort} user=app_md5 dbname=test sslmode=verify-full sslrootcert=${t.files.caFile}`,
    ['-Atc', 'SELECT 2'], { PGPASSWORD: t.db.accounts.md5.password });
  assert.equal(md5.stdout.trim(), '2', md5.stderr);
});

test('libpq with channel_binding=require refuses rather than being downgraded silently', async () => {
  const r = await psql(`host=localhost port=${tlsBackendPort} user=app dbname=test sslmode=verify-full sslrootcert=${t.files.caFile} channel_binding=require`,
    ['-Atc', 'SELECT 1'], { PGPASSWORD: t.db.accounts.scram.password });
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /channel binding/);
});

test('libpq default (channel_binding=prefer) over a TLS backend leg is refused by the database (documented limitation)', async () => {
  // libpq on TLS announces "y" (I support binding, you seem not to); a TLS-serving PostgreSQL
  // treats that as a downgrade attack. Proxy → database over the unix socket avoids it.
  const r = await psql(`host=localhost port=${tlsBackendPort} user=app dbname=test sslmode=verify-full sslrootcert=${t.files.caFile}`,
    ['-Atc', 'SELECT 1'], { PGPASSWORD: t.db.accounts.scram.password });
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /SCRAM channel binding negotiation error/);
});

test('a cancel reaches a TLS backend', async () => {
  const c = new pg.Client({ host: 'localhost', port: tlsBackendPort, user: 'app', password: t.db.accounts.scram.password, database: 'test', ssl: { ca: t.pki.caPem } });
  await c.connect();
  const { processID, secretKey } = c as unknown as { processID: number; secretKey: number };
  const sleeping = c.query('SELECT pg_sleep(60)').then(() => 'finished', (e) => e.code);
  for (let i = 0; i < 100; i++) {
    const n = (await t.db.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)' AND state = 'active'")).rows[0].n;
    if (n > 0) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  const raw = await RawPg.plain(tlsBackendPort);
  const { encodeCancelRequest } = await import('../../proxy/pg/codec.ts');
  raw.write(encodeCancelRequest(processID, secretKey));
  assert.equal(await sleeping, '57014');
  await c.end();
});
