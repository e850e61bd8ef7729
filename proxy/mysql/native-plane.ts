/**
 * The native data plane (proxy/native/dataplane.c) under the session: it adopts the client socket
 * right after the SSLRequest, terminates TLS on a C worker thread and gives the session the decrypted
 * stream over a socketpair (the handshake runs there unchanged); at the login OK it takes the database
 * socket too and relays the command phase itself ("bypass"), with its own change-user scan and, under
 * strict freshness, its own response tracker whose holds come back here (askGate → release/refuseAck).
 *
 * Everything that touches Node's socket internals (`_handle`: descriptors, stopping libuv's reads) is
 * in this file, so protocol code never does.
 */
import net from 'node:net';
import { asCdbpError, CdbpError } from '../../src/kernel/errors.ts';
import type { Logger } from '../../src/kernel/log.ts';
import type { TlsIdentityHolder } from '../../src/crypto/tls-identity.ts';
import type { ConnectionOutcome } from '../shared/connection-log.ts';
import { Cap } from './constants.ts';
import { CLOSE_GRACE_MS, closeClientStream, type ClientLeg, type ClientLegEvents, type CommandPhaseStart, type DataPlane, type DataPlaneInfo } from './data-plane.ts';
import { ackRefusedPacket, askGate, type AckGate, type Pump } from './pump.ts';
import { startJsCommandPhase } from './node-plane.ts';
import type { NativeClosed, NativeDataPlane } from '../native/dataplane.ts';

/** The descriptor under a Node socket, or undefined (Node keeps it in the handle). */
function socketFd(sock: net.Socket): number | undefined {
  const fd = (sock as unknown as { _handle?: { fd?: number } })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : undefined;
}

/**
 * Stops Node from reading a socket whose descriptor is being handed to the native data plane, and
 * returns what it had read but not delivered. Node's pause() only stops libuv at the high-water mark,
 * so without this libuv could still read (and keep) bytes the relay needs.
 */
function takeSocketOver(sock: net.Socket): Buffer[] {
  const s = sock as unknown as { _handle?: { readStop?: () => number; reading?: boolean }; _read: () => void };
  s._handle?.readStop?.();
  if (s._handle) s._handle.reading = false;
  s._read = () => {}; // read() below must not restart libuv
  const out: Buffer[] = [];
  for (let b = sock.read() as Buffer | null; b !== null; b = sock.read() as Buffer | null) out.push(b);
  return out;
}

/** Closes our handle on a socket whose descriptor the relay has duplicated (no shutdown: the connection stays). */
function dropHandle(sock: net.Socket): void {
  sock.removeAllListeners('close');
  sock.removeAllListeners('end');
  sock.removeAllListeners('error');
  sock.on('error', () => {});
  sock.destroy();
}

/** The data plane's close reasons, in connection-log terms ('closed' = we asked: keep ours). */
const NATIVE_OUTCOMES: Record<string, ConnectionOutcome> = {
  ok: 'ok', closed: 'ok', client_closed: 'ok', drained: 'drained', idle_timeout: 'idle_timeout', forbidden_user: 'forbidden_user',
  client_error: 'client_error', backend_error: 'backend_error', protocol_error: 'protocol_error',
  tls_failed: 'tls_failed', proxy_error: 'backend_error', ack_refused: 'ack_refused',
};

class NativeLeg implements ClientLeg {
  /** The relay's connection id, from adoption until it reports the close. */
  private id: number | undefined;
  private secure = false;
  private closing = false;
  private bypassed = false;
  /** A native session whose database leg is TLS keeps the JS pump over the socketpair. */
  private pump: Pump | undefined;
  handedOverBytes: { in: number; out: number } | undefined;
  relayedBytes: { in: number; out: number } | undefined;
  private onRelayClosed: (() => void) | undefined;

  readonly plain: net.Socket;

  constructor(private readonly native: NativeDataPlane, client: net.Socket, prefix: Buffer, private readonly ackGate: AckGate | undefined, private readonly events: ClientLegEvents) {
    const all = Buffer.concat([prefix, ...takeSocketOver(client)]);
    const fd = socketFd(client);
    if (fd === undefined) throw new CdbpError('INTERNAL', 'client socket has no file descriptor');
    const { id, fd: plainFd } = native.adopt(fd, all, {
      onSecure: (protocol, cipher) => {
        this.secure = true;
        events.secure(protocol, cipher);
      },
      onClosed: (info) => this.relayClosed(info),
      onHold: () => this.hold(),
    });
    this.id = id;
    // The data plane holds its own descriptor now; ours goes without ending the TCP connection.
    dropHandle(client);
    this.plain = new net.Socket({ fd: plainFd, readable: true, writable: true, allowHalfOpen: true });
    // The data plane owns the connection: its end (client gone, TLS failure, relay error) always comes
    // as onClosed with the reason; the socketpair's own end/error only echo it, so they are ignored.
    this.plain.on('error', () => {});
  }

  get quitSent(): boolean {
    // After a bypass the relay sees the commands; its close reason already says ok after a COM_QUIT.
    return this.pump?.quitSent ?? false;
  }

  startCommandPhase(start: CommandPhaseStart): void {
    // A TLS backend leg stays in the JS pump (the relay speaks plaintext to the database).
    if (start.backend !== start.backendRaw) {
      this.pump = startJsCommandPhase(this.plain, start, this.ackGate, this.events);
      return;
    }
    this.bypass(start);
  }

  /**
   * Hands the command phase to the relay. We end our side of the decrypted stream (the auth OK is
   * already written to it); the data plane forwards it to the client, stops decrypting, and ends its
   * side, so the bytes read here until that end are every client byte it decrypted for us (commands
   * pipelined after the OK). They go back to it with the backend socket, ahead of anything newer.
   */
  private bypass(start: CommandPhaseStart): void {
    const { plain, native } = this;
    const backend = start.backendRaw;
    const leftovers = [...start.initialClientBytes];
    // Nothing may come from the database between the login OK and the first command (see `early`
    // below): the relay's response framing starts at a packet boundary.
    if (start.initialServerBytes.length > 0) {
      this.events.failed('backend_error', new CdbpError('PROTOCOL_VIOLATION', 'database sent data after the login OK, before any command'));
      return;
    }
    plain.on('data', (chunk: Buffer) => leftovers.push(chunk));
    // The switch is a local exchange with the relay (no network round trip): bounded all the same.
    const switchTimer = setTimeout(() => this.events.failed('protocol_error', new CdbpError('INTERNAL', 'native relay did not take over the session')), CLOSE_GRACE_MS);
    switchTimer.unref();
    plain.once('end', () => {
      clearTimeout(switchTimer);
      if (this.closing || this.id === undefined) return;
      const fd = socketFd(backend);
      if (fd === undefined) {
        this.events.failed('backend_error', new CdbpError('INTERNAL', 'backend socket has no file descriptor'));
        return;
      }
      this.handedOverBytes = { in: backend.bytesWritten, out: backend.bytesRead };
      // Nothing is expected from the database before the next command, but whatever libuv already
      // read must reach the client, and libuv must not read again once the relay owns the socket.
      if (takeSocketOver(backend).length > 0) {
        this.events.failed('backend_error', new CdbpError('PROTOCOL_VIOLATION', 'database sent data after the login OK, before any command'));
        return;
      }
      try {
        const gate = this.ackGate ? {
          deprecateEof: (start.capabilities & Cap.CLIENT_DEPRECATE_EOF) !== 0n,
          cacheMetadata: (start.capabilities & Cap.MARIADB_CLIENT_CACHE_METADATA) !== 0n,
        } : undefined;
        native.bypass(this.id, fd, Buffer.concat(leftovers), start.idleTimeoutMs, gate);
      } catch (e) {
        // e.g. out of file descriptors for the dup: this session ends, the proxy does not.
        this.events.failed('backend_error', e);
        return;
      }
      this.bypassed = true;
      // The relay has its own descriptor; closing ours does not end the connection (no shutdown()).
      dropHandle(backend);
      plain.destroy();
    });
    plain.end();
    plain.resume();
  }

  /**
   * Strict freshness on the relay: it holds the acknowledgment of a possible write (and reads nothing
   * more from the database) until the gate says the write is covered by a counted epoch.
   */
  private hold(): void {
    const id = this.id;
    if (id === undefined || !this.ackGate) return;
    const held = askGate(this.ackGate);
    if (!held) {
      this.native.release(id);
      return;
    }
    // A connection that closed meanwhile is gone from the relay: a late release or refusal is ignored.
    held.then(() => this.native.release(id), (err: unknown) => {
      const why = asCdbpError(err).message;
      if (!this.closing) this.events.refused('ack_refused', why);
      this.native.refuseAck(id, ackRefusedPacket(0), why);
    });
  }

  private relayClosed(info: NativeClosed): void {
    this.id = undefined;
    this.relayedBytes = { in: info.bytesIn, out: info.bytesOut };
    if (this.closing) {
      // We closed first (drain, destroy): the session's close line waited for these byte counts.
      this.onRelayClosed?.();
      return;
    }
    this.events.planeClosed({
      outcome: NATIVE_OUTCOMES[info.outcome],
      ...(info.error !== undefined ? { error: info.error } : {}),
      ...(info.refusedUser !== undefined ? { refusedUser: info.refusedUser } : {}),
    });
  }

  close(flushFirst: boolean): Promise<void> | undefined {
    this.closing = true;
    if (this.id !== undefined) {
      // flushFirst: the session wrote a last ERR and ended its side; the data plane delivers it, then closes.
      if (flushFirst && this.secure) this.native.finish(this.id);
      else this.native.close(this.id);
    }
    closeClientStream(this.plain, this.plain, flushFirst);
    // A relayed connection closes on its worker thread: its byte counts come with the close report.
    if (!this.bypassed || this.id === undefined) return undefined;
    return new Promise((resolve) => { this.onRelayClosed = resolve; });
  }
}

export class NativePlane implements DataPlane {
  private readonly unsubscribe: () => void;

  constructor(private readonly native: NativeDataPlane, identity: TlsIdentityHolder, log: Logger, readonly info: DataPlaneInfo) {
    try {
      native.setIdentity(identity.pem);
      // The holder validated the pair with the same OpenSSL, so the native side is not expected to refuse it.
      this.unsubscribe = identity.onChange((pem) => {
        native.setIdentity(pem);
        log.info({ event: 'tls_identity_swapped', generation: identity.generation, notAfter: identity.certificate.validTo }, 'TLS identity replaced');
      });
    } catch (e) {
      native.destroy(); // its worker threads must not outlive a proxy that was never created
      throw e;
    }
  }

  upgrade(client: net.Socket, prefix: Buffer, ackGate: AckGate | undefined, events: ClientLegEvents): ClientLeg {
    return new NativeLeg(this.native, client, prefix, ackGate, events);
  }

  stats(): { bytesIn: number; bytesOut: number; buffered: number } {
    return this.native.stats();
  }

  destroy(): void {
    this.unsubscribe();
    this.native.destroy();
  }
}
