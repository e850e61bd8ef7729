import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { startProxyUnderTest, type ProxyUnderTest } from './pg-support.ts';
import type { AckGate } from '../../proxy/pg/index.ts';

/** A gate the test drives: counts consultations and holds acknowledgments while `holding`. */
class TestGate implements AckGate {
  calls = 0;
  holding = false;
  private pending: Array<{ resolve: () => void; reject: (e: Error) => void }> = [];
  holdAck(): Promise<void> | undefined {
    this.calls++;
    if (!this.holding) return undefined;
    return new Promise((resolve, reject) => this.pending.push({ resolve, reject }));
  }
  get held(): number {
    return this.pending.length;
  }
  release(): void {
    for (const p of this.pending.splice(0)) p.resolve();
  }
  refuse(): void {
    for (const p of this.pending.splice(0)) p.reject(new Error('epoch could not be sealed'));
  }
}

const gate = new TestGate();
let t: ProxyUnderTest;
before(async () => {
  t = await startProxyUnderTest({ ackGate: gate });
  await t.db.query('CREATE TABLE acks (id int)', [], 'test');
  await t.db.query('ALTER TABLE acks OWNER TO app', [], 'test');
});
after(async () => {
  await t?.stop();
});

function client(): pg.Client {
  return new pg.Client({ host: 'localhost', port: t.port, user: 'app', password: t.db.accounts.scram.password, database: 'test', ssl: { ca: t.pki.caPem } });
}

async function settledWithin<T>(p: Promise<T>, ms: number): Promise<boolean> {
  let done = false;
  void p.then(() => (done = true), () => (done = true));
  await new Promise((r) => setTimeout(r, ms));
  return done;
}

test('an autocommit write is acknowledged only after the gate releases it (the row is already committed)', async () => {
  const c = client();
  await c.connect();
  gate.holding = true;
  const insert = c.query('INSERT INTO acks VALUES (1)');
  for (let i = 0; i < 100 && gate.held === 0; i++) await new Promise((r) => setTimeout(r, 20));
  assert.equal(gate.held, 1, 'the acknowledgment is held at the proxy');
  assert.equal(await settledWithin(insert, 300), false, 'the client has not seen CommandComplete/ReadyForQuery');
  assert.equal((await t.db.query('SELECT count(*)::int AS n FROM acks', [], 'test')).rows[0].n, 1, 'the database already committed');
  gate.release();
  assert.equal((await insert).rowCount, 1);
  gate.holding = false;
  await c.end();
});

test('the gate is consulted only when a statement completes outside a transaction', async () => {
  const c = client();
  await c.connect();
  const before = gate.calls;
  await c.query('BEGIN');
  await c.query('INSERT INTO acks VALUES (2)');
  await c.query('SELECT 1');
  assert.equal(gate.calls, before, 'no idle acknowledgment inside the transaction');
  await c.query('COMMIT');
  assert.equal(gate.calls, before + 1, 'COMMIT of a transaction that wrote is an acknowledgment');
  await c.query('INSERT INTO acks VALUES (3); INSERT INTO acks VALUES (4)');
  assert.equal(gate.calls, before + 2, 'one ReadyForQuery for a multi-statement query');
  await assert.rejects(c.query('INSERT INTO acks VALUES (1/0)'));
  assert.equal(gate.calls, before + 2, 'an error is not an acknowledgment');
  // extended protocol (Parse/Bind/Execute/Sync) too
  await c.query('INSERT INTO acks VALUES ($1)', [5]);
  assert.equal(gate.calls, before + 3);
  await c.end();
});

test('a refused acknowledgment reaches the client as FATAL 40003 and closes the session', async () => {
  const c = client();
  await c.connect();
  let ended = false;
  c.on('error', () => undefined);
  c.on('end', () => (ended = true));
  gate.holding = true;
  const insert = c.query('INSERT INTO acks VALUES (6)');
  for (let i = 0; i < 100 && gate.held === 0; i++) await new Promise((r) => setTimeout(r, 20));
  gate.refuse();
  gate.holding = false;
  await assert.rejects(insert, (e: any) => e.code === '40003' && /outcome is unknown/.test(e.message));
  for (let i = 0; i < 100 && !ended; i++) await new Promise((r) => setTimeout(r, 20));
  assert.ok(ended, 'the connection is closed');
});

test('large results flow through the gate unchanged', async () => {
  const c = client();
  await c.connect();
  const r = await c.query("SELECT g, repeat('y', 1000) AS pad FROM generate_series(1, 20000) g");
  assert.equal(r.rows.length, 20000);
  assert.equal(r.rows[19999].g, 20000);
  assert.equal(r.rows[5].pad.length, 1000);
  await c.end();
});

test('reads never wait (issue 17): with the gate holding everything, reads, read-only transactions and prepared reads answer at once', async () => {
  const c = client();
  await c.connect();
  gate.holding = true;
  const before = gate.calls;
  try {
    const quick = <T>(p: Promise<T>, what: string) => Promise.race([p, new Promise<never>((_, j) => setTimeout(() => j(new Error(`${what} was held`)), 5_000))]);
    assert.equal((await quick(c.query('SELECT count(*)::int AS n FROM acks'), 'SELECT')).rows.length, 1);
    await quick(c.query('BEGIN'), 'BEGIN');
    await quick(c.query('SELECT * FROM acks'), 'SELECT in a transaction');
    await quick(c.query('COMMIT'), 'COMMIT of a read-only transaction');
    await quick(c.query({ name: 'by-id', text: 'SELECT * FROM acks WHERE id = $1', values: [1] }), 'prepared read');
    await quick(c.query({ name: 'by-id', text: 'SELECT * FROM acks WHERE id = $1', values: [2] }), 'prepared read, again');
    await quick(c.query({ text: 'SELECT g FROM generate_series(1, 10) g', rows: 3 } as any), 'a read in batches');
    await quick(c.query('BEGIN; INSERT INTO acks VALUES (99); ROLLBACK'), 'a rolled-back write');
    await quick(c.query("SET application_name = 'x'"), 'SET');
    assert.equal(gate.calls, before, 'the gate was never asked');
  } finally {
    gate.holding = false;
  }
  await c.end();
});

test('writes are held: SELECT nextval(), a prepared INSERT, a write behind a SELECT in one query, a transaction in one query', async () => {
  await t.db.query('CREATE SEQUENCE IF NOT EXISTS ack_seq; ALTER SEQUENCE ack_seq OWNER TO app', [], 'test');
  const c = client();
  await c.connect();
  const heldOnce = async (run: () => Promise<unknown>, what: string) => {
    gate.holding = true;
    const p = run();
    for (let i = 0; i < 100 && gate.held === 0; i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal(gate.held, 1, `${what}: held`);
    assert.equal(await settledWithin(p, 200), false, `${what}: the client waits`);
    gate.release();
    gate.holding = false;
    await p;
  };
  await heldOnce(() => c.query("SELECT nextval('ack_seq')"), 'SELECT nextval()');
  await heldOnce(() => c.query({ name: 'ins', text: 'INSERT INTO acks VALUES ($1)', values: [7] }), 'prepared INSERT');
  await heldOnce(() => c.query({ name: 'ins', text: 'INSERT INTO acks VALUES ($1)', values: [8] }), 'prepared INSERT, again');
  await heldOnce(() => c.query('SELECT 1; UPDATE acks SET id = id WHERE false'), 'SELECT; UPDATE');
  await heldOnce(() => c.query('BEGIN; INSERT INTO acks VALUES (9); COMMIT'), 'a transaction in one query');
  await c.end();
});

test('pgbench -S runs through a gate that never releases: no read is held', async () => {
  const { execFile } = await import('node:child_process');
  const env = { ...process.env, PGPASSWORD: t.db.accounts.scram.password, PGSSLMODE: 'require' };
  const args = ['-h', '127.0.0.1', '-p', String(t.port), '-U', 'app'];
  const run = (a: string[]) => new Promise<{ code: number; out: string }>((resolve) =>
    execFile('pgbench', [...args, ...a, 'test'], { env, timeout: 60_000 }, (err, stdout, stderr) => resolve({ code: err ? 1 : 0, out: stdout + stderr })));
  const init = await run(['-i', '-s', '1', '-q']);
  assert.equal(init.code, 0, init.out);
  gate.holding = true;
  const before = gate.calls;
  try {
    for (const mode of ['simple', 'extended', 'prepared']) {
      const bench = await run(['-S', '-n', '-M', mode, '-c', '2', '-t', '100']);
      assert.equal(bench.code, 0, bench.out);
      assert.match(bench.out, /number of transactions actually processed: 200\/200/, mode);
    }
    assert.equal(gate.calls, before);
  } finally {
    gate.holding = false;
  }
});
