/**
 * Incremental packet framer for the handshake and authentication phases, where the proxy must see
 * whole packets (to read capabilities, rewrite sequence ids, recognise OK/ERR). Split-safe: bytes may
 * arrive in any chunking. Size-capped: a client announcing a payload above `maxPayload` is refused as
 * soon as the 3-byte length is seen, before any of it is buffered. After authentication the proxy
 * stops framing (the command phase streams) and takes the unconsumed bytes with `takeRest()`.
 */
import { CdbpError } from '../../src/kernel/errors.ts';
import { PACKET_HEADER_SIZE } from './constants.ts';
import { readPayloadLength, type Packet } from './codec.ts';

export class PacketFramer {
  private pending: Buffer[] = [];
  private pendingBytes = 0;

  constructor(private readonly maxPayload: number) {}

  /** Bytes received but not yet returned as packets. */
  get buffered(): number {
    return this.pendingBytes;
  }

  /** Appends received bytes. */
  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.pending.push(chunk);
    this.pendingBytes += chunk.length;
  }

  /**
   * The next complete packet, or undefined until more bytes arrive. Throws FRAME_TOO_LARGE as soon as a
   * header announces more than the cap. One packet at a time so a caller can stop between packets
   * (e.g. after an SSLRequest, when the following bytes are TLS) and take the rest untouched.
   */
  next(): Packet | undefined {
    if (this.pendingBytes < PACKET_HEADER_SIZE) return undefined;
    const head = this.peek(PACKET_HEADER_SIZE);
    const length = readPayloadLength(head, 0);
    if (length > this.maxPayload) {
      throw new CdbpError('FRAME_TOO_LARGE', `handshake packet of ${length} bytes exceeds the limit of ${this.maxPayload}`,
        { details: { length, limit: this.maxPayload } });
    }
    if (this.pendingBytes < PACKET_HEADER_SIZE + length) return undefined;
    const whole = this.take(PACKET_HEADER_SIZE + length);
    return { seq: whole[3]!, payload: whole.subarray(PACKET_HEADER_SIZE) };
  }

  /** Convenience for tests and simple callers: push, then drain all complete packets. */
  pushAll(chunk: Buffer): Packet[] {
    this.push(chunk);
    const out: Packet[] = [];
    for (let p = this.next(); p; p = this.next()) out.push(p);
    return out;
  }

  /** Everything not yet framed (a partial packet, or bytes that belong to the next phase). */
  takeRest(): Buffer {
    const rest = this.pending.length === 1 ? this.pending[0]! : Buffer.concat(this.pending);
    this.pending = [];
    this.pendingBytes = 0;
    return rest;
  }

  private peek(n: number): Buffer {
    const first = this.pending[0]!;
    if (first.length >= n) return first;
    this.pending = [Buffer.concat(this.pending)];
    return this.pending[0]!;
  }

  private take(n: number): Buffer {
    const first = this.peek(n);
    const out = first.subarray(0, n);
    if (first.length === n) this.pending.shift();
    else this.pending[0] = first.subarray(n);
    this.pendingBytes -= n;
    return out;
  }
}
