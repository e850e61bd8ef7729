/**
 * Incremental, size-capped framing. Split-safe: bytes may arrive in any chunking. The length field
 * is checked against the cap as soon as its 4 bytes are in, so a client announcing 1 GB is refused
 * before we buffer anything beyond the header.
 *
 * - StartupFramer: startup-phase packets (int32 length incl. itself, no type byte).
 * - MessageFramer: typed messages (1 type byte + int32 length incl. itself).
 */
import { CdbpError } from '../../src/kernel/errors.ts';
import { MESSAGE_HEADER, STARTUP_HEADER } from './constants.ts';
import { protocolError } from './codec.ts';

abstract class LengthPrefixedFramer {
  private buf: Buffer = Buffer.alloc(0);

  constructor(protected readonly maxFrameBytes: number, private readonly what: string) {}

  /** Frame size (bytes incl. header) announced by the header at buf[0..], or throws if over the cap. */
  protected abstract frameSize(header: Buffer): number;
  protected abstract readonly headerBytes: number;

  /**
   * A framing error met after complete frames of the same push: those frames are returned first (a
   * client may pipeline a valid packet and garbage, e.g. SSLRequest then Terminate), the error is kept
   * here and thrown by the next push. The bytes from the bad header on stay in the remainder.
   */
  deferredFailure: unknown;

  /** Feeds bytes; returns every complete frame (each a Buffer including its header). */
  push(chunk: Buffer): Buffer[] {
    if (this.deferredFailure !== undefined) throw this.deferredFailure;
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    const frames: Buffer[] = [];
    let pos = 0;
    try {
      while (this.buf.length - pos >= this.headerBytes) {
        const size = this.frameSize(this.buf.subarray(pos, pos + this.headerBytes));
        if (size > this.maxFrameBytes) {
          throw new CdbpError('FRAME_TOO_LARGE', `${this.what} of ${size} bytes exceeds the limit of ${this.maxFrameBytes}`,
            { details: { sqlState: '08P01', size, limit: this.maxFrameBytes } });
        }
        if (this.buf.length - pos < size) break;
        frames.push(this.buf.subarray(pos, pos + size));
        pos += size;
      }
    } catch (e) {
      if (frames.length === 0) throw e;
      this.deferredFailure = e;
    }
    this.buf = pos === 0 ? this.buf : this.buf.subarray(pos);
    return frames;
  }

  /** Bytes received after the last complete frame. */
  get pending(): number {
    return this.buf.length;
  }

  /** Hands over (and forgets) the bytes after the last complete frame. */
  takeRemainder(): Buffer {
    const rest = this.buf;
    this.buf = Buffer.alloc(0);
    return rest;
  }
}

export class StartupFramer extends LengthPrefixedFramer {
  protected readonly headerBytes = STARTUP_HEADER;
  constructor(maxFrameBytes: number) {
    super(maxFrameBytes, 'startup packet');
  }
  protected frameSize(header: Buffer): number {
    const len = header.readUInt32BE(0);
    if (len < 8) throw protocolError(`invalid length of startup packet (${len})`);
    return len;
  }
}

export class MessageFramer extends LengthPrefixedFramer {
  protected readonly headerBytes = MESSAGE_HEADER;
  constructor(maxFrameBytes: number, what = 'message') {
    super(maxFrameBytes, what);
  }
  protected frameSize(header: Buffer): number {
    const len = header.readUInt32BE(1);
    if (len < 4) throw protocolError(`invalid message length ${len}`);
    return 1 + len;
  }
}
