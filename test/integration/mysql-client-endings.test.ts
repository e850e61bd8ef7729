/**
 * How MySQL sessions end, with real processes on both data planes: a client that leaves before login
 * frees its slot and its database connection at once (issue 16, item 2: 3,000 connect+close filled all
 * slots until the handshake timeout), a client that stalls inside TLS gets an ERR packet there too
 * (item 7), the pre-greeting "Too many connections" looks like MariaDB's own (issue 21, item 4), and a
 * client that quits normally is logged as `ok`, not as an error (issue 21, item 6).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import tls from 'node:tls';
import { once } from 'node:events';
import { Writable } from 'node:stream';
import mariadb from 'mariadb';
import mysql2 from 'mysql2/promise';
import { startPrivateMariadb, type PrivateMariadb } from '../support/mariadb.ts';
import { makeTestPki, type TestPki } from '../support/test-pki.ts';
import { createLogger } from '../../src/kernel/log.ts';
import type { MysqlProxy, MysqlProxyOptions } from '../../proxy/mysql/index.ts';
import { decodeErr, encodePacket } from '../../proxy/mysql/codec.ts';
import { RawClient, handshakeResponse, rawTls, scrambleOf, sslRequest, until } from '../support/mysql-raw.ts';
import { withMysqlProxy } from '../support/mysql-proxy.ts';

type Plane = 'native' | 'node';
const PLANES: readonly Plane[] = ['native', 'node'];

let db: PrivateMariadb;
let pki: TestPki;

before(async () => {
  pki = makeTestPki();
  db = await startPrivateMariadb();
});

after(async () => {
  await db?.stop();
});

function withProxy<T>(extra: Partial<MysqlProxyOptions>, fn: (p: MysqlProxy, port: number) => Promise<T>): Promise<T> {
  return withMysqlProxy(db.server.socket, pki, extra, fn);
}

async function threadsConnected(): Promise<number> {
  const [row] = await db.rootQuery("SHOW GLOBAL STATUS LIKE 'Threads_connected'");
  return Number(row.Value);
}

/** Resolves when the socket is fully closed, or rejects after `ms` (the proxy kept it open). */
function closedWithin(sock: net.Socket, ms: number, what: string): Promise<void> {
  if (sock.destroyed) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => { sock.destroy(); reject(new Error(`${what}: the proxy kept the connection open for ${ms} ms after the client's FIN`)); }, ms);
    sock.once('close', () => { clearTimeout(t); resolve(); });
  });
}

/** The ways a client can leave before login: each ends with a FIN (Node's end()), never a reset. */
type Leave = 'at once' | 'after the greeting' | 'after the SSLRequest' | 'after the TLS handshake';

async function connectAndLeave(port: number, how: Leave, refusals: { n: number }): Promise<void> {
  const sock = net.connect(port, '127.0.0.1');
  sock.on('error', () => {});
  await once(sock, 'connect');
  if (how === 'at once') {
    sock.on('data', (d: Buffer) => { if (d.length > 4 && d[4] === 0xff) refusals.n++; });
    sock.end();
    return closedWithin(sock, 3000, how);
  }
  const c = new RawClient(sock);
  const greeting = await c.next();
  assert.ok(greeting, 'greeting received');
  if (greeting.payload[0] === 0xff) {
    refusals.n++;
    sock.destroy();
    return;
  }
  if (how === 'after the greeting') {
    sock.end();
    return closedWithin(sock, 3000, how);
  }
  sock.removeAllListeners('data');
  sock.write(encodePacket(1, sslRequest()));
  if (how === 'after the SSLRequest') {
    sock.end();
    return closedWithin(sock, 3000, how);
  }
  const t = tls.connect({ socket: sock, ca: pki.caPem, servername: 'localhost' });
  t.on('error', () => {});
  await once(t, 'secureConnect');
  t.end(); // close_notify, then FIN
  return closedWithin(sock, 3000, how);
}

for (const plane of PLANES) {
  test(`[${plane}] a client's FIN before login frees its slot and its database connection at once (connect+close flood, then a normal login)`, async () => {
    const maxConnections = 20;
    await withProxy({ dataPlane: plane, limits: { maxConnections, handshakeTimeoutMs: 30_000 } }, async (proxy, port) => {
      const baseline = await threadsConnected();
      const refusals = { n: 0 };
      for (const how of ['at once', 'after the greeting', 'after the SSLRequest', 'after the TLS handshake'] as const) {
        // Three times the slot count each way, in waves of the slot count: every wave needs the slots
        // the previous one freed, long before the 30 s handshake timeout.
        for (let wave = 0; wave < 3; wave++) {
          await Promise.all(Array.from({ length: maxConnections }, () => connectAndLeave(port, how, refusals)));
        }
      }
      assert.equal(refusals.n, 0, 'no client was refused with ERR 1040: every FIN freed its slot');
      assert.equal(proxy.stats().refused, 0);
      await until(() => proxy.stats().open === 0, 2000, 'all slots free');
      const deadline = Date.now() + 3000;
      while ((await threadsConnected()) > baseline && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      assert.equal(await threadsConnected(), baseline, 'every database connection the proxy dialed is closed');
      const conn = await mysql2.createConnection({ host: '127.0.0.1', port, user: db.user, password: db.password, ssl: { ca: pki.caPem } });
      const [[row]] = await conn.query<mysql2.RowDataPacket[]>('SELECT 42 AS x');
      assert.equal(row!.x, 42, 'a normal client logs in afterwards');
      await conn.end();
    });
  });
}

/** A logger whose lines the test reads back. */
function capturingLogger() {
  const lines: any[] = [];
  const sink = new Writable({ write(chunk, _e, cb) { for (const l of chunk.toString().split('\n')) if (l) lines.push(JSON.parse(l)); cb(); } });
  return { lines, log: createLogger({ name: 'test', destination: sink, level: 'info' }) };
}

const WARN = 40; // pino's level number for warn

for (const plane of PLANES) {
  test(`[${plane}] clients that quit normally (mariadb conn.end(), mysql2 end(), COM_QUIT then close) are logged ok at info, never client_error at warn`, async () => {
    const { lines, log } = capturingLogger();
    const rounds = 10;
    await withProxy({ dataPlane: plane, log }, async (proxy, port) => {
      for (let i = 0; i < rounds; i++) {
        const m = await mariadb.createConnection({ host: '127.0.0.1', port, user: db.user, password: db.password, ssl: { ca: pki.caPem } });
        await m.query('SELECT 1');
        await m.end();
        const m2 = await mysql2.createConnection({ host: '127.0.0.1', port, user: db.user, password: db.password, ssl: { ca: pki.caPem } });
        await m2.query('SELECT 1');
        await m2.end();
      }
      await until(() => proxy.stats().open === 0, 5000, 'sessions closed');
    });
    const closes = lines.filter((l) => l.event === 'connection_close');
    assert.equal(closes.length, 2 * rounds, 'one close line per connection');
    const bad = closes.filter((l) => l.outcome !== 'ok' || l.level >= WARN);
    assert.deepEqual(bad.map((l) => `${l.outcome}: ${l.error}`), [], 'every normal quit is outcome ok at info');
    assert.equal(lines.filter((l) => l.level >= WARN).length, 0, 'no warn lines at all for normal clients');
  });
}

/** A raw client logged in over TLS (to misbehave on purpose after the login OK). */
async function rawSession(port: number) {
  const { tcp, t, greeting } = await rawTls(port, pki.caPem);
  const c = new RawClient(t);
  t.write(encodePacket(2, handshakeResponse(db.user, db.password, scrambleOf(greeting))));
  const ok = await c.next();
  assert.ok(ok && ok.payload[0] === 0x00, 'logged in');
  return { tcp, t, c };
}

for (const plane of PLANES) {
  test(`[${plane}] a reset right after COM_QUIT is a normal end (ok); a reset without COM_QUIT is still client_error`, async () => {
    const { lines, log } = capturingLogger();
    await withProxy({ dataPlane: plane, log }, async (proxy, port) => {
      {
        const { tcp, t } = await rawSession(port);
        // COM_QUIT, and the reset as soon as it is on the wire (what the mariadb connector's end() does)
        t.write(encodePacket(0, Buffer.from([0x01])), () => tcp.resetAndDestroy());
      }
      await until(() => proxy.stats().open === 0, 5000, 'the quitting session closed');
      {
        const { tcp, t, c } = await rawSession(port);
        t.write(encodePacket(0, Buffer.concat([Buffer.from([0x03]), Buffer.from('SELECT 1')])));
        await c.next(); // the column count: the session is in the middle of a result
        tcp.resetAndDestroy();
      }
      await until(() => proxy.stats().open === 0, 5000, 'the reset session closed');
    });
    const closes = lines.filter((l) => l.event === 'connection_close');
    assert.deepEqual(closes.map((l) => l.outcome), ['ok', 'client_error']);
    assert.ok(closes[0].level < WARN && closes[1].level >= WARN);
  });
}

/** The error a client library reports for a refused connection. */
async function refusal(connect: () => Promise<{ end(): Promise<void> }>): Promise<{ errno: number; sqlState: string; code: string }> {
  try {
    const c = await connect();
    await c.end();
  } catch (e: any) {
    return { errno: e.errno, sqlState: e.sqlState, code: e.code };
  }
  throw new Error('the connection was not refused');
}

/** The first packet a server sends on a new connection (its greeting, or its refusal). */
async function firstPacket(connectOpts: net.NetConnectOpts): Promise<Buffer> {
  const sock = net.connect(connectOpts);
  sock.on('error', () => {});
  const c = new RawClient(sock);
  const p = await c.next();
  sock.destroy();
  assert.ok(p, 'a first packet');
  return encodePacket(p.seq, p.payload);
}

test('the pre-greeting "Too many connections" is byte for byte MariaDB\'s own (no SQL-state marker): mariadb and mysql2 report HY000', async () => {
  // The database's answer for comparison: with max_connections (minimum 10) + 1 connections open
  // (SUPER's extra one included), MariaDB refuses the next one before its greeting.
  const admin = await mariadb.createConnection({ socketPath: db.server.socket, user: 'root' });
  const [{ v: oldMax }] = await admin.query('SELECT @@global.max_connections AS v');
  const held: { end(): Promise<void> }[] = [];
  let direct: { errno: number; sqlState: string; code: string } | undefined;
  let directBytes: Buffer;
  try {
    await admin.query('SET GLOBAL max_connections = 10');
    while (!direct && held.length < 20) {
      try {
        held.push(await mariadb.createConnection({ socketPath: db.server.socket, user: 'root' }));
      } catch (e: any) {
        direct = { errno: e.errno, sqlState: e.sqlState, code: e.code };
      }
    }
    directBytes = await firstPacket({ path: db.server.socket });
  } finally {
    for (const c of held) await c.end();
    await admin.query(`SET GLOBAL max_connections = ${Number(oldMax)}`);
    await admin.end();
  }
  assert.deepEqual(direct, { errno: 1040, sqlState: 'HY000', code: 'ER_CON_COUNT_ERROR' }, 'MariaDB refuses before its greeting without a SQL state');

  for (const plane of PLANES) {
    await withProxy({ dataPlane: plane, limits: { maxConnections: 1 } }, async (_proxy, port) => {
      const holder = await mysql2.createConnection({ host: '127.0.0.1', port, user: db.user, password: db.password, ssl: { ca: pki.caPem } });
      try {
        assert.deepEqual(await firstPacket({ host: '127.0.0.1', port }), directBytes, `${plane}: the same bytes as MariaDB's refusal`);
        const viaMariadb = await refusal(() => mariadb.createConnection({ host: '127.0.0.1', port, user: db.user, password: db.password, ssl: { ca: pki.caPem } }));
        assert.deepEqual(viaMariadb, direct, `${plane}: the mariadb connector reports what it reports for MariaDB's own refusal`);
        const viaMysql2 = await refusal(() => mysql2.createConnection({ host: '127.0.0.1', port, user: db.user, password: db.password, ssl: { ca: pki.caPem } }));
        assert.equal(viaMysql2.errno, 1040);
        assert.equal(viaMysql2.code, 'ER_CON_COUNT_ERROR');
        assert.notEqual(viaMysql2.sqlState, '08004', `${plane}: no SQL state read from a marker`);
      } finally {
        await holder.end();
      }
    });
  }
});

for (const plane of PLANES) {
  test(`[${plane}] a frame that stalls inside TLS gets ERR 1159 in TLS at the handshake timeout (HandshakeResponse and auth-switch answer), like one before TLS`, async () => {
    await withProxy({ dataPlane: plane, limits: { handshakeTimeoutMs: 800 } }, async (proxy, port) => {
      // 1. before TLS (today's behaviour, for comparison): a partial SSLRequest
      {
        const sock = net.connect(port, '127.0.0.1');
        const c = new RawClient(sock);
        await c.next(); // greeting
        sock.write(encodePacket(1, sslRequest()).subarray(0, 10));
        const err = await c.next(3000);
        assert.ok(err && err.payload[0] === 0xff, 'ERR before TLS');
        assert.equal(decodeErr(err.payload).errno, 1159);
        assert.ok(await c.untilClosed(3000));
      }
      // 2. inside TLS: a HandshakeResponse whose header announces more than is ever sent
      {
        const { t, greeting } = await rawTls(port, pki.caPem);
        const c = new RawClient(t);
        t.write(encodePacket(2, handshakeResponse(db.user, db.password, scrambleOf(greeting))).subarray(0, 20));
        const err = await c.next(3000);
        assert.ok(err && err.payload[0] === 0xff, 'an ERR packet inside TLS, not a bare close');
        assert.deepEqual({ errno: decodeErr(err.payload).errno, seq: err.seq }, { errno: 1159, seq: 3 });
        assert.match(decodeErr(err.payload).message, /timed out/);
        assert.ok(await c.untilClosed(3000));
      }
      // 3. inside TLS, during authentication: an unknown plugin makes the database ask for an auth
      //    switch (seq 3); the client's answer (seq 4) stalls mid-frame
      {
        const { t, greeting } = await rawTls(port, pki.caPem);
        const c = new RawClient(t);
        const hs = handshakeResponse(db.user, db.password, scrambleOf(greeting));
        const withOtherPlugin = Buffer.concat([hs.subarray(0, hs.length - 'mysql_native_password\0'.length), Buffer.from('no_such_plugin\0')]);
        t.write(encodePacket(2, withOtherPlugin));
        const sw = await c.next(3000);
        assert.ok(sw && sw.payload[0] === 0xfe, 'auth switch request');
        t.write(encodePacket(sw.seq + 1, Buffer.alloc(20, 7)).subarray(0, 8));
        const err = await c.next(3000);
        assert.ok(err && err.payload[0] === 0xff, 'an ERR packet inside TLS during authentication');
        assert.deepEqual({ errno: decodeErr(err.payload).errno, seq: err.seq }, { errno: 1159, seq: sw.seq + 2 });
        assert.ok(await c.untilClosed(3000));
      }
      assert.equal(proxy.stats().handshakeTimeouts, 3);
      await until(() => proxy.stats().open === 0, 3000, 'sessions closed');
    });
  });
}
