/**
 * Pull-style frame reader over a socket for the handshake phases: `await reader.next()` yields one
 * frame (or null at EOF). It pauses the socket when frames pile up (backpressure) and hands the
 * socket back, with any unread bytes, through detach() when the session switches to piping.
 */
import type { Duplex } from 'node:stream';

interface Framer {
  push(chunk: Buffer): Buffer[];
  takeRemainder(): Buffer;
  /** An error met after frames that push() returned (see LengthPrefixedFramer). */
  readonly deferredFailure?: unknown;
  readonly pending: number;
}

const MAX_QUEUED_FRAMES = 16;

export class FrameReader {
  private readonly queue: Buffer[] = [];
  private waiter: { resolve: (f: Buffer | null) => void; reject: (e: unknown) => void } | undefined;
  private failure: unknown;
  private ended = false;
  private detached = false;
  private readonly onData = (chunk: Buffer) => this.feed(chunk);
  private readonly onEnd = () => {
    this.ended = true;
    this.settle();
  };
  private readonly onError = (e: unknown) => {
    this.failure ??= e;
    this.settle();
  };

  constructor(private readonly stream: Duplex, private readonly framer: Framer) {
    stream.on('data', this.onData);
    stream.on('end', this.onEnd);
    stream.on('error', this.onError);
    stream.on('close', this.onEnd);
  }

  /** Feeds bytes that were read before this reader existed. */
  feed(chunk: Buffer): void {
    if (this.detached || this.failure !== undefined) return;
    try {
      this.queue.push(...this.framer.push(chunk));
      if (this.framer.deferredFailure !== undefined) throw this.framer.deferredFailure; // after the good frames
    } catch (e) {
      this.failure = e;
      this.stream.pause(); // stop reading whatever else a misbehaving peer sends
    }
    if (this.queue.length >= MAX_QUEUED_FRAMES) this.stream.pause();
    this.settle();
  }

  /** Next complete frame; null at EOF; throws framing errors (size caps, bad lengths). */
  next(): Promise<Buffer | null> {
    if (this.waiter) return Promise.reject(new Error('FrameReader.next() called concurrently'));
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject };
      this.settle();
    });
  }

  /** Frames already received and not yet consumed. */
  get queued(): number {
    return this.queue.length;
  }

  /** Bytes received and not yet consumed (queued frames and a partial one). */
  get buffered(): number {
    return this.queue.reduce((n, f) => n + f.length, 0) + this.framer.pending;
  }

  /** The peer closed its sending side. */
  get peerEnded(): boolean {
    return this.ended;
  }

  /**
   * Stops reading: removes listeners, pauses the stream and returns every byte received but not
   * consumed (queued frames + partial frame), in order. A pending next() resolves with null.
   */
  detach(): Buffer {
    this.detached = true;
    this.stream.pause();
    this.stream.off('data', this.onData);
    this.stream.off('end', this.onEnd);
    this.stream.off('error', this.onError);
    this.stream.off('close', this.onEnd);
    const rest = Buffer.concat([...this.queue.splice(0), this.framer.takeRemainder()]);
    const w = this.waiter;
    this.waiter = undefined;
    w?.resolve(null);
    return rest;
  }

  private settle(): void {
    const w = this.waiter;
    if (!w) return;
    if (this.queue.length > 0) {
      this.waiter = undefined;
      const frame = this.queue.shift()!;
      if (this.queue.length < MAX_QUEUED_FRAMES / 2 && this.failure === undefined && !this.detached) this.stream.resume();
      w.resolve(frame);
    } else if (this.failure !== undefined) {
      this.waiter = undefined;
      w.reject(this.failure);
    } else if (this.ended || this.detached) {
      this.waiter = undefined;
      w.resolve(null);
    } else if (this.stream.isPaused()) {
      this.stream.resume();
    }
  }
}

/** Resolves with the first chunk the socket delivers (null at EOF), leaving the socket paused. */
export function readFirstChunk(stream: Duplex): Promise<Buffer | null> {
  return new Promise((resolve, reject) => {
    const cleanup = () => {
      stream.off('data', onData);
      stream.off('end', onEnd);
      stream.off('error', onError);
    };
    const onData = (chunk: Buffer) => {
      cleanup();
      stream.pause();
      resolve(chunk);
    };
    const onEnd = () => {
      cleanup();
      resolve(null);
    };
    const onError = (e: unknown) => {
      cleanup();
      reject(e);
    };
    stream.on('data', onData);
    stream.once('end', onEnd);
    stream.once('error', onError);
  });
}
