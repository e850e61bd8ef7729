/**
 * A TCP forwarder for fault tests (issue 20), put in front of one replicated CAS member: everyone who
 * dials the member dials this instead. Killing or freezing (SIGSTOP) a process cannot show a member that
 * is alive but slow, or alive but cut off; this can, switched at run time without touching the member:
 *
 * - `pass`: bytes go through as they come;
 * - `delay`: every chunk, in both directions, leaves `ms` (+ up to `jitterMs`) after it arrived. Chunks
 *   wait in one queue per direction and leave in arrival order: jitter delays, it never reorders;
 * - `partition`: nothing gets through. Connections open now keep what they queue; new ones are accepted
 *   (the kernel completes a handshake a real partition would not) but never dialled through. Leaving the
 *   partition destroys every connection it held, as peers would after a long outage; new ones work.
 *
 * It knows no protocol (TLS passes through untouched, so certificates still name 127.0.0.1), keeps
 * half-closes in order (an end is queued like a chunk), and owns each connection's cleanup: an error or
 * close on either side never reaches the test process as an unhandled 'error'.
 */
import net from 'node:net';

export type DelayMode = { kind: 'pass' } | { kind: 'delay'; ms: number; jitterMs?: number } | { kind: 'partition' };

export interface DelayProxy {
  /** The loopback port to dial instead of the target. */
  readonly port: number;
  readonly mode: DelayMode;
  set(mode: DelayMode): void;
  /** Connections currently open through the proxy (held ones included). */
  readonly connections: number;
  /** Destroys every connection and closes the listener. */
  close(): Promise<void>;
}

/** Past this many queued bytes in one direction the sender is paused (test traffic never gets close). */
const HIGH_WATER = 4 * 1024 * 1024;

const END = Symbol('end');
type Item = { at: number; data: Buffer | typeof END };

/** One direction of one connection: a FIFO of chunks, each released at its own time, never before the one ahead. */
class Lane {
  private readonly queue: Item[] = [];
  private queued = 0;
  private timer: NodeJS.Timeout | undefined;
  private lastAt = 0;
  held = false;

  constructor(private readonly from: net.Socket, private readonly to: net.Socket, private readonly delayOf: () => number) {}

  push(data: Buffer | typeof END): void {
    const at = Math.max(Date.now() + this.delayOf(), this.lastAt);
    this.lastAt = at;
    this.queue.push({ at, data });
    if (data !== END) this.queued += data.length;
    if (this.queued > HIGH_WATER) this.from.pause();
    this.release();
  }

  /** Stops releasing (a partition); the queue is kept until the connection is destroyed. */
  hold(): void {
    this.held = true;
    this.stop();
  }

  /** The receiving side is gone: nothing queued can be delivered any more. */
  drop(): void {
    this.queue.length = 0;
    this.stop();
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  private release(): void {
    if (this.held || this.timer) return;
    const now = Date.now();
    while (this.queue.length > 0 && this.queue[0]!.at <= now) {
      const { data } = this.queue.shift()!;
      if (data === END) this.to.end();
      else {
        this.queued -= data.length;
        this.to.write(data);
      }
    }
    if (this.queued <= HIGH_WATER && this.from.isPaused()) this.from.resume();
    if (this.queue.length > 0) {
      this.timer = setTimeout(() => {
        this.timer = undefined;
        this.release();
      }, this.queue[0]!.at - now);
    }
  }
}

export async function startDelayProxy(o: { target: number; host?: string; random?: () => number }): Promise<DelayProxy> {
  const host = o.host ?? '127.0.0.1';
  const random = o.random ?? Math.random;
  let mode: DelayMode = { kind: 'pass' };
  const delayOf = (): number => (mode.kind === 'delay' ? mode.ms + (mode.jitterMs ? random() * mode.jitterMs : 0) : 0);
  const open = new Set<Conn>();

  class Conn {
    readonly up: net.Socket | undefined;
    private readonly lanes: Lane[] = [];
    private closed = 0;

    constructor(readonly down: net.Socket, cut: boolean) {
      open.add(this);
      down.on('error', () => this.destroy());
      if (cut) {
        // Partitioned from the start: never dialled through; what it sends is read and dropped (the
        // connection is destroyed when the partition ends, so nothing it sent could be delivered anyway).
        down.on('data', () => {});
        down.on('close', () => this.destroy());
        return;
      }
      const up = net.connect({ host, port: o.target, allowHalfOpen: true });
      this.up = up;
      up.on('error', () => this.destroy());
      const toUp = new Lane(down, up, delayOf);
      const toDown = new Lane(up, down, delayOf);
      this.lanes.push(toUp, toDown);
      down.on('data', (d: Buffer) => toUp.push(d));
      down.on('end', () => toUp.push(END));
      up.on('data', (d: Buffer) => toDown.push(d));
      up.on('end', () => toDown.push(END));
      // A side that closed cleanly takes nothing more; once both have, the connection is done.
      down.on('close', () => { toDown.drop(); if (++this.closed === 2) this.destroy(); });
      up.on('close', () => { toUp.drop(); if (++this.closed === 2) this.destroy(); });
    }

    get cut(): boolean {
      return this.up === undefined || this.lanes.some((l) => l.held);
    }

    hold(): void {
      for (const l of this.lanes) l.hold();
    }

    destroy(): void {
      if (!open.delete(this)) return;
      for (const l of this.lanes) l.drop();
      this.down.destroy();
      this.up?.destroy();
    }
  }

  const server = net.createServer({ allowHalfOpen: true }, (down) => new Conn(down, mode.kind === 'partition'));
  server.on('error', () => {}); // a listener error after start would only fail later dials: the test sees those
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, () => resolve());
  });
  const port = (server.address() as net.AddressInfo).port;

  return {
    port,
    get mode() { return mode; },
    get connections() { return open.size; },
    set(next) {
      const was = mode.kind;
      mode = next;
      if (next.kind === 'partition') for (const c of open) c.hold();
      else if (was === 'partition') for (const c of [...open]) if (c.cut) c.destroy();
    },
    async close() {
      for (const c of [...open]) c.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
