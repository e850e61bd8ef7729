import { test, before, after } from 'node:test';
import { TlsIdentityHolder } from '../../src/crypto/tls-identity.ts';
import assert from 'node:assert/strict';
import pg from 'pg';
import net from 'node:net';
import tls from 'node:tls';
import { serialize } from 'pg-protocol';
import { encodeCancelRequest, encodeGssEncRequest, encodeSslRequest } from '../../proxy/pg/codec.ts';
import { makeTestPki } from '../support/test-pki.ts';
import { hasMessage, psql, RawPg, spawnPsql, startProxyUnderTest, type ProxyUnderTest } from './pg-support.ts';

let t: ProxyUnderTest;
before(async () => {
  t = await startProxyUnderTest();
});
after(async () => {
  await t?.stop();
});

const conninfo = (user: string, extra = '') =>
  `host=localhost port=${t.port} user=${user} dbname=test sslmode=verify-full sslrootcert=${t.files.caFile} ${extra}`;

function pgClient(extra: Partial<pg.ClientConfig> & { sslnegotiation?: string } = {}): pg.Client {
  return new pg.Client({
    host: 'localhost', port: t.port, user: t.db.accounts.scram.user, password: t.db.accounts.scram.password,
    database: 'test', ssl: { ca: t.pki.caPem }, ...extra,
  } as pg.ClientConfig);
}

test('psql with sslmode=verify-full authenticates through the proxy with scram, md5, password and trust', async () => {
  const a = t.db.accounts;
  for (const [user, password] of [[a.scram.user, a.scram.password], [a.md5.user, a.md5.password], [a.password.user, a.password.password], [a.trust.user, '']] as const) {
    const r = await psql(conninfo(user), ['-Atc', "SELECT current_user || ' ' || current_database()"], { PGPASSWORD: password });
    assert.equal(r.stderr, '', `${user}: ${r.stderr}`);
    assert.equal(r.stdout.trim(), `${user} test`);
  }
  // the backend really used those methods (not trust for everyone)
  const hba = await t.db.query("SELECT user_name[1] AS u, auth_method FROM pg_hba_file_rules WHERE type = 'local' ORDER BY line_number");
  assert.deepEqual(hba.rows.slice(1, 4).map((r) => r.auth_method), ['trust', 'md5', 'password']);
});

test('node pg connects with SSLRequest negotiation and with direct TLS (ALPN postgresql)', async () => {
  const viaRequest = pgClient();
  await viaRequest.connect();
  assert.equal((await viaRequest.query('SELECT 40 + 2 AS x')).rows[0].x, 42);
  await viaRequest.end();

  const before = t.logs.length;
  const direct = pgClient({ sslnegotiation: 'direct' });
  await direct.connect();
  assert.equal((await direct.query("SELECT 'direct' AS x")).rows[0].x, 'direct');
  await direct.end();
  const opened = t.logs.slice(before).map((l) => JSON.parse(l)).filter((l) => l.event === 'pg.authenticated');
  assert.equal(opened.at(-1)?.tls, 'direct');
});

test('a wrong password gets the backend error unchanged (28P01) and counts as an auth failure', async () => {
  const failuresBefore = t.metrics.render().match(/cdbp_auth_failures_total\{protocol="pg"\} (\d+)/)?.[1] ?? '0';
  const r = await psql(conninfo(t.db.accounts.scram.user), ['-Atc', 'SELECT 1'], { PGPASSWORD: 'wrong-password' });
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /password authentication failed for user "app"/);
  const c = pgClient({ password: 'wrong' });
  await assert.rejects(c.connect(), (e: any) => e.code === '28P01' && e.severity === 'FATAL');
  const md5 = await psql(conninfo(t.db.accounts.md5.user), ['-Atc', 'SELECT 1'], { PGPASSWORD: 'nope' });
  assert.match(md5.stderr, /password authentication failed for user "app_md5"/);
  const failuresAfter = t.metrics.render().match(/cdbp_auth_failures_total\{protocol="pg"\} (\d+)/)?.[1];
  assert.equal(Number(failuresAfter), Number(failuresBefore) + 3);
});

test('a plaintext StartupMessage gets a FATAL 28000 ErrorResponse saying TLS is required, then the connection closes', async () => {
  const r = await psql(`host=127.0.0.1 port=${t.port} user=app dbname=test sslmode=disable`, ['-Atc', 'SELECT 1']);
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /TLS is required/);

  const raw = await RawPg.plain(t.port);
  raw.write(serialize.startup({ user: 'app', database: 'test' }));
  await raw.until(() => raw.closed);
  assert.equal(raw.messages.length, 1);
  const [e] = raw.messages;
  assert.equal(e.name, 'error');
  assert.equal(e.severity, 'FATAL');
  assert.equal(e.code, '28000');
  assert.match(e.message, /TLS is required/);
  assert.ok(raw.closed);
});

test('GSSENCRequest is answered N, after which SSLRequest and a full session work', async () => {
  const raw = await RawPg.plain(t.port, false);
  raw.write(encodeGssEncRequest());
  await raw.until(() => raw.bytes.length > 0);
  assert.equal(Buffer.concat(raw.bytes).toString(), 'N');
  raw.socket.removeAllListeners('data');
  raw.write(encodeSslRequest());
  const answer = await new Promise<Buffer>((r) => raw.socket.once('data', r));
  assert.equal(answer.toString(), 'S');
  const tls = await import('node:tls');
  const secure = tls.connect({ socket: raw.socket, ca: t.pki.caPem, servername: 'localhost' });
  await new Promise((r) => secure.once('secureConnect', r));
  const s = new RawPg(secure);
  s.write(serialize.startup({ user: t.db.accounts.trust.user, database: 'test' }));
  await s.until(() => hasMessage(s, 'readyForQuery'));
  assert.ok(hasMessage(s, 'authenticationOk'));
  s.end();
});

test('direct TLS requires ALPN postgresql; with it a hand-written startup reaches ReadyForQuery', async () => {
  const ok = await RawPg.direct(t.port, t.pki.caPem, ['postgresql']);
  assert.equal(ok.alpn, 'postgresql');
  ok.raw!.write(serialize.startup({ user: t.db.accounts.trust.user, database: 'test' }));
  await ok.raw!.until(() => hasMessage(ok.raw!, 'readyForQuery'));
  const keyData = ok.raw!.messages.find((m) => m.name === 'backendKeyData');
  const backendPids = (await t.db.query('SELECT pid FROM pg_stat_activity')).rows.map((r) => r.pid);
  assert.ok(!backendPids.includes(keyData.processID), 'the client sees the proxy\'s key data, not the backend pid');
  ok.raw!.end();

  const none = await RawPg.direct(t.port, t.pki.caPem, undefined);
  assert.ok(none.raw, 'TLS completes without ALPN');
  await none.raw!.until(() => none.raw!.closed);
  assert.match(none.raw!.messages[0]?.message ?? '', /ALPN protocol "postgresql"/);

  const other = await RawPg.direct(t.port, t.pki.caPem, ['http/1.1']);
  if (other.raw) {
    await other.raw.until(() => other.raw!.closed);
    assert.ok(!hasMessage(other.raw, 'readyForQuery'));
  } else {
    assert.match(other.error!.message, /alpn|application protocol/i);
  }
});

/** Sends `first` in one write on a fresh socket (and FIN if `fin`); returns the socket and what it reads before TLS. */
async function pipelinedAfterSslRequest(first: Buffer, fin: boolean): Promise<{ sock: net.Socket; firstByte: Promise<Buffer | null>; closed: Promise<void> }> {
  const sock = net.connect(t.port, '127.0.0.1');
  await new Promise((r, j) => { sock.once('connect', r); sock.once('error', j); });
  sock.on('error', () => undefined);
  const firstByte = new Promise<Buffer | null>((resolve) => {
    sock.once('data', (d: Buffer) => { sock.pause(); resolve(d); });
    sock.once('close', () => resolve(null));
  });
  const closed = new Promise<void>((r) => sock.once('close', () => r()));
  if (fin) sock.end(first);
  else sock.write(first);
  return { sock, firstByte, closed };
}

test('bytes pipelined after SSLRequest: S first, then the refusal inside TLS (PostgreSQL order; issue 21 item 2)', async () => {
  const refusedBefore = t.metrics.render();
  for (const early of [serialize.end(), serialize.startup({ user: 'app' }), Buffer.from([0x40, 0, 0, 0, 9])]) {
    const { sock, firstByte } = await pipelinedAfterSslRequest(Buffer.concat([encodeSslRequest(), early]), false);
    const answer = await firstByte;
    assert.equal(answer?.toString('latin1'), 'S', `the first byte answers the SSLRequest (early ${early.toString('hex')})`);
    const secure = tls.connect({ socket: sock, ca: t.pki.caPem, servername: 'localhost' });
    await new Promise((r, j) => { secure.once('secureConnect', r); secure.once('error', j); });
    const raw = new RawPg(secure);
    await raw.until(() => raw.closed);
    assert.equal(raw.messages[0]?.name, 'error');
    assert.equal(raw.messages[0]?.code, '08P01');
    assert.match(raw.messages[0]?.message, /unencrypted data after SSL request/);
  }
  assert.doesNotMatch(t.logs.join(''), /1476395008/);
  assert.ok(refusedBefore.length > 0);
});

test('SSLRequest + Terminate + FIN (a client ending right after connecting) gets S and a close, never a plaintext error', async () => {
  const { firstByte, closed } = await pipelinedAfterSslRequest(Buffer.concat([encodeSslRequest(), serialize.end()]), true);
  const answer = await firstByte;
  assert.equal(answer?.toString('latin1'), 'S');
  await closed;
});

test('node pg calling end() right after connect(): its Terminate goes out before the SSLRequest and the proxy closes without a word, like PostgreSQL', async () => {
  // pg queues the Terminate on the socket before it connects, so the wire carries X then SSLRequest.
  // PostgreSQL reads X as an invalid startup length, logs it and closes silently (pg's promises then
  // never settle, against PostgreSQL too). The proxy used to answer a plaintext FATAL about a 1.4 GB packet.
  const logStart = t.logs.length;
  const sockets: net.Socket[] = [];
  for (let i = 0; i < 3; i++) {
    const c = pgClient();
    c.on('error', () => undefined);
    c.connect().catch(() => undefined);
    void c.end().catch(() => undefined);
    sockets.push((c as any).connection.stream as net.Socket);
  }
  const received: Buffer[] = [];
  for (const s of sockets) s.on('data', (d: Buffer) => received.push(d));
  await Promise.all(sockets.map((s) => new Promise<void>((r) => (s.destroyed ? r() : s.once('close', () => r())))));
  assert.equal(Buffer.concat(received).length, 0, 'nothing was sent back');
  const logs = t.logs.slice(logStart).join('');
  assert.doesNotMatch(logs, /exceeds the limit|1476395008/);
  assert.equal(logs.match(/client terminated before startup/g)?.length, 3);
  // The same bytes by hand: closed, nothing received.
  const { firstByte } = await pipelinedAfterSslRequest(Buffer.concat([serialize.end(), encodeSslRequest()]), false);
  assert.equal(await firstByte, null);
});

test('psql interrupted during pg_sleep(60) cancels through the proxy (plaintext CancelRequest) and returns promptly', async () => {
  const child = spawnPsql(conninfo(t.db.accounts.scram.user), ['-c', 'SELECT pg_sleep(60)'], { PGPASSWORD: t.db.accounts.scram.password });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  await waitForActiveQuery('pg_sleep(60)');
  const cancelsBefore = cancels('forwarded');
  child.kill('SIGINT');
  const code = await Promise.race([exited, new Promise<'hung'>((r) => setTimeout(() => r('hung'), 15_000))]);
  if (code === 'hung') child.kill('SIGKILL');
  assert.notEqual(code, 'hung', 'psql returned after the cancel');
  assert.match(stderr, /canceling statement due to user request/);
  assert.equal(cancels('forwarded'), cancelsBefore + 1);
});

test('a CancelRequest over TLS with the session key cancels; an unknown key is dropped silently', async () => {
  const c = pgClient();
  await c.connect();
  const { processID, secretKey } = c as unknown as { processID: number; secretKey: number };
  const sleeping = c.query('SELECT pg_sleep(60)').then(() => 'finished', (e) => e.code);
  await waitForActiveQuery('pg_sleep(60)');

  const unknownBefore = cancels('unknown_key');
  const bogus = await RawPg.overTls(t.port, t.pki.caPem);
  bogus.write(encodeCancelRequest(processID, (secretKey + 1) >>> 0));
  await bogus.until(() => bogus.closed);
  assert.equal(bogus.bytes.length, 0, 'nothing is said to an unknown key');
  assert.equal(cancels('unknown_key'), unknownBefore + 1);
  assert.equal((await t.db.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)' AND state = 'active'")).rows[0].n, 1, 'still running');

  const real = await RawPg.overTls(t.port, t.pki.caPem);
  real.write(encodeCancelRequest(processID, secretKey));
  assert.equal(await sleeping, '57014');
  await c.end();
});

test('garbage and a 1 GB length field are refused without disturbing a concurrent session', async () => {
  const c = pgClient();
  await c.connect();
  await c.query('BEGIN');
  const garbage = await RawPg.plain(t.port);
  garbage.write(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
  const huge = await RawPg.plain(t.port);
  const len = Buffer.alloc(4);
  len.writeUInt32BE(1 << 30, 0);
  huge.write(len);
  const hugeInTls = await RawPg.overTls(t.port, t.pki.caPem);
  hugeInTls.write(len);
  const hugePassword = await RawPg.overTls(t.port, t.pki.caPem);
  hugePassword.write(serialize.startup({ user: t.db.accounts.scram.user, database: 'test' }));
  await hugePassword.until(() => hasMessage(hugePassword, 'authenticationSASL'));
  hugePassword.write(Buffer.from([0x70, 0x40, 0, 0, 0]));
  for (const r of [garbage, huge, hugeInTls, hugePassword]) await r.until(() => r.closed);
  assert.equal(garbage.messages[0]?.code, '08P01');
  assert.match(huge.messages[0]?.message, /startup packet of 1073741824 bytes exceeds the limit/);
  assert.equal(hugeInTls.messages[0]?.code, '08P01');
  assert.match(hugePassword.messages.at(-1)?.message, /authentication message of 1073741825 bytes exceeds the limit/);
  // the concurrent session did not notice
  assert.equal((await c.query('SELECT 7 AS x')).rows[0].x, 7);
  await c.query('COMMIT');
  await c.end();
  // "GET " read as a length is 1.2 GB: the HTTP request is refused by the same cap
  assert.ok(t.metrics.render().includes('cdbp_connections_refused_total{protocol="pg",reason="frame_too_large"} 4'));
});

test('when maxConnections sessions are in use the next client gets 53300 before any backend is dialed', async () => {
  const small = await t.extraProxy({ limits: { maxConnections: 1 } });
  const first = new pg.Client({ host: 'localhost', port: small.port, user: 'app', password: t.db.accounts.scram.password, database: 'test', ssl: { ca: t.pki.caPem } });
  await first.connect();
  const backendsBefore = (await t.db.query('SELECT count(*)::int AS n FROM pg_stat_activity WHERE backend_type = $1', ['client backend'])).rows[0].n;
  const r = await psql(`host=localhost port=${small.port} user=app dbname=test sslmode=verify-full sslrootcert=${t.files.caFile}`, ['-Atc', 'SELECT 1'], { PGPASSWORD: t.db.accounts.scram.password });
  assert.match(r.stderr, /sorry, too many clients already/);
  const second = new pg.Client({ host: 'localhost', port: small.port, user: 'app', password: t.db.accounts.scram.password, database: 'test', ssl: { ca: t.pki.caPem } });
  await assert.rejects(second.connect(), (e: any) => e.code === '53300');
  const backendsAfter = (await t.db.query('SELECT count(*)::int AS n FROM pg_stat_activity WHERE backend_type = $1', ['client backend'])).rows[0].n;
  assert.equal(backendsAfter, backendsBefore);
  await first.end();
  // the slot is free again
  const third = new pg.Client({ host: 'localhost', port: small.port, user: 'app', password: t.db.accounts.scram.password, database: 'test', ssl: { ca: t.pki.caPem } });
  await third.connect();
  await third.end();
  assert.ok(small.metrics.render().includes('cdbp_connections_refused_total{protocol="pg",reason="max_connections"} 2'));
});

test('over the pending-handshake cap a client gets 53300 after TLS, not a silent drop (issue 16 item 7)', async () => {
  const tight = await t.extraProxy({ limits: { maxConnections: 10, maxPendingHandshakes: 2, maxRefusalHandshakes: 2 } });
  // Two silent sockets fill the pending-handshake cap (slots remain: it is the handshakes that are capped).
  const silent = await Promise.all([RawPg.plain(tight.port), RawPg.plain(tight.port)]);
  await new Promise((r) => setTimeout(r, 100));
  const c = new pg.Client({ host: 'localhost', port: tight.port, user: 'app', password: t.db.accounts.scram.password, database: 'test', ssl: { ca: t.pki.caPem } });
  await assert.rejects(c.connect(), (e: any) => e.code === '53300' && /too many clients/.test(e.message));
  const r = await psql(`host=localhost port=${tight.port} user=app dbname=test sslmode=verify-full sslrootcert=${t.files.caFile}`, ['-Atc', 'SELECT 1'], { PGPASSWORD: t.db.accounts.scram.password });
  assert.match(r.stderr, /sorry, too many clients already/);
  // By hand: S, TLS, then the ErrorResponse inside TLS.
  const raw = await RawPg.overTls(tight.port, t.pki.caPem);
  raw.write(serialize.startup({ user: 'app', database: 'test' }));
  await raw.until(() => raw.closed);
  assert.equal(raw.messages[0]?.code, '53300');
  assert.match(tight.metrics.render(), /cdbp_connections_refused_total\{protocol="pg",reason="overload"\} 3/);
  const stats = tight.proxy.stats();
  assert.equal(stats.pendingHandshakes, 2);
  assert.deepEqual(stats.refusedBy, { max_connections: 0, overload: 3, draining: 0 });
  for (const s of silent) s.end();
});

test('maxConnections counts a connection from accept (one meaning with MySQL): a client still handshaking holds its slot', async () => {
  const small = await t.extraProxy({ limits: { maxConnections: 1 } });
  const silent = await RawPg.plain(small.port);
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(small.proxy.stats().open, 1);
  assert.equal(small.proxy.stats().pendingHandshakes, 1);
  const c = new pg.Client({ host: 'localhost', port: small.port, user: 'app', password: t.db.accounts.scram.password, database: 'test', ssl: { ca: t.pki.caPem } });
  await assert.rejects(c.connect(), (e: any) => e.code === '53300');
  assert.deepEqual(small.proxy.stats().refusedBy, { max_connections: 1, overload: 0, draining: 0 });
  silent.end();
  for (let i = 0; i < 100 && small.proxy.stats().open > 0; i++) await new Promise((r) => setTimeout(r, 20));
  const d = new pg.Client({ host: 'localhost', port: small.port, user: 'app', password: t.db.accounts.scram.password, database: 'test', ssl: { ca: t.pki.caPem } });
  await d.connect();
  assert.equal(small.proxy.stats().pendingHandshakes, 0, 'a logged-in session is no longer pending');
  await d.end();
});

test('drain: new clients are refused, a session that ends in time ends, a straggler is closed at the deadline', async () => {
  const p = await t.extraProxy({});
  const mk = () => new pg.Client({ host: 'localhost', port: p.port, user: 'app', password: t.db.accounts.scram.password, database: 'test', ssl: { ca: t.pki.caPem } });
  const quick = mk();
  const straggler = mk();
  await quick.connect();
  await straggler.connect();
  const stragglerError = new Promise<any>((r) => straggler.on('error', r));
  const draining = p.proxy.drain(600);
  await new Promise((r) => setTimeout(r, 50));
  await assert.rejects(mk().connect(), /ECONNREFUSED/);
  assert.equal((await quick.query('SELECT 1 AS x')).rows[0].x, 1, 'open sessions keep working while draining');
  await quick.end();
  assert.deepEqual(await draining, { forced: 1 });
  // Mid-session the stream may be mid-message, so the straggler is closed without a word (57P01 only while handshaking).
  assert.match(String((await stragglerError)?.message), /terminated|ECONNRESET/);
  const s = p.proxy.stats();
  assert.equal(s.drained, 1);
  assert.equal(s.accepting, false);
  assert.match(p.metrics.render(), /cdbp_connections_drained_total\{protocol="pg"\} 1/);
});

test('an idle session is closed after idleTimeoutMs with 57P05 (issue 15: PG gets the idle timeout MySQL has); an active one stays', async () => {
  const idle = await t.extraProxy({ limits: { idleTimeoutMs: 1_000 } });
  const mk = () => new pg.Client({ host: 'localhost', port: idle.port, user: 'app', password: t.db.accounts.scram.password, database: 'test', ssl: { ca: t.pki.caPem } });
  const quiet = mk();
  const busy = mk();
  let busyError: Error | undefined;
  busy.on('error', (e) => (busyError = e));
  await quiet.connect();
  await busy.connect();
  const quietError = new Promise<any>((r) => quiet.on('error', r));
  const started = Date.now();
  while (Date.now() - started < 2_500) {
    await busy.query('SELECT 1');
    await new Promise((r) => setTimeout(r, 100));
  }
  const e = await Promise.race([quietError, new Promise((r) => setTimeout(() => r(undefined), 3000))]);
  assert.equal(e?.code, '57P05');
  assert.equal(busyError, undefined);
  assert.equal((await busy.query('SELECT 2 AS x')).rows[0].x, 2, 'the active session is still open');
  await busy.end();
});

test('a silent client is closed after the handshake timeout', async () => {
  const quick = await t.extraProxy({ limits: { handshakeTimeoutMs: 300 } });
  const raw = await RawPg.plain(quick.port);
  await raw.until(() => raw.closed, 5_000);
  assert.ok(raw.closed);
  assert.ok(quick.metrics.render().includes('cdbp_handshake_timeouts_total{protocol="pg"} 1'));
  for (let i = 0; i < 50 && quick.proxy.stats().open > 0; i++) await new Promise((r) => setTimeout(r, 20));
  assert.equal(quick.proxy.stats().open, 0);
});

test('a swap of the identity holder serves a new certificate to new connections; a broken identity is refused and the old one kept', async () => {
  const holder = new TlsIdentityHolder(t.pki);
  const spare = await t.extraProxy({ tls: holder });
  const next = makeTestPki();
  assert.throws(() => holder.set({ keyPem: next.keyPem, certPem: t.pki.certPem }), (e: any) => e.code === 'CONFIG_INVALID');
  const old = new pg.Client({ host: 'localhost', port: spare.port, user: 'app', password: t.db.accounts.scram.password, database: 'test', ssl: { ca: t.pki.caPem } });
  await old.connect();
  holder.set({ keyPem: next.keyPem, certPem: next.certPem });
  const fresh = new pg.Client({ host: 'localhost', port: spare.port, user: 'app', password: t.db.accounts.scram.password, database: 'test', ssl: { ca: next.caPem } });
  await fresh.connect();
  const stale = new pg.Client({ host: 'localhost', port: spare.port, user: 'app', password: t.db.accounts.scram.password, database: 'test', ssl: { ca: t.pki.caPem } });
  await assert.rejects(stale.connect(), /self[- ]signed|unable to verify|certificate/i);
  assert.equal((await old.query('SELECT 1 AS x')).rows[0].x, 1, 'the existing session survives the swap');
  await old.end();
  await fresh.end();
});

test('pgbench runs through the proxy with sslmode=require', async () => {
  const { execFile } = await import('node:child_process');
  const env = { ...process.env, PGPASSWORD: t.db.accounts.scram.password, PGSSLMODE: 'require' };
  const args = ['-h', '127.0.0.1', '-p', String(t.port), '-U', 'app'];
  const run = (a: string[]) => new Promise<{ code: number; out: string }>((resolve) =>
    execFile('pgbench', [...args, ...a, 'test'], { env, timeout: 60_000 }, (err, stdout, stderr) => resolve({ code: err ? 1 : 0, out: stdout + stderr })));
  const init = await run(['-i', '-s', '1', '-q']);
  assert.equal(init.code, 0, init.out);
  const bench = await run(['-S', '-c', '4', '-j', '2', '-t', '200']);
  assert.equal(bench.code, 0, bench.out);
  assert.match(bench.out, /number of transactions actually processed: 800\/800/);
  assert.match(bench.out, /number of failed transactions: 0/);
});

test('logs carry one open and one close line per session, and never a password', async () => {
  // Sessions close asynchronously (client FIN → backend end → backend close): wait for the last ones.
  const unclosed = () => {
    const ls = t.logs.map((l) => JSON.parse(l));
    const closed = new Set(ls.filter((l) => l.event === 'connection_close').map((l) => l.id));
    return ls.filter((l) => l.event === 'connection_open' && !closed.has(l.id)).length;
  };
  for (let i = 0; i < 100 && unclosed() > 0; i++) await new Promise((r) => setTimeout(r, 50));
  const lines = t.logs.map((l) => JSON.parse(l));
  const closes = lines.filter((l) => l.event === 'connection_close' && l.protocol === 'pg' && l.user);
  assert.ok(closes.length > 5);
  for (const l of closes) {
    assert.equal(typeof l.bytesIn, 'number');
    assert.equal(typeof l.durationMs, 'number');
    assert.ok(l.peer);
    assert.ok(l.outcome);
  }
  // One vocabulary with MySQL: connection_open at accept, connection_close with an outcome, one each.
  const sessionsOpened = lines.filter((l) => l.event === 'connection_open').map((l) => `${l.id}`);
  const sessionsClosed = new Set(lines.filter((l) => l.event === 'connection_close').map((l) => `${l.id}`));
  for (const s of sessionsOpened) assert.ok(sessionsClosed.has(s), `session ${s} has its close line`);
  assert.equal(new Set(lines.filter((l) => l.event === 'connection_close').map((l) => `${l.name}${l.id}`)).size,
    lines.filter((l) => l.event === 'connection_close').length, 'one close line per session');
  const outcomes = new Set(lines.filter((l) => l.event === 'connection_close').map((l) => l.outcome));
  for (const o of ['ok', 'auth_failed', 'insecure', 'refused', 'protocol_error']) assert.ok(outcomes.has(o), `outcome ${o} seen`);
  const all = t.logs.join('');
  const a = t.db.accounts;
  for (const secret of [a.scram.password, a.md5.password, a.password.password, 'pg_sleep']) assert.ok(!all.includes(secret), `logs mention ${secret}`);
});

function cancels(outcome: string): number {
  return Number(t.metrics.render().match(new RegExp(`cdbp_cancel_requests_total\\{outcome="${outcome}"\\} (\\d+)`))?.[1] ?? 0);
}

async function waitForActiveQuery(fragment: string): Promise<void> {
  for (let i = 0; i < 200; i++) {
    const r = await t.db.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE state = 'active' AND position($1 in query) > 0 AND pid <> pg_backend_pid()", [fragment]);
    if (r.rows[0].n > 0) return;
    await new Promise((res) => setTimeout(res, 50));
  }
  throw new Error(`query ${fragment} never became active`);
}


