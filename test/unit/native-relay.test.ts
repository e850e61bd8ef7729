/**
 * Differential test of the native relay's strict-freshness framing (proxy/native/relay.c) against its
 * reference, the JS GatedPump (proxy/mysql/pump.ts). test/support/native-relay-harness.c (see its header)
 * links relay.c unchanged and runs it on one connection with a fake I/O table (TLS records and events)
 * and no worker thread; this file builds it with cc and feeds it and a GatedPump the same seeded traffic:
 * the same random splits of both streams (down to single bytes, packet starts split across reads,
 * statements crossing the 65-byte inspection window, 0xFFFFFF continued packets, LOCAL INFILE data,
 * several acknowledgments in one held buffer), the same release schedule, the same ends (client first,
 * database cut mid-stream, a refused acknowledgment). After every step both must have sent the client
 * the same bytes, held the same acknowledgments and agree on holding and on the ends of both streams;
 * the database must have received the client's stream, in order, from both.
 *
 * The one intended difference: the C tracker bounds the commands awaiting their answers
 * (TRACKER_MAX_PENDING) and stops forwarding the client there until answers bring it under half
 * (SCAN_TRACKER_FULL, rescan_client); the JS pump has no bound. The pipelined seeds go past the bound
 * and check exactly that: the database gets a prefix of what the JS pump forwarded, cut at the bound,
 * the rest once the answers came, and the client side still agrees step by step.
 *
 * Fixed seeds: a failure names its seed and step and reproduces. Without a C compiler (or Node's headers)
 * this test fails with the reason; it never skips (CI installs gcc).
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { Duplex } from 'node:stream';
import { ackRefusedPacket, startPump, type Pump } from '../../proxy/mysql/pump.ts';
import { Cap, Command, ServerStatus } from '../../proxy/mysql/constants.ts';
import { encodePacket } from '../../proxy/mysql/codec.ts';
import { rng, StreamGen, type Pkt, type Rng } from '../support/mysql-stream-gen.ts';
import { buildTestAddon, REPO } from '../support/native-build.ts';

const HARNESS_SOURCE = 'test/support/native-relay-harness.c';
/** The C tracker's bound on commands awaiting their answers (tracker.h). */
const TRACKER_MAX_PENDING = Number(/#define TRACKER_MAX_PENDING (\d+)/.exec(readFileSync(path.join(REPO, 'proxy', 'native', 'tracker.h'), 'utf8'))?.[1]);
if (!(TRACKER_MAX_PENDING > 0)) throw new Error('TRACKER_MAX_PENDING not found in proxy/native/tracker.h');

/** Seeds of the random-traffic test; every HUGE_EVERY-th also sends 0xFFFFFF continued packets both ways. */
const MIXED_SEEDS = Array.from({ length: 4000 }, (_, k) => k + 1);
const HUGE_EVERY = 100;
/** Seeds of the pipelining test (each sends TRACKER_MAX_PENDING + 4,000..7,000 commands). */
const PIPELINED_SEEDS = [1, 2];

// ------------------------------------------------------------------------------------------------
// The harness

/** What native-relay-harness.c reports about its connection. */
interface RelayState {
  /** EV_HOLD events so far. */
  holds: number;
  holding: boolean;
  /** Bytes of a server packet start carried into the next read (s_carry_len). */
  carry: number;
  /** Bytes of a client packet start the scanner keeps until its inspected bytes are there. */
  scanHeld: number;
  /** Client bytes kept back because the tracker is full (c_unscanned). */
  unscanned: number;
  /** Commands awaiting their answer in the C tracker. */
  pending: number;
  /** The relay ended the client's side (after a refusal, or once the database ended). */
  clientEnded: boolean;
  /** The database read the end of the relay's stream. */
  databaseEnded: boolean;
  closed: boolean;
  outcome: string;
  error: string;
}

interface RelayHarness {
  relayOpen(deprecateEof: boolean, cacheMetadata: boolean): void;
  relayClient(bytes: Buffer): void;
  relayClientEnd(): void;
  /** Returns how many bytes the database socket accepted. */
  relayServer(bytes: Buffer): number;
  relayServerEnd(): void;
  relayRelease(): void;
  relayRefuse(errPacket: Buffer): void;
  relayTakeClient(): Buffer;
  relayTakeDatabase(): Buffer;
  relayState(): RelayState;
  relayClose(): void;
}

let built: { addon: RelayHarness; remove(): void } | undefined;
after(() => built?.remove());

/** The relay (relay.c, unchanged) linked with the harness's fake I/O table, and the tracker. */
function harness(): RelayHarness {
  built ??= buildTestAddon<RelayHarness>('native-relay-harness', [HARNESS_SOURCE, 'proxy/native/relay.c', 'proxy/native/tracker.c']);
  return built.addon;
}

// ------------------------------------------------------------------------------------------------
// Traffic

/** A packet header; the payload follows. */
function header(length: number, seq: number): Buffer {
  const h = Buffer.alloc(4);
  h.writeUIntLE(length, 0, 3);
  h[3] = seq & 0xff;
  return h;
}

/** One command and the server's whole answer, as bytes on the wire. */
interface Exchange { client: Buffer; server: Buffer }

/** What the traffic of a seed reached (the minimum counts the tests assert). */
interface Coverage {
  longStatements: number;
  infileUploads: number;
  hugeServerPackets: number;
  hugeClientPackets: number;
}

/**
 * The server's packets on the wire. A packet that claims more bytes than its payload holds is padded
 * to its claimed length when that is small; a claim of 0xFFFFFF becomes a real 16 MiB packet and its
 * continuation while `huge.budget` lasts (the cost of a seed), else the claim is dropped.
 */
function serverWire(pkts: Pkt[], r: Rng, huge: { budget: number }, cov: Coverage): Buffer {
  const out: Buffer[] = [];
  let seq = 1;
  for (const p of pkts) {
    let payload = p.payload;
    if (p.length !== payload.length) {
      if (p.length === 0xffffff && huge.budget > 0) {
        huge.budget--;
        cov.hugeServerPackets++;
        payload = Buffer.concat([payload, Buffer.alloc(0xffffff - payload.length, 0x41)]);
      } else if (p.length > payload.length && p.length < 100_000) {
        payload = Buffer.concat([payload, Buffer.alloc(p.length - payload.length, 0x42)]);
      }
    }
    if (payload.length === 0xffffff) {
      out.push(header(0xffffff, seq++), payload, encodePacket(seq++, Buffer.alloc(r.int(40), 0x43)));
    } else {
      out.push(encodePacket(seq++, payload));
    }
  }
  return Buffer.concat(out);
}

function exchange(gen: StreamGen, r: Rng, huge: { budget: number }, cov: Coverage): Exchange {
  const cmd = gen.command();
  let payload = Buffer.concat([Buffer.from([cmd.command]), cmd.rest]);
  const parts: Buffer[] = [];
  if (cmd.command === Command.COM_QUERY || cmd.command === Command.COM_STMT_PREPARE) {
    if (huge.budget > 0 && r.chance(0.2)) {
      // A statement of 0xFFFFFF bytes and more: its first packet is never complete.
      huge.budget--;
      cov.hugeClientPackets++;
      payload = Buffer.concat([payload, Buffer.alloc(0xffffff - payload.length, 0x20)]);
      parts.push(header(0xffffff, 0), payload, encodePacket(1, Buffer.alloc(r.int(100), 0x20)));
    } else if (r.chance(0.3)) {
      // Past the 65 bytes the scanner waits for (command byte + STATEMENT_PREFIX_BYTES), sometimes far past.
      cov.longStatements++;
      payload = Buffer.concat([payload, Buffer.alloc(r.chance(0.1) ? 20_000 + r.int(20_000) : r.int(300), 0x20)]);
    }
  }
  if (cmd.command === Command.COM_CHANGE_USER && r.chance(0.5)) payload = Buffer.concat([payload, Buffer.alloc(r.int(400), 0x61)]);
  if (parts.length === 0) parts.push(encodePacket(0, payload));
  // LOCAL INFILE: after a COM_QUERY answered with 0xFB, the file's packets numbered on from 2, then an
  // empty one; none of them is a command.
  if (cmd.command === Command.COM_QUERY && cmd.response[0]?.payload[0] === 0xfb && r.chance(0.7)) {
    cov.infileUploads++;
    const n = r.int(5);
    for (let k = 0; k < n; k++) parts.push(encodePacket(2 + k, Buffer.alloc(1 + r.int(3000), 0x30 + k)));
    parts.push(encodePacket(2 + n, Buffer.alloc(0)));
  }
  return { client: Buffer.concat(parts), server: serverWire(cmd.response, r, huge, cov) };
}

/**
 * Many cheap commands (pings and reads, some writes whose OK is held, some of the generator's). Not
 * among them: replication commands (the trackers would stop counting, and the bound would never be
 * reached), and the commands that change the prepared-statement map as soon as they are seen
 * (COM_STMT_CLOSE, COM_RESET_CONNECTION, COM_CHANGE_USER). Past the bound the C tracker sees those later
 * than the JS one, which sees every command at once; an EXECUTE answered in between may then be
 * classified differently (by JS as an unknown statement, a write), an intended difference of the bound.
 */
function pipelinedExchange(gen: StreamGen, r: Rng, cov: Coverage): Exchange {
  const c = r.next();
  const okPacket = (status: number) => encodePacket(1, Buffer.from([0x00, 0x00, 0x00, status & 0xff, status >> 8, 0, 0]));
  if (c < 0.6) return { client: encodePacket(0, Buffer.from([Command.COM_PING])), server: okPacket(ServerStatus.AUTOCOMMIT) };
  if (c < 0.9) return { client: encodePacket(0, Buffer.from('\x03SELECT 1', 'latin1')), server: okPacket(ServerStatus.AUTOCOMMIT) };
  if (c < 0.98) return { client: encodePacket(0, Buffer.from('\x03DO 1', 'latin1')), server: okPacket(ServerStatus.AUTOCOMMIT) };
  for (;;) {
    const x = exchange(gen, r, { budget: 0 }, cov);
    if (!PIPELINED_EXCLUDED.has(x.client[4]!)) return x;
  }
}
const PIPELINED_EXCLUDED = new Set<number>([
  Command.COM_BINLOG_DUMP, Command.COM_BINLOG_DUMP_GTID, Command.COM_REGISTER_SLAVE, Command.COM_MULTI,
  Command.COM_STMT_CLOSE, Command.COM_RESET_CONNECTION, Command.COM_CHANGE_USER,
]);

// ------------------------------------------------------------------------------------------------
// The JS side: a GatedPump between two fake sockets

/** Enough of a net.Socket for GatedPump: records writes, tracks pause/end. */
class FakeSocket extends EventEmitter {
  readonly written: Buffer[] = [];
  ended = false;
  paused = false;
  readonly writableNeedDrain = false;
  write(b: Buffer): boolean {
    this.written.push(Buffer.from(b));
    return true;
  }
  end(b?: Buffer): this {
    if (b) this.write(b);
    this.ended = true;
    return this;
  }
  pause(): this {
    this.paused = true;
    return this;
  }
  resume(): this {
    this.paused = false;
    return this;
  }
  /** The bytes written since the last call. */
  take(): Buffer {
    const out = Buffer.concat(this.written);
    this.written.length = 0;
    return out;
  }
}

class JsRelay {
  readonly client = new FakeSocket();
  readonly backend = new FakeSocket();
  readonly pump: Pump;
  holds = 0;
  private readonly answers: { resolve: () => void; reject: (e: Error) => void }[] = [];
  /** Database bytes a paused backend socket has not delivered yet (it delivers them on resume). */
  private readonly queued: Buffer[] = [];
  private databaseEnding = false;
  private databaseEndDelivered = false;

  constructor(deprecateEof: boolean, cacheMetadata: boolean) {
    const caps = (deprecateEof ? Cap.CLIENT_DEPRECATE_EOF : 0n) | (cacheMetadata ? Cap.MARIADB_CLIENT_CACHE_METADATA : 0n);
    const gate = {
      holdAck: () => {
        this.holds++;
        return new Promise<void>((resolve, reject) => this.answers.push({ resolve, reject }));
      },
    };
    const events = { onAckRefused() {}, onForbiddenChangeUser() {} };
    this.pump = startPump(this.client as unknown as Duplex, this.backend as unknown as Duplex, caps, gate, events, { forbiddenUsers: new Set() });
  }

  fromClient(b: Buffer): void {
    this.client.emit('data', b);
  }
  clientEnd(): void {
    this.client.emit('end');
  }
  fromServer(b: Buffer): void {
    this.queued.push(b);
    this.deliver();
  }
  serverEnd(): void {
    this.databaseEnding = true;
    this.deliver();
  }
  /** Returns whether the pump held again inside the buffer it held (before new server bytes came). */
  async release(): Promise<boolean> {
    this.answers.shift()!.resolve();
    await this.settled();
    const again = this.pump.holding;
    this.deliver();
    return again;
  }
  async refuse(): Promise<void> {
    this.answers.shift()!.reject(new Error('refused by the test'));
    await this.settled();
    this.deliver();
  }

  /** The pump takes the gate's answer in a promise continuation. */
  private settled(): Promise<void> {
    return new Promise<void>((resolve) => setImmediate(resolve));
  }

  private deliver(): void {
    while (!this.backend.paused && this.queued.length > 0) this.backend.emit('data', this.queued.shift()!);
    if (this.databaseEnding && !this.databaseEndDelivered && !this.backend.paused && this.queued.length === 0) {
      this.databaseEndDelivered = true;
      this.backend.emit('end');
    }
  }
}

// ------------------------------------------------------------------------------------------------
// One seed

type Kind = 'mixed' | 'pipelined';
/** How a seed ends: both sides left open; the client ends first, then the database; the database is
 * cut at a random point (often inside a packet start) and ends; the gate refuses an acknowledgment. */
type Ending = 'open' | 'client-first' | 'database-cut' | 'refuse';

interface Totals extends Coverage {
  seeds: number;
  steps: number;
  holds: number;
  /** Releases after which the pump held again without new server bytes: several acks in one held buffer. */
  holdsInHeldBuffer: number;
  refusals: number;
  oneByteChunks: number;
  /** Steps after which the C relay carried a split server packet start. */
  carries: number;
  /** Steps after which the C scanner kept a split client packet start. */
  scanHolds: number;
  databaseCutsInCarry: number;
  /** Steps after which server bytes waited for the C relay's socket (the relay held, or read slower). */
  serverBacklogs: number;
  /** Times the C relay stopped the client at the tracker's bound. */
  trackerFullStops: number;
  maxPending: number;
  bytes: number;
}

function newTotals(): Totals {
  return {
    seeds: 0, steps: 0, holds: 0, holdsInHeldBuffer: 0, refusals: 0, oneByteChunks: 0, carries: 0, scanHolds: 0,
    databaseCutsInCarry: 0, serverBacklogs: 0, trackerFullStops: 0, maxPending: 0, bytes: 0,
    longStatements: 0, infileUploads: 0, hugeServerPackets: 0, hugeClientPackets: 0,
  };
}

async function runSeed(relay: RelayHarness, seed: number, kind: Kind, totals: Totals): Promise<void> {
  const r = rng(kind === 'mixed' ? seed * 104729 + 17 : seed * 7919 + 3);
  const deprecate = r.chance(0.5);
  const cache = r.chance(0.4);
  const gen = new StreamGen(r, deprecate, cache);
  const huge = { budget: kind === 'mixed' && seed % HUGE_EVERY === 0 ? 2 : 0 };
  const exchanges: Exchange[] = [];
  if (kind === 'mixed') {
    for (let k = 20 + r.int(120); k > 0; k--) exchanges.push(exchange(gen, r, huge, totals));
  } else {
    for (let k = TRACKER_MAX_PENDING + 4000 + r.int(3000); k > 0; k--) exchanges.push(pipelinedExchange(gen, r, totals));
  }
  const client = Buffer.concat(exchanges.map((x) => x.client));
  const server = Buffer.concat(exchanges.map((x) => x.server));
  // The database answers a command once it has received all of it: cmdEnd[k] client bytes allow
  // respEnd[k] server bytes.
  const cmdEnd: number[] = [];
  const respEnd: number[] = [];
  for (let k = 0, c = 0, s = 0; k < exchanges.length; k++) {
    cmdEnd.push((c += exchanges[k]!.client.length));
    respEnd.push((s += exchanges[k]!.server.length));
  }
  const ending: Ending = kind === 'pipelined' ? 'client-first' : r.pick(['open', 'open', 'client-first', 'database-cut', 'refuse'] as const);
  const refuseAt = 1 + r.int(8); // the hold the gate refuses ('refuse')
  const cutAt = r.int(server.length + 1); // where the database stops ('database-cut')

  const js = new JsRelay(deprecate, cache);
  relay.relayOpen(deprecate, cache);
  let cFed = 0; // client bytes given to both
  let sFed = 0; // server bytes given to both
  const cServerBacklog: Buffer[] = []; // server bytes the C relay's socket has not accepted yet
  let dbC = 0; // client bytes the database received through C
  let dbJs = 0; // ... through the JS pump
  let answered = 0; // exchanges whose command the database has received in full (through C: the slower)
  let outLen = 0;
  let clientEndSent = false;
  let databaseEndSent = false;
  let refused = false;
  let stoppedAtBound = false;
  let step = 0;
  const where = () => `seed ${seed} (${kind}, deprecateEof ${deprecate}, cacheMetadata ${cache}, ending ${ending}) step ${step}`;

  const pushServerBacklog = () => {
    while (cServerBacklog.length > 0) {
      const head = cServerBacklog[0]!;
      const n = relay.relayServer(head);
      if (n === head.length) cServerBacklog.shift();
      else {
        cServerBacklog[0] = head.subarray(n);
        if (n === 0) return;
      }
    }
  };

  /** Compares both sides after a step; returns the step's bytes for the client. */
  const check = (what: string): Buffer => {
    const fail = (msg: string) => assert.fail(`${where()} after ${what}: ${msg}`);
    // (Reading the database's side first: the room it makes lets the relay run on.)
    const inC = relay.relayTakeDatabase();
    const inJs = js.backend.take();
    const st = relay.relayState();
    if (st.closed && !(st.outcome === 'ok' && ending === 'client-first')) fail(`the C relay closed: ${st.outcome} ${st.error}`);
    // The client: the same bytes in the same step, the same holds, the same end.
    const outC = relay.relayTakeClient();
    const outJs = js.client.take();
    if (!outC.equals(outJs)) {
      fail(`client bytes differ: C sent ${outC.length} bytes, JS ${outJs.length} (after ${outLen} equal ones); C holding ${st.holding} (${st.holds} holds), JS holding ${js.pump.holding} (${js.holds})`);
    }
    outLen += outC.length;
    if (st.holding !== js.pump.holding) fail(`holding: C ${st.holding}, JS ${js.pump.holding}`);
    if (st.holds !== js.holds) fail(`holds: C ${st.holds}, JS ${js.holds}`);
    if (st.clientEnded !== js.client.ended) fail(`client side ended: C ${st.clientEnded}, JS ${js.client.ended}`);
    // The database: a prefix of the client's stream from each; the same one unless the C tracker is full.
    if (!refused) {
      if (!inC.equals(client.subarray(dbC, dbC + inC.length))) fail(`the database got other bytes than the client sent, through C, at ${dbC}`);
      if (!inJs.equals(client.subarray(dbJs, dbJs + inJs.length))) fail(`the database got other bytes than the client sent, through JS, at ${dbJs}`);
    }
    dbC += inC.length;
    dbJs += inJs.length;
    if (st.unscanned > 0) {
      // Stopped at the bound exactly (seen so after a client step: it adds commands, answers none), and
      // kept back only while at least half of it is pending (rescan_client resumes under half).
      if (!stoppedAtBound) {
        totals.trackerFullStops++;
        if (what === 'client bytes' && st.pending !== TRACKER_MAX_PENDING) fail(`client kept back with ${st.pending} commands pending, not at the bound ${TRACKER_MAX_PENDING}`);
      }
      if (st.pending < TRACKER_MAX_PENDING / 2) fail(`client bytes still kept back with only ${st.pending} commands pending`);
    } else if (!refused) {
      if (dbC !== dbJs) fail(`the database got ${dbC} bytes through C, ${dbJs} through JS (nothing kept back)`);
      if (st.databaseEnded !== js.backend.ended) fail(`database's stream ended: C ${st.databaseEnded}, JS ${js.backend.ended}`);
    }
    stoppedAtBound = st.unscanned > 0;
    totals.maxPending = Math.max(totals.maxPending, st.pending);
    if (st.pending > TRACKER_MAX_PENDING) fail(`${st.pending} commands pending, over the bound`);
    if (st.carry > 0) totals.carries++;
    if (st.scanHeld > 0) totals.scanHolds++;
    if (cServerBacklog.length > 0) totals.serverBacklogs++;
    while (answered < cmdEnd.length && cmdEnd[answered]! <= dbC) answered++;
    return outC;
  };

  const chunk = (limit: number): number => {
    const c = r.next();
    const n = Math.min(limit, c < 0.3 ? 1 + r.int(8) : c < 0.6 ? 1 + r.int(80) : c < 0.9 ? 1 + r.int(3000) : c < 0.98 ? 1 + r.int(40_000) : 1 + r.int(1 << 21));
    if (n === 1) totals.oneByteChunks++;
    return n;
  };
  // The odds of a client step and of a server step; pipelined, the client runs far ahead of the
  // database, so the commands pile up past the bound.
  const [clientOdds, serverOdds] = kind === 'pipelined' ? [0.6, 0.02] : [0.35, 0.45];

  for (;;) {
    const serverLimit = Math.min(answered === 0 ? 0 : respEnd[answered - 1]!, ending === 'database-cut' ? cutAt : server.length);
    const allFed = cFed === client.length && sFed === serverLimit;
    const c = r.next();
    step++;
    if (c < clientOdds && cFed < client.length) {
      const bytes = client.subarray(cFed, (cFed += chunk(client.length - cFed)));
      js.fromClient(bytes);
      relay.relayClient(bytes);
      check('client bytes');
    } else if (c < clientOdds + serverOdds && sFed < serverLimit) {
      const bytes = server.subarray(sFed, (sFed += chunk(serverLimit - sFed)));
      js.fromServer(bytes);
      cServerBacklog.push(bytes);
      pushServerBacklog();
      check('server bytes');
    } else if (js.pump.holding && ending === 'refuse' && js.holds >= refuseAt) {
      relay.relayRefuse(ackRefusedPacket(0));
      await js.refuse();
      refused = true;
      totals.refusals++;
      const out = check('a refusal');
      const err = ackRefusedPacket(0).subarray(4);
      assert.ok(out.length >= err.length && out.subarray(out.length - err.length).equals(err), `${where()}: the client got the refusal's ERR last`);
      assert.ok(js.client.ended, `${where()}: the refusal ended the client side`);
      break;
    } else if (js.pump.holding) {
      relay.relayRelease();
      if (await js.release()) totals.holdsInHeldBuffer++;
      pushServerBacklog();
      check('a release');
    } else if (ending === 'client-first' && cFed === client.length && !clientEndSent && (allFed || r.chance(0.1))) {
      clientEndSent = true;
      js.clientEnd();
      relay.relayClientEnd();
      check('the client end');
    } else if (allFed && !databaseEndSent && (ending === 'database-cut' || (ending === 'client-first' && clientEndSent))) {
      databaseEndSent = true;
      if (ending === 'database-cut' && relay.relayState().carry > 0) totals.databaseCutsInCarry++;
      js.serverEnd();
      relay.relayServerEnd();
      check('the database end');
    } else if (allFed) {
      break;
    } else {
      step--; // nothing to do this time
    }
  }

  const st = relay.relayState();
  const at = where();
  if (ending === 'open' || (ending === 'refuse' && !refused)) {
    assert.equal(outLen, server.length, `${at}: every server byte reached the client`);
    assert.equal(dbC, client.length, `${at}: every client byte reached the database`);
  } else if (ending === 'client-first') {
    assert.ok(st.closed && st.outcome === 'ok', `${at}: both ends closed the connection (${st.outcome} ${st.error})`);
    assert.equal(outLen, server.length, `${at}: every server byte reached the client`);
    assert.ok(st.databaseEnded && js.backend.ended && dbC === client.length, `${at}: the database got the whole client stream and its end`);
  } else if (ending === 'database-cut') {
    assert.ok(st.clientEnded, `${at}: the database's end ended the client side`);
    assert.equal(outLen, cutAt, `${at}: the client got every server byte up to the cut (a carried packet start too)`);
  }
  totals.seeds++;
  totals.steps += step;
  totals.holds += js.holds;
  totals.bytes += client.length + server.length;
}

async function runSeeds(relay: RelayHarness, seeds: number[], kind: Kind): Promise<Totals> {
  const totals = newTotals();
  for (const seed of seeds) {
    try {
      await runSeed(relay, seed, kind, totals);
    } finally {
      relay.relayClose();
    }
  }
  return totals;
}

/** The traffic reached the interesting parts (about 2/3 of what these seeds give): no vacuous pass. */
function atLeast(totals: Totals, minimum: Partial<Record<keyof Totals, number>>): void {
  for (const [key, min] of Object.entries(minimum)) {
    assert.ok(totals[key as keyof Totals] >= min!, `${key}: ${totals[key as keyof Totals]}, expected at least ${min} (${JSON.stringify(totals)})`);
  }
}

// ------------------------------------------------------------------------------------------------

test('random splits and release timings: the C relay and GatedPump agree after every step', async (t) => {
  const t0 = Date.now();
  const totals = await runSeeds(harness(), MIXED_SEEDS, 'mixed');
  t.diagnostic(`${JSON.stringify(totals)} in ${Date.now() - t0} ms`);
  const n = MIXED_SEEDS.length;
  const huge = Math.floor(n / HUGE_EVERY);
  atLeast(totals, {
    steps: 35 * n, holds: 8 * n, holdsInHeldBuffer: 5 * n, oneByteChunks: n, carries: 4 * n, scanHolds: 2.5 * n,
    longStatements: 8 * n, infileUploads: n / 2, hugeServerPackets: huge / 2, hugeClientPackets: huge / 2,
    refusals: n / 10, databaseCutsInCarry: n / 10, serverBacklogs: n / 40,
  });
});

test('more than TRACKER_MAX_PENDING pipelined commands: the C relay stops the client at the bound, resumes, and agrees', async (t) => {
  const t0 = Date.now();
  const totals = await runSeeds(harness(), PIPELINED_SEEDS, 'pipelined');
  t.diagnostic(`${JSON.stringify(totals)} in ${Date.now() - t0} ms`);
  const n = PIPELINED_SEEDS.length;
  atLeast(totals, { trackerFullStops: n, maxPending: TRACKER_MAX_PENDING, holds: 3000 * n, serverBacklogs: 2500 * n });
});
