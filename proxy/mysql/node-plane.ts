/**
 * The Node data plane: Node's TLSSocket on the client socket, and the JS pump (pump.ts) for the
 * command phase. Also the command phase of a native-plane session whose database leg is TLS (the C
 * relay speaks plaintext to the database): `startJsCommandPhase` runs over any decrypted stream.
 */
import tls from 'node:tls';
import type net from 'node:net';
import { asCdbpError } from '../../src/kernel/errors.ts';
import type { TlsIdentityHolder } from '../../src/crypto/tls-identity.ts';
import { closeClientStream, type ClientLeg, type ClientLegEvents, type CommandPhaseStart, type DataPlane, type DataPlaneInfo } from './data-plane.ts';
import { startPump, type AckGate, type Pump } from './pump.ts';

/** The JS pump between a decrypted client stream and the database, with the session's idle timeout. */
export function startJsCommandPhase(plain: net.Socket, start: CommandPhaseStart, ackGate: AckGate | undefined, events: ClientLegEvents): Pump {
  if (start.idleTimeoutMs > 0) plain.setTimeout(start.idleTimeoutMs, () => events.failed('idle_timeout', undefined));
  return startPump(plain, start.backend, start.capabilities, ackGate, {
    onAckRefused: (err) => events.refused('ack_refused', asCdbpError(err).message),
    onForbiddenChangeUser: (user) => events.refused('forbidden_user', user),
  }, { forbiddenUsers: start.forbiddenUsers, initialClientBytes: start.initialClientBytes, initialServerBytes: start.initialServerBytes });
}

class NodeLeg implements ClientLeg {
  readonly handedOverBytes = undefined;
  readonly relayedBytes = undefined;
  private pump: Pump | undefined;
  private secure = false;

  constructor(readonly plain: tls.TLSSocket, private readonly raw: net.Socket, private readonly ackGate: AckGate | undefined, private readonly events: ClientLegEvents) {
    plain.on('error', (e) => (this.secure ? events.error(e) : events.tlsFailed(e)));
    plain.on('close', () => events.closed());
    plain.on('end', () => events.end());
    plain.once('secure', () => {
      this.secure = true;
      events.secure(plain.getProtocol() ?? 'unknown', plain.getCipher().name);
    });
  }

  get quitSent(): boolean {
    return this.pump?.quitSent ?? false;
  }

  startCommandPhase(start: CommandPhaseStart): void {
    this.pump = startJsCommandPhase(this.plain, start, this.ackGate, this.events);
  }

  close(flushFirst: boolean): undefined {
    closeClientStream(this.plain, this.raw, flushFirst);
    return undefined;
  }
}

export class NodePlane implements DataPlane {
  constructor(private readonly identity: TlsIdentityHolder, readonly info: DataPlaneInfo) {}

  upgrade(client: net.Socket, prefix: Buffer, ackGate: AckGate | undefined, events: ClientLegEvents): ClientLeg {
    if (prefix.length > 0) client.unshift(prefix);
    const plain = new tls.TLSSocket(client, { isServer: true, secureContext: this.identity.context });
    return new NodeLeg(plain, client, ackGate, events);
  }

  stats(): { bytesIn: number; bytesOut: number; buffered: number } {
    return { bytesIn: 0, bytesOut: 0, buffered: 0 };
  }

  destroy(): void {}
}
