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
  assert.equal(gate.calls, before + 1, 'COMMIT is an idle acknowledgment');
  await c.query('INSERT INTO acks VALUES (3); INSERT INTO acks VALUES (4)');
  assert.equal(gate.calls, before + 2, 'one ReadyForQuery for a multi-statement query');
  await assert.rejects(c.query('SELECT 1/0'));
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
