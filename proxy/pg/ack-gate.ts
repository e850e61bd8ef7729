/**
 * Freshness hook on the backend → client leg. When the backend acknowledges a statement outside a
 * transaction (CommandComplete then ReadyForQuery 'I'), the gate may hold that acknowledgment until
 * the write it covers is sealed and counted. Bytes before the ReadyForQuery are held with it; bytes
 * after it wait too, since the stream is ordered. Only used when a gate is configured: without one
 * the session pipes sockets directly (zero-copy).
 */
import { Transform, type TransformCallback } from 'node:stream';
import { MessageBoundaryTracker } from './framer.ts';

export interface AckGate {
  /** undefined: release now. A promise: hold until it resolves; a rejection closes the session. */
  holdAck(): Promise<void> | undefined;
}

export class AckGateError extends Error {
  constructor(readonly reason: unknown) {
    super('acknowledgment held by the freshness gate was refused');
    this.name = 'AckGateError';
  }
}

/**
 * Passes backend bytes through in whole messages only (a partial message, or a CommandComplete
 * whose successor is not known yet, is carried to the next chunk), so that at any point the client has received a message-aligned prefix:
 * if an acknowledgment is refused, the ErrorResponse that follows is well-formed and the held
 * CommandComplete never reaches the client.
 */
export class AckGateStream extends Transform {
  private readonly tracker = new MessageBoundaryTracker();
  private carry: Buffer | undefined;

  constructor(private readonly gate: AckGate) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    let acks: number[];
    try {
      acks = this.tracker.scan(chunk);
    } catch (e) {
      done(e as Error);
      return;
    }
    const shift = this.carry?.length ?? 0;
    const data = this.carry ? Buffer.concat([this.carry, chunk]) : chunk;
    const boundary = this.tracker.releasableEnd > 0 ? this.tracker.releasableEnd + shift : 0;
    if (acks.length === 0) {
      if (boundary > 0) this.push(data.subarray(0, boundary));
      this.carry = boundary < data.length ? data.subarray(boundary) : undefined;
      done();
      return;
    }
    this.release(data, acks.map((a) => a + shift), boundary).then(() => done(), (e) => done(e instanceof AckGateError ? e : new AckGateError(e)));
  }

  override _flush(done: TransformCallback): void {
    // The backend ended: whatever it sent last goes out as it is.
    if (this.carry) this.push(this.carry);
    this.carry = undefined;
    done();
  }

  private async release(data: Buffer, acks: number[], boundary: number): Promise<void> {
    let start = 0;
    for (const end of acks) {
      const hold = this.gate.holdAck();
      if (hold !== undefined) {
        try {
          await hold;
        } catch (e) {
          this.carry = undefined;
          throw new AckGateError(e);
        }
      }
      this.push(data.subarray(start, end));
      start = end;
    }
    if (boundary > start) {
      this.push(data.subarray(start, boundary));
      start = boundary;
    }
    this.carry = start < data.length ? data.subarray(start) : undefined;
  }
}
