/**
 * Robustness of the MySQL endpoint against a real MariaDB: limits, timeouts, garbage, half-close,
 * backpressure, single cleanup and log lines, certificate hot swap, drain, TLS backend leg.
 * Raw protocol clients are used where a well-behaved driver cannot misbehave on purpose.
 * Each case runs once per data plane (native C relay, Node), ack-gate cases included; pure option checks
 * run once.
 */
import { TlsIdentityHolder } from '../../src/crypto/tls-identity.ts';
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import tls from 'node:tls';
import { once } from 'node:events';
import { Writable } from 'node:stream';
import path from 'node:path';
import mysql2 from 'mysql2/promise';
import { startPrivateMariadb, type PrivateMariadb } from '../support/mariadb.ts';
import { makeTestPki, type TestPki } from '../support/test-pki.ts';
import { tempDir } from '../support/tmp.ts';
import { createLogger, silentLogger } from '../../src/kernel/log.ts';
import { MetricsRegistry } from '../../src/kernel/metrics.ts';
import { isCdbpError } from '../../src/kernel/errors.ts';
import { createMysqlProxy, type MysqlProxy, type MysqlProxyOptions } from '../../proxy/mysql/index.ts';
import { Cap } from '../../proxy/mysql/constants.ts';
import { decodeErr, decodeInitialHandshake, encodePacket } from '../../proxy/mysql/codec.ts';
import { CLIENT_CAPS, RawClient, comQuery, handshakeResponse, rawTls, scrambleOf, sslRequest, until } from '../support/mysql-raw.ts';
import { withMysqlProxy } from '../support/mysql-proxy.ts';

type Plane = 'native' | 'node';
const PLANES: readonly Plane[] = ['native', 'node'];

let db: PrivateMariadb;
let pki: TestPki;
const dir = tempDir('mysql-robust');

before(async () => {
  pki = makeTestPki();
  db = await startPrivateMariadb({ tcp: true, tls: pki });
});

after(async () => {
  await db?.stop();
  dir.remove();
});

function withProxy<T>(extra: Partial<MysqlProxyOptions>, fn: (p: MysqlProxy, port: number) => Promise<T>): Promise<T> {
  return withMysqlProxy(db.server.socket, pki, extra, fn);
}

function connect2(port: number, opts: Partial<mysql2.ConnectionOptions> = {}) {
  return mysql2.createConnection({ host: '127.0.0.1', port, user: db.user, password: db.password, ssl: { ca: pki.caPem }, connectTimeout: 10_000, ...opts });
}

async function rawConnect(port: number) {
  const sock = net.connect(port, '127.0.0.1');
  await once(sock, 'connect');
  const c = new RawClient(sock);
  const greeting = await c.next();
  assert.ok(greeting, 'greeting received');
  return { c, greeting };
}

/** Full raw login over TLS; returns the client ready for commands (seq restarts at 0). */
async function rawLogin(port: number, user = db.user, password = db.password, caps = CLIENT_CAPS) {
  const { c, greeting } = await rawConnect(port);
  c.sock.write(encodePacket(1, sslRequest(caps)));
  c.sock.removeAllListeners('data');
  const t = tls.connect({ socket: c.sock as net.Socket, ca: pki.caPem, servername: 'localhost' });
  await once(t, 'secureConnect');
  const tc = new RawClient(t);
  t.write(encodePacket(2, handshakeResponse(user, password, scrambleOf(greeting.payload), caps)));
  const reply = await tc.next();
  return { c: tc, reply: reply! };
}

for (const plane of PLANES) {
  test(`[${plane}] raw login with mysql_native_password: seq ids are rewritten for the socket backend and OK arrives with seq 3`, async () => {
    await withProxy({ dataPlane: plane }, async (_p, port) => {
      const { c, reply } = await rawLogin(port);
      assert.equal(reply.payload[0], 0x00, `expected OK, got ${reply.payload[0] === 0xff ? decodeErr(reply.payload).message : reply.payload[0]}`);
      assert.equal(reply.seq, 3);
      c.sock.destroy();
    });
  });

  test(`[${plane}] auth relay forwards only answers the database asked for: seq-1 packets pipelined with the login never run as commands`, async () => {
    // Review finding (critical): client packets with seq 1 were forwarded during authentication as seq
    // 0 (socket leg: seq − 1) and executed right after the login OK, outside the change-user check.
    const user = `low_${plane}`;
    await db.rootQuery(`CREATE USER IF NOT EXISTS '${user}'@'localhost' IDENTIFIED BY 'low-pw'`);
    await db.rootQuery(`DROP DATABASE IF EXISTS pwned_${plane}`);
    await withProxy({ dataPlane: plane }, async (proxy, port) => {
      const { t, greeting } = await rawTls(port, pki.caPem);
      const tc = new RawClient(t);
      const osUser = (await import('node:os')).userInfo().username;
      const changeUser = Buffer.concat([Buffer.from([0x11]), Buffer.from(`${osUser}\0`), Buffer.from([0]), Buffer.from('\0'), Buffer.from([0x21, 0]), Buffer.from('mysql_native_password\0')]);
      const create = Buffer.concat([Buffer.from([0x03]), Buffer.from(`CREATE DATABASE pwned_${plane}`)]);
      t.write(Buffer.concat([
        encodePacket(2, handshakeResponse(user, 'low-pw', scrambleOf(greeting))),
        encodePacket(1, changeUser), encodePacket(3, Buffer.alloc(20, 1)), encodePacket(1, create),
      ]));
      const reply = await tc.next();
      assert.ok(reply && reply.payload[0] === 0xff, 'refused');
      assert.match(decodeErr(reply.payload).message, /unexpected packet \(sequence id 1\) during authentication/);
      assert.ok(await tc.untilClosed());
      await until(() => proxy.stats().open === 0);
      const rows = await db.rootQuery(`SHOW DATABASES LIKE 'pwned_${plane}'`);
      assert.equal(rows.length, 0, 'nothing ran as the OS account');
    });
  });

  test(`[${plane}] commands held before the login OK are bounded (1 MiB), then the client is refused`, async () => {
    await withProxy({ dataPlane: plane }, async (proxy, port) => {
      const { t } = await rawTls(port, pki.caPem);
      const tc = new RawClient(t);
      // A login the database answers with an auth switch nobody answers, then a stream of seq-0 packets.
      const hr = Buffer.concat([sslRequest(), Buffer.from('nobody_here\0'), Buffer.from([0]), Buffer.from('no_such_plugin\0')]);
      t.write(encodePacket(2, hr));
      const chunk = encodePacket(0, Buffer.concat([Buffer.from([0x03]), Buffer.alloc(60_000, 0x20)]));
      for (let i = 0; i < 40 && !tc.closed; i++) { t.write(chunk); await new Promise((r) => setTimeout(r, 5)); }
      assert.ok(await tc.untilClosed(), 'the flooding client is cut');
      const packets: { payload: Buffer }[] = [];
      for (let p = await tc.next(100); p; p = await tc.next(100)) packets.push(p);
      const err = packets.find((p) => p.payload[0] === 0xff);
      assert.ok(err, 'an ERR before the close');
      assert.match(decodeErr(err.payload).message, /bytes of commands sent before authentication completed/);
      await until(() => proxy.stats().open === 0);
      const good = await connect2(port);
      await good.query('SELECT 1');
      await good.end();
    });
  });

  test(`[${plane}] max connections: the over-limit client gets ERR 1040 before the database is dialed`, async () => {
    await withProxy({ dataPlane: plane, limits: { maxConnections: 2 } }, async (proxy, port) => {
      const a = await connect2(port);
      const b = await connect2(port);
      const [[before]] = await a.query<mysql2.RowDataPacket[]>("SHOW GLOBAL STATUS LIKE 'Connections'");
      await assert.rejects(connect2(port), (e: any) => e.errno === 1040 && /Too many connections/.test(e.message));
      const [[afterRow]] = await a.query<mysql2.RowDataPacket[]>("SHOW GLOBAL STATUS LIKE 'Connections'");
      assert.equal(Number(afterRow!.Value), Number(before!.Value), 'no backend connection was opened for the refused client');
      assert.equal(proxy.stats().refused, 1);
      await b.end();
      const deadline = Date.now() + 3000;
      while (proxy.stats().open > 1 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      const c = await connect2(port); // the slot was released
      await Promise.all([a.end(), c.end()]);
    });
  });

  test(`[${plane}] pending-handshake cap (one meaning with PostgreSQL): silent handshakes cannot take every slot; over it ERR 1040`, async () => {
    await withProxy({ dataPlane: plane, limits: { maxConnections: 10, maxPendingHandshakes: 2 } }, async (proxy, port) => {
      const a = await connect2(port); // logged in: no longer a pending handshake
      const silent = [(await rawConnect(port)).c, (await rawConnect(port)).c];
      await until(() => proxy.stats().pendingHandshakes === 2);
      await assert.rejects(connect2(port), (e: any) => e.errno === 1040 && /Too many connections/.test(e.message));
      const s = proxy.stats();
      assert.equal(s.open, 3);
      assert.deepEqual(s.refusedBy, { max_connections: 0, overload: 1, draining: 0 });
      silent[0]!.sock.destroy();
      await until(() => proxy.stats().pendingHandshakes === 1);
      const b = await connect2(port); // a pending place is free again
      const [[row]] = await b.query<mysql2.RowDataPacket[]>('SELECT 9 AS x');
      assert.equal(row!.x, 9);
      silent[1]!.sock.destroy();
      await Promise.all([a.end(), b.end()]);
    });
  });

  test(`[${plane}] handshake timeout and slowloris: silent and byte-dribbling clients are cut; a good client is unaffected`, async () => {
    await withProxy({ dataPlane: plane, limits: { handshakeTimeoutMs: 600 } }, async (proxy, port) => {
      const { c: silent } = await rawConnect(port);
      const { c: slow } = await rawConnect(port);
      // A well-formed SSLRequest, one byte every 100 ms: each byte is valid progress, the deadline still applies.
      const slowBytes = encodePacket(1, sslRequest());
      let sent = 0;
      const dribble = setInterval(() => { if (!slow.closed && sent < slowBytes.length) slow.sock.write(slowBytes.subarray(sent, ++sent)); }, 100);
      const good = await connect2(port);
      const [[row]] = await good.query<mysql2.RowDataPacket[]>('SELECT 7 AS x');
      assert.equal(row!.x, 7);
      assert.ok(await silent.untilClosed(3000), 'silent client closed');
      assert.ok(await slow.untilClosed(3000), 'slowloris client closed');
      clearInterval(dribble);
      assert.equal(proxy.stats().handshakeTimeouts, 2);
      const [[row2]] = await good.query<mysql2.RowDataPacket[]>('SELECT 8 AS x');
      assert.equal(row2!.x, 8, 'the established session outlives the handshake timeout');
      await good.end();
    });
  });

  test(`[${plane}] garbage, oversized frames and TLS garbage get protocol errors and never disturb another client`, async () => {
    await withProxy({ dataPlane: plane, limits: { maxHandshakePacket: 4096 } }, async (proxy, port) => {
      const good = await connect2(port);
      // 1. oversized length announced: refused at the header, before the payload is buffered
      {
        const { c } = await rawConnect(port);
        c.sock.write(Buffer.from([0xff, 0xff, 0xff, 0x01]));
        const err = await c.next();
        assert.ok(err && err.payload[0] === 0xff);
        assert.equal(decodeErr(err.payload).errno, 1153);
        assert.ok(await c.untilClosed());
      }
      // 2. well-framed garbage instead of an SSLRequest
      {
        const { c } = await rawConnect(port);
        c.sock.write(encodePacket(1, Buffer.from('hello, this is not mysql at all')));
        const err = await c.next();
        assert.ok(err && err.payload[0] === 0xff);
        assert.equal(decodeErr(err.payload).errno, 1043);
        assert.ok(await c.untilClosed());
      }
      // 3. SSLRequest followed by bytes that are not TLS
      {
        const { c } = await rawConnect(port);
        c.sock.write(Buffer.concat([encodePacket(1, sslRequest()), Buffer.from('GET / HTTP/1.1\r\n\r\n')]));
        assert.ok(await c.untilClosed());
      }
      // 4. random bytes straight away
      {
        const { c } = await rawConnect(port);
        c.sock.write(Buffer.from(Array.from({ length: 300 }, (_, i) => (i * 97) & 0xff)));
        assert.ok(await c.untilClosed());
      }
      // 5. compression forced although it was not advertised
      {
        const { c, reply } = await rawLogin(port, db.user, db.password, CLIENT_CAPS | Cap.CLIENT_COMPRESS);
        assert.equal(reply.payload[0], 0xff);
        assert.equal(decodeErr(reply.payload).errno, 1251);
        assert.match(decodeErr(reply.payload).message, /compression/i);
        assert.ok(await c.untilClosed());
      }
      // 6. MariaDB's COM_MULTI asked for although it was not advertised (it would hide commands from the scanners)
      {
        const caps = (CLIENT_CAPS & ~Cap.CLIENT_MYSQL) | Cap.MARIADB_CLIENT_COM_MULTI;
        const { c, reply } = await rawLogin(port, db.user, db.password, caps);
        assert.equal(reply.payload[0], 0xff);
        assert.equal(decodeErr(reply.payload).errno, 1251);
        assert.match(decodeErr(reply.payload).message, /COM_MULTI/);
        assert.ok(await c.untilClosed());
      }
      const [[row]] = await good.query<mysql2.RowDataPacket[]>('SELECT 1 AS ok');
      assert.equal(row!.ok, 1);
      assert.ok(proxy.stats().tlsFailures >= 1);
      await good.end();
    });
  });

  test(`[${plane}] the proxy's own OS account name is refused on a unix-socket backend (unix_socket auth would trust the proxy)`, async () => {
    const osUser = (await import('node:os')).userInfo().username;
    await withProxy({ dataPlane: plane }, async (_p, port) => {
      await assert.rejects(connect2(port, { user: osUser, password: '' }), (e: any) => e.errno === 1045 && /OS account/.test(e.message));
    });
  });

  test(`[${plane}] COM_CHANGE_USER to the proxy's OS account is refused after login too (no gate: the plain pipe mode), with mysql2 and the mariadb connector`, async () => {
    const osUser = (await import('node:os')).userInfo().username;
    const mariadb = (await import('mariadb')).default;
    await withProxy({ dataPlane: plane }, async (proxy, port) => {
      const c2 = await connect2(port, { database: 'test' });
      c2.on('error', () => {});
      await assert.rejects(c2.changeUser({ user: osUser, password: '' }),
        (e: any) => e.errno === 1045 && e.sqlState === '28000' && /COM_CHANGE_USER/.test(e.message) && /OS account/.test(e.message));
      const cm = await mariadb.createConnection({ host: '127.0.0.1', port, user: db.user, password: db.password, ssl: { ca: pki.caPem } });
      cm.on('error', () => {});
      await assert.rejects(cm.changeUser({ user: osUser, password: '' }), (e: any) => e.errno === 1045 && /OS account/.test(e.message));
      await assert.rejects(cm.query('SELECT CURRENT_USER()'), 'the session is closed, never switched');
      await cm.end().catch(() => {});
      c2.destroy();
      // A change-user to an ordinary account still works.
      const ok = await connect2(port);
      await ok.changeUser({ user: db.user, password: db.password });
      const [rows] = await ok.query('SELECT CURRENT_USER() AS u') as any;
      assert.match(rows[0].u, new RegExp(`^${db.user}@`));
      await ok.end();
      const deadline = Date.now() + 3000;
      while (proxy.stats().open > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      assert.equal(proxy.stats().open, 0);
    });
  });

  test(`[${plane}] commands pipelined before the login OK go through the change-user check: one to the OS account is refused`, async () => {
    const osUser = (await import('node:os')).userInfo().username;
    const changeUser = encodePacket(0, Buffer.concat([Buffer.from([0x11]), Buffer.from(`${osUser}\0`), Buffer.from([0]), Buffer.from('\0')]));
    await withProxy({ dataPlane: plane }, async (_p, port) => {
      const { t, greeting } = await rawTls(port, pki.caPem);
      const tc = new RawClient(t);
      t.write(Buffer.concat([encodePacket(2, handshakeResponse(db.user, db.password, scrambleOf(greeting))), comQuery('DO 1'), changeUser]));
      const login = await tc.next();
      assert.equal(login?.payload[0], 0x00, 'login OK');
      const doOk = await tc.next();
      assert.equal(doOk?.payload[0], 0x00, 'the command before it is answered');
      const err = await tc.next();
      assert.ok(err && err.payload[0] === 0xff, 'then an ERR for the change-user');
      assert.equal(err.seq, 1);
      assert.equal(decodeErr(err.payload).errno, 1045);
      assert.equal(await tc.untilClosed(), true, 'and the session is closed');
    });
  });

  test(`[${plane}] half-close: a client that sends a query and shuts its write side still receives the whole result`, async () => {
    await withProxy({ dataPlane: plane }, async (_p, port) => {
      const { c, reply } = await rawLogin(port);
      assert.equal(reply.payload[0], 0);
      c.sock.end(comQuery("SELECT SLEEP(0.2), 'half-closed-ok'"));
      const packets: Buffer[] = [];
      for (let p = await c.next(); p; p = await c.next()) packets.push(p.payload);
      assert.ok(packets.some((p) => p.includes(Buffer.from('half-closed-ok'))), 'the row arrived after the client half-closed');
    });
  });

  test(`[${plane}] backpressure: a client that stops reading during a 64 MiB result keeps the proxy's buffers bounded`, async () => {
    await withProxy({ dataPlane: plane }, async (proxy, port) => {
      const { c, reply } = await rawLogin(port);
      assert.equal(reply.payload[0], 0);
      const sock = c.sock as tls.TLSSocket;
      sock.removeAllListeners('data');
      let received = 0;
      // Stop reading after the first 2 MiB, as a stalled application would.
      sock.on('data', (chunk: Buffer) => { received += chunk.length; if (received > 2 * 1048576 && !resumed) sock.pause(); });
      let resumed = false;
      sock.write(comQuery("SELECT REPEAT('x', 1048576) FROM test.seq_1_to_64"));
      let maxBuffered = 0;
      const rssBefore = process.memoryUsage().rss;
      for (let i = 0; i < 15; i++) {
        await new Promise((r) => setTimeout(r, 100));
        maxBuffered = Math.max(maxBuffered, proxy.stats().buffered);
      }
      const receivedWhilePaused = received;
      assert.ok(receivedWhilePaused < 8 * 1024 * 1024, `client stalled early (received ${receivedWhilePaused})`);
      // stats().buffered counts both the JS side and the native relay's own buffers (ciphertext owed to the
      // client, plaintext owed to the database): bounded, not the result size. The relay holds at most
      // ~64 KiB of ciphertext per direction, so a stalled client must show some but not much.
      assert.ok(maxBuffered < 2 * 1024 * 1024, `proxy buffered at most ${maxBuffered} bytes while the client was stalled`);
      if (plane === 'native') assert.ok(maxBuffered > 0, 'the relay reports what it holds for the stalled client');
      assert.ok(process.memoryUsage().rss - rssBefore < 48 * 1024 * 1024, 'RSS did not grow by the result size');
      resumed = true;
      sock.resume();
      const deadline = Date.now() + 20_000;
      while (received < 64 * 1048576 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      assert.ok(received > 64 * 1048576, `the whole result arrived after resuming (${received})`);
      sock.destroy();
    });
  });

  test(`[${plane}] one open and one close log line per connection, with user/bytes/outcome and no secrets or SQL`, async () => {
    const lines: any[] = [];
    const sink = new Writable({ write(chunk, _e, cb) { for (const l of chunk.toString().split('\n')) if (l) lines.push(JSON.parse(l)); cb(); } });
    const log = createLogger({ name: 'test', destination: sink, level: 'info' });
    await withProxy({ dataPlane: plane, log }, async (proxy, port) => {
      const a = await connect2(port);
      await a.query("SELECT 'secret-sql-marker'");
      await a.end();
      await assert.rejects(connect2(port, { password: 'wrong-password-marker' }));
      const { c } = await rawConnect(port);
      c.sock.write(Buffer.from([0xff, 0xff, 0xff, 0x01]));
      await c.untilClosed();
      const deadline = Date.now() + 3000;
      while (proxy.stats().open > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    });
    const opens = lines.filter((l) => l.event === 'connection_open');
    const closes = lines.filter((l) => l.event === 'connection_close');
    assert.equal(opens.length, 3);
    assert.equal(closes.length, 3);
    assert.deepEqual(closes.map((l) => l.id).sort(), opens.map((l) => l.id).sort(), 'exactly one close per open');
    const byOutcome = Object.fromEntries(closes.map((l) => [l.outcome, l]));
    assert.equal(byOutcome.ok.user, db.user);
    assert.ok(byOutcome.ok.bytesIn > 0 && byOutcome.ok.bytesOut > 0 && typeof byOutcome.ok.durationMs === 'number');
    assert.ok(byOutcome.auth_failed, 'wrong password logged as auth_failed');
    assert.ok(byOutcome.protocol_error, 'oversized frame logged as protocol_error');
    const all = JSON.stringify(lines);
    assert.ok(!all.includes('secret-sql-marker') && !all.includes('wrong-password-marker') && !all.includes(db.password));
  });

  test(`[${plane}] TLS identity hot swap: open sessions continue, new handshakes get the new certificate, a bad identity keeps the old`, async () => {
    const holder = new TlsIdentityHolder(pki);
    await withProxy({ dataPlane: plane, tls: holder }, async (_proxy, port) => {
      const before = await connect2(port);
      const next = makeTestPki();
      assert.throws(() => holder.set({ keyPem: next.keyPem, certPem: pki.certPem }), (e) => isCdbpError(e, 'CONFIG_INVALID'));
      const stillOld = await connect2(port);
      await stillOld.end();
      holder.set({ keyPem: next.keyPem, certPem: next.certPem });
      await assert.rejects(connect2(port), /certificate|self.signed|verify/i);
      const after = await connect2(port, { ssl: { ca: next.caPem } });
      const [[r1]] = await before.query<mysql2.RowDataPacket[]>('SELECT 1 AS a');
      const [[r2]] = await after.query<mysql2.RowDataPacket[]>('SELECT 2 AS a');
      assert.equal(r1!.a, 1);
      assert.equal(r2!.a, 2);
      await Promise.all([before.end(), after.end()]);
    });
  });

  test(`[${plane}] stopAccepting + drain: new clients are refused, open sessions finish, stragglers are destroyed at the deadline`, async () => {
    await withProxy({ dataPlane: plane }, async (proxy, port) => {
      const a = await connect2(port);
      const b = await connect2(port);
      await proxy.stopAccepting();
      await assert.rejects(connect2(port), /ECONNREFUSED/);
      const [[row]] = await a.query<mysql2.RowDataPacket[]>('SELECT 3 AS x');
      assert.equal(row!.x, 3);
      await a.end();
      b.on('error', () => {});
      const t0 = Date.now();
      await proxy.drain(300);
      assert.ok(Date.now() - t0 >= 250, 'waited for the straggler until the deadline');
      assert.equal(proxy.stats().open, 0);
      await assert.rejects(b.query('SELECT 1'));
    });
  });

  test(`[${plane}] TLS backend leg (verified with the CA) and unix-socket listener`, async () => {
    const sockPath = path.join(dir.path, `proxy-${plane}.sock`);
    const registry = new MetricsRegistry();
    const tlsBackend = { host: '127.0.0.1', port: db.server.port!, tls: { caPem: pki.caPem, servername: 'localhost' } };
    // The native relay speaks plaintext to the database: asked for explicitly it refuses, auto picks node.
    if (plane === 'native') {
      assert.throws(() => createMysqlProxy({
        listen: { host: '127.0.0.1', port: 0 }, backend: tlsBackend, dataPlane: 'native',
        tls: { keyPem: pki.keyPem, certPem: pki.certPem }, log: silentLogger(),
      }), (e) => isCdbpError(e, 'CONFIG_INVALID'));
    }
    await withProxy({
      dataPlane: plane === 'native' ? 'auto' : plane,
      listen: { path: sockPath },
      backend: tlsBackend,
      metrics: registry,
    }, async (proxy) => {
      assert.equal(proxy.stats().dataPlane.kind, 'node');
      if (plane === 'native') assert.match(proxy.stats().dataPlane.reason, /TLS backend/);
      const conn = await mysql2.createConnection({ socketPath: sockPath, user: db.user, password: db.password, ssl: { ca: pki.caPem } });
      const [[row]] = await conn.query<mysql2.RowDataPacket[]>("SHOW SESSION STATUS LIKE 'Ssl_cipher'");
      assert.ok(String(row!.Value).length > 0, 'the database sees a TLS connection from the proxy');
      await conn.end();
      const text = registry.render();
      assert.match(text, /cdbp_tls_handshakes_total\{protocol="mysql"\} 1/);
      assert.match(text, /cdbp_connections_total\{protocol="mysql"\} 1/);
    });
  });
}

for (const plane of ['native', 'node'] as const) test(`${plane}: commands pipelined before the login OK reach the ack gate: the tracker sees a pipelined INSERT`, async () => {
  let calls = 0;
  const gate = { holdAck() { calls++; return undefined; } };
  await db.rootQuery('CREATE TABLE IF NOT EXISTS test.pipelined (v INT)');
  await db.rootQuery('TRUNCATE test.pipelined');
  await withProxy({ ackGate: gate, dataPlane: plane }, async (_proxy, port) => {
    const { t, greeting } = await rawTls(port, pki.caPem);
    const tc = new RawClient(t);
    t.write(Buffer.concat([encodePacket(2, handshakeResponse(db.user, db.password, scrambleOf(greeting))),
      comQuery('INSERT INTO test.pipelined VALUES (1)')]));
    assert.equal((await tc.next())?.payload[0], 0x00, 'login OK');
    assert.equal((await tc.next())?.payload[0], 0x00, 'INSERT OK');
    assert.equal(calls, 1, 'the pipelined INSERT was tracked and its OK offered to the gate');
    tc.sock.write(comQuery('INSERT INTO test.pipelined VALUES (2)'));
    assert.equal((await tc.next())?.payload[0], 0x00);
    assert.equal(calls, 2, 'and the tracker is still in step');
    tc.sock.destroy();
  });
});

test('plaintext to a remote host needs allowInsecure', async () => {
  assert.throws(() => createMysqlProxy({
    listen: { host: '127.0.0.1', port: 0 }, backend: { host: '10.1.2.3', port: 3306 },
    tls: { keyPem: pki.keyPem, certPem: pki.certPem }, log: silentLogger(),
  }), (e) => isCdbpError(e, 'CONFIG_INVALID'));
  const insecure = createMysqlProxy({
    listen: { host: '127.0.0.1', port: 0 }, backend: { host: '10.1.2.3', port: 3306, allowInsecure: true },
    tls: { keyPem: pki.keyPem, certPem: pki.certPem }, log: silentLogger(),
  });
  await insecure.close();
});
