/**
 * Command-phase forwarding. Client→server is always scanned (client-scanner.ts): command starts are
 * found (LOCAL INFILE data is not mistaken for commands) and a COM_CHANGE_USER to a forbidden user is
 * refused before any of it reaches the database. Server→client has two modes:
 *
 * - No ack gate: `stream.pipe`. Zero parsing, zero copies; backpressure comes from pipe (the source
 *   pauses when the destination's writable buffer passes its highWaterMark).
 * - With an ack gate: the server→client direction is scanned for packet boundaries (4-byte headers,
 *   remaining lengths; payload bytes are never copied, except up to INSPECT_BYTES of a packet split across
 *   two chunks) and the ResponseTracker follows the command/response grammar. When it says a packet ends
 *   the acknowledgment of a possible write outside a transaction, the gate is asked;
 *   if it returns a promise, everything before that packet is written, the backend is paused, and the
 *   packet (and anything after it) is released when the promise resolves. On rejection the client gets
 *   an ERR instead of the OK, and the session ends: the client must not believe a write is durable.
 *
 * A refused change-user: the bytes before it are forwarded, the backend's write side is ended (so the
 * database answers the commands before it, in order, then closes), and when the backend has ended the
 * client receives ERR 1045 as the answer to the change-user, then the end of the connection.
 */
import type { Duplex } from 'node:stream';
import { PACKET_HEADER_SIZE, MAX_PACKET_PAYLOAD, ProxyErrno } from './constants.ts';
import { encodeErrPacket, readPayloadLength } from './codec.ts';
import { INSPECT_BYTES, ResponseTracker } from './tracker.ts';
import { ClientScanner } from './client-scanner.ts';
import { forbiddenUserErr } from './forbidden-user.ts';
import { askGate, type AckGate } from '../shared/ack-gate.ts';

/**
 * The gate is called when the server sends the packet ending the acknowledgment of a possible write
 * outside a transaction (SERVER_STATUS_IN_TRANS clear, or an implicit commit); see proxy/shared/ack-gate.ts.
 */
export { askGate, type AckGate } from '../shared/ack-gate.ts';

export interface PumpEvents {
  /** The gate refused an acknowledgment; the ERR has been queued and the client end()ed. */
  onAckRefused(err: unknown): void;
  /** A COM_CHANGE_USER named a forbidden user: it was not forwarded; the ERR follows once the backend ends. */
  onForbiddenChangeUser(user: string): void;
}

export interface PumpOptions {
  /** User names a COM_CHANGE_USER may not switch to (session.ts's login rule). */
  forbiddenUsers: ReadonlySet<string>;
  /** Client bytes that arrived before the pump started (commands pipelined before the login OK). */
  initialClientBytes?: Buffer[];
  /** Server bytes that arrived before the pump started. */
  initialServerBytes?: Buffer;
}

export interface Pump {
  /** An acknowledgment is being held by the gate. */
  readonly holding: boolean;
  /** The client's last command was COM_QUIT (a reset after it is a normal end). */
  readonly quitSent: boolean;
}

export function startPump(client: Duplex, backend: Duplex, capabilities: bigint, gate: AckGate | undefined, events: PumpEvents, opts: PumpOptions): Pump {
  const pump = gate
    ? new GatedPump(client, backend, new ResponseTracker(capabilities), gate, events, opts.forbiddenUsers)
    : new PipedPump(client, backend, events, opts.forbiddenUsers);
  pump.start(opts.initialClientBytes ?? [], opts.initialServerBytes);
  return pump;
}

/**
 * What the client gets instead of an acknowledgment the gate refused (`seq`: the held packet's). Shared
 * with the native relay, which sets the sequence id itself.
 */
export function ackRefusedPacket(seq: number): Buffer {
  return encodeErrPacket(seq, {
    ...ProxyErrno.PROXY_ERROR,
    message: 'The write was executed but could not be confirmed durable (freshness epoch not sealed); the connection is closed',
  });
}

/** The answer to a refused change-user (the command had seq 0, so its answer has seq 1). */
function forbiddenChangeUserPacket(user: string): Buffer {
  return encodeErrPacket(1, forbiddenUserErr(user, 'change_user'));
}

/** Client→server half shared by both modes: scan, forward, backpressure, refusal. */
abstract class ClientSide {
  protected finalPacket: Buffer | undefined;
  private stopped = false;

  constructor(
    protected readonly client: Duplex,
    protected readonly backend: Duplex,
    protected readonly scanner: ClientScanner,
    protected readonly events: PumpEvents,
  ) {}

  get quitSent(): boolean {
    return this.scanner.quitSent;
  }

  protected startClientSide(initial: Buffer[]): void {
    const { client, backend } = this;
    for (const chunk of initial) this.fromClient(chunk);
    client.on('data', (chunk: Buffer) => this.fromClient(chunk));
    backend.on('drain', () => { if (!this.stopped) client.resume(); });
    client.on('end', () => { if (!this.stopped) backend.end(); });
  }

  /** Nothing more from the client reaches the database (a refused acknowledgment ends the session). */
  protected stopClientSide(): void {
    this.stopped = true;
  }

  private fromClient(chunk: Buffer): void {
    if (this.stopped) return;
    const r = this.scanner.push(chunk);
    if (r.forward.length > 0 && !this.backend.write(r.forward)) this.client.pause();
    if (r.forbiddenUser !== undefined) {
      this.stopped = true;
      this.finalPacket = forbiddenChangeUserPacket(r.forbiddenUser);
      // Let the database answer what came before, then close; the ERR goes out when the backend ends.
      this.backend.end();
      this.events.onForbiddenChangeUser(r.forbiddenUser);
    }
  }
}

class PipedPump extends ClientSide implements Pump {
  readonly holding = false;

  constructor(client: Duplex, backend: Duplex, events: PumpEvents, forbidden: ReadonlySet<string>) {
    super(client, backend, new ClientScanner(forbidden), events);
  }

  start(initialClient: Buffer[], initialServer: Buffer | undefined): void {
    if (initialServer && initialServer.length > 0) this.client.write(initialServer);
    this.startClientSide(initialClient);
    this.backend.pipe(this.client, { end: false });
    this.backend.on('end', () => {
      if (this.finalPacket) this.client.end(this.finalPacket);
      else this.client.end();
    });
    // The handshake readers paused both sockets when they detached; pipe() resumes the backend.
    this.client.resume();
  }
}

class GatedPump extends ClientSide implements Pump {
  // server → client scanning state
  private buf: Buffer = Buffer.alloc(0);
  private pos = 0;
  private written = 0;
  private skip = 0;
  private continuation = false;
  private carry: Buffer | undefined;
  holding = false;
  private refused = false;
  private backendEnded = false;
  constructor(
    client: Duplex,
    backend: Duplex,
    private readonly tracker: ResponseTracker,
    private readonly gate: AckGate,
    events: PumpEvents,
    forbidden: ReadonlySet<string>,
  ) {
    super(client, backend, new ClientScanner(forbidden, tracker), events);
  }

  start(initialClient: Buffer[], initialServer: Buffer | undefined): void {
    const { client, backend } = this;
    this.startClientSide(initialClient);
    backend.on('data', (chunk: Buffer) => this.fromServer(chunk));
    client.on('drain', () => {
      if (!this.holding) backend.resume();
    });
    backend.on('end', () => {
      this.backendEnded = true;
      if (!this.holding) this.endClient();
    });
    if (initialServer && initialServer.length > 0) this.fromServer(initialServer);
    // The handshake readers paused both sockets when they detached; unlike pipe(), adding a 'data'
    // listener does not resume an explicitly paused stream.
    client.resume();
    if (!this.holding) backend.resume();
  }

  private fromServer(chunk: Buffer): void {
    if (this.refused) return;
    if (this.carry) {
      chunk = Buffer.concat([this.carry, chunk]);
      this.carry = undefined;
    }
    this.buf = chunk;
    this.pos = 0;
    this.written = 0;
    this.processServer();
  }

  private endClient(): void {
    if (this.carry) this.client.write(this.carry);
    this.carry = undefined;
    if (this.finalPacket) this.client.end(this.finalPacket);
    else this.client.end();
  }

  private processServer(): void {
    const buf = this.buf;
    let flushEnd = buf.length;
    while (this.pos < buf.length) {
      if (this.skip > 0) {
        const n = Math.min(this.skip, buf.length - this.pos);
        this.pos += n;
        this.skip -= n;
        continue;
      }
      const start = this.pos;
      const avail = buf.length - start;
      if (avail < PACKET_HEADER_SIZE) {
        flushEnd = start;
        break;
      }
      const length = readPayloadLength(buf, start);
      const isContinuation = this.continuation;
      const need = Math.min(length, INSPECT_BYTES);
      if (!isContinuation && avail < PACKET_HEADER_SIZE + need) {
        flushEnd = start;
        break;
      }
      this.continuation = length === MAX_PACKET_PAYLOAD;
      this.pos = start + PACKET_HEADER_SIZE;
      this.skip = length;
      if (isContinuation) continue;
      const endsAck = this.tracker.onServerPacket(buf.subarray(this.pos, this.pos + need), length);
      if (!endsAck) continue;
      const hold = askGate(this.gate);
      if (!hold) continue;
      // Release everything before the acknowledgment, keep the rest of this chunk until the gate opens.
      if (start > this.written) this.client.write(buf.subarray(this.written, start));
      this.written = start;
      this.holding = true;
      const seq = buf[start + 3]!;
      this.backend.pause();
      hold.then(() => {
        this.holding = false;
        if (this.refused) return;
        this.processServer();
        if (!this.holding) {
          if (this.backendEnded) this.endClient();
          else if (!this.client.writableNeedDrain) this.backend.resume();
        }
      }, (err: unknown) => {
        this.holding = false;
        this.refused = true;
        // Like the native relay: once the client is told its write is not confirmed, it sends no more.
        this.stopClientSide();
        this.client.end(ackRefusedPacket(seq));
        this.events.onAckRefused(err);
      });
      return;
    }
    if (flushEnd < buf.length) this.carry = Buffer.from(buf.subarray(flushEnd));
    if (flushEnd > this.written) {
      const ok = this.client.write(this.written === 0 && flushEnd === buf.length ? buf : buf.subarray(this.written, flushEnd));
      this.written = flushEnd;
      if (!ok) this.backend.pause();
    }
  }
}
