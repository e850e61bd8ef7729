/**
 * Accounts created REQUIRE SSL / REQUIRE X509 through the proxy (issue 21, item 3), with the mariadb
 * connector against a private MariaDB that has TLS configured. The database checks an account's REQUIRE
 * clause on its own connection, which is the proxy's unix socket:
 * - with a TLS leg configured (`backend: { socket, tls }`), REQUIRE SSL accounts log in over TLS to the
 *   database, which then reports the session encrypted (Ssl_cipher, @@have_ssl); other accounts stay
 *   on the plaintext leg;
 * - without one, they are refused with a message naming the cause and the fix, before the database
 *   counts a failed login; REQUIRE X509 accounts always are (a client certificate ends at the proxy).
 * Both data planes.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import mariadb, { type Connection } from 'mariadb';
import { startPrivateMariadb, type PrivateMariadb } from '../support/mariadb.ts';
import { makeTestPki, type TestPki } from '../support/test-pki.ts';
import { silentLogger } from '../../src/kernel/log.ts';
import { MariadbAccountTls, requirementsByUser } from '../../proxy/mysql/account-tls.ts';
import type { MysqlProxy, MysqlProxyOptions } from '../../proxy/mysql/index.ts';
import { withMysqlProxy } from '../support/mysql-proxy.ts';

type Plane = 'native' | 'node';
const PLANES: readonly Plane[] = ['native', 'node'];

let db: PrivateMariadb;
let pki: TestPki;
const PW = 'req-pw-' + Math.random().toString(36).slice(2);

before(async () => {
  pki = makeTestPki();
  db = await startPrivateMariadb({ tls: pki });
  for (const host of ['localhost', '%']) {
    await db.rootQuery(
      `CREATE USER 'needs_ssl'@'${host}' IDENTIFIED BY '${PW}' REQUIRE SSL;` +
      `CREATE USER 'needs_cert'@'${host}' IDENTIFIED BY '${PW}' REQUIRE X509;` +
      `GRANT SELECT ON test.* TO 'needs_ssl'@'${host}'; GRANT SELECT ON test.* TO 'needs_cert'@'${host}'`);
  }
});

after(async () => {
  await db?.stop();
});

function withProxy<T>(extra: Partial<MysqlProxyOptions>, fn: (p: MysqlProxy, port: number) => Promise<T>): Promise<T> {
  return withMysqlProxy(db.server.socket, pki, extra, fn);
}

async function rules(): Promise<MariadbAccountTls> {
  const r = new MariadbAccountTls({ socket: db.server.socket, user: 'root', log: silentLogger() });
  await r.refresh();
  return r;
}

function connect(port: number, user: string, password: string) {
  return mariadb.createConnection({ host: '127.0.0.1', port, user, password, ssl: { ca: pki.caPem } });
}

async function accessDeniedErrors(): Promise<number> {
  const [row] = await db.rootQuery("SHOW GLOBAL STATUS LIKE 'Access_denied_errors'");
  return Number(row.Value);
}

test('account requirements: the most specific Host pattern matching the proxy\'s leg decides (as MariaDB matches accounts)', () => {
  const row = (User: string, Host: string, ssl_type: string, x509_issuer = '', x509_subject = '') => ({ User, Host, ssl_type, x509_issuer, x509_subject });
  const m = requirementsByUser([
    row('a', '%', 'ANY'), row('a', 'localhost', ''),          // the exact host wins over '%'
    row('b', '%', ''), row('b', 'local%', 'X509'),            // the longer literal wins
    row('c', '10.0.0.%', 'ANY'),                               // does not match localhost
    row('d', 'localhost', 'SPECIFIED'),                        // CIPHER only: TLS, no certificate
    row('e', 'localhost', 'SPECIFIED', '/CN=issuer'),          // ISSUER: a certificate
  ], 'localhost');
  assert.deepEqual(Object.fromEntries(m), { a: 'none', b: 'x509', d: 'ssl', e: 'x509' });
});

for (const plane of PLANES) {
  test(`[${plane}] with a TLS leg to the database, a REQUIRE SSL account logs in and the database reports the session encrypted; others stay plaintext`, async () => {
    const accountTls = await rules();
    await withProxy({
      dataPlane: plane, accountTls,
      backend: { socket: db.server.socket, tls: { caPem: pki.caPem, servername: 'localhost' } },
    }, async (_proxy, port) => {
      const c = await connect(port, 'needs_ssl', PW);
      const [cipher] = await c.query("SHOW SESSION STATUS LIKE 'Ssl_cipher'");
      assert.ok(String(cipher.Value).length > 0, 'Ssl_cipher names the TLS leg\'s cipher');
      const [{ have }] = await c.query('SELECT @@have_ssl AS have');
      assert.equal(have, 'YES');
      const rows = await c.query('SELECT 40 + 2 AS x');
      assert.equal(Number(rows[0].x), 42);
      await c.end();

      const plain = await connect(port, db.user, db.password);
      const [plainCipher] = await plain.query("SHOW SESSION STATUS LIKE 'Ssl_cipher'");
      assert.equal(String(plainCipher.Value), '', 'an account without REQUIRE keeps the plaintext socket leg');
      await plain.end();

      const denied = await accessDeniedErrors();
      await assert.rejects(connect(port, 'needs_cert', PW), (e: any) =>
        e.errno === 1045 && e.sqlState === '28000' && /client certificate/.test(e.message) && /REQUIRE NONE or REQUIRE SSL/.test(e.message));
      assert.equal(await accessDeniedErrors(), denied, 'refused before the database counted a failed login');
    });
  });

  test(`[${plane}] without a TLS leg, a REQUIRE SSL account is refused with the cause and the fix, not a bare "Access denied"`, async () => {
    await withProxy({ dataPlane: plane, accountTls: await rules() }, async (_proxy, port) => {
      const denied = await accessDeniedErrors();
      await assert.rejects(connect(port, 'needs_ssl', PW), (e: any) =>
        e.errno === 1045 && /requires SSL \(REQUIRE SSL\)/.test(e.message) && /REQUIRE NONE/.test(e.message));
      assert.equal(await accessDeniedErrors(), denied);
      // The account's owner applies the documented fix: it logs in through the proxy, still on TLS.
      await db.rootQuery("ALTER USER 'needs_ssl'@'localhost' REQUIRE NONE");
      try {
        let conn: Connection | undefined;
        for (let i = 0; i < 20 && !conn; i++) {
          // The first attempt after the change may still be refused from the last read; a refusal
          // asks for a re-read, so the next attempt sees the account as it is now.
          conn = await connect(port, 'needs_ssl', PW).catch(async () => { await new Promise((r) => setTimeout(r, 250)); return undefined; });
        }
        assert.ok(conn, 'the altered account logs in');
        await conn.end();
      } finally {
        await db.rootQuery("ALTER USER 'needs_ssl'@'localhost' REQUIRE SSL");
      }
    });
  });
}

test('an account created REQUIRE SSL after the proxy started is explained once the refusal has made the proxy re-read the accounts', async () => {
  await withProxy({ dataPlane: 'node', accountTls: await rules() }, async (_proxy, port) => {
    await db.rootQuery(`CREATE USER 'late_ssl'@'localhost' IDENTIFIED BY '${PW}' REQUIRE SSL`);
    const messages: string[] = [];
    for (let i = 0; i < 20; i++) {
      const e: any = await connect(port, 'late_ssl', PW).then((c) => c.end(), (err) => err);
      assert.equal(e?.errno, 1045);
      messages.push(e.message);
      if (/REQUIRE SSL/.test(e.message)) break;
      await new Promise((r) => setTimeout(r, 250));
    }
    assert.match(messages.at(-1)!, /requires SSL \(REQUIRE SSL\)/, `explained after a re-read: ${messages.join(' | ')}`);
  });
});
