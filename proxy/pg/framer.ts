/**
 * Incremental, size-capped framing. Split-safe: bytes may arrive in any chunking. The length field
 * is checked against the cap as soon as its 4 bytes are in, so a client announcing 1 GB is refused
 * before we buffer anything beyond the header.
 *
 * - StartupFramer: startup-phase packets (int32 length incl. itself, no type byte).
 * - MessageFramer: typed messages (1 type byte + int32 length incl. itself).
 * - MessageBoundaryTracker: follows message boundaries in a stream *without* buffering or copying,
 *   for the ack gate on the backend → client leg.
 */
import { CdbpError } from '../../src/kernel/errors.ts';
import { MESSAGE_HEADER, STARTUP_HEADER, BackendType, TxStatus } from './constants.ts';
import { protocolError } from './codec.ts';

abstract class LengthPrefixedFramer {
  private buf: Buffer = Buffer.alloc(0);

  constructor(protected readonly maxFrameBytes: number, private readonly what: string) {}

  /** Frame size (bytes incl. header) announced by the header at buf[0..], or throws if over the cap. */
  protected abstract frameSize(header: Buffer): number;
  protected abstract readonly headerBytes: number;

  /** Feeds bytes; returns every complete frame (each a Buffer including its header). */
  push(chunk: Buffer): Buffer[] {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    const frames: Buffer[] = [];
    let pos = 0;
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

/**
 * Follows message boundaries on the backend → client stream and reports where an *idle
 * acknowledgment* ends: a ReadyForQuery with status 'I' after a CommandComplete in the same cycle
 * (NotificationResponse, ParameterStatus or NoticeResponse may come between them, e.g. a trigger's
 * NOTIFY or a COMMIT reverting a SET LOCAL), i.e. the moment a client learns that an autocommit
 * statement or a COMMIT finished. It keeps 6 bytes of
 * state and never copies the stream, so it is cheap enough for the hot path.
 */
export class MessageBoundaryTracker {
  private headerFill = 0;
  private readonly header = Buffer.alloc(MESSAGE_HEADER);
  private bodyLeft = 0;
  private type = 0;
  /** A CommandComplete was seen since the last ReadyForQuery. */
  private completedSinceReady = false;
  /** True while waiting for the status byte of a ReadyForQuery. */
  private awaitingStatus = false;
  /**
   * After scan(): end offset (exclusive) within that chunk of the last completed message that may
   * be released before the next one is seen, or 0. A CommandComplete is never such a message: it
   * may be the first half of an acknowledgment, so it waits for what follows.
   */
  releasableEnd = 0;

  /** Feeds a chunk; returns the offsets (exclusive end within chunk) of idle acknowledgments. */
  scan(chunk: Buffer): number[] {
    const acks: number[] = [];
    let pos = 0;
    const n = chunk.length;
    this.releasableEnd = 0;
    while (pos < n) {
      if (this.bodyLeft > 0) {
        if (this.awaitingStatus) {
          const status = chunk[pos]!;
          this.awaitingStatus = false;
          if (status === TxStatus.Idle && this.completedSinceReady && this.bodyLeft === 1) {
            acks.push(pos + 1);
          }
        }
        const take = Math.min(this.bodyLeft, n - pos);
        pos += take;
        this.bodyLeft -= take;
        if (this.bodyLeft === 0) {
          if (this.type !== BackendType.CommandComplete) this.releasableEnd = pos;
          this.finishMessage();
        }
        continue;
      }
      // header
      const take = Math.min(MESSAGE_HEADER - this.headerFill, n - pos);
      chunk.copy(this.header, this.headerFill, pos, pos + take);
      this.headerFill += take;
      pos += take;
      if (this.headerFill < MESSAGE_HEADER) break;
      this.headerFill = 0;
      this.type = this.header[0]!;
      const len = this.header.readUInt32BE(1);
      if (len < 4) throw protocolError(`backend sent an invalid message length ${len}`);
      this.bodyLeft = len - 4;
      this.awaitingStatus = this.type === BackendType.ReadyForQuery;
      if (this.bodyLeft === 0) {
        if (this.type !== BackendType.CommandComplete) this.releasableEnd = pos;
        this.finishMessage();
      }
    }
    return acks;
  }

  private finishMessage(): void {
    if (this.type === BackendType.CommandComplete) this.completedSinceReady = true;
    else if (this.type === BackendType.ReadyForQuery) this.completedSinceReady = false;
    this.awaitingStatus = false;
  }
}
