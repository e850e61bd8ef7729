/**
 * Command-phase forwarding. Two modes:
 *
 * - No ack gate: `stream.pipe` both ways. Zero parsing, zero copies; backpressure comes from pipe
 *   (the source pauses when the destination's writable buffer passes its highWaterMark), half-close
 *   from pipe's `end` propagation.
 * - With an ack gate: the server→client direction is scanned for packet boundaries (4-byte headers,
 *   remaining lengths; payload bytes are never copied, except up to INSPECT_BYTES of a packet split across
 *   two chunks). The client→server direction is scanned for command starts (sequence id 0). When the
 *   ResponseTracker says a packet ends a write acknowledgment outside a transaction, the gate is asked;
 *   if it returns a promise, everything before that packet is written, the backend is paused, and the
 *   packet (and anything after it) is released when the promise resolves. On rejection the client gets
 *   an ERR instead of the OK, and the session ends: the client must not believe a write is durable.
 */
import type { Duplex } from 'node:stream';
import { PACKET_HEADER_SIZE, MAX_PACKET_PAYLOAD, ProxyErrno } from './constants.ts';
import { encodeErrPacket, readPayloadLength } from './codec.ts';
import { INSPECT_BYTES, ResponseTracker } from './tracker.ts';
import { STATEMENT_PREFIX_BYTES } from './statement-class.ts';

export interface AckGate {
  /**
   * Called when the server sends an OK packet ending a client command outside a transaction
   * (SERVER_STATUS_IN_TRANS clear); return a promise to hold the ack until it resolves (reject → send
   * the client an ERR instead and close), or undefined to pass through.
   */
  holdAck(): Promise<void> | undefined;
}

export interface PumpEvents {
  /** The gate refused an acknowledgment; the ERR has been queued and the client end()ed. */
  onAckRefused(err: unknown): void;
}

export interface Pump {
  /** Plaintext bytes client→server and server→client forwarded by this pump. */
  readonly holding: boolean;
}

export function startPump(client: Duplex, backend: Duplex, capabilities: bigint, gate: AckGate | undefined, events: PumpEvents): Pump {
  if (!gate) {
    client.pipe(backend);
    backend.pipe(client);
    return { holding: false };
  }
  return new GatedPump(client, backend, new ResponseTracker(capabilities), gate, events);
}

class GatedPump implements Pump {
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
  // client → server scanning state
  private cSkip = 0;
  private cContinuation = false;
  private cCarry: Buffer | undefined;

  constructor(
    private readonly client: Duplex,
    private readonly backend: Duplex,
    private readonly tracker: ResponseTracker,
    private readonly gate: AckGate,
    private readonly events: PumpEvents,
  ) {
    client.on('data', (chunk: Buffer) => {
      this.scanClient(chunk);
      if (!backend.write(chunk)) client.pause();
    });
    backend.on('drain', () => client.resume());
    client.on('end', () => backend.end());

    backend.on('data', (chunk: Buffer) => {
      if (this.refused) return;
      if (this.carry) {
        chunk = Buffer.concat([this.carry, chunk]);
        this.carry = undefined;
      }
      this.buf = chunk;
      this.pos = 0;
      this.written = 0;
      this.processServer();
    });
    client.on('drain', () => {
      if (!this.holding) backend.resume();
    });
    backend.on('end', () => {
      this.backendEnded = true;
      if (!this.holding) this.endClient();
    });
    // The handshake readers paused both sockets when they detached; unlike pipe(), adding a 'data'
    // listener does not resume an explicitly paused stream.
    client.resume();
    backend.resume();
  }

  private endClient(): void {
    if (this.carry) this.client.write(this.carry);
    this.carry = undefined;
    this.client.end();
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
      const hold = this.gate.holdAck();
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
        this.client.end(encodeErrPacket(seq, {
          ...ProxyErrno.PROXY_ERROR,
          message: 'The write was executed but could not be confirmed durable (freshness epoch not sealed); the connection is closed',
        }));
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

  private scanClient(chunk: Buffer): void {
    let buf = chunk;
    if (this.cCarry) {
      buf = Buffer.concat([this.cCarry, chunk]);
      this.cCarry = undefined;
    }
    let pos = 0;
    while (pos < buf.length) {
      if (this.cSkip > 0) {
        const n = Math.min(this.cSkip, buf.length - pos);
        pos += n;
        this.cSkip -= n;
        continue;
      }
      if (buf.length - pos < PACKET_HEADER_SIZE + 1) {
        this.cCarry = Buffer.from(buf.subarray(pos));
        return;
      }
      const length = readPayloadLength(buf, pos);
      const seq = buf[pos + 3]!;
      const isContinuation = this.cContinuation;
      const starts = !isContinuation && seq === 0 && length > 0;
      // A command's first bytes (command byte + start of a query's text) must be contiguous to classify it.
      const need = starts ? Math.min(length, 1 + STATEMENT_PREFIX_BYTES) : 0;
      if (starts && buf.length - pos < PACKET_HEADER_SIZE + need) {
        this.cCarry = Buffer.from(buf.subarray(pos));
        return;
      }
      this.cContinuation = length === MAX_PACKET_PAYLOAD;
      if (starts) {
        const body = pos + PACKET_HEADER_SIZE;
        this.tracker.commandStarted(buf[body]!, buf.subarray(body + 1, body + need));
      }
      pos += PACKET_HEADER_SIZE;
      this.cSkip = length;
    }
  }
}
