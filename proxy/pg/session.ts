/**
 * One client connection, from accept to close. The handshake is a forward-only sequence of
 * phases (negotiate → tls → startup → dial → auth → pipe); after the backend's first ReadyForQuery
 * the two sockets are piped without re-encoding. Exactly one cleanup per connection, triggered by
 * the client socket closing, whatever the path that led there.
 */
import net from 'node:net';
import type { Readable, Writable } from 'node:stream';
import tls from 'node:tls';
import { Parser } from 'pg-protocol/dist/parser.js';
import type { Logger } from '../../src/kernel/log.ts';
import { CdbpError, asCdbpError, isCdbpError } from '../../src/kernel/errors.ts';
import {
  ALPN_POSTGRESQL, AuthCode, BackendType, ENCRYPTION_REFUSED, FrontendType, SCRAM_PLUS, SSL_ACCEPT, SqlState,
  TLS_HANDSHAKE_RECORD, MESSAGE_HEADER,
} from './constants.ts';
import {
  authCodeOf, backendKeyDataOf, decodeStartupPacket, encodeAuthenticationSasl, encodeBackendKeyData,
  encodeErrorResponse, protocolError, saslMechanismsOf, type StartupPacket,
} from './codec.ts';
import { MessageFramer, StartupFramer } from './framer.ts';
import { FrameReader, readFirstChunk } from './reader.ts';
import { dialBackend, sendBackendCancel, type PgBackend } from './backend.ts';
import type { CancelRegistry, IssuedKey } from './cancel-registry.ts';
import { AckGateError, AckGateStream, type AckGate } from './ack-gate.ts';
import { Conversation } from './conversation.ts';
import { ClientScanner } from './client-scanner.ts';
import { classifyStatement } from './statement-class.ts';
import type { PgMetrics } from './metrics.ts';
import { DEFAULT_IDLE_TIMEOUT_MS } from '../shared/limits.ts';
import type { ConnectionRecord, ConnectionOutcome } from '../shared/connection-log.ts';
import { DEFAULT_LISTENER_LIMITS, type ListenerConnection, type ListenerLimits, type ListenerRefusal } from '../shared/listener.ts';

/**
 * `maxConnections`, `maxPendingHandshakes`, `maxRefusalHandshakes`: the shared listener's
 * (proxy/shared/listener.ts), one meaning for both endpoints. A refused client is told 53300 in its own
 * terms (negotiation, TLS, startup, then the error, like PostgreSQL's "sorry, too many clients already").
 */
export interface PgLimits extends ListenerLimits {
  /** Handshake time allowed to a connection that is only being refused. */
  refusalTimeoutMs: number;
  /** From accept to the backend's first ReadyForQuery. */
  handshakeTimeoutMs: number;
  backendConnectTimeoutMs: number;
  /** Cap on startup packets (StartupMessage, SSLRequest, CancelRequest...). */
  maxStartupPacketBytes: number;
  /** Cap on client messages during authentication (password, SASL). */
  maxAuthMessageBytes: number;
  /** Cap on backend messages before ReadyForQuery (auth requests, ParameterStatus, errors). */
  maxBackendStartupMessageBytes: number;
  /** After authentication: close a session with no traffic either way for this long (0 = never). */
  idleTimeoutMs: number;
}

export const DEFAULT_LIMITS: PgLimits = {
  ...DEFAULT_LISTENER_LIMITS,
  refusalTimeoutMs: 5_000,
  handshakeTimeoutMs: 15_000,
  backendConnectTimeoutMs: 5_000,
  maxStartupPacketBytes: 10_000,
  maxAuthMessageBytes: 64 * 1024,
  maxBackendStartupMessageBytes: 1024 * 1024,
  idleTimeoutMs: DEFAULT_IDLE_TIMEOUT_MS,
};

export interface SessionEnv {
  limits: PgLimits;
  log: Logger;
  metrics: PgMetrics;
  backend: PgBackend;
  cancels: CancelRegistry;
  ackGate: AckGate | undefined;
  /** Names refused at startup (accounts the backend would trust from the proxy's own socket peer). */
  forbiddenUsers: ReadonlySet<string>;
  secureContext(): tls.SecureContext;
  onClosed(session: PgSession): void;
}

export type SessionPhase = 'negotiate' | 'tls' | 'startup' | 'dial' | 'auth' | 'pipe' | 'closed';
type TlsMode = 'ssl-request' | 'direct';

export class PgSession {
  readonly id: number;
  readonly startedAt = Date.now();
  readonly peer: string;
  phase: SessionPhase = 'negotiate';
  private client: net.Socket | tls.TLSSocket;
  private backend: net.Socket | tls.TLSSocket | undefined;
  private tlsMode: TlsMode | undefined;
  private user: string | undefined;
  private database: string | undefined;
  private issuedKey: IssuedKey | undefined;
  private handshakeTimer: NodeJS.Timeout | undefined;
  private closeReason: string | undefined;
  private cleanedUp = false;
  private authenticatedOnce = false;
  /** Set once the session started ending: later failures of the handshake flow are moot. */
  private ending = false;

  /** The connection's open and close log lines (shared vocabulary with MySQL: connection_open / connection_close). */
  private readonly record: ConnectionRecord;
  /** How the connection ended, for the close line; set where the reason is known, else derived from closeReason. */
  private outcome: ConnectionOutcome | undefined;

  /**
   * `conn`: the listener's handle (proxy/shared/listener.ts): slot, log record, milestones. `refusal`: the
   * listener refused this client; the session only negotiates (TLS if asked) to tell it so in its own
   * terms after its startup packet (CancelRequests are still routed).
   */
  constructor(
    private readonly raw: net.Socket,
    private readonly env: SessionEnv,
    private readonly conn: ListenerConnection,
    private readonly refusal?: ListenerRefusal,
  ) {
    this.client = raw;
    this.id = conn.id;
    this.peer = conn.peer;
    this.record = conn.record;
    raw.setNoDelay(true);
    raw.setKeepAlive(true, 60_000);
    raw.on('error', () => this.destroy('client socket error'));
    raw.once('close', () => this.cleanup());
  }

  get authenticated(): boolean {
    return this.phase === 'pipe';
  }

  /** Drives the handshake; never throws (failures end the connection with an ErrorResponse). */
  async run(): Promise<void> {
    const limits = this.env.limits;
    this.handshakeTimer = setTimeout(() => this.onHandshakeTimeout(), this.refusal ? limits.refusalTimeoutMs : limits.handshakeTimeoutMs);
    try {
      await this.handshake();
    } catch (e) {
      this.failHandshake(e);
    }
  }

  /** Ends the session now (both sockets). Cleanup follows from the client socket closing. */
  destroy(reason: string): void {
    this.ending = true;
    this.closeReason ??= reason;
    this.backend?.destroy();
    this.client.destroy();
    this.raw.destroy();
  }

  /**
   * Sends a FATAL ErrorResponse (where the client can read one) and closes gracefully. While
   * piping, the client stream may end mid-message, so an error is only appended when the caller
   * knows the stream is message-aligned (the ack gate); otherwise the connection is just closed.
   */
  endWithError(sqlState: string, message: string, reason: string, opts: { streamAligned?: boolean } = {}): void {
    if (this.ending) return;
    this.ending = true;
    this.closeReason ??= reason;
    this.backend?.destroy();
    const c = this.client;
    if (this.phase === 'pipe' && !opts.streamAligned) {
      this.destroy(reason);
    } else if (!c.destroyed && c.writable) {
      c.end(encodeErrorResponse({ severity: 'FATAL', sqlState, message }));
      // A client that never reads must not pin the socket.
      setTimeout(() => this.destroy(reason), 2_000).unref();
    } else {
      this.destroy(reason);
    }
  }

  // ---- handshake ---------------------------------------------------------------------------------

  private async handshake(): Promise<void> {
    const { limits } = this.env;
    const first = await readFirstChunk(this.raw);
    if (first === null) return this.destroy('closed before startup');
    // A Terminate before anything else (pg's end() called before its socket connected writes it ahead
    // of the SSLRequest): the client is gone. PostgreSQL closes without a word here (its length check
    // is a COMMERROR, logged only); so do we, instead of reading 'X' as a 1.4 GB startup length.
    if (first.length >= MESSAGE_HEADER && first[0] === FrontendType.Terminate && first.readUInt32BE(1) === 4) {
      return this.destroy('client terminated before startup');
    }

    let reader: FrameReader;
    if (first[0] === TLS_HANDSHAKE_RECORD) {
      this.raw.unshift(first);
      await this.startTls('direct');
      reader = new FrameReader(this.client, new StartupFramer(limits.maxStartupPacketBytes));
    } else {
      reader = new FrameReader(this.raw, new StartupFramer(limits.maxStartupPacketBytes));
      reader.feed(first);
      let gssencAnswered = false;
      for (;;) {
        const pkt = await this.nextStartupPacket(reader);
        if (pkt.packet.kind === 'gssenc-request' && !gssencAnswered) {
          // We offer no GSSAPI encryption; libpq then falls back to SSLRequest (or plaintext).
          gssencAnswered = true;
          this.raw.write(Buffer.from([ENCRYPTION_REFUSED]));
          // Like PostgreSQL: nothing may be pipelined behind the request (it might be injected).
          if (reader.buffered > 0) throw protocolError('received unencrypted data after GSSAPI encryption request');
          continue;
        }
        if (pkt.packet.kind === 'ssl-request') {
          // Like PostgreSQL (postmaster's ProcessStartupPacket): answer S whatever follows, run the TLS
          // handshake, and only then report bytes that arrived before it: they were not encrypted, may
          // have been injected (CVE-2021-23214), and are never read as startup packets. A client that
          // pipelines Terminate and closes (pg's end() right after connect()) just gets S and the close.
          const peerEnded = reader.peerEnded;
          const early = reader.detach().length > 0;
          if (peerEnded) {
            this.closeReason = 'client closed after SSLRequest';
            this.raw.end(Buffer.from([SSL_ACCEPT]));
            return;
          }
          this.raw.write(Buffer.from([SSL_ACCEPT]));
          await this.startTls('ssl-request');
          if (early) throw protocolError('received unencrypted data after SSL request');
          reader = new FrameReader(this.client, new StartupFramer(limits.maxStartupPacketBytes));
          break;
        }
        if (pkt.packet.kind === 'cancel') return this.handleCancel(pkt.packet);
        if (pkt.packet.kind === 'startup') {
          this.env.metrics.refused('insecure_transport');
          reader.detach();
          return this.endWithError(SqlState.invalidAuthorizationSpecification,
            'TLS is required: this endpoint accepts only encrypted connections (use sslmode=verify-full, or at least sslmode=require)',
            'plaintext refused');
        }
        throw protocolError('GSSENCRequest sent twice');
      }
    }

    // Inside TLS: a StartupMessage or a CancelRequest.
    this.phase = 'startup';
    const pkt = await this.nextStartupPacket(reader);
    if (pkt.packet.kind === 'cancel') return this.handleCancel(pkt.packet);
    if (pkt.packet.kind !== 'startup') throw protocolError(`unexpected ${pkt.packet.kind} inside TLS`);
    const params = pkt.packet.params;
    this.user = params.get('user');
    this.database = params.get('database') ?? this.user;
    if (!this.user) {
      reader.detach();
      return this.endWithError(SqlState.invalidAuthorizationSpecification, 'no PostgreSQL user name specified in startup packet', 'no user');
    }
    if (this.env.forbiddenUsers.has(this.user)) {
      reader.detach();
      this.env.metrics.refused('forbidden_user');
      return this.endWithError(SqlState.invalidAuthorizationSpecification,
        `role "${this.user}" may not log in through this proxy: the backend trusts it on the proxy's own socket`, 'forbidden user');
    }

    // Refused by the listener (counted there): said now, before dialing, so it costs the backend nothing.
    if (this.refusal) {
      reader.detach();
      if (this.refusal === 'draining') return this.endWithError(SqlState.cannotConnectNow, 'the database system is shutting down', 'shutting down');
      return this.endWithError(SqlState.tooManyConnections, 'sorry, too many clients already', 'too many connections');
    }

    this.phase = 'dial';
    let backend: net.Socket | tls.TLSSocket;
    try {
      backend = await dialBackend(this.env.backend, limits.backendConnectTimeoutMs);
    } catch (e) {
      this.env.log.warn({ event: 'pg.backend_unavailable', session: this.id, err: (e as Error).message }, 'pg backend unavailable');
      reader.detach();
      return this.endWithError(SqlState.cannotConnectNow, 'the database is not available right now', 'backend unavailable');
    }
    if (this.ending || this.client.destroyed) {
      backend.destroy(); // client went away (or timed out) while we dialed
      return;
    }
    this.backend = backend;
    backend.on('error', () => this.destroy('backend socket error'));
    backend.write(pkt.raw);

    this.phase = 'auth';
    const done = await this.relayAuthentication(reader, backend);
    if (!done || this.ending) return;

    clearTimeout(this.handshakeTimer);
    this.startPiping(done.clientRest, done.backendRest, backend);
  }

  private async nextStartupPacket(reader: FrameReader): Promise<{ packet: StartupPacket; raw: Buffer }> {
    const raw = await reader.next();
    if (raw === null) throw new CdbpError('PROTOCOL_VIOLATION', 'client closed during startup', { details: { silent: true } });
    return { packet: decodeStartupPacket(raw), raw };
  }

  private async startTls(mode: TlsMode): Promise<void> {
    this.phase = 'tls';
    this.tlsMode = mode;
    const secure = new tls.TLSSocket(this.raw, {
      isServer: true,
      secureContext: this.env.secureContext(),
      ALPNProtocols: [ALPN_POSTGRESQL],
    });
    this.client = secure;
    secure.on('error', () => this.destroy('tls error'));
    secure.once('close', () => this.cleanup());
    try {
      await new Promise<void>((resolve, reject) => {
        secure.once('secure', resolve);
        secure.once('error', reject);
        secure.once('close', () => reject(new Error('closed during TLS handshake')));
        // The listener is half-open: a client that gave up (FIN) must not wait for the handshake timeout.
        secure.once('end', () => reject(new Error('client ended during TLS handshake')));
      });
    } catch (e) {
      this.env.metrics.tlsFailure();
      this.outcome ??= 'tls_failed';
      throw new CdbpError('PROTOCOL_VIOLATION', `TLS handshake failed: ${(e as Error).message}`, { details: { silent: true } });
    }
    this.env.metrics.tlsHandshake();
    this.record.tls = { protocol: secure.getProtocol(), cipher: secure.getCipher()?.name ?? '' };
    this.phase = 'startup';
    // PG 17 semantics: direct TLS must negotiate ALPN "postgresql" (it tells a PG server from any
    // other TLS service); after SSLRequest, ALPN is optional but must be ours if present.
    const alpn = secure.alpnProtocol;
    if (mode === 'direct' && alpn !== ALPN_POSTGRESQL) {
      this.env.metrics.refused('no_alpn');
      throw protocolError('direct TLS connections must negotiate the ALPN protocol "postgresql"');
    }
    if (alpn && alpn !== ALPN_POSTGRESQL) throw protocolError(`unexpected ALPN protocol ${alpn}`);
  }

  /**
   * Relays the authentication exchange until the backend's first ReadyForQuery. Returns the bytes
   * the backend sent after it (normally none), or undefined when the session ended here.
   */
  private async relayAuthentication(clientReader: FrameReader, backend: net.Socket | tls.TLSSocket): Promise<{ backendRest: Buffer; clientRest: Buffer } | undefined> {
    const { limits } = this.env;
    const backendReader = new FrameReader(backend, new MessageFramer(limits.maxBackendStartupMessageBytes, 'backend message'));
    const parser = new Parser();
    clientReader = this.retarget(clientReader, limits.maxAuthMessageBytes);

    let stopped = false;
    // Client → backend: password / SASL messages, forwarded as they are.
    const clientPump = (async () => {
      for (;;) {
        const frame = await clientReader.next();
        if (stopped) return;
        if (frame === null) throw new CdbpError('PROTOCOL_VIOLATION', 'client closed during authentication', { details: { silent: true } });
        if (frame[0] === FrontendType.Terminate) throw new CdbpError('PROTOCOL_VIOLATION', 'client terminated during authentication', { details: { silent: true } });
        if (frame[0] !== FrontendType.Password) throw protocolError(`unexpected message type 0x${frame[0]!.toString(16)} during authentication`);
        backend.write(frame);
      }
    })();

    const backendLoop = async (): Promise<'ready' | 'error'> => {
      let authenticated = false;
      for (;;) {
        const frame = await backendReader.next();
        if (frame === null) throw new CdbpError('BACKEND_UNAVAILABLE', 'backend closed during authentication');
        switch (frame[0]) {
          case BackendType.Authentication: {
            const code = authCodeOf(frame);
            if (code === AuthCode.Sasl) {
              // Channel binding binds the client's TLS channel, which ends here: -PLUS cannot work.
              const offered = saslMechanismsOf(frame).filter((m) => m !== SCRAM_PLUS);
              if (offered.length === 0) throw protocolError('the database offers only SASL mechanisms that need channel binding', '0A000');
              this.client.write(encodeAuthenticationSasl(offered));
            } else {
              if (code === AuthCode.Ok) authenticated = true;
              this.client.write(frame);
            }
            break;
          }
          case BackendType.BackendKeyData: {
            const real = backendKeyDataOf(frame);
            this.issuedKey?.release();
            this.issuedKey = this.env.cancels.issue(real);
            this.client.write(encodeBackendKeyData(this.issuedKey.processId, this.issuedKey.secretKey));
            break;
          }
          case BackendType.ErrorResponse: {
            // The backend's own words reach the client unchanged (wrong password, no such database...).
            let sqlState: string | undefined;
            parser.parse(frame, (msg) => {
              sqlState = (msg as { code?: string }).code;
            });
            if (!authenticated) this.env.metrics.authFailure();
            this.outcome ??= authenticated ? 'backend_error' : 'auth_failed';
            this.env.log.info({ event: 'pg.auth_failed', session: this.id, peer: this.peer, user: this.user, database: this.database, sqlState }, 'pg backend refused the session');
            this.closeReason ??= `backend error ${sqlState ?? ''}`.trim();
            this.ending = true;
            this.client.end(frame);
            return 'error';
          }
          case BackendType.ParameterStatus:
          case BackendType.NoticeResponse:
          case BackendType.NegotiateProtocolVersion:
            this.client.write(frame);
            break;
          case BackendType.ReadyForQuery:
            if (!authenticated) throw protocolError('backend sent ReadyForQuery before AuthenticationOk');
            this.client.write(frame);
            return 'ready';
          default:
            throw protocolError(`unexpected backend message 0x${frame[0]!.toString(16)} during startup`);
        }
      }
    };

    try {
      const outcome = await Promise.race([backendLoop(), clientPump.then(() => 'error' as const)]);
      stopped = true;
      if (outcome === 'error') {
        backendReader.detach();
        clientReader.detach();
        backend.destroy();
        setTimeout(() => this.destroy(this.closeReason ?? 'auth failed'), 2_000).unref();
        return undefined;
      }
      return { backendRest: backendReader.detach(), clientRest: clientReader.detach() };
    } catch (e) {
      stopped = true;
      backendReader.detach();
      throw e;
    } finally {
      clientPump.catch(() => undefined);
    }
  }

  /** Re-frames the client stream from startup packets to typed messages, keeping unread bytes. */
  private retarget(reader: FrameReader, maxBytes: number): FrameReader {
    const rest = reader.detach();
    const next = new FrameReader(this.client, new MessageFramer(maxBytes, 'authentication message'));
    if (rest.length > 0) next.feed(rest);
    return next;
  }

  private startPiping(clientRest: Buffer, backendRest: Buffer, backend: net.Socket | tls.TLSSocket): void {
    this.phase = 'pipe';
    this.authenticatedOnce = true;
    this.conn.established();
    const client = this.client;
    this.env.log.debug({ event: 'pg.authenticated', session: this.id, user: this.user, database: this.database, tls: this.tlsMode }, 'pg session authenticated');

    const gate = this.env.ackGate;
    if (gate) {
      const conversation = new Conversation(classifyStatement, {
        onBacklog: (paused) => clientFlow.backlog(paused),
        onLost: (why) => this.env.log.warn({ event: 'pg.conversation_lost', session: this.id, why }, 'pg ack gate lost track of the conversation; holding every idle acknowledgment from now on'),
      });
      const scanner = new ClientScanner(conversation);
      const clientFlow = relayScanned(client, backend, scanner);
      if (clientRest.length > 0) clientFlow.forward(clientRest);
      const gated = new AckGateStream(gate, conversation);
      gated.on('error', (e) => {
        const refused = e instanceof AckGateError;
        this.env.log.warn({ event: 'pg.ack_refused', session: this.id, err: (refused ? asCdbpError(e.reason) : e).message }, 'pg acknowledgment not released');
        this.endWithError(refused ? SqlState.statementCompletionUnknown : SqlState.protocolViolation,
          refused ? 'the database could not confirm that the statement is durable; its outcome is unknown'
            : 'invalid message from the database', refused ? 'ack refused' : 'backend protocol violation', { streamAligned: true });
      });
      if (backendRest.length > 0) gated.write(backendRest);
      relay(backend, gated);
      relay(gated, client);
    } else {
      if (clientRest.length > 0) backend.write(clientRest);
      relay(client, backend);
      if (backendRest.length > 0) client.write(backendRest);
      relay(backend, client); // hot path: no copies, no parsing
    }

    // Idle sessions end like PostgreSQL's idle_session_timeout ends them (57P05).
    const idleMs = this.env.limits.idleTimeoutMs;
    if (idleMs > 0) {
      client.setTimeout(idleMs, () => this.endWithError(SqlState.idleSessionTimeout,
        'terminating connection due to idle-session timeout', 'idle timeout', { streamAligned: true }));
    }

    // Client gone: the backend session ends too. Backend gone: flush what it said (e.g. a FATAL
    // from pg_terminate_backend) to the client, then close.
    client.once('close', () => backend.destroy());
    backend.once('close', () => {
      this.closeReason ??= 'backend closed';
      if (!client.destroyed) {
        client.end();
        setTimeout(() => this.destroy('backend closed'), 5_000).unref();
      }
    });
  }

  // ---- cancel --------------------------------------------------------------------------------------

  private async handleCancel(req: { processId: number; secretKey: number }): Promise<void> {
    this.closeReason = 'cancel request';
    clearTimeout(this.handshakeTimer);
    const target = this.env.cancels.lookup(req.processId, req.secretKey);
    if (!target) {
      // Unknown key: dropped silently, like PostgreSQL (no oracle for guessing keys).
      this.env.metrics.cancel('unknown_key');
      this.destroy('cancel request with unknown key');
      return;
    }
    try {
      await sendBackendCancel(this.env.backend, target.processId, target.secretKey, this.env.limits.backendConnectTimeoutMs);
      this.env.metrics.cancel('forwarded');
    } catch (e) {
      this.env.metrics.cancel('failed');
      this.env.log.warn({ event: 'pg.cancel_failed', session: this.id, err: (e as Error).message }, 'pg cancel could not reach the backend');
    }
    this.destroy('cancel request');
  }

  // ---- failures and cleanup ------------------------------------------------------------------------

  private onHandshakeTimeout(): void {
    if (this.phase === 'pipe' || this.cleanedUp || this.ending) return;
    this.env.metrics.handshakeTimeout();
    // Mid-TLS-handshake nothing readable can be sent; elsewhere the client gets a reason.
    if (this.phase === 'tls') this.destroy('handshake timeout');
    else this.endWithError('08006', 'connection handshake timed out', 'handshake timeout');
  }

  private failHandshake(e: unknown): void {
    if (this.cleanedUp || this.ending) return;
    const err = asCdbpError(e, 'PROTOCOL_VIOLATION');
    const details = err.details ?? {};
    if (details.silent) return this.destroy(err.message);
    this.outcome ??= err.code === 'BACKEND_UNAVAILABLE' ? 'backend_error' : 'protocol_error';
    if (err.code === 'FRAME_TOO_LARGE') this.env.metrics.refused('frame_too_large');
    else if (err.code === 'PROTOCOL_VIOLATION') this.env.metrics.refused('protocol');
    else if (err.code === 'BACKEND_UNAVAILABLE') this.env.metrics.refused('backend_unavailable');
    const sqlState = typeof details.sqlState === 'string' ? details.sqlState : isCdbpError(e) ? SqlState.protocolViolation : 'XX000';
    // Only our own wording reaches the client; internal errors stay in the log.
    const message = isCdbpError(e) ? err.message : 'internal proxy error';
    if (!isCdbpError(e)) this.env.log.error({ event: 'pg.internal_error', session: this.id, err: err.message }, 'pg session failed');
    // In the middle of a TLS handshake nothing readable can be sent.
    if (this.phase === 'tls') return this.destroy(message);
    this.endWithError(sqlState, message, message);
  }

  private cleanup(): void {
    if (this.cleanedUp) return;
    this.cleanedUp = true;
    this.phase = 'closed';
    clearTimeout(this.handshakeTimer);
    this.backend?.destroy();
    this.issuedKey?.release();
    const toBackend = this.backend?.bytesWritten ?? 0;
    const fromBackend = this.backend?.bytesRead ?? 0;
    this.env.metrics.bytes(toBackend, fromBackend);
    this.record.user = this.user;
    this.record.database = this.database;
    const reason = this.closeReason ?? 'client closed';
    this.record.close({ outcome: this.outcome ?? outcomeOf(reason, this.authenticatedOnce), bytesIn: toBackend, bytesOut: fromBackend, error: reason });
    this.env.onClosed(this);
    this.conn.closed();
  }
}


/**
 * One direction of the byte pump: what Readable.pipe does, minus its bookkeeping (this runs for
 * every chunk of every session). Backpressure: pause the source while the sink's buffer is full.
 * Half-close: the source's end ends the sink.
 */
function relay(from: Readable, to: Writable): void {
  from.on('data', (chunk: Buffer) => {
    if (!to.write(chunk)) {
      from.pause();
      to.once('drain', () => from.resume());
    }
  });
  from.once('end', () => to.end());
  from.resume();
}

/**
 * The client → backend direction under a gate: every chunk is scanned (for the conversation mirror)
 * before it is forwarded unchanged. The client is paused while the backend's buffer is full or while
 * the mirror has too many requests in flight, and resumed when neither holds.
 */
function relayScanned(from: Readable, to: Writable, scanner: ClientScanner): { forward(chunk: Buffer): void; backlog(paused: boolean): void } {
  let full = false;
  let backlogged = false;
  const update = () => {
    if (full || backlogged) from.pause();
    else from.resume();
  };
  const forward = (chunk: Buffer) => {
    scanner.scan(chunk);
    if (!to.write(chunk) && !full) {
      full = true;
      update();
      to.once('drain', () => {
        full = false;
        update();
      });
    }
  };
  from.on('data', forward);
  from.once('end', () => to.end());
  queueMicrotask(update);
  return {
    forward,
    backlog(paused) {
      backlogged = paused;
      update();
    },
  };
}

/** The close line's outcome for the reasons the session records (closed set, see connection-log.ts). */
function outcomeOf(reason: string, authenticated: boolean): ConnectionOutcome {
  switch (reason) {
    case 'plaintext refused': return 'insecure';
    case 'forbidden user': return 'forbidden_user';
    case 'too many connections': case 'shutting down': return 'refused';
    case 'backend unavailable': case 'backend socket error': return 'backend_error';
    case 'ack refused': return 'ack_refused';
    case 'backend protocol violation': case 'no user': return 'protocol_error';
    case 'idle timeout': return 'idle_timeout';
    case 'handshake timeout': return 'handshake_timeout';
    case 'tls error': return 'tls_failed';
    case 'drain timeout': case 'proxy closing': return 'drained';
    case 'client socket error': return authenticated ? 'client_error' : 'protocol_error';
    default: return 'ok';
  }
}
