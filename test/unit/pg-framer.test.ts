import { test } from 'node:test';
import assert from 'node:assert/strict';
import { serialize } from 'pg-protocol';
import { MessageFramer, StartupFramer } from '../../proxy/pg/framer.ts';
import { encodeCancelRequest, encodeMessage, encodeSslRequest } from '../../proxy/pg/codec.ts';
import { CancelRegistry } from '../../proxy/pg/cancel-registry.ts';

/** Feeds `stream` to a fresh framer split at byte `cut` (and then byte by byte after it). */
function frameSplit(make: () => { push(b: Buffer): Buffer[] }, stream: Buffer, cut: number): Buffer[] {
  const f = make();
  const frames = [...f.push(stream.subarray(0, cut))];
  for (let i = cut; i < stream.length; i++) frames.push(...f.push(stream.subarray(i, i + 1)));
  return frames;
}

test('StartupFramer yields the same packets however the bytes are split', () => {
  const packets = [encodeSslRequest(), serialize.startup({ user: 'u', database: 'd' }), encodeCancelRequest(1, 2)];
  const stream = Buffer.concat(packets);
  for (let cut = 0; cut <= stream.length; cut++) {
    const frames = frameSplit(() => new StartupFramer(10_000), stream, cut);
    assert.deepEqual(frames.map((f) => f.toString('hex')), packets.map((p) => p.toString('hex')), `split at ${cut}`);
  }
});

test('MessageFramer yields the same messages however the bytes are split, and keeps the remainder', () => {
  const msgs = [serialize.password('secret'), serialize.query('select 1'), serialize.end()];
  const stream = Buffer.concat(msgs);
  for (let cut = 0; cut <= stream.length; cut++) {
    const frames = frameSplit(() => new MessageFramer(1000), stream, cut);
    assert.deepEqual(frames.map((f) => f.toString('hex')), msgs.map((p) => p.toString('hex')), `split at ${cut}`);
  }
  const f = new MessageFramer(1000);
  assert.equal(f.push(Buffer.concat([msgs[0]!, msgs[1]!.subarray(0, 3)])).length, 1);
  assert.equal(f.takeRemainder().toString('hex'), msgs[1]!.subarray(0, 3).toString('hex'));
});

test('a 1 GB length is refused as soon as its header arrives, before any body is buffered', () => {
  const startup = Buffer.alloc(4);
  startup.writeUInt32BE(1 << 30, 0);
  assert.throws(() => new StartupFramer(10_000).push(startup), (e: any) => e.code === 'FRAME_TOO_LARGE' && e.details.size === 1 << 30);
  const msg = Buffer.from([0x70, 0, 0, 0, 0]);
  msg.writeUInt32BE(1 << 30, 1);
  assert.throws(() => new MessageFramer(65536).push(msg), (e: any) => e.code === 'FRAME_TOO_LARGE');
  // below the header nothing is decided yet
  assert.deepEqual(new StartupFramer(10_000).push(startup.subarray(0, 3)), []);
  // lengths shorter than the header itself are protocol violations
  assert.throws(() => new StartupFramer(10_000).push(Buffer.from([0, 0, 0, 3])), (e: any) => e.code === 'PROTOCOL_VIOLATION');
  assert.throws(() => new MessageFramer(100).push(Buffer.from([0x51, 0, 0, 0, 2])), (e: any) => e.code === 'PROTOCOL_VIOLATION');
});

test('CancelRegistry issues random keys, matches only the exact secret, forgets on release', () => {
  const reg = new CancelRegistry();
  const a = reg.issue({ processId: 100, secretKey: 200 });
  const b = reg.issue({ processId: 101, secretKey: 201 });
  assert.notEqual(a.processId, b.processId);
  assert.ok(a.processId > 0 && a.processId <= 0x7fffffff);
  assert.deepEqual(reg.lookup(a.processId, a.secretKey), { processId: 100, secretKey: 200 });
  assert.equal(reg.lookup(a.processId, (a.secretKey + 1) >>> 0), undefined);
  assert.equal(reg.lookup(100, 200), undefined, 'backend keys are not valid proxy keys');
  a.release();
  assert.equal(reg.lookup(a.processId, a.secretKey), undefined);
  assert.equal(reg.size, 1);
});
