import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AckGateStream, type AckGate } from '../../proxy/pg/ack-gate.ts';
import { encodeMessage } from '../../proxy/pg/codec.ts';

const C = (tag: string) => encodeMessage(0x43, Buffer.from(`${tag}\0`));
const Z = (status: string) => encodeMessage(0x5a, Buffer.from(status));
const D = (n: number) => encodeMessage(0x44, Buffer.concat([Buffer.from([0, 1]), Buffer.alloc(4, 0), Buffer.alloc(n, 0x61)]));

/** Writes `stream` split at `cut` (then byte by byte) and collects the output or the error. */
async function through(gate: AckGate, stream: Buffer, cut: number): Promise<{ out: Buffer; error?: Error }> {
  const g = new AckGateStream(gate);
  const out: Buffer[] = [];
  g.on('data', (d: Buffer) => out.push(d));
  const finished = new Promise<Error | undefined>((resolve) => {
    g.on('error', (e) => resolve(e));
    g.on('end', () => resolve(undefined));
  });
  const pieces = [stream.subarray(0, cut), ...Array.from({ length: stream.length - cut }, (_, i) => stream.subarray(cut + i, cut + i + 1))];
  for (const p of pieces) if (p.length > 0 && !g.destroyed) g.write(p);
  g.end();
  const error = await finished;
  return { out: Buffer.concat(out), ...(error ? { error } : {}) };
}

const stream = Buffer.concat([D(20), D(3), C('SELECT 2'), Z('I'), C('INSERT 0 1'), Z('I'), D(5)]);
const firstAckStart = D(20).length + D(3).length;

test('with a gate that releases, the output equals the input at every split, and every idle ack is consulted', async () => {
  for (let cut = 0; cut <= stream.length; cut++) {
    let calls = 0;
    const gate: AckGate = { holdAck: () => (calls++ % 2 === 0 ? Promise.resolve() : undefined) };
    const r = await through(gate, stream, cut);
    assert.equal(r.error, undefined);
    assert.equal(r.out.toString('hex'), stream.toString('hex'), `split at ${cut}`);
    assert.equal(calls, 2);
  }
});

test('a refused ack leaves the client with whole messages only, and never the held CommandComplete', async () => {
  for (let cut = 0; cut <= stream.length; cut++) {
    const gate: AckGate = { holdAck: () => Promise.reject(new Error('no seal')) };
    const r = await through(gate, stream, cut);
    assert.equal(r.error?.name, 'AckGateError', `split at ${cut}`);
    // whatever was released is a whole-message prefix that stops before the first CommandComplete
    assert.ok(r.out.length <= firstAckStart, `split at ${cut}: ${r.out.length} bytes out`);
    assert.ok([0, D(20).length, firstAckStart].includes(r.out.length), `split at ${cut}: aligned (${r.out.length})`);
  }
});
