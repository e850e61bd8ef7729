/**
 * Binds a PacketFramer to a socket for the handshake/auth phases: every complete packet goes to the
 * current `onPacket` handler (the session's state), framing errors to `onError`. `detach()` stops
 * reading and returns the bytes not yet framed, so the next phase (TLS upgrade, byte pump) can take them.
 */
import type { Duplex } from 'node:stream';
import { PacketFramer } from './framer.ts';
import type { Packet } from './codec.ts';

export class FramedReader {
  private readonly framer: PacketFramer;
  private detached = false;
  private readonly listener = (chunk: Buffer) => this.onData(chunk);

  constructor(
    private readonly socket: Duplex,
    maxPayload: number,
    public onPacket: (packet: Packet) => void,
    private readonly onError: (err: unknown) => void,
  ) {
    this.framer = new PacketFramer(maxPayload);
    socket.on('data', this.listener);
  }

  detach(): Buffer {
    this.detached = true;
    this.socket.removeListener('data', this.listener);
    this.socket.pause();
    return this.framer.takeRest();
  }

  private onData(chunk: Buffer): void {
    this.framer.push(chunk);
    try {
      while (!this.detached) {
        const packet = this.framer.next();
        if (!packet) return;
        this.onPacket(packet);
      }
    } catch (e) {
      if (!this.detached) this.detach();
      this.onError(e);
    }
  }
}
