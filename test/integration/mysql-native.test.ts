/**
 * The MySQL endpoint's native data plane (proxy/native/dataplane.c) against a real MariaDB: what the C
 * relay does on its own once authentication is over (LOCAL INFILE framing and the COM_CHANGE_USER
 * scan, idle timeout, byte accounting, TLS identity swap, broken clients) and how the proxy says which
 * plane it runs. mysql-robustness / mysql-clients run their common cases on both planes; this file is
 * for what only the native plane does, with a Node-plane twin where the two must agree.
 *
 * Requires the native build (node scripts/build-native.js): every proxy here asks for
 * dataPlane 'native' explicitly, so a missing build fails instead of silently testing the Node plane.
 */
import { TlsIdentityHolder } from '../../src/crypto/tls-identity.ts';
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import os from 'node:os';
import { createHash, X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import { Readable, Writable } from 'node:stream';
import { crc32 } from 'node:zlib';
import mariadb from 'mariadb';
import mysql2 from 'mysql2/promise';
import { startPrivateMariadb, type PrivateMariadb } from '../support/mariadb.ts';
import { makeTestPki, type TestPki } from '../support/test-pki.ts';
import { createLogger, silentLogger } from '../../src/kernel/log.ts';
import { MetricsRegistry } from '../../src/kernel/metrics.ts';
import { isCdbpError } from '../../src/kernel/errors.ts';
import { createMysqlProxy, type MysqlProxy, type MysqlProxyOptions } from '../../proxy/mysql/index.ts';
import { decodeErr, encodePacket } from '../../proxy/mysql/codec.ts';
import { RawClient, comChangeUser, comQuery, handshakeResponse, rawTls, scrambleOf, sslRequest, until } from '../support/mysql-raw.ts';
import { listenMysqlProxy } from '../support/mysql-proxy.ts';

type Plane = 'native' | 'node';
const PLANES: readonly Plane[] = ['native', 'node'];
const OS_USER = os.userInfo().username;

let db: PrivateMariadb;
let pki: TestPki;

before(async () => {
  pki = makeTestPki();
  db = await startPrivateMariadb({ extraConfig: ['local-infile=1'] });
  await db.rootQuery(
    'CREATE TABLE test.infile (id INT PRIMARY KEY, b LONGBLOB);' +
    'CREATE TABLE test.infile_big (id INT PRIMARY KEY, b BLOB)');
});

after(async () => {
  await db?.stop();
});

// ------------------------------------------------------------------------------------------------
// Helpers

/** A pino logger whose JSON lines land in `lines` (synchronously: pino writes straight to the stream). */
function captureLog() {
  const lines: any[] = [];
  const sink = new Writable({ write(chunk, _e, cb) { for (const l of chunk.toString().split('\n')) if (l) lines.push(JSON.parse(l)); cb(); } });
  return { log: createLogger({ name: 'test', destination: sink, level: 'info' }), lines };
}

async function withProxy<T>(plane: Plane, extra: Partial<MysqlProxyOptions>, fn: (p: MysqlProxy, port: number) => Promise<T>): Promise<T> {
  const { proxy, port } = await listenMysqlProxy(db.server.socket, pki, { dataPlane: plane, ...extra });
  try {
    return await fn(proxy, port);
  } finally {
    await proxy.close();
  }
}

function my2(port: number, opts: Partial<mysql2.ConnectionOptions> = {}) {
  return mysql2.createConnection({
    host: '127.0.0.1', port, user: db.user, password: db.password, database: 'test',
    ssl: { ca: pki.caPem }, connectTimeout: 10_000, ...opts,
  });
}

/** Sessions of the test account the database currently holds (each proxied client is one). */
async function backendSessions(): Promise<number> {
  const rows = await db.rootQuery(`SELECT COUNT(*) AS n FROM information_schema.PROCESSLIST WHERE USER = '${db.user}'`);
  return Number(rows[0].n);
}

/** A full raw login over TLS; the returned client is in the command phase (seq restarts at 0). */
async function rawLogin(port: number) {
  const { tcp, t, greeting } = await rawTls(port, pki.caPem);
  const c = new RawClient(t);
  t.setNoDelay(true);
  t.write(encodePacket(2, handshakeResponse(db.user, db.password, scrambleOf(greeting))));
  const ok = await c.next();
  assert.equal(ok?.payload[0], 0x00, `login OK expected, got ${ok && ok.payload[0] === 0xff ? decodeErr(ok.payload).message : ok?.payload[0]}`);
  return { c, tcp, t };
}

/** Deterministic bytes (xorshift), so a failure reproduces with the same data. */
function prng(seed: number) {
  let x = seed >>> 0 || 1;
  return () => { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; return x; };
}

/** Field bytes for LOAD DATA ... FIELDS TERMINATED BY ',' ESCAPED BY '' LINES TERMINATED BY '\n': anything but ',' and '\n'. */
function fieldBytes(rand: () => number, n: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) {
    let v = rand() & 0xff;
    if (v === 0x2c || v === 0x0a) v = 0x11;
    b[i] = v;
  }
  return b;
}

// ------------------------------------------------------------------------------------------------
// Which plane runs

test('the data plane is chosen honestly: auto picks native when built, node is node, strict freshness runs on native too (its own tracker), a TLS backend leg on node', async () => {
  const { log, lines } = captureLog();
  const auto = createMysqlProxy({ listen: { host: '127.0.0.1', port: 0 }, backend: { socket: db.server.socket }, tls: { keyPem: pki.keyPem, certPem: pki.certPem }, log });
  try {
    assert.deepEqual(auto.stats().dataPlane, { kind: 'native', reason: 'available' }, 'the native build is present (CI builds it): auto must pick it');
  } finally {
    await auto.close();
  }
  assert.ok(lines.some((l) => l.event === 'data_plane' && l.dataPlane === 'native'), 'the choice is logged');

  await withProxy('native', {}, async (proxy) => assert.equal(proxy.stats().dataPlane.reason, 'configured'));
  await withProxy('node', {}, async (proxy, port) => {
    assert.deepEqual(proxy.stats().dataPlane, { kind: 'node', reason: 'configured' });
    const c = await my2(port);
    const [[row]] = await c.query<mysql2.RowDataPacket[]>("SELECT 'via-node' AS v");
    assert.equal(row!.v, 'via-node');
    await c.end();
  });

  const gate = { holdAck() { return undefined; } };
  const base = { listen: { host: '127.0.0.1', port: 0 }, backend: { socket: db.server.socket }, tls: { keyPem: pki.keyPem, certPem: pki.certPem }, log: silentLogger(), ackGate: gate };
  const gated = createMysqlProxy(base);
  try {
    assert.deepEqual(gated.stats().dataPlane, { kind: 'native', reason: 'available' }, 'an ack gate no longer forces the Node plane');
  } finally {
    await gated.close();
  }
  const tlsLeg = { ...base, backend: { host: '127.0.0.1', port: 1, tls: { caPem: pki.caPem } } };
  assert.throws(() => createMysqlProxy({ ...tlsLeg, dataPlane: 'native' }), (e) => isCdbpError(e, 'CONFIG_INVALID') && /TLS backend leg/.test((e as Error).message));
  const viaTls = createMysqlProxy(tlsLeg);
  try {
    assert.equal(viaTls.stats().dataPlane.kind, 'node');
    assert.match(viaTls.stats().dataPlane.reason, /TLS backend leg/);
  } finally {
    await viaTls.close();
  }
});

test('native: several worker threads serve concurrent sessions', async () => {
  await withProxy('native', { nativeWorkers: 3 }, async (proxy, port) => {
    const conns = await Promise.all(Array.from({ length: 9 }, () => my2(port)));
    const got = await Promise.all(conns.map(async (c, i) => {
      const [[row]] = await c.query<mysql2.RowDataPacket[]>('SELECT ? AS i, LENGTH(REPEAT(?, 100000)) AS n', [i, 'z']);
      return [row!.i, row!.n];
    }));
    assert.deepEqual(got, conns.map((_, i) => [i, 100000]));
    await Promise.all(conns.map((c) => c.end()));
    await until(() => proxy.stats().open === 0, 5000, 'sessions to close');
  });
});

// ------------------------------------------------------------------------------------------------
// LOCAL INFILE through the relay's scanner

for (const plane of PLANES) {
  test(`[${plane}] LOAD DATA LOCAL INFILE: 700 packets (seq ids wrap twice), each starting with 0x11 + the OS account name, arrive as data; change-user works after it`, async () => {
    await db.rootQuery('TRUNCATE TABLE test.infile');
    const rand = prng(plane === 'native' ? 0x5eed : 0xbeef);
    // Each chunk is one line and mysql2 sends each chunk as one packet (seq 2, 3, ... 255, 0, 1, ...), so
    // every packet starts with what would be a COM_CHANGE_USER to the forbidden account if it were read
    // as a command; the ones numbered 0 are where a scanner that forgot the upload would refuse (or, worse,
    // lose step). Sizes vary up to 40 KiB so packet headers fall anywhere in the relay's 16 KiB reads.
    const rows: { id: number; b: Buffer }[] = [];
    const chunks: Buffer[] = [];
    for (let id = 0; id < 700; id++) {
      const size = id % 50 === 7 ? 40_000 : 1 + (rand() % 600);
      const b = Buffer.concat([Buffer.from([0x11]), Buffer.from(`${OS_USER}\0`), Buffer.from([0, 0x11]), fieldBytes(rand, size)]);
      rows.push({ id, b });
      chunks.push(Buffer.concat([b, Buffer.from(`,${id}\n`)]));
    }
    await withProxy(plane, {}, async (proxy, port) => {
      const conn = await my2(port);
      // Watch what mysql2 puts on the wire (header + payload per write) to be sure of the framing above.
      const core = (conn as unknown as { connection: { write(b: Buffer): unknown } }).connection;
      const sent: { seq: number; first: number }[] = [];
      const write = core.write.bind(core);
      core.write = (b: Buffer) => { if (b.length > 4) sent.push({ seq: b[3]!, first: b[4]! }); return write(b); };
      try {
        const [res] = await conn.query<mysql2.ResultSetHeader>({
          sql: "LOAD DATA LOCAL INFILE 'wrap.dat' INTO TABLE test.infile FIELDS TERMINATED BY ',' ESCAPED BY '' LINES TERMINATED BY '\\n' (b, id)",
          infileStreamFactory: () => Readable.from(chunks),
        });
        assert.equal(res.affectedRows, 700);
        const data = sent.filter((p) => p.first === 0x11);
        assert.equal(data.length, 700, 'one packet per line, each starting with 0x11');
        assert.equal(data.filter((p) => p.seq === 0).length, 2, 'two of them numbered 0 (the sequence id wrapped twice)');
        const [got] = await conn.query<mysql2.RowDataPacket[]>('SELECT id, MD5(b) AS h, LENGTH(b) AS n FROM test.infile ORDER BY id');
        assert.equal(got.length, 700);
        for (const r of got) {
          const want = rows[r.id]!.b;
          assert.equal(Number(r.n), want.length, `row ${r.id} length`);
          assert.equal(r.h, createHash('md5').update(want).digest('hex'), `row ${r.id} bytes`);
        }
        // The scanner is back in step: an ordinary change-user works on this connection...
        await conn.changeUser({ user: db.user, password: db.password });
        const [[who]] = await conn.query<mysql2.RowDataPacket[]>('SELECT CURRENT_USER() AS u, 1 + 1 AS two');
        assert.match(who!.u, new RegExp(`^${db.user}@`));
        assert.equal(who!.two, 2);
        // ...and a forbidden one after an upload is still refused.
        await assert.rejects(conn.changeUser({ user: OS_USER, password: '' }), (e: any) => e.errno === 1045 && /COM_CHANGE_USER/.test(e.message));
      } finally {
        conn.destroy();
      }
      await until(() => proxy.stats().open === 0, 6000, 'the session to close');
    });
  });
}

test('[native] mariadb connector: a 17 MiB LOAD DATA LOCAL (a full 0xFFFFFF packet and its continuation) arrives intact; a forbidden change-user afterwards is refused', async () => {
  await db.rootQuery('TRUNCATE TABLE test.infile_big');
  const rand = prng(42);
  const lines: Buffer[] = [];
  let want = 0;
  let size = 0;
  for (let id = 0; size < 17 * 1024 * 1024; id++) {
    const b = fieldBytes(rand, 900 + (rand() % 200));
    want += crc32(b);
    lines.push(Buffer.concat([b, Buffer.from(`,${id}\n`)]));
    size += b.length + 8;
  }
  const file = Buffer.concat(lines);
  await withProxy('native', {}, async (_proxy, port) => {
    const conn = await mariadb.createConnection({
      host: '127.0.0.1', port, user: db.user, password: db.password, database: 'test', ssl: { ca: pki.caPem },
      permitLocalInfile: true,
      // 64 KiB reads: the connector gathers them into 16 MiB packets.
      infileStreamFactory: () => Readable.from((function* () { for (let o = 0; o < file.length; o += 65536) yield file.subarray(o, o + 65536); })()),
    });
    conn.on('error', () => {});
    try {
      const res = await conn.query("LOAD DATA LOCAL INFILE 'big.dat' INTO TABLE infile_big FIELDS TERMINATED BY ',' ESCAPED BY '' LINES TERMINATED BY '\\n' (b, id)");
      assert.equal(res.affectedRows, lines.length);
      const [row] = await conn.query('SELECT COUNT(*) AS n, SUM(CRC32(b)) AS s FROM infile_big');
      assert.equal(Number(row.n), lines.length);
      assert.equal(Number(row.s), want, 'every byte arrived');
      await assert.rejects(conn.changeUser({ user: OS_USER, password: '' }), (e: any) => e.errno === 1045 && /COM_CHANGE_USER/.test(e.message));
      await assert.rejects(conn.query('SELECT 1'), 'the session is closed, never switched');
    } finally {
      await conn.destroy();
    }
  });
});

// ------------------------------------------------------------------------------------------------
// COM_CHANGE_USER to the forbidden account in the direct relay

test('[native] COM_CHANGE_USER to the OS account: ERR 1045/28000, the session closes, its close line says forbidden_user, a parallel client is unaffected', async () => {
  const { log, lines } = captureLog();
  await withProxy('native', { log }, async (proxy, port) => {
    const other = await my2(port);
    const victim = await my2(port);
    victim.on('error', () => {});
    const [[vid]] = await victim.query<mysql2.RowDataPacket[]>('SELECT CONNECTION_ID() AS id');
    const slow = other.query<mysql2.RowDataPacket[]>("SELECT SLEEP(0.3) AS s, 'still-here' AS v");
    await assert.rejects(victim.changeUser({ user: OS_USER, password: '' }),
      (e: any) => e.errno === 1045 && e.sqlState === '28000' && /COM_CHANGE_USER/.test(e.message) && /OS account/.test(e.message));
    await assert.rejects(victim.query('SELECT CURRENT_USER()'), 'the refused session is closed');
    const [[s]] = await slow;
    assert.equal(s!.v, 'still-here', 'the parallel query finished');
    const [[again]] = await other.query<mysql2.RowDataPacket[]>('SELECT CURRENT_USER() AS u');
    assert.match(again!.u, new RegExp(`^${db.user}@`));
    await until(() => proxy.stats().open === 1, 6000, 'the refused session to close');
    await until(() => lines.some((l) => l.event === 'connection_close' && l.backendId === vid!.id), 6000, 'the close line');
    const close = lines.find((l) => l.event === 'connection_close' && l.backendId === vid!.id);
    assert.equal(close.outcome, 'forbidden_user');
    assert.match(close.error, /COM_CHANGE_USER/);
    assert.ok(close.bytesIn > 0 && close.bytesOut > 0, 'the close line carries the relay\'s bytes');
    // The database never ran the change-user: its session for the victim ends instead of being switched.
    const victimSession = async () => Number((await db.rootQuery(`SELECT COUNT(*) AS n FROM information_schema.PROCESSLIST WHERE ID = ${Number(vid!.id)}`))[0].n);
    const deadline = Date.now() + 5000;
    while ((await victimSession()) > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.equal(await victimSession(), 0);
    await other.end();
  });
});

test('[native] a forbidden change-user arriving one byte per TLS record, pipelined behind a query, is refused after the query is answered', async () => {
  await withProxy('native', {}, async (proxy, port) => {
    const { c, t } = await rawLogin(port);
    t.write(comQuery("SELECT 'before-refusal'"));
    const cu = comChangeUser(OS_USER);
    for (let i = 0; i < cu.length; i++) {
      t.write(cu.subarray(i, i + 1));
      await new Promise((r) => setImmediate(r));
    }
    const packets: { seq: number; payload: Buffer }[] = [];
    for (let p = await c.next(); p; p = await c.next()) packets.push(p);
    assert.ok(packets.some((p) => p.payload.includes(Buffer.from('before-refusal'))), 'the query before it was answered');
    const err = packets.at(-1)!;
    assert.equal(err.payload[0], 0xff, 'the last packet is an ERR');
    assert.equal(err.seq, 1);
    assert.equal(decodeErr(err.payload).errno, 1045);
    assert.match(decodeErr(err.payload).message, /COM_CHANGE_USER/);
    assert.ok(c.closed, 'the session is closed');
    await until(() => proxy.stats().open === 0, 6000, 'the session to close');
  });
});

for (const plane of PLANES) {
  test(`[${plane}] a client cannot desynchronise the scanner with a fake upload packet to slip a change-user past it`, async () => {
    await withProxy(plane, {}, async (proxy, port) => {
      const { c, t } = await rawLogin(port);
      // After a COM_QUERY a non-zero seq id means LOCAL INFILE data to the scanner; the server, which sent
      // no 0xFB request, must reject it as out of order and never read the change-user behind it.
      t.write(Buffer.concat([comQuery('DO 1'), encodePacket(1, Buffer.from('not-a-file')), comChangeUser(OS_USER), comQuery('SELECT CURRENT_USER()')]));
      const packets: Buffer[] = [];
      for (let p = await c.next(); p; p = await c.next()) packets.push(p.payload);
      assert.ok(c.closed, 'the connection ends');
      assert.equal(packets[0]?.[0], 0x00, 'DO 1 answered');
      assert.ok(!packets.some((p) => p.includes(Buffer.from(`${OS_USER}@`))), 'never switched to the OS account');
      assert.ok(packets.slice(1).every((p) => p[0] === 0xff), `only errors after the fake upload: ${packets.map((p) => p[0]).join(',')}`);
      await until(() => proxy.stats().open === 0, 6000, 'the session to close');
    });
  });
}

// ------------------------------------------------------------------------------------------------
// Idle timeout

test('[native] idle timeout is enforced by the relay: an idle client is cut after ~1.5 s, an active one is not', async () => {
  const { log, lines } = captureLog();
  await withProxy('native', { log, limits: { idleTimeoutMs: 1500 } }, async (proxy, port) => {
    const active = await my2(port);
    const idleDriver = await my2(port);
    idleDriver.on('error', () => {});
    const { c: idle } = await rawLogin(port);
    const idleSince = Date.now();
    for (let i = 0; i < 12; i++) {
      await new Promise((r) => setTimeout(r, 300));
      const [[row]] = await active.query<mysql2.RowDataPacket[]>('SELECT ? AS i', [i]);
      assert.equal(row!.i, i, 'the active client keeps working');
      if (Date.now() - idleSince < 1200) assert.equal(idle.closed, false, 'not cut before the timeout');
    }
    assert.ok(idle.closed, 'the idle raw client was cut');
    const after = idle.closedAt - idleSince;
    assert.ok(after >= 1400 && after <= 3000, `cut after ${after} ms`);
    await assert.rejects(idleDriver.query('SELECT 1'), 'the idle mysql2 connection was cut too');
    const [[row]] = await active.query<mysql2.RowDataPacket[]>('SELECT 42 AS x');
    assert.equal(row!.x, 42);
    await until(() => proxy.stats().open === 1, 6000, 'idle sessions to close');
    await until(() => lines.filter((l) => l.event === 'connection_close' && l.outcome === 'idle_timeout').length === 2, 6000, 'two idle_timeout close lines');
    await active.end();
  });
});

for (const plane of PLANES) {
  // Idle means no traffic in either direction: a result streaming for longer than the idle limit keeps the
  // session alive (the native relay once counted only client -> database bytes and cut it after 8 of 15 rows).
  test(`[${plane}] a client waiting on a result that streams for longer than the idle timeout is not idle`, async () => {
    await withProxy(plane, { limits: { idleTimeoutMs: 1500 } }, async (_proxy, port) => {
      const { c, t } = await rawLogin(port);
      // 15 rows, one every 200 ms (each over MariaDB's 16 KiB net buffer, so each is sent as it is made):
      // the database talks for 3 s while the client, reading everything, sends nothing.
      const t0 = Date.now();
      t.write(comQuery("SELECT SLEEP(0.2) AS z, REPEAT('s', 20000) AS pad FROM test.seq_1_to_15"));
      const rows: number[] = [];
      let eofs = 0; // no CLIENT_DEPRECATE_EOF: an EOF after the column definitions, one after the rows
      for (let p = await c.next(); p; p = await c.next()) {
        if (p.payload.length > 20000) rows.push(Date.now() - t0);
        if (p.payload[0] === 0xfe && p.payload.length < 9 && ++eofs === 2) break;
        if (p.payload[0] === 0xff) break;
      }
      assert.ok(rows.length > 0 && rows[0]! < 1000, `rows stream as they are produced (first after ${rows[0]} ms)`);
      assert.equal(rows.length, 15, `all rows arrived (${rows.length}, last after ${rows.at(-1)} ms; closed: ${c.closed})`);
      assert.equal(eofs, 2, 'and the result ended normally');
      t.write(comQuery("SELECT 'still-open'"));
      let stillOpen = false;
      for (let p = await c.next(); p && !stillOpen; p = await c.next()) stillOpen = p.payload.includes(Buffer.from('still-open'));
      assert.ok(stillOpen, 'the session is still open afterwards');
      t.destroy();
    });
  });
}

// ------------------------------------------------------------------------------------------------
// Byte accounting

test('[native] bytes relayed by C are accounted once: close line, stats() (live and after close) and metrics', async () => {
  const { log, lines } = captureLog();
  const metrics = new MetricsRegistry();
  await withProxy('native', { log, metrics }, async (proxy, port) => {
    const conn = await my2(port);
    const before = proxy.stats();
    const [[row]] = await conn.query<mysql2.RowDataPacket[]>("SELECT REPEAT('x', 1000000) AS s, LENGTH(?) AS n", ['y'.repeat(500_000)]);
    assert.equal(row!.s.length, 1_000_000);
    assert.equal(row!.n, 500_000);
    const live = proxy.stats();
    assert.ok(live.bytesOut - before.bytesOut >= 1_000_000, `live bytesOut grew by ${live.bytesOut - before.bytesOut}`);
    assert.ok(live.bytesIn - before.bytesIn >= 500_000, `live bytesIn grew by ${live.bytesIn - before.bytesIn}`);
    await conn.end();
    await until(() => lines.some((l) => l.event === 'connection_close'), 6000, 'the close line');
    const close = lines.find((l) => l.event === 'connection_close');
    assert.equal(close.outcome, 'ok');
    // At least what was moved; at most that plus protocol overhead (double counting would be ~2x).
    assert.ok(close.bytesOut >= 1_000_000 && close.bytesOut < 1_100_000, `close bytesOut ${close.bytesOut}`);
    assert.ok(close.bytesIn >= 500_000 && close.bytesIn < 550_000, `close bytesIn ${close.bytesIn}`);
    const s = proxy.stats();
    assert.equal(s.open, 0);
    assert.equal(s.bytesOut, close.bytesOut, 'stats after close: the same total, counted once');
    assert.equal(s.buffered, 0, 'nothing held inside the proxy once every session is closed');
    assert.equal(s.bytesIn, close.bytesIn);
    const text = metrics.render();
    assert.match(text, new RegExp(`cdbp_bytes_total\\{direction="out",protocol="mysql"\\} ${close.bytesOut}\\n`));
    assert.match(text, new RegExp(`cdbp_bytes_total\\{direction="in",protocol="mysql"\\} ${close.bytesIn}\\n`));
  });
});

// ------------------------------------------------------------------------------------------------
// TLS identity

async function servedFingerprint(port: number): Promise<string> {
  const { t } = await rawTls(port, null);
  const fp = t.getPeerCertificate().fingerprint256;
  t.destroy();
  return fp;
}

test('[native] TLS identity hot swap: new handshakes get the new certificate, an open session keeps working, a bad pair throws and keeps the old', async () => {
  const holder = new TlsIdentityHolder(pki);
  await withProxy('native', { tls: holder }, async (_proxy, port) => {
    const oldFp = new X509Certificate(pki.certPem).fingerprint256;
    assert.equal(await servedFingerprint(port), oldFp);
    const open = await my2(port);
    const next = makeTestPki();
    assert.throws(() => holder.set({ keyPem: next.keyPem, certPem: pki.certPem }), (e) => isCdbpError(e, 'CONFIG_INVALID'));
    assert.throws(() => holder.set({ keyPem: 'not a key', certPem: 'not a cert' }), (e) => isCdbpError(e, 'CONFIG_INVALID'));
    assert.equal(await servedFingerprint(port), oldFp, 'a rejected identity changes nothing');
    holder.set({ keyPem: next.keyPem, certPem: next.certPem });
    assert.equal(await servedFingerprint(port), new X509Certificate(next.certPem).fingerprint256, 'new handshakes get the new certificate');
    await assert.rejects(my2(port), /certificate|self.signed|verify/i);
    const fresh = await my2(port, { ssl: { ca: next.caPem } });
    const [[a]] = await open.query<mysql2.RowDataPacket[]>("SELECT LENGTH(REPEAT('a', 200000)) AS n");
    const [[b]] = await fresh.query<mysql2.RowDataPacket[]>('SELECT 2 AS n');
    assert.equal(a!.n, 200000, 'the session opened before the swap keeps working');
    assert.equal(b!.n, 2);
    await Promise.all([open.end(), fresh.end()]);
  });
});

// ------------------------------------------------------------------------------------------------
// Broken clients

test('[native] clients that vanish or send garbage at every stage after TLS leave the proxy healthy', async () => {
  const { log, lines } = captureLog();
  const metrics = new MetricsRegistry();
  const handshakes = () => Number(/cdbp_tls_handshakes_total\{protocol="mysql"\} (\d+)/.exec(metrics.render())?.[1] ?? 0);
  /** TLS as far as the proxy is concerned: the client's secureConnect can come before the server read its Finished. */
  async function tlsDone(port: number) {
    const before = handshakes();
    const r = await rawTls(port, pki.caPem);
    await until(() => handshakes() > before, 5000, 'the proxy to complete the handshake');
    return r;
  }
  await withProxy('native', { log, metrics }, async (proxy, port) => {
    const baseline = await backendSessions();
    const cases: Record<string, () => Promise<void>> = {
      'partial ClientHello, then FIN': async () => {
        const tcp = net.connect(port, '127.0.0.1');
        tcp.on('error', () => {});
        await once(tcp, 'connect');
        await new Promise((r) => tcp.once('data', r));
        tcp.end(Buffer.concat([encodePacket(1, sslRequest()), Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01])]));
        await once(tcp, 'close');
      },
      'TLS done, then reset before the HandshakeResponse': async () => {
        const { tcp } = await tlsDone(port);
        tcp.resetAndDestroy();
      },
      'TLS done, half a HandshakeResponse, then FIN': async () => {
        const { t, greeting } = await tlsDone(port);
        const resp = encodePacket(2, handshakeResponse(db.user, db.password, scrambleOf(greeting)));
        t.end(resp.subarray(0, 20));
        await once(t, 'close');
      },
      'TLS done, garbage plaintext inside TLS': async () => {
        const { t } = await tlsDone(port);
        const c = new RawClient(t);
        t.write(Buffer.from(Array.from({ length: 300 }, (_, i) => (i * 97 + 13) & 0xff)));
        assert.ok(await c.untilClosed(), 'closed after garbage inside TLS');
      },
      'TLS done, non-TLS bytes on the wire': async () => {
        const { tcp, t } = await tlsDone(port);
        const c = new RawClient(t);
        tcp.write('GET / HTTP/1.1\r\n\r\n'); // under the TLS layer: not a TLS record
        assert.ok(await c.untilClosed(), 'closed after a bad record');
      },
      'logged in, non-TLS bytes on the wire in the relay': async () => {
        const { c, tcp } = await rawLogin(port);
        tcp.write(Buffer.alloc(64, 0x42));
        assert.ok(await c.untilClosed(), 'closed after a bad record in the direct phase');
      },
      'logged in, reset in the middle of a 16 MiB result': async () => {
        const { t, tcp } = await rawLogin(port);
        let got = 0;
        t.on('data', (b: Buffer) => { got += b.length; });
        t.write(comQuery("SELECT REPEAT('r', 1048576) FROM test.seq_1_to_16"));
        await until(() => got > 1_000_000, 5000, 'the result to start');
        tcp.resetAndDestroy();
      },
    };
    for (const [name, run] of Object.entries(cases)) {
      await run();
      const good = await my2(port);
      const [[row]] = await good.query<mysql2.RowDataPacket[]>('SELECT ? AS v', [name]);
      assert.equal(row!.v, name, `a normal client works after: ${name}`);
      await good.end();
      await until(() => proxy.stats().open === 0, 8000, `sessions to close after: ${name}`);
    }
    const deadline = Date.now() + 8000;
    while ((await backendSessions()) > baseline && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    assert.equal(await backendSessions(), baseline, 'no database session leaked');
    await until(() => lines.filter((l) => l.event === 'connection_close').length === lines.filter((l) => l.event === 'connection_open').length,
      6000, 'one close line per open');
    const outcomes = lines.filter((l) => l.event === 'connection_close').map((l) => l.outcome);
    for (const outcome of ['tls_failed', 'protocol_error', 'client_error']) {
      assert.ok(outcomes.includes(outcome), `broken handshakes, auth-phase garbage and relay-phase garbage are told apart: ${outcomes.join(',')}`);
    }
  });
});
