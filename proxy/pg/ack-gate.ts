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

export class AckGateStream extends Transform {
  private readonly tracker = new MessageBoundaryTracker();

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
    if (acks.length === 0) {
      done(null, chunk);
      return;
    }
    this.release(chunk, acks).then(() => done(), (e) => done(e instanceof AckGateError ? e : new AckGateError(e)));
  }

  private async release(chunk: Buffer, acks: number[]): Promise<void> {
    let start = 0;
    for (const end of acks) {
      const hold = this.gate.holdAck();
      if (hold !== undefined) {
        try {
          await hold;
        } catch (e) {
          throw new AckGateError(e);
        }
      }
      this.push(chunk.subarray(start, end));
      start = end;
    }
    if (start < chunk.length) this.push(chunk.subarray(start));
  }
}
