/**
 * The fault tests' TCP forwarder (test/support/tcp-delay-proxy.ts) over real loopback sockets, in front of
 * a small upstream that records what it receives and echoes it. Bounds are generous (a 2-core CI machine
 * under load): a delay is checked from below only, never "fast enough".
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { startDelayProxy, type DelayProxy } from '../support/tcp-delay-proxy.ts';

interface Upstream {
  port: number;
  /** Bytes received per accepted connection, in accept order. */
  received: Buffer[][];
  /** When each connection's first byte arrived. */
  firstByteAt: number[];
  sockets: net.Socket[];
  close(): Promise<void>;
}

/** Echoes every byte; on the client's end it writes "bye" and ends (a half-close answered after it). */
async function upstream(): Promise<Upstream> {
  const u: Upstream = { port: 0, received: [], firstByteAt: [], sockets: [], close: async () => {} };
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    const i = u.received.push([]) - 1;
    u.sockets.push(s);
    s.on('error', () => {});
    s.on('data', (d: Buffer) => {
      if (u.received[i]!.length === 0) u.firstByteAt[i] = Date.now();
      u.received[i]!.push(d);
      s.write(d);
    });
    s.on('end', () => s.end('bye'));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  u.port = (server.address() as net.AddressInfo).port;
  u.close = async () => {
    for (const s of u.sockets) s.destroy();
    await new Promise<void>((r) => server.close(() => r()));
  };
  return u;
}

async function connect(port: number): Promise<{ socket: net.Socket; got: () => Buffer; closed: Promise<void> }> {
  const socket = net.connect({ port, host: '127.0.0.1' });
  const chunks: Buffer[] = [];
  socket.on('data', (d: Buffer) => chunks.push(d));
  socket.on('error', () => {});
  const closed = once(socket, 'close').then(() => {});
  await once(socket, 'connect');
  return { socket, got: () => Buffer.concat(chunks), closed };
}

async function until(cond: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function harness(t: { after(fn: () => Promise<void>): void }): Promise<{ up: Upstream; proxy: DelayProxy }> {
  const up = await upstream();
  const proxy = await startDelayProxy({ target: up.port });
  t.after(async () => { await proxy.close(); await up.close(); });
  return { up, proxy };
}

test('pass-through: bytes arrive intact both ways, and a half-close is answered after the data', async (t) => {
  const { up, proxy } = await harness(t);
  const c = await connect(proxy.port);
  const sent = randomBytes(512 * 1024);
  for (let off = 0; off < sent.length; off += 7000) c.socket.write(sent.subarray(off, off + 7000));
  c.socket.end();
  await c.closed;
  assert.deepEqual(Buffer.concat(up.received[0]!), sent);
  assert.deepEqual(c.got(), Buffer.concat([sent, Buffer.from('bye')]));
  await until(() => proxy.connections === 0);
});

test('delay: a 200 ms delay is added on the way in, and jitter never reorders bytes', async (t) => {
  const { up, proxy } = await harness(t);
  proxy.set({ kind: 'delay', ms: 200, jitterMs: 150 });
  const c = await connect(proxy.port);
  const sent = randomBytes(40 * 1024);
  const start = Date.now();
  // Writes a few ms apart arrive as separate chunks, each with its own jittered release time.
  for (let off = 0; off < sent.length; off += 1024) {
    c.socket.write(sent.subarray(off, off + 1024));
    await new Promise((r) => setTimeout(r, 3));
  }
  c.socket.end();
  await c.closed;
  assert.ok(up.firstByteAt[0]! - start >= 150, `first byte reached the upstream after ${up.firstByteAt[0]! - start} ms, expected >= 150`);
  assert.deepEqual(Buffer.concat(up.received[0]!), sent);
  assert.deepEqual(c.got(), Buffer.concat([sent, Buffer.from('bye')]));
  // Both directions are delayed: a round trip takes at least two delays.
  const d = await connect(proxy.port);
  const t0 = Date.now();
  d.socket.write('ping');
  await until(() => d.got().length === 4);
  assert.ok(Date.now() - t0 >= 300, `round trip took ${Date.now() - t0} ms, expected >= 300`);
  d.socket.destroy();
});

test('partition: nothing gets through either way; healing destroys held connections and new ones work', async (t) => {
  const { up, proxy } = await harness(t);
  const held = await connect(proxy.port);
  held.socket.write('before');
  await until(() => held.got().toString() === 'before');
  proxy.set({ kind: 'partition' });
  held.socket.write('during');
  const late = await connect(proxy.port); // accepted, but never dialled through
  late.socket.write('late');
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(Buffer.concat(up.received[0]!).toString(), 'before');
  assert.equal(held.got().toString(), 'before');
  assert.equal(up.received.length, 1, 'a connection made during the partition reached the upstream');
  assert.equal(late.got().length, 0);
  assert.equal(proxy.connections, 2);
  proxy.set({ kind: 'pass' });
  await held.closed;
  await late.closed;
  const fresh = await connect(proxy.port);
  fresh.socket.write('after');
  await until(() => fresh.got().toString() === 'after');
  fresh.socket.destroy();
});

test('an upstream that is down or resets only closes the client connection', async (t) => {
  const { up, proxy } = await harness(t);
  const c = await connect(proxy.port);
  c.socket.write('x');
  await until(() => up.sockets.length === 1);
  up.sockets[0]!.resetAndDestroy();
  await c.closed;
  await up.close();
  const refused = await connect(proxy.port); // the proxy accepts; dialling the upstream fails
  await refused.closed;
  await until(() => proxy.connections === 0);
});

test('close destroys every connection and the listener', async (t) => {
  const { proxy } = await harness(t);
  const a = await connect(proxy.port);
  proxy.set({ kind: 'delay', ms: 1000 });
  a.socket.write('queued');
  proxy.set({ kind: 'partition' });
  const b = await connect(proxy.port);
  await until(() => proxy.connections === 2);
  await proxy.close();
  await Promise.all([a.closed, b.closed]);
  assert.equal(proxy.connections, 0);
  const s = net.connect({ port: proxy.port, host: '127.0.0.1' });
  const [err] = await once(s, 'error') as [NodeJS.ErrnoException];
  assert.equal(err.code, 'ECONNREFUSED');
});
