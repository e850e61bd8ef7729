/**
 * One client connection: its state machine from TCP accept to close, and its single cleanup.
 *
 *   accept ─► dial backend ─► backend greeting ─► patched greeting to client (CLIENT_SSL on, compression off)
 *     ─► SSLRequest ─► TLS upgrade ─► HandshakeResponse (seq rewritten for a non-TLS backend leg)
 *     ─► auth relay (auth switch / more data, seq rewritten both ways) ─► OK ─► command phase (pump)
 *
 * The current packet handler *is* the state (`backendReader.onPacket`, `clientReader.onPacket`).
 * Everything that ends the session goes through `finish()`, which runs once: destroys both sockets,
 * clears timers, releases the connection slot, logs the close line, updates counters.
 *
 * From the SSLRequest on, the client is on a data plane (data-plane.ts, chosen once per proxy): it
 * terminates TLS and hands back the decrypted stream (`leg.plain`) on which the handshake continues,
 * and at the login OK it takes the command phase (the JS pump, or the native relay). The session never
 * sees which plane it runs on.
 *
 * Sequence ids (https://mariadb.com/kb/en/0-packet/#sequence-id): the client's HandshakeResponse after
 * TLS has seq 2 (greeting 0, SSLRequest 1). A backend reached over a unix socket (no TLS on that leg)
 * expects it as seq 1, so during authentication client→backend packets get seq-1 and backend→client
 * packets seq+1. On a TLS backend leg the proxy sends its own SSLRequest (seq 1) and no rewrite is
 * needed. In the command phase every command restarts at seq 0, so no rewriting happens there.
 */
import net from 'node:net';
import tls from 'node:tls';
import type { Duplex } from 'node:stream';
import type { Logger } from '../../src/kernel/log.ts';
import { asCdbpError, CdbpError } from '../../src/kernel/errors.ts';
import type { ConnectionRecord, ConnectionOutcome } from '../shared/connection-log.ts';
import type { ListenerConnection } from '../shared/listener.ts';
import type { EndpointMetrics } from '../shared/metrics.ts';
import { Cap, CAPS_COMPRESSION, CAPS_NEVER_ADVERTISED, Header, ProxyErrno } from './constants.ts';
import {
  clearClientCapabilities, decodeClientHello, decodeInitialHandshake, encodeErrPacket, encodePacket, encodePreGreetingErrPacket,
  patchHandshakeCapabilities, sslRequestFrom, type ErrPacket, type Packet,
} from './codec.ts';
import { FramedReader } from './reader.ts';
import type { AckGate } from './pump.ts';
import { forbiddenUserErr, isForbiddenUser } from './forbidden-user.ts';
import { accountTlsErr, type AccountTlsSource, type TlsRequirement } from './account-tls.ts';
import { CLOSE_GRACE_MS, closeClientStream, type ClientLeg, type ClientLegEvents, type DataPlane } from './data-plane.ts';

export interface BackendTls {
  caPem: string;
  servername?: string;
}

/**
 * The database. `tls` on a TCP leg: every session speaks TLS to it. `tls` on a socket leg: only the
 * sessions of accounts that require it (REQUIRE SSL, see account-tls.ts) do; the rest stay plaintext
 * (and on the native relay).
 */
export type BackendTarget =
  | { socket: string; tls?: BackendTls }
  | { host: string; port: number; tls?: BackendTls; allowInsecure?: boolean };

export interface SessionLimits {
  handshakeTimeoutMs: number;
  idleTimeoutMs: number;
  maxHandshakePacket: number;
}

export interface SessionContext {
  backend: BackendTarget;
  limits: SessionLimits;
  log: Logger;
  metrics: EndpointMetrics;
  ackGate: AckGate | undefined;
  /** Who terminates the client's TLS and relays the command phase (choose-data-plane.ts). */
  plane: DataPlane;
  /** User names refused before reaching the backend (the proxy's OS account on a unix-socket leg). */
  forbiddenUsers: ReadonlySet<string>;
  /** The accounts' REQUIRE clauses (account-tls.ts), when known: they pick the backend leg at login. */
  accountTls: AccountTlsSource | undefined;
  /** Totals across sessions, updated at close. */
  totals: SessionTotals;
  onClosed(session: MysqlSession): void;
}

export interface SessionTotals {
  bytesIn: number;
  bytesOut: number;
  tlsFailures: number;
  authFailures: number;
  handshakeTimeouts: number;
}

/** Commands a client may pipeline before its login completes (held, not forwarded, until it does). */
const MAX_HELD_BEFORE_LOGIN = 1 << 20;

type Phase = 'connecting' | 'greeting' | 'ssl_request' | 'tls' | 'response' | 'auth' | 'command' | 'closed';

export class MysqlSession {
  readonly record: ConnectionRecord;
  private phase: Phase = 'connecting';
  private backend: Duplex | undefined;
  private backendRaw: net.Socket | undefined;
  /** The client from its SSLRequest on, on the data plane: `leg.plain` is the decrypted stream. */
  private leg: ClientLeg | undefined;
  private backendReader: FramedReader | undefined;
  private clientReader: FramedReader | undefined;
  private handshakeTimer: NodeJS.Timeout | undefined;
  private graceTimer: NodeJS.Timeout | undefined;
  /** seq adjustment for client→backend packets during auth (1 on a non-TLS backend leg). */
  private seqShift = 0;
  private lastClientSeq = 0;
  private negotiatedCaps = 0n;
  private serverCaps = 0n;
  private outcome: ConnectionOutcome = 'ok';
  private error: string | undefined;
  private readonly heldClientPackets: Packet[] = [];
  private heldClientBytes = 0;
  /** The sequence id (client numbering) of the one auth answer the database asked for, if it asked. */
  private authReplySeq: number | undefined;

  readonly id: number;

  /** `conn`: the listener's handle (proxy/shared/listener.ts): its slot, its log record, its milestones. */
  constructor(
    private readonly client: net.Socket,
    private readonly conn: ListenerConnection,
    private readonly ctx: SessionContext,
  ) {
    this.id = conn.id;
    this.record = conn.record;
  }

  get isClosed(): boolean {
    return this.phase === 'closed';
  }

  get inCommandPhase(): boolean {
    return this.phase === 'command';
  }

  /** Live byte counters (backend leg: what the client sent to / received from the database). */
  get bytes(): { in: number; out: number } {
    // Once a plane relays the command phase itself, it counts those bytes (its stats() are live).
    const frozen = this.leg?.handedOverBytes;
    if (frozen) return frozen;
    return { in: this.backendRaw?.bytesWritten ?? 0, out: this.backendRaw?.bytesRead ?? 0 };
  }

  /** Bytes queued inside the proxy for this session (TLS write buffer + unread backend data). */
  get buffered(): number {
    const client = this.leg?.plain ?? this.client;
    return client.writableLength + (this.backend?.readableLength ?? 0) + (this.backend?.writableLength ?? 0);
  }

  start(): void {
    const { client, ctx } = this;
    client.setNoDelay(true);
    client.on('error', (e) => this.onClientError(e));
    client.on('close', () => this.onClientClosed());
    // The listener allows half-open sockets (a client's FIN must not cut a result it still reads), so a
    // FIN alone never emits 'close': before the TLS upgrade it is the client leaving (data planes watch
    // their own streams from then on).
    client.on('end', () => this.onClientEndBeforeLogin());
    this.handshakeTimer = setTimeout(() => this.onHandshakeTimeout(), ctx.limits.handshakeTimeoutMs);
    this.dialBackend();
  }

  /** Ends the session now (drain timeout, close()). */
  destroy(outcome: ConnectionOutcome = 'drained'): void {
    this.finish(outcome);
  }

  // ------------------------------------------------------------------------------------------
  // Backend leg

  private dialBackend(): void {
    const target = this.ctx.backend;
    const sock = 'socket' in target ? net.connect(target.socket) : net.connect(target.port, target.host);
    this.backendRaw = sock;
    this.backend = sock;
    sock.setNoDelay(true);
    sock.on('error', (e) => this.onBackendError(e));
    sock.on('close', () => this.onBackendClosed());
    sock.once('connect', () => {
      if (this.phase === 'closed') return;
      this.phase = 'greeting';
      this.backendReader = new FramedReader(sock, 1 << 16, (p) => this.onBackendGreeting(p), (e) => this.onBackendError(e));
    });
  }

  private onBackendGreeting(packet: Packet): void {
    if (packet.payload[0] === Header.ERR) {
      // e.g. the database's own "Too many connections" or "Host blocked": relay it verbatim.
      this.client.end(encodePacket(packet.seq, packet.payload));
      this.finish('backend_error', new CdbpError('BACKEND_UNAVAILABLE', 'database refused the connection'), true);
      return;
    }
    const hs = decodeInitialHandshake(packet.payload);
    this.serverCaps = hs.capabilities;
    this.record.backendId = hs.connectionId;
    if ((hs.capabilities & Cap.CLIENT_PROTOCOL_41) === 0n) throw new CdbpError('PROTOCOL_VIOLATION', 'database does not speak protocol 4.1');
    // Always advertise TLS (we terminate it); never compression or COM_MULTI (constants.ts says why).
    const patched = patchHandshakeCapabilities(packet.payload, hs, Cap.CLIENT_SSL, CAPS_NEVER_ADVERTISED);
    this.phase = 'ssl_request';
    this.client.write(encodePacket(packet.seq, patched));
    this.backendReader!.onPacket = (p) => this.onBackendUnexpected(p);
    this.clientReader = new FramedReader(this.client, this.ctx.limits.maxHandshakePacket,
      (p) => this.onClientSslRequest(p), (e) => this.onClientProtocolError(e));
  }

  private onBackendUnexpected(_packet: Packet): void {
    this.finish('backend_error', new CdbpError('PROTOCOL_VIOLATION', 'database sent a packet out of turn'));
  }

  // ------------------------------------------------------------------------------------------
  // Client leg: SSLRequest, TLS, HandshakeResponse

  private onClientSslRequest(packet: Packet): void {
    const hello = decodeClientHello(packet.payload);
    this.lastClientSeq = packet.seq;
    if (!hello.isSslRequest || (hello.capabilities & Cap.CLIENT_SSL) === 0n) {
      this.ctx.metrics.refused('insecure_transport');
      this.refuse('insecure', ProxyErrno.SECURE_TRANSPORT_REQUIRED,
        'Connections using insecure transport are prohibited: this endpoint requires TLS (use --ssl-ca with the CAS root CA and --ssl-verify-server-cert)',
        packet.seq + 1);
      return;
    }
    const rest = this.clientReader!.detach();
    this.phase = 'tls';
    // From here the plane owns the client socket (the native one drops our handle and its listeners).
    try {
      this.leg = this.ctx.plane.upgrade(this.client, rest, this.ctx.ackGate, this.legEvents());
    } catch (e) {
      this.finish('protocol_error', e);
    }
  }

  private legEvents(): ClientLegEvents {
    return {
      secure: (protocol, cipher) => this.onSecure(protocol, cipher),
      tlsFailed: (err) => this.onTlsFailed(err),
      error: (err) => this.onClientError(err),
      end: () => this.onClientEndBeforeLogin(),
      closed: () => this.onClientClosed(),
      planeClosed: (info) => this.onPlaneClosed(info),
      refused: (kind, detail) => this.onCommandPhaseRefusal(kind, detail),
      failed: (outcome, err) => this.finish(outcome, err),
    };
  }

  private onTlsFailed(err: unknown): void {
    if (this.phase === 'closed') return;
    this.ctx.metrics.tlsFailure();
    this.ctx.totals.tlsFailures++;
    this.finish('tls_failed', err);
  }

  private onSecure(protocol: string, cipher: string): void {
    if (this.phase === 'closed') return;
    this.ctx.metrics.tlsHandshake();
    this.record.tls = { protocol, cipher };
    this.phase = 'response';
    this.clientReader = new FramedReader(this.leg!.plain, this.ctx.limits.maxHandshakePacket,
      (p) => this.onClientHandshakeResponse(p), (e) => this.onClientProtocolError(e));
  }

  /** The plane ended the connection itself (the native relay: client gone, relay error, refusal). */
  private onPlaneClosed(info: Parameters<ClientLegEvents['planeClosed']>[0]): void {
    if (this.phase === 'closed') return;
    if (this.phase === 'tls') {
      this.onTlsFailed(new CdbpError('PROTOCOL_VIOLATION', info.error ?? 'TLS handshake failed'));
      return;
    }
    if (info.refusedUser !== undefined) {
      this.ctx.metrics.refused('forbidden_user');
      this.outcome = 'forbidden_user';
      this.error = `COM_CHANGE_USER to '${info.refusedUser}' refused (the proxy's own OS account)`;
    }
    const outcome = info.outcome ?? (this.phase === 'command' ? 'client_error' : 'protocol_error');
    this.finish(outcome, info.error ? new CdbpError(outcome === 'ok' ? 'INTERNAL' : 'PROTOCOL_VIOLATION', info.error) : undefined);
  }

  /**
   * The command phase refused something: an acknowledgment the gate would not confirm (the client got
   * an ERR instead), or a change-user to a forbidden name (it gets ERR 1045 once the database has
   * answered what came before). The session ends after the plane's last words, bounded.
   */
  private onCommandPhaseRefusal(kind: 'ack_refused' | 'forbidden_user', detail: string): void {
    if (this.phase === 'closed') return;
    this.outcome = kind;
    if (kind === 'forbidden_user') {
      this.ctx.metrics.refused('forbidden_user');
      this.error = `COM_CHANGE_USER to '${detail}' refused (the proxy's own OS account)`;
    } else {
      this.error = detail;
    }
    this.scheduleGrace();
  }

  private onClientHandshakeResponse(packet: Packet): void {
    const hello = decodeClientHello(packet.payload);
    this.lastClientSeq = packet.seq;
    if (hello.isSslRequest) throw new CdbpError('PROTOCOL_VIOLATION', 'second SSLRequest inside TLS');
    this.record.user = hello.user;
    if (isForbiddenUser(this.ctx.forbiddenUsers, hello.user)) {
      this.ctx.metrics.refused('forbidden_user');
      const err = forbiddenUserErr(hello.user!, 'login');
      this.refuse('forbidden_user', err, err.message, packet.seq + 1);
      return;
    }
    if (hello.capabilities & CAPS_NEVER_ADVERTISED) {
      this.ctx.metrics.refused('protocol');
      this.refuse('protocol_error', ProxyErrno.FEATURE_REFUSED,
        hello.capabilities & CAPS_COMPRESSION
          ? 'Protocol compression is not supported by this proxy (it was not advertised); connect without compression'
          : 'COM_MULTI is not supported by this proxy (it was not advertised)',
        packet.seq + 1);
      return;
    }
    const required = hello.user === undefined ? undefined : this.ctx.accountTls?.requirement(hello.user);
    const backendTls = this.backendTlsFor(required);
    if (required === 'x509' || (required === 'ssl' && !backendTls)) {
      // The database would refuse with a bare "Access denied": say why, before it counts a failed login.
      this.ctx.accountTls?.stale(); // the account may have been altered since the last read
      this.ctx.metrics.authFailure();
      this.ctx.totals.authFailures++;
      const err = accountTlsErr(hello.user!, required);
      this.refuse('auth_failed', err, err.message, packet.seq + 1);
      return;
    }
    this.negotiatedCaps = hello.capabilities & this.serverCaps;
    this.phase = 'auth';
    this.clientReader!.onPacket = (p) => this.onClientAuthPacket(p);
    if (backendTls) {
      this.upgradeBackend(backendTls.tls, backendTls.host, packet);
      return;
    }
    this.seqShift = 1;
    this.backendReader!.onPacket = (p) => this.onBackendAuthPacket(p);
    this.backend!.write(encodePacket(packet.seq - 1, clearClientCapabilities(packet.payload, Cap.CLIENT_SSL)));
  }

  /**
   * The TLS leg to the database for this login, if any: always on a TCP leg configured with TLS; on a
   * socket leg only for an account that requires TLS, and only if the database offers it.
   */
  private backendTlsFor(required: TlsRequirement | undefined): { tls: BackendTls; host: string } | undefined {
    const target = this.ctx.backend;
    if (!target.tls) return undefined;
    if ('host' in target) return { tls: target.tls, host: target.host };
    if (required !== 'ssl' || (this.serverCaps & Cap.CLIENT_SSL) === 0n) return undefined;
    return { tls: target.tls, host: 'localhost' };
  }

  private upgradeBackend(opts: BackendTls, host: string, response: Packet): void {
    this.backendReader!.detach();
    this.backend!.write(encodePacket(1, sslRequestFrom(response.payload)));
    const servername = opts.servername ?? (net.isIP(host) ? undefined : host);
    const sock = tls.connect({
      socket: this.backendRaw!, ca: opts.caPem, ...(servername ? { servername } : {}),
      // With an IP and no servername, verify the IP SAN.
      checkServerIdentity: (hostname, cert) => tls.checkServerIdentity(servername ?? host, cert),
    });
    this.backend = sock;
    sock.on('error', (e) => this.onBackendError(e));
    sock.once('secureConnect', () => {
      if (this.phase === 'closed') return;
      this.backendReader = new FramedReader(sock, this.ctx.limits.maxHandshakePacket,
        (p) => this.onBackendAuthPacket(p), (e) => this.onBackendError(e));
      sock.write(encodePacket(response.seq, response.payload));
    });
  }

  // ------------------------------------------------------------------------------------------
  // Authentication relay

  private onClientAuthPacket(packet: Packet): void {
    if (packet.seq === 0) {
      // A command pipelined before the auth OK: it goes through the pump (scanner, tracker) once
      // authenticated, like any other command. Bounded: authentication can be kept waiting.
      this.heldClientBytes += packet.payload.length + 4;
      if (this.heldClientBytes > MAX_HELD_BEFORE_LOGIN) {
        this.ctx.metrics.refused('protocol');
        this.refuse('protocol_error', ProxyErrno.HANDSHAKE_ERROR,
          `Bad handshake: more than ${MAX_HELD_BEFORE_LOGIN} bytes of commands sent before authentication completed`, this.lastClientSeq + 1);
        return;
      }
      this.heldClientPackets.push(packet);
      return;
    }
    // Only an answer the database asked for (auth switch, more data), with the sequence id that answer
    // must have, is forwarded. Anything else could reach the database renumbered (seq − 1 on a socket
    // leg: a seq-1 packet would arrive as seq 0, i.e. as a command that skipped the change-user check).
    if (this.authReplySeq === undefined || packet.seq !== this.authReplySeq) {
      this.ctx.metrics.refused('protocol');
      this.refuse('protocol_error', ProxyErrno.HANDSHAKE_ERROR,
        `Bad handshake: unexpected packet (sequence id ${packet.seq}) during authentication`, this.lastClientSeq + 1);
      return;
    }
    this.authReplySeq = undefined;
    this.lastClientSeq = packet.seq;
    this.backend!.write(encodePacket(packet.seq - this.seqShift, packet.payload));
  }

  private onBackendAuthPacket(packet: Packet): void {
    const first = packet.payload[0];
    const seq = (packet.seq + this.seqShift) & 0xff;
    if (first === Header.ERR) {
      this.ctx.metrics.authFailure();
      this.ctx.totals.authFailures++;
      this.ctx.accountTls?.stale(); // e.g. an account created REQUIRE SSL since the last read
      this.leg!.plain.end(encodePacket(seq, packet.payload));
      this.finish('auth_failed', undefined, true);
      return;
    }
    this.leg!.plain.write(encodePacket(seq, packet.payload));
    if (first === Header.OK) {
      this.authReplySeq = undefined;
      this.enterCommandPhase();
    } else if (first === Header.EOF || first === Header.AUTH_MORE_DATA) {
      // AuthSwitchRequest / AuthMoreData: the client owes exactly one answer, numbered after this packet.
      this.authReplySeq = (seq + 1) & 0xff;
    }
  }

  private enterCommandPhase(): void {
    this.phase = 'command';
    clearTimeout(this.handshakeTimer);
    this.handshakeTimer = undefined;
    this.conn.established();
    // Commands pipelined before the login OK enter the command phase like any later command: the
    // change-user check and the response tracker must see them, or the tracker would be out of step for good.
    const initialClientBytes = this.heldClientPackets.map((p) => encodePacket(p.seq, p.payload));
    this.heldClientPackets.length = 0;
    const clientRest = this.clientReader!.detach();
    if (clientRest.length > 0) initialClientBytes.push(clientRest);
    this.leg!.startCommandPhase({
      backend: this.backend!, backendRaw: this.backendRaw!, capabilities: this.negotiatedCaps,
      forbiddenUsers: this.ctx.forbiddenUsers, idleTimeoutMs: this.ctx.limits.idleTimeoutMs,
      initialClientBytes, initialServerBytes: this.backendReader!.detach(),
    });
  }

  // ------------------------------------------------------------------------------------------
  // Errors, closing, cleanup

  private onClientError(e: unknown): void {
    if (this.phase !== 'command') this.finish('protocol_error', e);
    else if (this.leg?.quitSent) this.finish('ok'); // a reset right after COM_QUIT: it quit normally
    else this.finish('client_error', e);
  }

  private onClientProtocolError(e: unknown): void {
    const err = asCdbpError(e, 'PROTOCOL_VIOLATION');
    this.ctx.metrics.refused('protocol');
    const errno = err.code === 'FRAME_TOO_LARGE' ? ProxyErrno.PACKET_TOO_LARGE : ProxyErrno.HANDSHAKE_ERROR;
    this.refuse('protocol_error', errno, `Bad handshake: ${err.message}`, this.lastClientSeq + 1);
  }

  private onHandshakeTimeout(): void {
    this.ctx.metrics.handshakeTimeout();
    this.ctx.totals.handshakeTimeouts++;
    if (this.phase === 'ssl_request' || this.phase === 'connecting' || this.phase === 'greeting') {
      this.refuse('handshake_timeout', ProxyErrno.READ_TIMEOUT, 'Handshake timed out', this.phase === 'ssl_request' ? 1 : 0);
    } else if (this.phase === 'response' || this.phase === 'auth') {
      // Inside TLS the client gets the same ERR 1159, numbered as the server packet it waits for next:
      // the answer to its HandshakeResponse (seq 2), or to the auth reply the database asked for.
      const expected = this.phase === 'response' ? this.lastClientSeq + 2
        : this.authReplySeq !== undefined ? this.authReplySeq + 1 : this.lastClientSeq + 1;
      this.refuse('handshake_timeout', ProxyErrno.READ_TIMEOUT, 'Handshake timed out', expected);
    } else {
      this.finish('handshake_timeout', new CdbpError('HANDSHAKE_TIMEOUT', 'handshake timed out'));
    }
  }

  private onBackendError(e: unknown): void {
    if (this.phase === 'connecting' || this.phase === 'greeting') {
      this.ctx.metrics.refused('backend_unavailable');
      this.refuse('backend_error', ProxyErrno.PROXY_ERROR, 'The database behind this proxy is unavailable', 0, e);
      return;
    }
    this.finish('backend_error', e);
  }

  private onBackendClosed(): void {
    if (this.phase === 'closed') return;
    if (this.phase !== 'command') {
      if (this.phase === 'connecting' || this.phase === 'greeting') {
        this.refuse('backend_error', ProxyErrno.PROXY_ERROR, 'The database closed the connection during the handshake', 0);
      } else {
        this.finish('backend_error', new CdbpError('BACKEND_UNAVAILABLE', 'database closed the connection during the handshake'));
      }
      return;
    }
    // Command phase: pipe has already end()ed the client side; give it time to flush, then close.
    this.scheduleGrace();
  }

  /**
   * The client's FIN before the login OK: nothing it could still want (it cannot log in without sending
   * more), so the slot and the database connection are freed now, not at the handshake timeout (a
   * connect+close flood would otherwise hold every slot). In the command phase the pump propagates the
   * FIN instead (the client may still read its results).
   */
  private onClientEndBeforeLogin(): void {
    switch (this.phase) {
      case 'connecting': case 'greeting': case 'ssl_request': case 'response': case 'auth':
        this.finish('ok', new CdbpError('PROTOCOL_VIOLATION', 'client closed the connection before login'));
        return;
      case 'tls':
        this.onTlsFailed(new CdbpError('PROTOCOL_VIOLATION', 'client closed the connection during the TLS handshake'));
        return;
      default:
        return;
    }
  }

  private onClientClosed(): void {
    if (this.phase === 'closed') return;
    // In the command phase the client closing ends the session; its half-close (FIN) was already
    // propagated by the pump, so no further bytes of this session can reach the database.
    this.finish(this.outcome);
  }

  private scheduleGrace(): void {
    if (this.graceTimer) return;
    this.graceTimer = setTimeout(() => this.finish(this.outcome), CLOSE_GRACE_MS);
    this.graceTimer.unref();
  }

  /** Sends an ERR packet in the protocol's own terms (plaintext or TLS, whichever is current), then closes. */
  private refuse(outcome: ConnectionOutcome, code: { errno: number; sqlState: string }, message: string, seq: number, cause?: unknown): void {
    if (this.phase === 'closed') return;
    const err: ErrPacket = { ...code, message };
    // Before TLS: the raw socket; inside it: the decrypted stream; during the TLS handshake: nowhere.
    const out = this.leg ? (this.phase !== 'tls' ? this.leg.plain : undefined) : this.client;
    this.clientReader?.detach();
    this.backendReader?.detach();
    this.backendRaw?.destroy();
    // Before the greeting the client has negotiated nothing: no SQL-state marker, as MariaDB does.
    const beforeGreeting = this.phase === 'connecting' || this.phase === 'greeting';
    if (out && !out.destroyed) out.end(beforeGreeting ? encodePreGreetingErrPacket(err) : encodeErrPacket(seq & 0xff, err));
    this.finish(outcome, cause ?? new CdbpError('PROTOCOL_VIOLATION', message), true);
  }

  /**
   * The single cleanup. `flushFirst` lets a final ERR packet drain before the socket is destroyed
   * (bounded by CLOSE_GRACE_MS); the log line and counters are updated immediately either way.
   */
  private finish(outcome: ConnectionOutcome, cause?: unknown, flushFirst = false): void {
    if (this.phase === 'closed') return;
    const phase = this.phase;
    this.phase = 'closed';
    // The first reason recorded wins (e.g. ack_refused, set before the close that follows it).
    if (this.outcome === 'ok') this.outcome = outcome;
    clearTimeout(this.handshakeTimer);
    clearTimeout(this.graceTimer);
    // A backend whose write side was already ended (the client's COM_QUIT/FIN propagated) may still be
    // flushing: let it finish, bounded; anything else is cut now.
    for (const sock of new Set([this.backend, this.backendRaw])) {
      if (!sock || sock.destroyed) continue;
      if (this.outcome === 'ok' && sock.writableEnded) {
        const t = setTimeout(() => sock.destroy(), CLOSE_GRACE_MS);
        t.unref();
        sock.once('close', () => clearTimeout(t));
      } else {
        sock.destroy();
      }
    }
    const relayReport = this.leg ? this.leg.close(flushFirst) : (closeClientStream(this.client, this.client, flushFirst), undefined);
    const bytes = this.bytes;
    this.ctx.totals.bytesIn += bytes.in;
    this.ctx.totals.bytesOut += bytes.out;
    this.ctx.onClosed(this);
    this.conn.closed();
    if (!relayReport) {
      this.completeClose(cause);
      return;
    }
    // A relayed connection closes on the plane's worker thread: the log line waits (bounded) for its
    // byte counts so it describes the whole session.
    let done = false;
    const complete = () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      this.completeClose(cause);
    };
    const timer = setTimeout(complete, CLOSE_GRACE_MS);
    timer.unref();
    void relayReport.then(complete);
  }

  /** The close line, counters and the proxy's bookkeeping: once, when the connection is really gone. */
  private completeClose(cause: unknown): void {
    const bytes = this.bytes;
    // A plane's relayed bytes are already in its live totals (stats()); the metric and the log line
    // carry the whole session.
    const relayed = this.leg?.relayedBytes;
    const all = { in: bytes.in + (relayed?.in ?? 0), out: bytes.out + (relayed?.out ?? 0) };
    this.ctx.metrics.bytes(all.in, all.out);
    const error = this.error ?? (cause === undefined ? undefined : asCdbpError(cause).message);
    this.record.close({ outcome: this.outcome, bytesIn: all.in, bytesOut: all.out, ...(error ? { error } : {}) });
  }
}
