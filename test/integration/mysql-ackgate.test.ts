/**
 * The freshness hook: an AckGate holds the acknowledgment of writes (OK ending a command outside a
 * transaction) until it resolves; rejecting turns it into an ERR and closes the session. Every case
 * runs on both data planes: the JS pump's tracker (tracker.ts) and the native relay's (tracker.c).
 */
import { test, before, after, describe, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import mariadb from 'mariadb';
import mysql2 from 'mysql2/promise';
import { startPrivateMariadb, type PrivateMariadb } from '../support/mariadb.ts';
import { makeTestPki, type TestPki } from '../support/test-pki.ts';
import type { AckGate, MysqlProxy, MysqlProxyOptions } from '../../proxy/mysql/index.ts';
import { encodePacket } from '../../proxy/mysql/codec.ts';
import { RawClient, comQuery, handshakeResponse, rawTls, scrambleOf } from '../support/mysql-raw.ts';
import { listenMysqlProxy } from '../support/mysql-proxy.ts';

let db: PrivateMariadb;
let pki: TestPki;

before(async () => {
  db = await startPrivateMariadb({ tcp: true });
  pki = makeTestPki();
  await db.rootQuery('CREATE TABLE test.g (id INT PRIMARY KEY AUTO_INCREMENT, v VARCHAR(64))');
});
after(async () => { await db?.stop(); });

/** A gate the test steers: counts calls; holds acks while `holding`, releasing or refusing them on demand. */
class TestGate implements AckGate {
  calls = 0;
  holding = false;
  private held: { resolve(): void; reject(e: Error): void }[] = [];
  holdAck(): Promise<void> | undefined {
    this.calls++;
    if (!this.holding) return undefined;
    return new Promise((resolve, reject) => this.held.push({ resolve, reject }));
  }
  get waiting(): number { return this.held.length; }
  release(): void { for (const h of this.held.splice(0)) h.resolve(); }
  refuse(): void { for (const h of this.held.splice(0)) h.reject(new Error('epoch not sealed')); }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const settledWithin = (p: Promise<unknown>, ms: number) =>
  Promise.race([p.then(() => true, () => true), new Promise((r) => setTimeout(() => r(false), ms))]);

for (const plane of ['native', 'node'] as const) describe(`${plane} data plane`, () => {
  async function withGate<T>(gate: AckGate, fn: (port: number, proxy: MysqlProxy) => Promise<T>, extra: Partial<MysqlProxyOptions> = {}): Promise<T> {
    const { proxy, port } = await listenMysqlProxy(db.server.socket, pki, { ackGate: gate, dataPlane: plane, ...extra });
    try { return await fn(port, proxy); } finally { await proxy.close(); }
  }

  // Both planes write to the same tables: each case starts from empty ones.
  beforeEach(async () => { await db.rootQuery('TRUNCATE test.g; DROP TABLE IF EXISTS test.li'); });

  test('an autocommit INSERT is executed but its OK is held until the gate resolves', async () => {
    const gate = new TestGate();
    await withGate(gate, async (port) => {
      const conn = await mariadb.createConnection({ host: '127.0.0.1', port, user: db.user, password: db.password, database: 'test', ssl: { ca: pki.caPem } });
      try {
        const atStart = gate.calls; // connector set-up statements (SET ...) are OKs and may be gated
        await conn.query('SELECT 1');
        assert.equal(gate.calls, atStart, 'reads are not gated');
        gate.holding = true;
        const insert = conn.query("INSERT INTO g (v) VALUES ('held')");
        assert.equal(await settledWithin(insert, 300), false, 'the client has no ack yet');
        const rows = await db.rootQuery("SELECT COUNT(*) AS n FROM test.g WHERE v = 'held'");
        assert.equal(Number(rows[0].n), 1, 'the write itself reached the database');
        assert.equal(gate.waiting, 1);
        gate.release();
        const res = await insert;
        assert.equal(res.affectedRows, 1);
        gate.holding = false;
        // Transactions: only the COMMIT is gated.
        const before = gate.calls;
        await conn.query('BEGIN');
        await conn.query("INSERT INTO g (v) VALUES ('tx')");
        assert.equal(gate.calls, before, 'BEGIN and the INSERT inside the transaction carry IN_TRANS: not gated');
        await conn.query('COMMIT');
        assert.equal(gate.calls, before + 1, 'the COMMIT is the ack that is gated');
      } finally {
        await conn.end();
      }
    });
  });

  test('pipelined prepared INSERTs and a multi-statement: every ack waits, results stay in order', async () => {
    const gate = new TestGate();
    await withGate(gate, async (port) => {
      const conn = await mariadb.createConnection({
        host: '127.0.0.1', port, user: db.user, password: db.password, database: 'test', ssl: { ca: pki.caPem },
        pipelining: true, multipleStatements: true,
      });
      try {
        gate.holding = true;
        const base = gate.calls;
        const inserts = Array.from({ length: 20 }, (_, i) => conn.execute('INSERT INTO g (v) VALUES (?)', [`p${i}`]));
        const select = conn.query("SELECT COUNT(*) AS n FROM g WHERE v LIKE 'p%'");
        assert.equal(await settledWithin(Promise.race(inserts), 300), false);
        assert.equal(await settledWithin(select, 50), false, 'a read pipelined behind a held ack waits too (order is kept)');
        // Acks are held one at a time per connection: release until everything has arrived.
        const all = Promise.all([...inserts, select]);
        while (!(await settledWithin(all, 20))) gate.release();
        const results = await all;
        assert.deepEqual(results.slice(0, 20).map((r: any) => r.affectedRows), Array(20).fill(1));
        assert.equal(Number((results[20] as any)[0].n), 20);
        assert.equal(gate.calls - base, 20, 'one gate call per autocommit write, none for the read');
        const multi = conn.query("SELECT 1 AS a; INSERT INTO g (v) VALUES ('m')");
        assert.equal(await settledWithin(multi, 200), false, 'a multi-statement ending in a write is gated');
        gate.release();
        const m = await multi;
        assert.equal(m[0][0].a, 1);
        gate.holding = false;
      } finally {
        await conn.end();
      }
    });
  });

  test('a refused ack reaches the client as an ERR and the session is closed', async () => {
    const gate = new TestGate();
    await withGate(gate, async (port, proxy) => {
      const conn = await mysql2.createConnection({ host: '127.0.0.1', port, user: db.user, password: db.password, database: 'test', ssl: { ca: pki.caPem } });
      conn.on('error', () => {});
      gate.holding = true;
      const insert = conn.query("INSERT INTO g (v) VALUES ('refused')");
      while (gate.waiting === 0) await new Promise((r) => setTimeout(r, 10));
      gate.refuse();
      await assert.rejects(insert, (e: any) => e.errno === 1105 && /could not be confirmed durable/.test(e.message));
      const deadline = Date.now() + 3000;
      while (proxy.stats().open > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      assert.equal(proxy.stats().open, 0, 'the session ended');
    });
  });

  test('a held ack delays only its own connection; a client that leaves while held is cleaned up when the gate answers', async () => {
    const gate = new TestGate();
    await withGate(gate, async (port, proxy) => {
      const opts = { host: '127.0.0.1', port, user: db.user, password: db.password, database: 'test', ssl: { ca: pki.caPem } };
      const a = await mysql2.createConnection(opts);
      a.on('error', () => {});
      const b = await mariadb.createConnection(opts);
      gate.holding = true;
      const held = a.query("INSERT INTO g (v) VALUES ('held-a')");
      held.catch(() => {});
      while (gate.waiting === 0) await sleep(10);
      gate.holding = false;
      const [count] = await b.query('SELECT COUNT(*) AS n FROM g');
      assert.equal(Number(count.n), 1, 'another connection reads while the first one waits');
      assert.equal((await b.query("INSERT INTO g (v) VALUES ('b')")).affectedRows, 1, 'and writes');
      a.destroy(); // gone while its acknowledgment is held
      await sleep(100);
      gate.release(); // a late answer for a connection that no longer exists
      assert.equal(Number((await b.query('SELECT COUNT(*) AS n FROM g'))[0].n), 2);
      await b.end();
      const deadline = Date.now() + 8000;
      while (proxy.stats().open > 0 && Date.now() < deadline) await sleep(20);
      assert.equal(proxy.stats().open, 0, 'both sessions ended');
    });
  });

  test('a gate that throws is a refusal: the client gets the ERR instead of the OK, and the session ends', async () => {
    const gate: AckGate = { holdAck() { throw new Error('gate bug'); } };
    await withGate(gate, async (port, proxy) => {
      const conn = await mysql2.createConnection({ host: '127.0.0.1', port, user: db.user, password: db.password, database: 'test', ssl: { ca: pki.caPem } });
      conn.on('error', () => {});
      await assert.rejects(conn.query("INSERT INTO g (v) VALUES ('thrown')"), (e: any) => e.errno === 1105 && /could not be confirmed durable/.test(e.message));
      const deadline = Date.now() + 3000;
      while (proxy.stats().open > 0 && Date.now() < deadline) await sleep(20);
      assert.equal(proxy.stats().open, 0, 'the session ended');
    });
  });

  test('70,000 statements pipelined at once over a loopback TCP backend are all answered, each ack through the gate (more than the native tracker holds: backpressure, not an error)', async () => {
    const n = 70_000;
    let calls = 0;
    const gate: AckGate = { holdAck() { calls++; return Promise.resolve(); } };
    await withGate(gate, async (port) => {
      const { t, greeting } = await rawTls(port, pki.caPem);
      const client = new RawClient(t);
      t.write(encodePacket(2, handshakeResponse(db.user, db.password, scrambleOf(greeting))));
      assert.equal((await client.next())?.payload[0], 0x00, 'login OK');
      const one = comQuery('DO 1');
      t.write(Buffer.concat(Array.from({ length: n }, () => one)));
      let oks = 0;
      while (oks < n) {
        const p = await client.next(20_000);
        if (!p || p.payload[0] !== 0x00) break;
        oks++;
      }
      t.destroy();
      assert.equal(oks, n, 'every pipelined statement answered with its OK');
      assert.equal(calls, n, 'each acknowledgment was offered to the gate');
    }, { backend: { host: '127.0.0.1', port: db.server.port! } });
  });

  test('a pass-through gate (always undefined) keeps every feature working: big rows, change user, reset', async () => {
    const gate = new TestGate();
    await withGate(gate, async (port) => {
      const conn = await mariadb.createConnection({ host: '127.0.0.1', port, user: db.user, password: db.password, database: 'test', ssl: { ca: pki.caPem }, multipleStatements: true });
      try {
        const [big] = await conn.query("SELECT REPEAT('z', 20000000) AS s");
        assert.equal(big.s.length, 20_000_000, 'a row over 16 MiB (continuation packets) passes the tracker');
        const rows = await conn.query('SELECT seq FROM seq_1_to_5000');
        assert.equal(rows.length, 5000);
        await conn.reset();
        await conn.changeUser({ user: db.user, password: db.password });
        const base = gate.calls;
        await conn.query("INSERT INTO g (v) VALUES ('after-change-user')");
        assert.equal(gate.calls, base + 1, 'tracking survived change-user and reset');
      } finally {
        await conn.end();
      }
    });
  });

  test('strict holds cover every acknowledgment of a possible write: RETURNING result sets (text and prepared), implicit commits, SET PASSWORD / SET STATEMENT, BEGIN NOT ATOMIC; prepared reads stay unheld', async () => {
    const gate = new TestGate();
    await db.rootQuery("CREATE USER IF NOT EXISTS 'rot'@'%' IDENTIFIED BY 'x1'");
    await withGate(gate, async (port) => {
      const conn = await mariadb.createConnection({ host: '127.0.0.1', port, user: db.user, password: db.password, database: 'test', ssl: { ca: pki.caPem } });
      const c2 = await mysql2.createConnection({ host: '127.0.0.1', port, user: db.user, password: db.password, database: 'test', ssl: { ca: pki.caPem } });
      const held = async (label: string, f: () => Promise<unknown>) => {
        const before = gate.calls;
        await f();
        return [label, gate.calls > before] as const;
      };
      try {
        const results = [
          await held('text INSERT ... RETURNING', () => conn.query("INSERT INTO g (v) VALUES ('r1') RETURNING id")),
          await held('prepared INSERT ... RETURNING (mariadb)', () => conn.execute('INSERT INTO g (v) VALUES (?) RETURNING id', ['r2'])),
          await held('prepared DELETE ... RETURNING (mysql2)', () => c2.execute("DELETE FROM g WHERE v = ? RETURNING id", ['r2'])),
          await held('SET STATEMENT ... FOR INSERT', () => conn.query("SET STATEMENT max_statement_time=100 FOR INSERT INTO g (v) VALUES ('s')")),
          await held('BEGIN NOT ATOMIC', () => conn.query("BEGIN NOT ATOMIC INSERT INTO g (v) VALUES ('na'); END")),
          await held('SET PASSWORD', () => conn.query("SET PASSWORD FOR 'rot'@'%' = PASSWORD('x2')")),
        ];
        await conn.query('BEGIN');
        await conn.query("INSERT INTO g (v) VALUES ('implicit')");
        results.push(await held('BEGIN inside a transaction (implicit commit)', () => conn.query('BEGIN')));
        await conn.query('ROLLBACK');
        for (const [label, wasHeld] of results) assert.equal(wasHeld, true, label);
        const reads = [
          await held('BEGIN outside a transaction', () => conn.query('BEGIN')),
          await held('prepared point select inside', () => conn.execute('SELECT v FROM g WHERE id = ?', [1])),
          await held('ROLLBACK', () => conn.query('ROLLBACK')),
          await held('prepared point select (mariadb)', () => conn.execute('SELECT v FROM g WHERE id = ?', [1])),
          await held('prepared point select (mysql2)', () => c2.execute('SELECT v FROM g WHERE id = ?', [1])),
          await held('SET NAMES', () => conn.query('SET NAMES utf8mb4')),
        ];
        for (const [label, wasHeld] of reads) assert.equal(wasHeld, false, label);
      } finally {
        await conn.end();
        await c2.end();
      }
    });
  });

  test('LOAD DATA LOCAL INFILE (stock mariadb CLI, > 5 MB, sequence ids wrap) does not desynchronise tracking: each later INSERT is offered to the gate', async () => {
    const { execFile } = await import('node:child_process');
    const { promisify } = await import('node:util');
    const { writeFileSync } = await import('node:fs');
    const path = await import('node:path');
    const { tempDir } = await import('../support/tmp.ts');
    const dir = tempDir('mysql-infile');
    try {
      await db.rootQuery('CREATE TABLE IF NOT EXISTS test.li (v VARCHAR(64)); SET GLOBAL local_infile=1');
      const caFile = path.join(dir.path, 'ca.pem');
      writeFileSync(caFile, pki.caPem);
      const dataFile = path.join(dir.path, 'data.txt');
      const lines = Array.from({ length: 800_000 }, (_, i) => `${100000 + i}`).join('\n') + '\n';
      assert.ok(lines.length > 5_000_000);
      writeFileSync(dataFile, lines);
      const gate = new TestGate();
      await withGate(gate, async (port) => {
        const run = async (sql: string) => {
          const before = gate.calls;
          await promisify(execFile)('mariadb', ['--connect-timeout=5', `--ssl-ca=${caFile}`, '--ssl-verify-server-cert', '-h', 'localhost', '-P', String(port),
            '-u', db.user, `-p${db.password}`, '--local-infile=1', 'test', '-e', sql], { timeout: 30_000 });
          return gate.calls - before;
        };
        const inserts = "INSERT INTO li VALUES ('a'); INSERT INTO li VALUES ('b'); INSERT INTO li VALUES ('c');";
        assert.equal(await run(inserts), 3);
        assert.equal(await run(`LOAD DATA LOCAL INFILE '${dataFile}' INTO TABLE li; ${inserts}`), 4, 'the LOAD and each of the 3 INSERTs');
      });
      const rows = await db.rootQuery('SELECT COUNT(*) AS n FROM test.li');
      assert.equal(Number(rows[0].n), 800_006);
    } finally {
      dir.remove();
    }
  });

  test('COM_CHANGE_USER to the proxy\'s OS account is refused with an ack gate too', async () => {
    const osUser = (await import('node:os')).userInfo().username;
    const gate = new TestGate();
    await withGate(gate, async (port) => {
      const conn = await mariadb.createConnection({ host: '127.0.0.1', port, user: db.user, password: db.password, ssl: { ca: pki.caPem } });
      conn.on('error', () => {});
      await assert.rejects(conn.changeUser({ user: osUser, password: '' }), (e: any) => e.errno === 1045 && e.sqlState === '28000' && /OS account/.test(e.message));
      await conn.end().catch(() => {});
    });
  });
});
