/**
 * The MariaDB/MySQL drop-in endpoint: a TLS-terminating listener in front of one database.
 *
 *   const proxy = createMysqlProxy({ listen, backend, tls: holder | { keyPem, certPem }, log, metrics?, limits?, ackGate? });
 *   const addr = await proxy.listen();
 *   // renewal: holder.set(next) in the role; new handshakes on both data planes get it, open sessions keep theirs
 *   await proxy.stopAccepting(); await proxy.drain(30_000); await proxy.close();
 *
 * Composition: the proxy role gives it the CAS-issued identity and, for strict freshness, an AckGate.
 * The listener refuses over-limit clients with ERR 1040 BEFORE dialing the database.
 * For multi-core scaling, run one instance per node:cluster worker on the same port (see docs/MYSQL-ENDPOINT.md):
 * limits and stats are then per worker.
 */
import net from 'node:net';
import os from 'node:os';
import { existsSync, lstatSync, unlinkSync } from 'node:fs';
import type { Logger } from '../../src/kernel/log.ts';
import { CdbpError } from '../../src/kernel/errors.ts';
import { isLoopbackHost } from '../../src/kernel/net.ts';
import type { MetricsRegistry } from '../../src/kernel/metrics.ts';
import { ConnectionLimiter } from '../shared/connection-limiter.ts';
import {
  ConnectionLogLimiter, ConnectionRecord, DEFAULT_CONNECTION_LOG_LIMITS, rateLimitedConnectionLog, type ConnectionLogLimits,
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

export interface MysqlProxyLimits {
  /** Concurrent client connections; over it clients get ERR 1040 (default 1000). */
  maxConnections: number;
  /** From accept to the end of authentication (default 10 s). */
  handshakeTimeoutMs: number;
  /** Client inactivity in the command phase, 0 = off (default 8 h, MariaDB's wait_timeout). */
  idleTimeoutMs: number;
  /** Largest packet accepted from a client before authentication completes (default 64 KiB). */
  maxHandshakePacket: number;
}

export const DEFAULT_LIMITS: MysqlProxyLimits = {
  maxConnections: 1000,
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

export interface MysqlProxyStats {
  open: number;
  total: number;
  refused: number;
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
  listen(): Promise<{ host: string; port: number } | { path: string }>;
  stopAccepting(): Promise<void>;
  drain(timeoutMs: number): Promise<void>;
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
  const limiter = new ConnectionLimiter(limits.maxConnections);
  const sessions = new Set<MysqlSession>();
  const totals: SessionTotals = { bytesIn: 0, bytesOut: 0, tlsFailures: 0, authFailures: 0, handshakeTimeouts: 0 };
  let total = 0;
  let refused = 0;
  let nextId = 1;
  let accepting = true;
  let listening = false;
  const closedWaiters = new Set<() => void>();
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
      if (sessions.size === 0) for (const w of closedWaiters) w();
    },
  };

  const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: false }, (socket) => {
    const id = nextId++;
    total++;
    socket.on('error', () => {}); // errors before the session owns the socket (ECONNRESET on refuse)
    const slot = accepting ? limiter.tryAcquire() : undefined;
    if (!slot) {
      refused++;
      metrics.refused(accepting ? 'max_connections' : 'draining');
      const peer = socket.remoteAddress ? `${socket.remoteAddress}:${socket.remotePort}` : 'local';
      new ConnectionRecord(log, { protocol: 'mysql', id, peer }).close({ outcome: 'refused', bytesIn: 0, bytesOut: 0 });
      const err = accepting
        ? { ...ProxyErrno.TOO_MANY_CONNECTIONS, message: 'Too many connections' }
        : { ...ProxyErrno.SHUTDOWN, message: 'Server shutdown in progress' };
      socket.end(encodePreGreetingErrPacket(err));
      setTimeout(() => socket.destroy(), 2_000).unref();
      return;
    }
    const session = new MysqlSession(id, socket, slot, ctx);
    sessions.add(session);
    session.start();
  });
  server.on('error', (e) => log.error({ err: e }, 'mysql listener error'));

  function waitAllClosed(timeoutMs: number): Promise<boolean> {
    if (sessions.size === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const done = (ok: boolean) => {
        clearTimeout(timer);
        closedWaiters.delete(onEmpty);
        resolve(ok);
      };
      const onEmpty = () => done(true);
      const timer = setTimeout(() => done(false), timeoutMs);
      closedWaiters.add(onEmpty);
    });
  }

  return {
    listen() {
      return new Promise((resolve, reject) => {
        server.once('error', reject);
        const onListening = () => {
          server.removeListener('error', reject);
          listening = true;
          const addr = server.address();
          if ('path' in opts.listen) resolve({ path: opts.listen.path });
          else if (addr && typeof addr === 'object') resolve({ host: addr.address, port: addr.port });
          else reject(new CdbpError('INTERNAL', 'listener has no address'));
        };
        if ('path' in opts.listen) {
          removeStaleSocket(opts.listen.path);
          server.listen({ path: opts.listen.path, backlog: 1024 }, onListening);
        } else {
          server.listen({ host: opts.listen.host, port: opts.listen.port, backlog: 1024 }, onListening);
        }
      });
    },
    stopAccepting() {
      accepting = false;
      if (!listening) return Promise.resolve();
      listening = false;
      // server.close() stops accepting at once, but its callback waits for every open connection to
      // end: draining them is drain()'s job, so do not wait for it here.
      server.close();
      return Promise.resolve();
    },
    async drain(timeoutMs) {
      accepting = false;
      const clean = await waitAllClosed(timeoutMs);
      if (!clean) for (const s of [...sessions]) s.destroy('drained');
    },
    async close() {
      const stopped = this.stopAccepting();
      for (const s of [...sessions]) s.destroy('drained');
      await stopped;
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
        open: sessions.size, total, refused, dataPlane,
        bytesIn: totals.bytesIn + liveIn + relayed.bytesIn, bytesOut: totals.bytesOut + liveOut + relayed.bytesOut,
        tlsFailures: totals.tlsFailures, authFailures: totals.authFailures, handshakeTimeouts: totals.handshakeTimeouts, buffered: buffered + relayed.buffered,
      };
    },
  };
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

function removeStaleSocket(path: string): void {
  if (!existsSync(path)) return;
  if (!lstatSync(path).isSocket()) throw new CdbpError('CONFIG_INVALID', `listen path ${path} exists and is not a socket`);
  unlinkSync(path);
}
