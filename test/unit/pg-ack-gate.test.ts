import { test } from 'node:test';
import assert from 'node:assert/strict';
import { serialize } from 'pg-protocol';
import { AckGateStream, type AckGate } from '../../proxy/pg/ack-gate.ts';
import { encodeMessage } from '../../proxy/pg/codec.ts';
import { Conversation, type Classifier } from '../../proxy/pg/conversation.ts';
import { ClientScanner } from '../../proxy/pg/client-scanner.ts';

// ---- backend messages ----
const msg = (t: string, body: Buffer | string = '') => encodeMessage(t.charCodeAt(0), Buffer.isBuffer(body) ? body : Buffer.from(body));
const C = (tag: string) => msg('C', `${tag}\0`);
const Z = (status: string) => msg('Z', status);
const D = (n = 3) => msg('D', Buffer.concat([Buffer.from([0, 1, 0, 0, 0, n]), Buffer.alloc(n, 0x61)]));
const T = () => msg('T', Buffer.from([0, 0]));
const ParseComplete = () => msg('1');
const BindComplete = () => msg('2');
const NoData = () => msg('n');
const Suspended = () => msg('s');
const Err = () => msg('E', 'SERROR\0C22012\0Mdivision by zero\0\0');
const CopyIn = () => msg('G', Buffer.from([0, 0, 0]));
const Notice = () => msg('N', 'SNOTICE\0Mhello\0\0');
const ParamStatus = () => msg('S', 'TimeZone\0UTC\0');

// ---- client messages (pg-protocol's serializer, as the pg client sends them) ----
const Q = (text: string) => serialize.query(text);
const P = (text: string, name = '') => serialize.parse({ text, name, types: [] });
const B = (portal = '', statement = '') => serialize.bind({ portal, statement, values: [] });
const Desc = (portal = '') => serialize.describe({ type: 'P', name: portal });
const E = (rows = 0, portal = '') => serialize.execute({ portal, rows });
const S = () => serialize.sync();
const H = () => serialize.flush();
const CopyData = (s: string) => serialize.copyData(Buffer.from(s));
const CopyDone = () => serialize.copyDone();

/** A gate the test drives: `auto` releases at once (undefined); otherwise holds until release()/refuse(). */
class Gate implements AckGate {
  calls = 0;
  auto = false;
  private pending: Array<{ resolve: () => void; reject: (e: Error) => void }> = [];
  holdAck(): Promise<void> | undefined {
    this.calls++;
    if (this.auto) return undefined;
    return new Promise((resolve, reject) => this.pending.push({ resolve, reject }));
  }
  get held(): number {
    return this.pending.length;
  }
  release(): void {
    for (const p of this.pending.splice(0)) p.resolve();
  }
  refuse(): void {
    for (const p of this.pending.splice(0)) p.reject(new Error('no seal'));
  }
}

const tick = () => new Promise((r) => setImmediate(r));

/** One session's gate: client messages go to the mirror, backend bytes through the stream. */
class Session {
  readonly gate = new Gate();
  readonly conversation: Conversation;
  readonly scanner: ClientScanner;
  readonly stream: AckGateStream;
  private readonly outParts: Buffer[] = [];
  sent = Buffer.alloc(0);
  error: Error | undefined;

  constructor(classify?: Classifier) {
    this.conversation = new Conversation(classify);
    this.scanner = new ClientScanner(this.conversation);
    this.stream = new AckGateStream(this.gate, this.conversation);
    this.stream.on('data', (d: Buffer) => this.outParts.push(d));
    this.stream.on('error', (e) => (this.error = e));
  }
  client(...msgs: Buffer[]): void {
    this.scanner.scan(Buffer.concat(msgs));
  }
  async backend(...msgs: Buffer[]): Promise<void> {
    const b = Buffer.concat(msgs);
    this.sent = Buffer.concat([this.sent, b]);
    this.stream.write(b);
    await tick();
    await tick();
  }
  get out(): Buffer {
    return Buffer.concat(this.outParts);
  }
  /** Everything the backend sent has reached the client. */
  allOut(): boolean {
    return this.out.equals(this.sent);
  }
}

test('an autocommit write: CommandComplete + ReadyForQuery I are held together; output equals input at every split', async () => {
  const stream = Buffer.concat([C('INSERT 0 1'), Z('I'), T(), D(20), D(3), C('SELECT 2'), Z('I'), D(5)]);
  for (let cut = 0; cut <= stream.length; cut++) {
    const s = new Session();
    s.gate.auto = true;
    s.client(Q('INSERT INTO t VALUES (1)'), Q('SELECT a FROM t'));
    const pieces = [stream.subarray(0, cut), ...Array.from({ length: stream.length - cut }, (_, i) => stream.subarray(cut + i, cut + i + 1))];
    for (const p of pieces) if (p.length > 0) s.stream.write(p);
    s.stream.end();
    await tick();
    assert.equal(s.error, undefined);
    assert.equal(s.out.toString('hex'), stream.toString('hex'), `split at ${cut}`);
    assert.equal(s.gate.calls, 2, `split at ${cut}: each idle acknowledgment consulted once`);
  }
});

test('a refused acknowledgment leaves the client with whole messages before the held CommandComplete only', async () => {
  const before = Buffer.concat([T(), D(20), D(3)]);
  const stream = Buffer.concat([before, C('INSERT 0 2'), Z('I'), C('INSERT 0 1'), Z('I')]);
  for (let cut = 0; cut <= stream.length; cut++) {
    const s = new Session();
    s.client(Q('INSERT INTO t SELECT 1 RETURNING *'));
    s.stream.write(stream.subarray(0, cut));
    if (cut < stream.length) s.stream.write(stream.subarray(cut));
    await tick();
    assert.ok(s.out.length <= before.length && before.subarray(0, s.out.length).equals(s.out), `split at ${cut}`);
    assert.ok([0, T().length, T().length + D(20).length, before.length].includes(s.out.length), `split at ${cut}: aligned (${s.out.length})`);
    s.gate.refuse();
    await tick();
    assert.equal(s.error?.name, 'AckGateError');
    assert.ok(s.out.length <= before.length, 'the held CommandComplete never went out');
  }
});

test('a portal read in batches (Execute with a row limit + Flush, no Sync) never waits for the client (issue 21 item 1)', async () => {
  const s = new Session();
  s.client(P('SELECT g FROM generate_series(1, 10) g'), B(), Desc(), E(3), H());
  await s.backend(ParseComplete(), BindComplete(), T(), D(), D(), D(), Suspended());
  assert.ok(s.allOut(), 'first batch delivered');
  for (let batch = 0; batch < 2; batch++) {
    s.client(E(3), H());
    await s.backend(D(), D(), D(), Suspended());
    assert.ok(s.allOut(), `batch ${batch + 2} delivered`);
  }
  s.client(E(3), H());
  await s.backend(D(), C('SELECT 10'));
  assert.ok(s.allOut(), 'the last batch and its CommandComplete are delivered although no Sync is pending');
  assert.equal(s.gate.calls, 0);
  // The client syncs only after it saw CommandComplete: the ReadyForQuery is the acknowledgment.
  s.client(S());
  await s.backend(Z('I'));
  assert.equal(s.gate.calls, 1, 'the idle ReadyForQuery is still an acknowledgment (every statement writes here)');
  assert.equal(s.gate.held, 1);
  s.gate.release();
  await tick();
  assert.ok(s.allOut());
  assert.equal(s.conversation.pending, 0);
  assert.equal(s.conversation.lost, undefined);
});

test('pipelined Parse/Bind/Execute with Sync: the first CommandComplete waits only for the backend, the last is held with ReadyForQuery', async () => {
  const s = new Session();
  s.client(P('INSERT INTO t VALUES (1)'), B(), E(), P('INSERT INTO t VALUES (2)'), B(), E(), S());
  await s.backend(ParseComplete(), BindComplete(), C('INSERT 0 1'));
  assert.equal(s.out.length, ParseComplete().length + BindComplete().length, 'the CommandComplete waits for its successor (already requested)');
  await s.backend(ParseComplete());
  const firstPart = s.out.length;
  assert.equal(firstPart, s.sent.length, 'its successor is not an acknowledgment: both go out');
  await s.backend(BindComplete(), C('INSERT 0 1'), Notice(), Z('I'));
  assert.equal(s.gate.calls, 1);
  assert.equal(s.out.length, firstPart + BindComplete().length, 'CommandComplete, the notice between and ReadyForQuery are held');
  s.gate.release();
  await tick();
  assert.ok(s.allOut());
});

test('pipelined Executes with Flush and no Sync: nothing waits for the client', async () => {
  const s = new Session();
  s.client(P('INSERT INTO t VALUES (1)', 's1'), B('', 's1'), E(), B('', 's1'), E(), H());
  await s.backend(ParseComplete(), BindComplete(), C('INSERT 0 1'));
  assert.ok(!s.allOut(), 'the second Execute is flushed: its answer comes unasked, so the first CommandComplete may wait for it');
  await s.backend(BindComplete(), C('INSERT 0 1'));
  assert.ok(s.allOut(), 'the second CommandComplete goes out at once: what follows it waits for the client');
  assert.equal(s.gate.calls, 0);
});

test('an error mid-pipeline: the backend skips to Sync and the mirror follows (with and without the Sync already sent)', async () => {
  const s = new Session();
  s.gate.auto = true;
  s.client(P('SELECT 1/0'), B(), E(), P('INSERT INTO t VALUES (1)'), B(), E(), S());
  await s.backend(ParseComplete(), BindComplete(), Err(), Z('I'));
  assert.ok(s.allOut());
  assert.equal(s.gate.calls, 0, 'a failed implicit transaction acknowledged nothing');
  assert.equal(s.conversation.pending, 0);
  // Error before the client's Sync: everything it sends until Sync is skipped by the backend.
  s.client(P('SELECT 1/0'), B(), E(), H());
  await s.backend(ParseComplete(), BindComplete(), Err());
  s.client(P('INSERT INTO t VALUES (1)'), B(), E(), S());
  await s.backend(Z('I'));
  s.client(Q('INSERT INTO t VALUES (2)'));
  await s.backend(C('INSERT 0 1'), Z('I'));
  assert.ok(s.allOut());
  assert.equal(s.gate.calls, 1, 'the next statement is followed correctly');
  assert.equal(s.conversation.lost, undefined);
});

test('COPY FROM STDIN via Execute with a Sync pipelined before the data: that Sync is ignored, the CommandComplete goes out at once', async () => {
  const s = new Session();
  s.client(P('COPY t FROM STDIN'), B(), E(), S());
  await s.backend(ParseComplete(), BindComplete(), CopyIn());
  s.client(CopyData('1\n'), CopyData('2\n'), CopyDone());
  await s.backend(C('COPY 2'));
  assert.ok(s.allOut(), 'the Sync sent during the copy was ignored by the backend: nothing follows unasked');
  s.client(S());
  await s.backend(Z('I'));
  assert.equal(s.gate.calls, 1, 'COPY FROM is a write: its ReadyForQuery is held');
  s.gate.release();
  await tick();
  assert.ok(s.allOut());
  assert.equal(s.conversation.lost, undefined);
});

test('COPY FROM STDIN via Query: CommandComplete and ReadyForQuery are held together', async () => {
  const s = new Session(() => 'read');
  s.client(Q('COPY t FROM STDIN'));
  await s.backend(CopyIn());
  s.client(CopyData('1\n'), CopyDone());
  await s.backend(C('COPY 1'), Z('I'));
  assert.equal(s.gate.calls, 1, 'held even when the text was classified a read: CopyInResponse shows a write');
  assert.equal(s.out.length, CopyIn().length);
  s.gate.release();
  await tick();
  assert.ok(s.allOut());
});

test('COMMIT executed with Flush and no Sync is held at its CommandComplete, waiting only for the seal', async () => {
  const s = new Session();
  s.gate.auto = true;
  s.client(Q('BEGIN'), Q('INSERT INTO t VALUES (1)'));
  await s.backend(C('BEGIN'), Z('T'), C('INSERT 0 1'), Z('T'));
  assert.equal(s.gate.calls, 0, 'nothing is acknowledged inside a transaction');
  s.gate.auto = false;
  s.client(P('COMMIT'), B(), E(), H());
  await s.backend(ParseComplete(), BindComplete(), C('COMMIT'));
  assert.equal(s.gate.calls, 1);
  assert.equal(s.gate.held, 1);
  assert.equal(s.out.length, s.sent.length - C('COMMIT').length);
  s.gate.release();
  await tick();
  assert.ok(s.allOut());
  s.client(S());
  await s.backend(Z('I'));
  assert.equal(s.gate.calls, 1, 'the transaction was sealed at COMMIT: its ReadyForQuery is not held again');
  assert.ok(s.allOut());
});

test('an answer the mirror cannot place: conservative from then on (CommandComplete at once, every idle ReadyForQuery held)', async () => {
  const s = new Session(() => 'read');
  s.gate.auto = true;
  s.client(Q('SELECT 1'));
  await s.backend(msg('?'), C('SELECT 1'), Z('I'));
  assert.ok(s.conversation.lost);
  assert.ok(s.allOut());
  assert.equal(s.gate.calls, 1, 'lost: the idle ReadyForQuery is held although the statement was a read');
});

test('async messages after a kept CommandComplete stay with it; the backend ending flushes what is kept', async () => {
  const s = new Session();
  s.client(Q('INSERT INTO t VALUES (1)'));
  await s.backend(C('INSERT 0 1'), ParamStatus(), Notice());
  assert.equal(s.out.length, 0);
  s.stream.end();
  await tick();
  assert.ok(s.allOut());
});
