/**
 * The counter channel's wire codec (split-safe framing, MAC per direction and sequence number, caps) and
 * the guard's seal pipeline over an ordered counter (the next seal goes out while the previous advance
 * is in flight; lost answers and forks in the middle of a pipeline).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import {
  Dir, FrameReader, Kind, MAX_FRAME, decodeAnswer, decodeRequest, encodeAnswer, encodeRequest, sealFrame, type Request,
} from '../../src/cas-client/counter-channel-wire.ts';
import { CdbpError } from '../../src/kernel/errors.ts';
import type { CounterClient, CounterState } from '../../src/provisioning/types.ts';
import { FreshnessGuard } from '../../proxy/freshness/guard.ts';
import { RecordStore } from '../../proxy/freshness/store.ts';
import type { DurablePosition } from '../../proxy/freshness/record.ts';
import { silentLogger } from '../../src/kernel/log.ts';
import { MetricsRegistry } from '../../src/kernel/metrics.ts';
import { tempDir } from '../support/tmp.ts';

const d32 = 'ab'.repeat(32);
const requests: Request[] = [
  { kind: Kind.Read, id: 1 },
  { kind: Kind.Advance, id: 2, expected: 0, next: 1, expectedDigest: '', digest: d32, record: Buffer.from('record') },
  { kind: Kind.Advance, id: 0xffffffff, expected: 2 ** 53 - 2, next: 2 ** 53 - 1, digest: 'cd'.repeat(64) },
];

test('requests and answers round-trip; every frame survives being split at every byte', () => {
  for (const r of requests) assert.deepEqual(decodeRequest(encodeRequest(r)), r);
  const answers = [
    { kind: Kind.State as const, id: 7, value: 3, digest: d32, record: randomBytes(4096) },
    { kind: Kind.State as const, id: 8, value: 0, digest: '' },
    { kind: Kind.Error as const, id: 9, value: 4, digest: d32, code: 'COUNTER_CONFLICT', message: 'counter is at 4, not 3 — ü' },
  ];
  for (const a of answers) assert.deepEqual(decodeAnswer(encodeAnswer(a)), a);
  const key = randomBytes(32);
  const stream = Buffer.concat(requests.map((r, i) => sealFrame(key, Dir.ToCas, i, encodeRequest(r))));
  for (let cut = 0; cut <= stream.length; cut++) {
    const reader = new FrameReader(key, Dir.ToCas);
    const got = [...reader.push(stream.subarray(0, cut)), ...reader.push(stream.subarray(cut))].map(decodeRequest);
    assert.deepEqual(got, requests, `split at ${cut}`);
  }
});

test('a frame fails its MAC when altered, replayed, reordered, reflected or keyed otherwise', () => {
  const key = randomBytes(32);
  const f0 = sealFrame(key, Dir.ToCas, 0, encodeRequest(requests[0]!));
  const f1 = sealFrame(key, Dir.ToCas, 1, encodeRequest(requests[1]!));
  const bad = (bytes: Buffer, k = key, dir = Dir.ToCas) => assert.throws(() => new FrameReader(k, dir).push(bytes),
    (e: unknown) => e instanceof CdbpError && e.code === 'PROTOCOL_VIOLATION');
  const flipped = Buffer.from(f0);
  flipped[6]! ^= 1;
  bad(flipped);
  bad(Buffer.concat([f0, f0]));            // replay: the second copy carries sequence 0, 1 is due
  bad(Buffer.concat([f1, f0]));            // reorder
  bad(f0, key, Dir.ToClient);              // reflected back at its sender
  bad(f0, randomBytes(32));                // another session's key
  assert.equal(new FrameReader(key, Dir.ToCas).push(Buffer.concat([f0, f1])).length, 2);
});

test('lengths are capped before anything is buffered; malformed bodies are protocol errors', () => {
  const huge = Buffer.alloc(4);
  huge.writeUInt32BE(MAX_FRAME + 1);
  assert.throws(() => new FrameReader(randomBytes(32), Dir.ToCas).push(huge), /frame length/);
  assert.throws(() => decodeRequest(Buffer.from([0x02, 0, 0, 0, 1, 0])), /ends inside a field/);
  assert.throws(() => decodeRequest(Buffer.from([0x09, 0, 0, 0, 1])), /unknown request kind/);
  assert.throws(() => decodeRequest(Buffer.concat([encodeRequest(requests[0]!), Buffer.from([0])])), /trailing bytes/);
  const big = encodeRequest({ kind: Kind.Advance, id: 1, expected: 0, next: 1, digest: d32 });
  big.writeUInt8(0xff, 1 + 4 + 16 + 1); // digest length 255
  assert.throws(() => decodeRequest(big), /digest of 255 bytes/);
});

// --- the guard's pipeline over an ordered counter ---------------------------------------------------

/** A CAS stand-in that keeps order and the expectedDigest check, and answers after `delayMs`. */
class OrderedCounter implements CounterClient {
  readonly ordered = true;
  state: CounterState = { value: 0, digest: '' };
  delayMs = 40;
  inFlight = 0;
  maxInFlight = 0;
  advances = 0;
  /** Apply the next N advances but lose their answers. */
  loseAnswers = 0;
  /** Before applying the next advance, someone else advances the counter (a fork). */
  forkNext = false;
  private tail: Promise<unknown> = Promise.resolve();
  async read(): Promise<CounterState> {
    return { ...this.state };
  }
  advance(expected: number, next: number, digest: string, record?: Buffer, expectedDigest?: string): Promise<CounterState> {
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    // Applied in arrival order at once (the CAS compares against unsynced values), answered after the delay.
    let outcome: () => CounterState;
    if (this.forkNext) {
      this.forkNext = false;
      this.state = { value: this.state.value + 1, digest: 'ee'.repeat(32) };
    }
    if (this.state.value !== expected || (expectedDigest !== undefined && this.state.digest !== expectedDigest)) {
      const now = { ...this.state };
      outcome = () => { throw new CdbpError('COUNTER_CONFLICT', `counter is at ${now.value}`, { details: { ...now } }); };
    } else {
      this.state = { value: next, digest, ...(record ? { record } : {}) };
      this.advances++;
      if (this.loseAnswers > 0) {
        this.loseAnswers--;
        outcome = () => { throw new CdbpError('CAS_UNREACHABLE', 'answer lost (test)'); };
      } else {
        const s = { ...this.state };
        outcome = () => s;
      }
    }
    // Durable delayMs after arrival (as a group commit), answered in order.
    const due = Date.now() + this.delayMs;
    const run = this.tail.then(() => new Promise<CounterState>((resolve, reject) => setTimeout(() => {
      this.inFlight--;
      try { resolve(outcome()); } catch (e) { reject(e); }
    }, Math.max(0, due - Date.now()))));
    this.tail = run.catch(() => undefined);
    return run;
  }
}

class FakePosition {
  lsn = 1000;
  async read(): Promise<DurablePosition> {
    return { engine: 'mariadb', lsnFlushed: String(this.lsn), lsnCheckpoint: String(this.lsn), gtid: `0-1-${this.lsn}` };
  }
  async close() {}
}

async function pipelineGuard(t: { after(fn: () => void): void }, counter: OrderedCounter) {
  const dir = tempDir('pipe');
  t.after(() => dir.remove());
  const g = new FreshnessGuard({
    store: new RecordStore(path.join(dir.path, 'f.sealed')), key: randomBytes(32), databaseId: 'db', counter, mode: 'strict',
    log: silentLogger(), metrics: new MetricsRegistry(), holdTimeoutMs: 3000, sealIntervalMs: 60_000,
  });
  await g.verifyAtStartup();
  const pos = new FakePosition();
  g.startRuntime(pos);
  return { g, pos };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('pipelining: an ack arriving while an advance is in flight is covered by the very next seal', async (t) => {
  const counter = new OrderedCounter();
  counter.delayMs = 200;
  const { g, pos } = await pipelineGuard(t, counter);
  const base = counter.advances;
  pos.lsn = 2000;
  const t0 = Date.now();
  const a = g.holdAck()!;
  await sleep(10);
  pos.lsn = 3000;
  const b = g.holdAck()!;
  await a;
  const aAt = Date.now() - t0;
  await b;
  const bAt = Date.now() - t0;
  assert.equal(counter.maxInFlight, 2, 'the second seal went out while the first was in flight');
  assert.equal(counter.advances - base, 2);
  // Serial seals would release b one whole advance after a (≥ 200 ms); pipelined, ~10 ms after.
  assert.ok(bAt - aAt < 150, `b released ${bAt - aAt} ms after a`);
  assert.equal(counter.state.value, g.status().epoch);
  await g.stop();
});

test('pipelining: answers lost mid-pipeline are recognised from the counter, not taken for a fork', async (t) => {
  const counter = new OrderedCounter();
  const { g, pos } = await pipelineGuard(t, counter);
  counter.loseAnswers = 2;
  const holds: Array<Promise<void>> = [];
  for (let i = 0; i < 3; i++) {
    pos.lsn += 100;
    holds.push(g.holdAck()!);
    await sleep(5);
  }
  await Promise.all(holds);
  assert.equal(g.violated, undefined);
  assert.equal(g.status().epoch, counter.state.value);
  await g.stop();
});

test('pipelining: a fork landing between two pipelined advances is caught (the second does not land on it)', async (t) => {
  const counter = new OrderedCounter();
  const { g, pos } = await pipelineGuard(t, counter);
  const violations: unknown[] = [];
  g.on('violation', (v) => violations.push(v));
  counter.forkNext = true;
  pos.lsn += 100;
  const a = g.holdAck()!;
  await sleep(5);
  pos.lsn += 100;
  const b = g.holdAck()!;
  const [ra, rb] = await Promise.allSettled([a, b]);
  assert.equal(ra.status, 'rejected');
  assert.equal(rb.status, 'rejected');
  assert.equal(g.violated?.kind, 'fork');
  assert.equal(violations.length, 1);
  assert.equal(counter.state.digest, 'ee'.repeat(32), 'neither of our records landed on the fork');
  await g.stop();
});
