/**
 * Real clients through the MySQL endpoint: mariadb CLI, the mariadb npm connector, mysql2, sysbench.
 * Private MariaDB behind the proxy on its unix socket; the proxy in-process with a throwaway cert.
 * Every client case runs once per data plane (native C relay, Node), each against its own proxy; the
 * native one is asked for explicitly, so a missing build fails instead of passing as native coverage.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import mariadb, { type ConnectionConfig } from 'mariadb';
import mysql2 from 'mysql2/promise';
import { startPrivateMariadb, type PrivateMariadb } from '../support/mariadb.ts';
import { makeTestPki } from '../support/test-pki.ts';
import { tempDir } from '../support/tmp.ts';
import { runSysbench, prepareSysbench } from '../support/sysbench.ts';
import type { MysqlProxy } from '../../proxy/mysql/index.ts';
import { listenMysqlProxy } from '../support/mysql-proxy.ts';

const run = promisify(execFile);

type Plane = 'native' | 'node';
const PLANES: readonly Plane[] = ['native', 'node'];

let db: PrivateMariadb;
const proxies = new Map<Plane, { proxy: MysqlProxy; port: number }>();
let caFile: string;
let caPem: string;
const dir = tempDir('mysql-clients');
const ED_USER = 'edapp';
const ED_PASSWORD = 'ed-secret-' + Math.random().toString(36).slice(2);

before(async () => {
  db = await startPrivateMariadb();
  await db.rootQuery("INSTALL SONAME 'auth_ed25519'");
  await db.rootQuery(
    `CREATE USER '${ED_USER}'@'localhost' IDENTIFIED VIA ed25519 USING PASSWORD('${ED_PASSWORD}');` +
    `GRANT ALL ON test.* TO '${ED_USER}'@'localhost';` +
    'CREATE TABLE test.t (id INT PRIMARY KEY AUTO_INCREMENT, v VARCHAR(100), b LONGBLOB)');
  const pki = makeTestPki();
  caPem = pki.caPem;
  caFile = pki.writeTo(dir.path).caFile;
  for (const plane of PLANES) {
    proxies.set(plane, await listenMysqlProxy(db.server.socket, pki, { dataPlane: plane }));
  }
});

after(async () => {
  for (const { proxy } of proxies.values()) await proxy.close();
  await db?.stop();
  dir.remove();
});

const verified = () => [`--ssl-ca=${caFile}`, '--ssl-verify-server-cert'];

/** The clients of one data plane's proxy (resolved when a test runs, after `before`). */
function clientsOf(plane: Plane) {
  const target = () => {
    const t = proxies.get(plane);
    assert.ok(t, `no ${plane} proxy`);
    return t;
  };
  return {
    proxy: () => target().proxy,
    port: () => target().port,
    cli(args: string[], user = db.user, password = db.password) {
      return run('mariadb', ['-h127.0.0.1', `-P${target().port}`, `-u${user}`, `-p${password}`, '--batch', '--skip-column-names', ...args], { timeout: 30_000 });
    },
    mdb(opts: Partial<ConnectionConfig> = {}) {
      return mariadb.createConnection({
        host: '127.0.0.1', port: target().port, user: db.user, password: db.password, database: 'test',
        ssl: { ca: caPem }, connectTimeout: 10_000, ...opts,
      });
    },
    my2(opts: Partial<mysql2.ConnectionOptions> = {}) {
      return mysql2.createConnection({
        host: '127.0.0.1', port: target().port, user: db.user, password: db.password, database: 'test',
        ssl: { ca: caPem }, connectTimeout: 10_000, ...opts,
      });
    },
  };
}

test('the native proxy really runs the native data plane (a missing build must fail, not fall back)', () => {
  assert.deepEqual(proxies.get('native')?.proxy.stats().dataPlane, { kind: 'native', reason: 'configured' });
  assert.equal(proxies.get('node')?.proxy.stats().dataPlane.kind, 'node');
});

// Refused before TLS, by the same JS code whichever plane runs: once is enough.
test('a client that does not ask for TLS gets ERR 3159 (secure transport required) and is closed', async () => {
  const { cli, my2 } = clientsOf('native');
  await assert.rejects(cli(['--skip-ssl', '-e', 'SELECT 1']), (e: any) => {
    assert.match(e.stderr, /ERROR 3159 \(HY000\).*insecure transport/);
    return true;
  });
  await assert.rejects(my2({ ssl: undefined }), (e: any) => {
    assert.equal(e.errno, 3159);
    return true;
  });
});

for (const plane of PLANES) {
  const { cli, mdb, my2, proxy, port } = clientsOf(plane);

  test(`[${plane}] mariadb CLI: TLS verified with the CA, queries through the proxy (backend leg is the unix socket)`, async () => {
    const { stdout } = await cli([...verified(), '-e', "SELECT CURRENT_USER(); SHOW SESSION STATUS LIKE 'Ssl_cipher'"]);
    assert.match(stdout, /^app@/m);
    // The database sees the unix socket (no TLS on that leg); the client leg was verified by --ssl-verify-server-cert.
    assert.match(stdout, /^Ssl_cipher\s*$/m);
  });

  test(`[${plane}] mariadb CLI: verification fails against a different CA`, async () => {
    const other = makeTestPki();
    const otherDir = tempDir('mysql-other-ca');
    try {
      const { caFile: wrongCa } = other.writeTo(otherDir.path);
      await assert.rejects(cli([`--ssl-ca=${wrongCa}`, '--ssl-verify-server-cert', '-e', 'SELECT 1']), /certificate|SSL|TLS/i);
    } finally {
      otherDir.remove();
    }
  });

  test(`[${plane}] wrong password: the database's own 1045 reaches the client`, async () => {
    await assert.rejects(cli([...verified(), '-e', 'SELECT 1'], db.user, 'wrong'), /ERROR 1045 \(28000\): Access denied for user 'app'@'localhost'/);
    await assert.rejects(mdb({ password: 'wrong' }), (e: any) => e.errno === 1045);
    assert.ok(proxy().stats().authFailures >= 2);
  });

  test(`[${plane}] ed25519 authentication (auth switch relayed) with the CLI and the mariadb connector`, async () => {
    const { stdout } = await cli([...verified(), '-e', 'SELECT CURRENT_USER()'], ED_USER, ED_PASSWORD);
    assert.match(stdout, /^edapp@localhost/m);
    const conn = await mdb({ user: ED_USER, password: ED_PASSWORD });
    try {
      const rows = await conn.query('SELECT CURRENT_USER() AS u');
      assert.equal(rows[0].u, 'edapp@localhost');
    } finally {
      await conn.end();
    }
    await assert.rejects(mdb({ user: ED_USER, password: 'nope' }), (e: any) => e.errno === 1045);
  });

  test(`[${plane}] CLI asking for compression still works, uncompressed (compression is not advertised)`, async () => {
    const { stdout } = await cli([...verified(), '--compress', '-e', "SHOW SESSION STATUS LIKE 'Compression'"]);
    assert.match(stdout, /Compression\tOFF/);
  });

  test(`[${plane}] connectors asking for compression (mariadb and mysql2 compress: true) work, uncompressed, large results included`, async () => {
    const big = 'x'.repeat(2 * 1024 * 1024);
    type Queryable = { query(sql: string, values?: unknown[]): Promise<any>; end(): Promise<void> };
    for (const open of [() => mdb({ compress: true }), () => my2({ compress: true })] as (() => Promise<Queryable>)[]) {
      const conn = await open();
      try {
        const status = (await conn.query("SHOW SESSION STATUS LIKE 'Compression'")) as any;
        const row = Array.isArray(status[0]) ? status[0][0] : status[0];
        assert.equal(row.Value, 'OFF', 'the database runs the session uncompressed (the proxy does not advertise compression)');
        const res = (await conn.query('SELECT REPEAT(?, 1) AS v', [big])) as any;
        const v = Array.isArray(res[0]) ? res[0][0].v : res[0].v;
        assert.equal(String(v).length, big.length);
      } finally {
        await conn.end();
      }
    }
  });

  test(`[${plane}] mariadb connector: prepared statements, multi-statements, pipelining, batch, COM_RESET_CONNECTION, COM_CHANGE_USER`, async () => {
    const conn = await mdb({ multipleStatements: true, pipelining: true });
    try {
      const ins = await conn.execute('INSERT INTO t (v) VALUES (?)', ['prepared']);
      assert.equal(ins.affectedRows, 1);
      const sel = await conn.execute('SELECT v FROM t WHERE id = ?', [Number(ins.insertId)]);
      assert.equal(sel[0].v, 'prepared');
      const multi = await conn.query('SELECT 1 AS a; SELECT 2 AS b; UPDATE t SET v = v WHERE 0');
      assert.equal(multi[0][0].a, 1);
      assert.equal(multi[1][0].b, 2);
      assert.equal(multi[2].affectedRows, 0);
      const many = await Promise.all(Array.from({ length: 50 }, (_, i) => conn.query('SELECT ? AS i', [i])));
      assert.deepEqual(many.map((r) => r[0].i), Array.from({ length: 50 }, (_, i) => i));
      const batch = await conn.batch('INSERT INTO t (v) VALUES (?)', [['b1'], ['b2'], ['b3']]);
      assert.equal((batch as any).affectedRows, 3);
      await conn.query('SET @marker = 42');
      await conn.reset();
      const after = await conn.query('SELECT @marker AS m');
      assert.equal(after[0].m, null, 'COM_RESET_CONNECTION cleared the session variable');
      await conn.changeUser({ user: ED_USER, password: ED_PASSWORD });
      const who = await conn.query('SELECT CURRENT_USER() AS u');
      assert.equal(who[0].u, 'edapp@localhost');
      await conn.changeUser({ user: db.user, password: db.password });
      const back = await conn.query('SELECT CURRENT_USER() AS u');
      assert.equal(back[0].u, 'app@localhost');
    } finally {
      await conn.end();
    }
  });

  test(`[${plane}] mysql2: query, execute (binary protocol), multi-statements, changeUser`, async () => {
    const conn = await my2({ multipleStatements: true });
    try {
      const [ins] = await conn.execute<mysql2.ResultSetHeader>('INSERT INTO t (v) VALUES (?)', ['mysql2']);
      const [rows] = await conn.execute<mysql2.RowDataPacket[]>('SELECT v FROM t WHERE id = ?', [ins.insertId]);
      assert.equal(rows[0]!.v, 'mysql2');
      const [multi] = await conn.query<mysql2.RowDataPacket[][]>('SELECT 1 AS a; SELECT 2 AS b');
      assert.equal(multi[0]![0]!.a, 1);
      assert.equal(multi[1]![0]!.b, 2);
      await conn.changeUser({ user: db.user, password: db.password, database: 'mysql' });
      const [[db2]] = await conn.query<mysql2.RowDataPacket[]>('SELECT DATABASE() AS d');
      assert.equal(db2!.d, 'mysql');
    } finally {
      await conn.end();
    }
  });

  test(`[${plane}] a 64 MiB value both ways (packets over 16 MiB are split and reassembled)`, async () => {
    const conn = await mdb({ maxAllowedPacket: 1 << 30 } as any);
    try {
      const size = 64 * 1024 * 1024;
      const blob = Buffer.alloc(size, 0x61);
      blob[size - 1] = 0x7a;
      const ins = await conn.query('INSERT INTO t (v, b) VALUES (?, ?)', ['big', blob]);
      const rows = await conn.query('SELECT b, LENGTH(b) AS n FROM t WHERE id = ?', [Number(ins.insertId)]);
      assert.equal(Number(rows[0].n), size);
      assert.equal(rows[0].b.length, size);
      assert.equal(rows[0].b[size - 1], 0x7a);
      const [rep] = await conn.query("SELECT LENGTH(REPEAT('x', 67108864)) AS n, REPEAT('y', 67108864) AS s");
      assert.equal(rep.s.length, size);
    } finally {
      await conn.end();
    }
  });

  test(`[${plane}] 200 concurrent connections each get their own backend session`, async () => {
    const conns = await Promise.all(Array.from({ length: 200 }, () => my2()));
    try {
      const ids = await Promise.all(conns.map(async (c) => {
        const [[row]] = await c.query<mysql2.RowDataPacket[]>('SELECT CONNECTION_ID() AS id');
        return row!.id as number;
      }));
      assert.equal(new Set(ids).size, 200);
      assert.ok(proxy().stats().open >= 200);
    } finally {
      await Promise.all(conns.map((c) => c.end()));
    }
  });

  test(`[${plane}] sysbench (mysql driver, --mysql-ssl=on with the CA) runs oltp_point_select through the proxy`, async () => {
    const work = tempDir('mysql-sysbench');
    try {
      const sbDb = `sbtest_${plane}`; // sysbench prepare fails on an existing table: one schema per plane
      const sb = { host: '127.0.0.1', port: port(), user: db.user, password: db.password, db: sbDb, caPem, cwd: work.path, tableSize: 1000, tables: 1 };
      await db.rootQuery(`CREATE DATABASE IF NOT EXISTS ${sbDb}`);
      await prepareSysbench(sb, 'oltp_point_select');
      const res = await runSysbench(sb, 'oltp_point_select', { threads: 4, durationS: 2 });
      assert.ok(res.transactions > 0, 'transactions were executed');
      assert.equal(res.errors, 0);
      // The proxy refuses plaintext (3159), so a successful run is a TLS run.
    } finally {
      work.remove();
    }
  });
}
