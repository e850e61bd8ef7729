/**
 * Follows message boundaries on the client → backend stream (strict freshness only) and tells the
 * conversation mirror (conversation.ts) about every message, without changing or holding a byte. Bodies
 * are copied only for the messages whose contents matter (Query and Parse text, Bind / Execute /
 * Close names), and only up to a cap: longer ones are reported cut short, and the mirror then assumes
 * the worst. CopyData and parameter values are skipped, not copied.
 */
import { FrontendType, MESSAGE_HEADER } from './constants.ts';
import type { Conversation } from './conversation.ts';

/** Statement text longer than this is not classified (treated as a write). */
export const MAX_TEXT_BYTES = 64 * 1024;
/** Bind / Execute / Close: enough for the names at the start of the body. */
const MAX_NAMES_BYTES = 1024;

function bodyCap(type: number): number {
  switch (type) {
    case FrontendType.Query:
    case FrontendType.Parse:
      return MAX_TEXT_BYTES;
    case FrontendType.Bind:
    case FrontendType.Execute:
    case FrontendType.Close:
      return MAX_NAMES_BYTES;
    default:
      return 0;
  }
}

export class ClientScanner {
  private readonly header = Buffer.alloc(MESSAGE_HEADER);
  private headerFill = 0;
  private type = 0;
  private bodyLeft = 0;
  private bodyLength = 0;
  private cap = 0;
  private parts: Buffer[] = [];
  private collected = 0;
  private broken = false;

  constructor(private readonly conversation: Conversation) {}

  /** Scans one chunk (the caller forwards it unchanged). */
  scan(chunk: Buffer): void {
    if (this.broken) return;
    let pos = 0;
    const n = chunk.length;
    while (pos < n) {
      if (this.bodyLeft > 0) {
        const take = Math.min(this.bodyLeft, n - pos);
        if (this.collected < this.cap) {
          const keep = Math.min(take, this.cap - this.collected);
          this.parts.push(chunk.subarray(pos, pos + keep));
          this.collected += keep;
        }
        pos += take;
        this.bodyLeft -= take;
        if (this.bodyLeft === 0) this.finish();
        continue;
      }
      const take = Math.min(MESSAGE_HEADER - this.headerFill, n - pos);
      chunk.copy(this.header, this.headerFill, pos, pos + take);
      this.headerFill += take;
      pos += take;
      if (this.headerFill < MESSAGE_HEADER) break;
      this.headerFill = 0;
      this.type = this.header[0]!;
      const len = this.header.readUInt32BE(1);
      if (len < 4) {
        // The backend refuses this with a FATAL; the mirror stops trusting itself.
        this.broken = true;
        this.conversation.giveUp('client sent an invalid message length');
        return;
      }
      this.bodyLength = len - 4;
      this.bodyLeft = this.bodyLength;
      this.cap = bodyCap(this.type);
      this.parts = [];
      this.collected = 0;
      if (this.bodyLeft === 0) this.finish();
    }
  }

  private finish(): void {
    // The conversation reads the body synchronously and keeps none of it: no copy for one part.
    const body = this.parts.length === 1 ? this.parts[0]! : Buffer.concat(this.parts);
    this.parts = [];
    this.conversation.onClientMessage(this.type, body, this.collected === this.bodyLength);
  }
}
