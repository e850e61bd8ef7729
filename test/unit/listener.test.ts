/**
 * The shared listener (proxy/shared/listener.ts) with real sockets on loopback and a toy line protocol as
 * the engine: "login\n" completes the handshake, the refusal writer answers "refused <reason>\n".
 * The caps, the refusal bound, drain with and without its deadline, close, stats and metrics.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { MetricsRegistry } from '../../src/kernel/metrics.ts';
import { silentLogger } from '../../src/kernel/log.ts';
import { EndpointMetrics } from '../../proxy/shared/metrics.ts';
import { createListener, type Listener, type ListenerLimits } from '../../proxy/shared/listener.ts';

const log = silentLogger();

interface Harness {
  listener: Listener;
  port: number;
  registry: MetricsRegistry;
  stops: string[];
}

async function start(limits: Partial<ListenerLimits> = {}, o: { refusalHoldsMs?: number } = {}): Promise<Harness> {
  const registry = new MetricsRegistry();
  const stops: string[] = [];
  const listener = createListener({
    protocol: 'toy', listen: { host: '127.0.0.1', port: 0 }, log, metrics: new EndpointMetrics('toy', registry),
    limits: { maxConnections: 3, maxPendingHandshakes: 3, maxRefusalHandshakes: 8, ...limits },
    engine: {
      converse(socket, conn) {
        socket.setEncoding('utf8');
        socket.on('data', (d: string) => {
          if (d.includes('login')) {
            conn.established();
            socket.write('ok\n');
          }
          if (d.includes('quit')) socket.end();
        });
        socket.on('end', () => socket.end());
        socket.once('close', () => {
          conn.record.close({ outcome: 'ok', bytesIn: 0, bytesOut: 0 });
          conn.closed();
        });
        return {
          stop(why) {
            stops.push(why);
            if (why === 'drain_deadline') socket.end('bye\n');
            else socket.destroy();
          },
        };
      },
      refuse(socket, reason, conn) {
        conn.record.close({ outcome: 'refused', bytesIn: 0, bytesOut: 0, error: reason });
        socket.once('close', () => conn.closed());
        // A slow refusal (think: a TLS handshake before the error) keeps its place for a while.
        const send = () => socket.end(`refused ${reason}\n`);
        if (o.refusalHoldsMs) setTimeout(send, o.refusalHoldsMs);
        else send();
        return { stop: () => socket.destroy() };
      },
    },
  });
  const addr = await listener.listen();
  assert.ok('port' in addr);
  return { listener, port: addr.port, registry, stops };
}

/** A client socket that records what it read and whether it was closed. */
class Client {
  readonly sock: net.Socket;
  text = '';
  closed = false;
  private constructor(sock: net.Socket) {
    this.sock = sock;
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => (this.text += d));
    sock.on('error', () => undefined);
    sock.on('close', () => (this.closed = true));
  }

  static connect(port: number): Promise<Client> {
    return new Promise((resolve, reject) => {
      const s = net.connect(port, '127.0.0.1', () => resolve(new Client(s)));
      s.once('error', reject);
    });
  }

  async login(): Promise<void> {
    this.sock.write('login\n');
    await until(() => this.text.includes('ok\n'), 'login answered');
  }
}

async function until(cond: () => boolean, what: string, ms = 3000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

function metric(h: Harness, line: string): number | undefined {
  const m = h.registry.render().split('\n').find((l) => l.startsWith(line + ' '));
  return m === undefined ? undefined : Number(m.slice(line.length + 1));
}

test('maxConnections counts connections from accept: handshaking and logged-in alike; the next one is refused in the engine\'s terms', async () => {
  const h = await start({ maxConnections: 2, maxPendingHandshakes: 2 });
  try {
    const a = await Client.connect(h.port);
    await a.login();
    const b = await Client.connect(h.port); // still handshaking: it holds a slot too
    await until(() => h.listener.stats().open === 2, 'two open');
    const c = await Client.connect(h.port);
    await until(() => c.closed, 'refused client closed');
    assert.equal(c.text, 'refused max_connections\n');
    const s = h.listener.stats();
    assert.equal(s.open, 2);
    assert.equal(s.pendingHandshakes, 1, 'b is pending, a is established');
    assert.equal(s.refused, 1);
    assert.deepEqual(s.refusedBy, { max_connections: 1, overload: 0, draining: 0 });
    assert.equal(s.total, 3);
    assert.equal(metric(h, 'cdbp_connections_refused_total{protocol="toy",reason="max_connections"}'), 1);
    assert.equal(metric(h, 'cdbp_connections_open{protocol="toy"}'), 2);
    assert.equal(metric(h, 'cdbp_handshakes_pending{protocol="toy"}'), 1);
    // A slot frees on the connection's cleanup, and the next client gets it.
    a.sock.end('quit\n');
    await until(() => h.listener.stats().open === 1, 'a closed');
    const d = await Client.connect(h.port);
    await d.login();
    assert.equal(h.listener.stats().open, 2);
    b.sock.destroy();
    d.sock.destroy();
    await until(() => h.listener.stats().open === 0, 'all closed');
    assert.equal(h.listener.stats().pendingHandshakes, 0);
    assert.equal(metric(h, 'cdbp_connections_open{protocol="toy"}'), 0);
  } finally {
    await h.listener.close();
  }
});

test('maxPendingHandshakes caps handshakes separately: silent clients cannot take every slot; a login frees a pending place', async () => {
  const h = await start({ maxConnections: 10, maxPendingHandshakes: 2 });
  try {
    const silent = [await Client.connect(h.port), await Client.connect(h.port)];
    await until(() => h.listener.stats().pendingHandshakes === 2, 'two pending');
    const over = await Client.connect(h.port);
    await until(() => over.closed, 'refused');
    assert.equal(over.text, 'refused overload\n');
    await silent[0]!.login();
    assert.equal(h.listener.stats().pendingHandshakes, 1);
    const next = await Client.connect(h.port);
    await next.login();
    const s = h.listener.stats();
    assert.equal(s.open, 3);
    assert.deepEqual(s.refusedBy, { max_connections: 0, overload: 1, draining: 0 });
    for (const c of [...silent, next]) c.sock.destroy();
  } finally {
    await h.listener.close();
  }
});

test('refusals in flight are bounded: past maxRefusalHandshakes a refused client is dropped unanswered', async () => {
  const h = await start({ maxConnections: 1, maxPendingHandshakes: 1, maxRefusalHandshakes: 2 }, { refusalHoldsMs: 400 });
  try {
    const holder = await Client.connect(h.port);
    await until(() => h.listener.stats().open === 1, 'slot taken');
    const refused = await Promise.all([1, 2, 3, 4].map(() => Client.connect(h.port)));
    await until(() => refused.every((c) => c.closed), 'all refused clients closed');
    const answered = refused.filter((c) => c.text === 'refused max_connections\n').length;
    const silent = refused.filter((c) => c.text === '').length;
    assert.equal(answered, 2, 'two refusals delivered');
    assert.equal(silent, 2, 'two dropped unanswered');
    const s = h.listener.stats();
    assert.equal(s.refused, 4, 'all four count as refused');
    assert.equal(s.unanswered, 2);
    // Once the refusals finished, their places are free again.
    const late = await Client.connect(h.port);
    await until(() => late.closed, 'late refused');
    assert.equal(late.text, 'refused max_connections\n');
    holder.sock.destroy();
  } finally {
    await h.listener.close();
  }
});

test('drain: stops accepting at once, lets sessions that end in time end, stops the rest at the deadline and counts them', async () => {
  const h = await start();
  try {
    const quick = await Client.connect(h.port);
    await quick.login();
    const straggler = await Client.connect(h.port);
    await straggler.login();
    const t0 = Date.now();
    const draining = h.listener.drain(500);
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(h.listener.stats().accepting, false);
    await assert.rejects(Client.connect(h.port), /ECONNREFUSED/, 'no new connections while draining');
    quick.sock.end('quit\n');
    const { forced } = await draining;
    const took = Date.now() - t0;
    assert.equal(forced, 1, 'only the straggler was forced');
    assert.ok(took >= 450 && took < 2000, `waited for the deadline (${took} ms)`);
    assert.deepEqual(h.stops, ['drain_deadline'], 'the engine was told why');
    await until(() => straggler.closed, 'straggler closed');
    assert.equal(straggler.text, 'ok\nbye\n');
    const s = h.listener.stats();
    assert.equal(s.drained, 1);
    assert.equal(s.open, 0);
    assert.equal(metric(h, 'cdbp_connections_drained_total{protocol="toy"}'), 1);
  } finally {
    await h.listener.close();
  }
});

test('drain returns as soon as the last session ends, without waiting for the deadline', async () => {
  const h = await start();
  try {
    const c = await Client.connect(h.port);
    await c.login();
    const t0 = Date.now();
    const draining = h.listener.drain(10_000);
    setTimeout(() => c.sock.end('quit\n'), 100);
    assert.deepEqual(await draining, { forced: 0 });
    assert.ok(Date.now() - t0 < 2000);
    assert.deepEqual(h.stops, []);
    assert.equal(h.listener.stats().drained, 0);
  } finally {
    await h.listener.close();
  }
});

test('close stops every conversation (handshaking ones and refusals included) and resolves once they reported closed', async () => {
  const h = await start({ maxConnections: 2, maxPendingHandshakes: 2 }, { refusalHoldsMs: 5_000 });
  try {
    const a = await Client.connect(h.port);
    await a.login();
    const b = await Client.connect(h.port);
    const refused = await Client.connect(h.port); // its refusal would take 5 s
    await until(() => h.listener.stats().open === 2 && h.listener.stats().refused === 1, 'two open, one refusing');
    const t0 = Date.now();
    await h.listener.close();
    assert.ok(Date.now() - t0 < 1000, 'close did not wait for the slow refusal');
    await until(() => a.closed && b.closed && refused.closed, 'all clients closed');
    assert.deepEqual(h.stops.sort(), ['close', 'close']);
    const s = h.listener.stats();
    assert.equal(s.open, 0);
    assert.equal(s.pendingHandshakes, 0);
    assert.equal(s.drained, 3, 'two sessions and the refusal');
  } finally {
    await h.listener.close();
  }
});

test('limits are checked: a zero cap is a configuration error', () => {
  const base = { protocol: 'toy', listen: { host: '127.0.0.1', port: 0 }, log, metrics: new EndpointMetrics('toy'),
    engine: { converse: () => ({ stop: () => undefined }), refuse: () => ({ stop: () => undefined }) } };
  assert.throws(() => createListener({ ...base, limits: { maxConnections: 0, maxPendingHandshakes: 1, maxRefusalHandshakes: 1 } }), /maxConnections/);
  assert.throws(() => createListener({ ...base, limits: { maxConnections: 1, maxPendingHandshakes: 0.5, maxRefusalHandshakes: 1 } }), /maxPendingHandshakes/);
});
