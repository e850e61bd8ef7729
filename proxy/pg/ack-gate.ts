/**
 * Freshness hook on the backend → client leg (strict mode only; without a gate the session pipes
 * sockets directly, zero-copy). The conversation mirror (conversation.ts) says, message by message,
 * what may pass: most messages stream through as they arrive (a large DataRow is never buffered
 * whole); a CommandComplete whose successor the backend sends unasked may be kept until that successor
 * shows whether it completes a write's acknowledgment; an acknowledgment of a write is held until the
 * gate (the freshness guard) has sealed it. The gate never waits for anything the client has yet to
 * send, so it cannot deadlock a client reading a portal in batches (Execute with a row limit + Flush).
 */
import { Transform, type TransformCallback } from 'node:stream';
import { BackendType, MESSAGE_HEADER } from './constants.ts';
import { protocolError } from './codec.ts';
import { isAsyncBackendMessage, type Conversation } from './conversation.ts';
import { AckGateError, askGate, type AckGate } from '../shared/ack-gate.ts';

export { AckGateError, type AckGate } from '../shared/ack-gate.ts';

/** A CommandComplete or ReadyForQuery larger than this is not PostgreSQL talking. */
const MAX_KEPT_MESSAGE = 64 * 1024;
/** Async messages behind a kept CommandComplete are kept with it up to this size; larger ones release it. */
const MAX_KEPT_ASYNC = 1024 * 1024;

/**
 * Passes backend bytes through, holding what the conversation says to hold. Whatever reached the client
 * when a hold is refused ends on a message boundary, so the ErrorResponse that follows is well-formed
 * and the held acknowledgment never reaches the client.
 */
export class AckGateStream extends Transform {
  /** Bytes not yet pushed, starting at a message boundary. */
  private carried: Buffer | undefined;
  /** Offset in `carried` of the next message to parse (after a kept CommandComplete, past it). */
  private resumeAt = 0;
  /** Bytes of a message being streamed through that are still to come. */
  private streamLeft = 0;
  /** `carried` starts with a CommandComplete kept until its successor is seen. */
  private awaiting = false;

  constructor(private readonly gate: AckGate, private readonly conversation: Conversation) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    const data = this.carried ? Buffer.concat([this.carried, chunk]) : chunk;
    const start = this.carried ? this.resumeAt : 0;
    this.carried = undefined;
    this.run(data, 0, start, done);
  }

  override _flush(done: TransformCallback): void {
    // The backend ended: whatever it sent last goes out as it is.
    if (this.carried) this.push(this.carried);
    this.carried = undefined;
    done();
  }

  /** `out`: first byte of `data` not yet pushed; `pos`: where scanning continues. */
  private run(data: Buffer, out: number, pos: number, done: TransformCallback): void {
    const n = data.length;
    while (pos < n) {
      if (this.streamLeft > 0) {
        const take = Math.min(this.streamLeft, n - pos);
        pos += take;
        this.streamLeft -= take;
        continue;
      }
      if (n - pos < MESSAGE_HEADER) break; // the type is not known yet: keep the piece
      const type = data[pos]!;
      const len = data.readUInt32BE(pos + 1);
      const size = 1 + len;
      const decisive = type === BackendType.CommandComplete || type === BackendType.ReadyForQuery;
      if (len < 4 || (decisive && size > MAX_KEPT_MESSAGE)) {
        // Everything before this header is whole messages; an awaited CommandComplete is not sent.
        if (!this.awaiting && pos > out) this.push(data.subarray(out, pos));
        this.awaiting = false;
        done(protocolError(`backend sent an invalid message (type 0x${type.toString(16)}, length ${len})`));
        return;
      }
      const keptAsync = this.awaiting && isAsyncBackendMessage(type) && size <= MAX_KEPT_ASYNC;
      if (!decisive && !keptAsync) {
        // Streams through as it arrives; a kept CommandComplete before it goes too (its successor
        // is not the end of an acknowledgment).
        this.awaiting = false;
        this.conversation.onBackendMessage(type);
        if (n - pos >= size) pos += size;
        else {
          this.streamLeft = size - (n - pos);
          pos = n;
        }
        continue;
      }
      if (n - pos < size) break; // keep until whole
      const end = pos + size;
      if (keptAsync) {
        this.conversation.onBackendMessage(type);
        pos = end;
        continue;
      }
      const verdict = this.conversation.onBackendMessage(type, data.subarray(pos + MESSAGE_HEADER, end));
      if (verdict === 'await') {
        // A CommandComplete kept before is released: its successor is this one.
        if (pos > out) this.push(data.subarray(out, pos));
        out = pos;
        this.awaiting = true;
        pos = end;
        continue;
      }
      if (verdict === 'release') {
        this.awaiting = false;
        pos = end;
        continue;
      }
      const holdFrom = this.awaiting ? out : pos;
      this.awaiting = false;
      if (holdFrom > out) this.push(data.subarray(out, holdFrom));
      out = holdFrom;
      const hold = askGate(this.gate);
      if (hold === undefined) {
        pos = end;
        continue;
      }
      hold.then(() => {
        this.push(data.subarray(holdFrom, end));
        this.run(data, end, end, done);
      }, (e: unknown) => done(new AckGateError(e)));
      return;
    }
    if (this.awaiting) {
      this.carried = data.subarray(out);
      this.resumeAt = pos - out;
    } else {
      if (pos > out) this.push(data.subarray(out, pos));
      if (pos < n) {
        this.carried = data.subarray(pos);
        this.resumeAt = 0;
      }
    }
    done();
  }
}
