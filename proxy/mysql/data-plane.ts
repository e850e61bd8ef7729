/**
 * The MySQL endpoint's data planes: who terminates the client's TLS and relays the command phase.
 * The session (session.ts) is the conversation; a plane is the transport under it, chosen once per
 * proxy (choose-data-plane.ts). This file holds the contract and the one close rule they share.
 *
 *   const plane = chooseDataPlane({ wanted, backend, identity, forbiddenUsers, nativeWorkers, log });
 *   plane.info                          // { kind: 'native' | 'node', reason } (logs, /v1/status, metrics)
 *   const leg = plane.upgrade(client, prefix, ackGate, events);   // right after the SSLRequest
 *   leg.plain                           // the decrypted client stream: the handshake runs over it
 *   leg.startCommandPhase({...})        // at the login OK
 *   leg.close(flushFirst)               // the session's single cleanup
 *   plane.stats(); plane.destroy();
 *
 * Two implementations: node-plane.ts (Node's TLSSocket + the JS pump) and native-plane.ts (the C
 * relay of proxy/native: it terminates TLS, hands the decrypted stream to the session over a
 * socketpair, and after the login OK relays the command phase itself).
 */
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import type { ConnectionOutcome } from '../shared/connection-log.ts';
import type { AckGate } from './pump.ts';

/** Which data plane a proxy runs, and why (for logs, /v1/status and metrics). */
export interface DataPlaneInfo {
  kind: 'native' | 'node';
  reason: string;
}

/** What a plane tells the session about its client (each called at most in the phases noted). */
export interface ClientLegEvents {
  /** TLS is up; the handshake continues on `leg.plain`. */
  secure(protocol: string, cipher: string): void;
  /** The TLS handshake failed, or the client left during it. */
  tlsFailed(err: unknown): void;
  /** The decrypted stream failed (reset, bad record). */
  error(err: unknown): void;
  /** The client's FIN. */
  end(): void;
  /** The client connection is closed. */
  closed(): void;
  /**
   * The plane ended the connection itself (native relay), with its reason; `outcome` undefined: a
   * reason the session classifies by phase. `refusedUser`: a COM_CHANGE_USER to a forbidden name.
   */
  planeClosed(info: { outcome: ConnectionOutcome | undefined; error?: string; refusedUser?: string }): void;
  /** Command phase: the gate refused an acknowledgment, or a change-user named a forbidden user. */
  refused(kind: 'ack_refused' | 'forbidden_user', detail: string): void;
  /** The command phase could not be handed over (the session ends with this outcome). */
  failed(outcome: ConnectionOutcome, err: unknown): void;
}

/** What the session hands over at the login OK. */
export interface CommandPhaseStart {
  /** The stream to the database (the TLS leg, or the raw socket). */
  backend: Duplex;
  backendRaw: net.Socket;
  capabilities: bigint;
  forbiddenUsers: ReadonlySet<string>;
  idleTimeoutMs: number;
  /** Client bytes that are not consumed yet (commands pipelined before the OK). */
  initialClientBytes: Buffer[];
  /** Database bytes read after the OK. */
  initialServerBytes: Buffer;
}

export interface ClientLeg {
  /** The decrypted client stream. */
  readonly plain: net.Socket;
  /** The backend leg's byte counts frozen when the plane took the backend socket over. */
  readonly handedOverBytes: { in: number; out: number } | undefined;
  /** Command-phase bytes the plane relayed itself, once it has reported them. */
  readonly relayedBytes: { in: number; out: number } | undefined;
  /** The client's last command was COM_QUIT (a reset after it is a normal end). */
  readonly quitSent: boolean;
  startCommandPhase(start: CommandPhaseStart): void;
  /**
   * Closes the client side (`flushFirst`: what the session wrote last, e.g. an ERR, reaches the client
   * first). Returns a promise when the plane still has to report its byte counts (the caller bounds the wait).
   */
  close(flushFirst: boolean): Promise<void> | undefined;
}

export interface DataPlane {
  readonly info: DataPlaneInfo;
  /** Takes the client over right after its SSLRequest; `prefix`: bytes read past it. Throws if it cannot. */
  upgrade(client: net.Socket, prefix: Buffer, ackGate: AckGate | undefined, events: ClientLegEvents): ClientLeg;
  /** Live counters of what the plane relays itself. */
  stats(): { bytesIn: number; bytesOut: number; buffered: number };
  destroy(): void;
}

/** How long a closing client may take to flush a last packet before it is destroyed. */
export const CLOSE_GRACE_MS = 5_000;

/** Ends a client stream: after flushing what was written (bounded), or now. */
export function closeClientStream(sock: net.Socket, raw: net.Socket, flushFirst: boolean): void {
  if (flushFirst && !sock.destroyed) {
    const t = setTimeout(() => { sock.destroy(); raw.destroy(); }, CLOSE_GRACE_MS);
    t.unref();
    sock.once('close', () => clearTimeout(t));
    sock.end();
  } else {
    sock.destroy();
    raw.destroy();
  }
}
