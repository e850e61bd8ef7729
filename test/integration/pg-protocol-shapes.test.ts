/**
 * Every extended-protocol shape through the PG endpoint, with a gate that holds each acknowledgment
 * (strict) and without one (relaxed / off): a portal read in batches (Execute with a row limit + Flush,
 * no Sync: issue 21 item 1), PortalSuspended, pipelined Parse/Bind/Execute with and without Sync, COPY
 * FROM STDIN through Query and through Execute, and errors mid-pipeline. Real `pg` where it speaks the
 * shape, raw protocol where it does not. A deadlock shows up as a step that does not finish in 10 s.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { serialize } from 'pg-protocol';
import { RawPg, startProxyUnderTest, type ProxyUnderTest } from './pg-support.ts';
import type { AckGate } from '../../proxy/pg/index.ts';

/** Strict-like gate: every acknowledgment it is asked about waits a few ms (a seal), then passes. */
class SealingGate implements AckGate {
  calls = 0;
  holdAck(): Promise<void> {
    this.calls++;
    return new Promise((r) => setTimeout(r, 3));
  }
}

const gate = new SealingGate();
let t: ProxyUnderTest;
const modes: Array<{ name: string; port: () => number; gated: boolean }> = [];
before(async () => {
  t = await startProxyUnderTest({ ackGate: gate });
  const off = await t.extraProxy({ ackGate: undefined });
  modes.push({ name: 'off', port: () => off.port, gated: false }, { name: 'strict', port: () => t.port, gated: true });
  await t.db.query('CREATE TABLE shapes (id int, note text)', [], 'test');
  await t.db.query('GRANT ALL ON shapes TO PUBLIC', [], 'test');
});
after(async () => {
  await t?.stop();
});

function within<T>(p: Promise<T>, what: string, ms = 10_000): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => { timer = setTimeout(() => reject(new Error(`${what}: no answer in ${ms} ms (deadlock?)`)), ms); }),
  ]);
}

function client(port: number): pg.Client {
  return new pg.Client({ host: 'localhost', port, user: 'app', password: t.db.accounts.scram.password, database: 'test', ssl: { ca: t.pki.caPem } });
}

async function rawSession(port: number): Promise<RawPg> {
  const raw = await RawPg.overTls(port, t.pki.caPem);
  raw.write(serialize.startup({ user: t.db.accounts.trust.user, database: 'test' }));
  await raw.until(() => raw.messages.some((m) => m.name === 'readyForQuery'));
  raw.messages.length = 0;
  return raw;
}

const names = (raw: RawPg) => raw.messages.map((m) => m.name);
const count = (raw: RawPg, name: string) => raw.messages.filter((m) => m.name === name).length;

test('pg reads a portal 3 rows at a time (Execute + Flush, no Sync): all rows, in both modes', async () => {
  for (const mode of modes) {
    const c = client(mode.port());
    await c.connect();
    const r: any = await within(c.query({ text: 'SELECT g FROM generate_series(1, 10) g', rows: 3 } as any), `${mode.name}: SELECT in batches`);
    assert.deepEqual(r.rows.map((x: any) => x.g), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], mode.name);
    const before = gate.calls;
    const w: any = await within(c.query({ text: "INSERT INTO shapes SELECT g, 'batch' FROM generate_series(1, 7) g RETURNING id", rows: 3 } as any), `${mode.name}: INSERT RETURNING in batches`);
    assert.equal(w.rows.length, 7, mode.name);
    if (mode.gated) assert.equal(gate.calls, before + 1, 'the write read in batches is held once, at its ReadyForQuery');
    await c.end();
  }
});

test('raw PortalSuspended batches, then the last Execute + Flush returns CommandComplete before any Sync', async () => {
  for (const mode of modes) {
    const raw = await rawSession(mode.port());
    raw.write(Buffer.concat([
      serialize.parse({ text: 'SELECT g FROM generate_series(1, 5) g' }), serialize.bind({}), serialize.execute({ rows: 2 }), serialize.flush(),
    ]));
    await within(raw.until(() => count(raw, 'portalSuspended') === 1), `${mode.name}: first batch`);
    raw.write(Buffer.concat([serialize.execute({ rows: 2 }), serialize.flush()]));
    await within(raw.until(() => count(raw, 'portalSuspended') === 2), `${mode.name}: second batch`);
    raw.write(Buffer.concat([serialize.execute({ rows: 2 }), serialize.flush()]));
    await within(raw.until(() => count(raw, 'commandComplete') === 1), `${mode.name}: CommandComplete without Sync`);
    assert.equal(count(raw, 'dataRow'), 5);
    raw.write(serialize.sync());
    await within(raw.until(() => count(raw, 'readyForQuery') === 1), `${mode.name}: ReadyForQuery after Sync`);
    raw.end();
  }
});

test('pipelined Parse/Bind/Execute batches with Sync, and with Flush only', async () => {
  for (const mode of modes) {
    const raw = await rawSession(mode.port());
    const before = gate.calls;
    const insert = (id: number) => [serialize.parse({ text: `INSERT INTO shapes VALUES (${id}, 'pipe')` }), serialize.bind({}), serialize.execute({})];
    raw.write(Buffer.concat([...insert(101), ...insert(102), ...insert(103), serialize.sync()]));
    await within(raw.until(() => count(raw, 'readyForQuery') === 1), `${mode.name}: pipeline with Sync`);
    assert.equal(count(raw, 'commandComplete'), 3);
    if (mode.gated) assert.equal(gate.calls, before + 1, 'one implicit transaction, one held acknowledgment');
    raw.messages.length = 0;
    raw.write(Buffer.concat([...insert(104), ...insert(105), serialize.flush()]));
    await within(raw.until(() => count(raw, 'commandComplete') === 2), `${mode.name}: pipeline with Flush, no Sync`);
    raw.write(serialize.sync());
    await within(raw.until(() => count(raw, 'readyForQuery') === 1), `${mode.name}: its Sync`);
    raw.end();
  }
  const rows = await t.db.query("SELECT count(*)::int AS n FROM shapes WHERE note = 'pipe'", [], 'test');
  assert.equal(rows.rows[0].n, 10);
});

test('an error mid-pipeline: the rest up to Sync is skipped, then the session goes on', async () => {
  for (const mode of modes) {
    const raw = await rawSession(mode.port());
    raw.write(Buffer.concat([
      serialize.parse({ text: "INSERT INTO shapes VALUES (201, 'err')" }), serialize.bind({}), serialize.execute({}),
      serialize.parse({ text: 'SELECT 1/0' }), serialize.bind({}), serialize.execute({}),
      serialize.parse({ text: "INSERT INTO shapes VALUES (202, 'err')" }), serialize.bind({}), serialize.execute({}),
      serialize.sync(),
    ]));
    await within(raw.until(() => count(raw, 'readyForQuery') === 1), `${mode.name}: error pipeline`);
    assert.equal(raw.messages.find((m) => m.name === 'error')?.code, '22012');
    // Error before the Sync is even sent.
    raw.messages.length = 0;
    raw.write(Buffer.concat([serialize.parse({ text: 'SELECT 1/0' }), serialize.bind({}), serialize.execute({}), serialize.flush()]));
    await within(raw.until(() => count(raw, 'error') === 1), `${mode.name}: error before Sync`);
    raw.write(Buffer.concat([serialize.parse({ text: "INSERT INTO shapes VALUES (203, 'err')" }), serialize.bind({}), serialize.execute({}), serialize.sync()]));
    await within(raw.until(() => count(raw, 'readyForQuery') === 1), `${mode.name}: Sync after error`);
    raw.messages.length = 0;
    raw.write(serialize.query("INSERT INTO shapes VALUES (204, 'err')"));
    await within(raw.until(() => count(raw, 'readyForQuery') === 1), `${mode.name}: the next statement`);
    assert.equal(count(raw, 'commandComplete'), 1);
    raw.end();
  }
  const rows = await t.db.query("SELECT array_agg(id ORDER BY id) AS ids FROM shapes WHERE note = 'err'", [], 'test');
  assert.deepEqual(rows.rows[0].ids, [204, 204]);
});

test('COPY FROM STDIN through Query and through Execute (with a Sync pipelined before the data)', async () => {
  for (const mode of modes) {
    const raw = await rawSession(mode.port());
    const before = gate.calls;
    raw.write(serialize.query('COPY shapes FROM STDIN'));
    await within(raw.until(() => count(raw, 'copyInResponse') === 1), `${mode.name}: CopyInResponse (Query)`);
    raw.write(Buffer.concat([serialize.copyData(Buffer.from('301\tcopy\n302\tcopy\n')), serialize.copyDone()]));
    await within(raw.until(() => count(raw, 'readyForQuery') === 1), `${mode.name}: COPY via Query`);
    if (mode.gated) assert.equal(gate.calls, before + 1);
    raw.messages.length = 0;
    raw.write(Buffer.concat([serialize.parse({ text: 'COPY shapes FROM STDIN' }), serialize.bind({}), serialize.execute({}), serialize.sync()]));
    await within(raw.until(() => count(raw, 'copyInResponse') === 1), `${mode.name}: CopyInResponse (Execute)`);
    // The Sync sent before the data was ignored (55.2.6); the backend flushes the COPY's answer only at
    // the next Sync (or Flush).
    raw.write(Buffer.concat([serialize.copyData(Buffer.from('303\tcopy\n')), serialize.copyDone()]));
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(count(raw, 'readyForQuery'), 0, 'the first Sync was ignored');
    raw.write(serialize.sync());
    await within(raw.until(() => count(raw, 'readyForQuery') === 1), `${mode.name}: COPY via Execute`);
    if (mode.gated) assert.equal(gate.calls, before + 2);
    assert.deepEqual(names(raw).filter((n) => n !== 'noData'), ['parseComplete', 'bindComplete', 'copyInResponse', 'commandComplete', 'readyForQuery']);
    raw.end();
  }
  const rows = await t.db.query("SELECT count(*)::int AS n FROM shapes WHERE note = 'copy'", [], 'test');
  assert.equal(rows.rows[0].n, 6);
});
