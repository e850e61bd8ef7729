/**
 * The MariaDB/MySQL drop-in endpoint: a TLS-terminating listener in front of one database.
 *
 *   const proxy = createMysqlProxy({ listen, backend, tls: holder | { keyPem, certPem }, log, metrics?, limits?, ackGate? });
 *   const addr = await proxy.listen();
 *   // renewal: holder.set(next) in the role; new handshakes on both data planes get it, open sessions keep theirs
 *   await proxy.stopAccepting(); await proxy.drain(30_000); await proxy.close();
 *
 * Composition: the proxy role gives it the CAS-issued identity and, for strict freshness, an AckGate.
 * The shared listener (proxy/shared/listener.ts) refuses over-limit clients; here with ERR 1040 BEFORE dialing the database.
 * For multi-core scaling, run one instance per node:cluster worker on the same port (see docs/MYSQL-ENDPOINT.md):
 * limits and stats are then per worker.
 */
import type net from 'node:net';
import os from 'node:os';
import type { Logger } from '../../src/kernel/log.ts';
import { CdbpError } from '../../src/kernel/errors.ts';
import { isLoopbackHost } from '../../src/kernel/net.ts';
import type { MetricsRegistry } from '../../src/kernel/metrics.ts';
import {
  createListener, DEFAULT_LISTENER_LIMITS, type Conversation, type ListenerConnection, type ListenerLimits, type ListenerRefusal,
  type ListenerStats, type ListenAddress,
} from '../shared/listener.ts';
import {
  ConnectionLogLimiter, DEFAULT_CONNECTION_LOG_LIMITS, rateLimitedConnectionLog, type ConnectionLogLimits,
} from '../shared/connection-log.ts';
import { EndpointMetrics } from '../shared/metrics.ts';
import { identityHolder, type TlsIdentitySource } from '../../src/crypto/tls-identity.ts';
import { ProxyErrno } from './constants.ts';
import { encodePreGreetingErrPacket } from './codec.ts';
import { MysqlSession, type BackendTarget, type SessionContext, type SessionTotals } from './session.ts';
import type { AckGate } from '../shared/ack-gate.ts';
import { DEFAULT_IDLE_TIMEOUT_MS } from '../shared/limits.ts';
import type { AccountTlsSource } from './account-tls.ts';
import { chooseDataPlane } from './choose-data-plane.ts';
import type { DataPlaneInfo } from './data-plane.ts';

export type { AckGate } from '../shared/ack-gate.ts';
export type { BackendTarget } from './session.ts';
export { MariadbAccountTls, type AccountTlsSource } from './account-tls.ts';

/**
 * `maxConnections`, `maxPendingHandshakes`, `maxRefusalHandshakes`: the shared listener's (proxy/shared/listener.ts),
 * one meaning for both endpoints; over a cap clients get ERR 1040 before the database is dialed.
 */
export interface MysqlProxyLimits extends ListenerLimits {
  /** From accept to the end of authentication (default 10 s). */
  handshakeTimeoutMs: number;
  /** Client inactivity in the command phase, 0 = off (default 8 h, MariaDB's wait_timeout). */
  idleTimeoutMs: number;
  /** Largest packet accepted from a client before authentication completes (default 64 KiB). */
  maxHandshakePacket: number;
}

export const DEFAULT_LIMITS: MysqlProxyLimits = {
  ...DEFAULT_LISTENER_LIMITS,
  handshakeTimeoutMs: 10_000,
  idleTimeoutMs: DEFAULT_IDLE_TIMEOUT_MS,
  maxHandshakePacket: 64 * 1024,
};

export interface MysqlProxyOptions {
  listen: { host: string; port: number } | { path: string };
  backend: BackendTarget;
  /** The process's identity holder (renewal swaps it there), or a fixed pair. */
  tls: TlsIdentitySource;
  limits?: Partial<MysqlProxyLimits>;
  log: Logger;
  metrics?: MetricsRegistry;
  ackGate?: AckGate;
  /**
   * Who terminates TLS and relays the command phase: 'native' (proxy/native/dataplane.c, C worker
   * threads, with its own response tracker under strict freshness), 'node' (Node's TLS and the JS
   * pump), or 'auto' (default: native when it is built and the backend leg is plaintext). 'native' fails if it
   * cannot be used.
   */
  dataPlane?: 'auto' | 'native' | 'node';
  /** Native data plane worker threads (default 1). */
  nativeWorkers?: number;
  /**
   * The accounts' REQUIRE SSL/X509 clauses (account-tls.ts): such logins are explained instead of
   * refused bare, and REQUIRE SSL ones use `backend.tls` on a socket leg.
   */
  accountTls?: AccountTlsSource;
  /** Rate limit of per-connection log lines (proxy/shared/connection-log.ts). */
  connectionLog?: Partial<ConnectionLogLimits>;
}

export type { DataPlaneInfo } from './data-plane.ts';

/** The listener's stats (the same shape as PostgreSQL's) plus what the MySQL sessions count. */
export interface MysqlProxyStats extends ListenerStats {
  bytesIn: number;
  bytesOut: number;
  tlsFailures: number;
  authFailures: number;
  handshakeTimeouts: number;
  /** Bytes currently queued inside the proxy across sessions (backpressure health). */
  buffered: number;
  dataPlane: DataPlaneInfo;
}

export interface MysqlProxy {
  listen(): Promise<ListenAddress>;
  stopAccepting(): Promise<void>;
  /** Stops accepting, waits up to timeoutMs for sessions to end, then destroys the rest (how many: `forced`). */
  drain(timeoutMs: number): Promise<{ forced: number }>;
  close(): Promise<void>;
  stats(): MysqlProxyStats;
}

export function createMysqlProxy(opts: MysqlProxyOptions): MysqlProxy {
  validateBackend(opts.backend);
  const limits: MysqlProxyLimits = { ...DEFAULT_LIMITS, ...opts.limits };
  const logLimiter = new ConnectionLogLimiter(opts.log, opts.metrics, { ...DEFAULT_CONNECTION_LOG_LIMITS, ...opts.connectionLog });
  const log = rateLimitedConnectionLog(opts.log.child({ component: 'mysql-proxy' }), logLimiter);
  const identity = identityHolder(opts.tls);
  const metrics = new EndpointMetrics('mysql', opts.metrics);
  const sessions = new Set<MysqlSession>();
  const totals: SessionTotals = { bytesIn: 0, bytesOut: 0, tlsFailures: 0, authFailures: 0, handshakeTimeouts: 0 };
  const forbiddenUsers: ReadonlySet<string> = 'socket' in opts.backend ? new Set([os.userInfo().username]) : new Set();
  const plane = chooseDataPlane({
    wanted: opts.dataPlane ?? 'auto', backend: opts.backend, identity, forbiddenUsers, nativeWorkers: opts.nativeWorkers ?? 1, log,
  });
  const dataPlane = plane.info;
  metrics.dataPlane(dataPlane.kind);
  const planeLine = { event: 'data_plane', dataPlane: dataPlane.kind, reason: dataPlane.reason };
  // Falling back because the native build is missing is worth a warning: it costs throughput.
  if (dataPlane.kind === 'node' && dataPlane.reason !== 'configured') log.warn(planeLine, 'data plane: node (native unavailable)');
  else log.info(planeLine, `data plane: ${dataPlane.kind}`);

  const ctx: SessionContext = {
    backend: opts.backend,
    limits,
    log,
    metrics,
    ackGate: opts.ackGate,
    plane,
    forbiddenUsers,
    accountTls: opts.accountTls,
    totals,
    onClosed(session) {
      sessions.delete(session);
    },
  };

  const listener = createListener({
    protocol: 'mysql', listen: opts.listen, log, metrics,
    limits: { maxConnections: limits.maxConnections, maxPendingHandshakes: limits.maxPendingHandshakes, maxRefusalHandshakes: limits.maxRefusalHandshakes },
    engine: {
      converse(socket, conn) {
        const session = new MysqlSession(socket, conn, ctx);
        sessions.add(session);
        session.start();
        return { stop: () => session.destroy('drained') };
      },
      refuse: refuseBeforeGreeting,
    },
  });

  return {
    listen: () => listener.listen(),
    stopAccepting: () => listener.stopAccepting(),
    drain: (timeoutMs) => listener.drain(timeoutMs),
    async close() {
      await listener.close();
      plane.destroy();
      logLimiter.stop();
    },
    stats() {
      let liveIn = 0;
      let liveOut = 0;
      let buffered = 0;
      for (const s of sessions) {
        buffered += s.buffered;
        const b = s.bytes;
        liveIn += b.in;
        liveOut += b.out;
      }
      const relayed = plane.stats();
      return {
        ...listener.stats(), dataPlane,
        bytesIn: totals.bytesIn + liveIn + relayed.bytesIn, bytesOut: totals.bytesOut + liveOut + relayed.bytesOut,
        tlsFailures: totals.tlsFailures, authFailures: totals.authFailures, handshakeTimeouts: totals.handshakeTimeouts, buffered: buffered + relayed.buffered,
      };
    },
  };
}

/**
 * The listener's refusal in MariaDB's terms, sent instead of the greeting (nothing is negotiated yet,
 * so no TLS and no SQL-state marker, as mariadbd does): ERR 1040 over a cap, ERR 1053 while draining.
 */
function refuseBeforeGreeting(socket: net.Socket, reason: ListenerRefusal, conn: ListenerConnection): Conversation {
  conn.record.close({ outcome: 'refused', bytesIn: 0, bytesOut: 0, error: reason });
  const err = reason === 'draining'
    ? { ...ProxyErrno.SHUTDOWN, message: 'Server shutdown in progress' }
    : { ...ProxyErrno.TOO_MANY_CONNECTIONS, message: 'Too many connections' };
  socket.once('close', () => conn.closed());
  socket.end(encodePreGreetingErrPacket(err));
  // A client that never reads must not keep its refusal's place.
  setTimeout(() => socket.destroy(), 2_000).unref();
  return { stop: () => socket.destroy() };
}

/** Plaintext to a remote database needs an explicit, loudly named opt-in (ghostunnel's rule). */
function validateBackend(backend: BackendTarget): void {
  if ('socket' in backend) return;
  if (backend.tls || isLoopbackHost(backend.host)) return;
  if (!backend.allowInsecure) {
    throw new CdbpError('CONFIG_INVALID',
      `backend ${backend.host}:${backend.port} is not loopback: configure backend.tls (CA to verify it) or set allowInsecure to send plaintext`);
  }
}
