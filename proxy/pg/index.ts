/**
 * PostgreSQL drop-in endpoint: terminates client TLS (SSLRequest or direct TLS with ALPN
 * "postgresql") with the attested identity, relays startup and authentication to the database,
 * then pipes frames. The composition root gives it a TLS identity, a backend and a logger.
 */
import type net from 'node:net';
import os from 'node:os';
import type { Logger } from '../../src/kernel/log.ts';
import { createListener, type Conversation, type ListenerConnection, type ListenerRefusal, type ListenerStats } from '../shared/listener.ts';
import {
  ConnectionLogLimiter, DEFAULT_CONNECTION_LOG_LIMITS, rateLimitedConnectionLog, type ConnectionLogLimits,
} from '../shared/connection-log.ts';
import { identityHolder, type TlsIdentitySource } from '../../src/crypto/tls-identity.ts';
import type { MetricsRegistry } from '../../src/kernel/metrics.ts';
import { validateBackend, describeBackend, type PgBackend } from './backend.ts';
import { CancelRegistry } from './cancel-registry.ts';
import { PgMetrics } from './metrics.ts';
import { DEFAULT_LIMITS, PgSession, type PgLimits, type SessionEnv } from './session.ts';
import type { AckGate } from '../shared/ack-gate.ts';

export type { AckGate } from '../shared/ack-gate.ts';
export type { PgBackend } from './backend.ts';
export type { PgLimits } from './session.ts';

export interface PgProxyOptions {
  listen: { host: string; port: number };
  backend: PgBackend;
  /** The process's identity holder (renewal swaps it there), or a fixed pair. */
  tls: TlsIdentitySource;
  limits?: Partial<PgLimits>;
  log: Logger;
  metrics?: MetricsRegistry;
  /** Freshness hook: may hold idle acknowledgments (see ack-gate.ts). */
  ackGate?: AckGate;
  /**
   * User names clients may not log in as. On a unix-socket backend the proxy's own OS user is always
   * refused (peer authentication would see the proxy process); add accounts that trust the socket, such
   * as the proxy's monitoring superuser.
   */
  forbiddenUsers?: string[];
  /** Rate limit of per-connection log lines (proxy/shared/connection-log.ts). */
  connectionLog?: Partial<ConnectionLogLimits>;
}

/** The listener's stats (the same shape as MySQL's) plus the sessions past authentication. */
export interface PgProxyStats extends ListenerStats {
  /** Sessions past authentication (piping). */
  authenticated: number;
}

export interface PgProxy {
  /** Binds the listener; resolves with the bound address (port 0 picks one). */
  listen(): Promise<{ host: string; port: number }>;
  /** Stops accepting new connections; open sessions continue. */
  stopAccepting(): Promise<void>;
  /** Stops accepting, waits up to timeoutMs for sessions to end, then closes the rest (57P01). Returns how many were forced. */
  drain(timeoutMs: number): Promise<{ forced: number }>;
  /** Stops accepting and closes every session now. */
  close(): Promise<void>;
  stats(): PgProxyStats;
}

export function createPgProxy(opts: PgProxyOptions): PgProxy {
  validateBackend(opts.backend);
  const limits: PgLimits = { ...DEFAULT_LIMITS, ...opts.limits };
  const metrics = new PgMetrics(opts.metrics);
  const cancels = new CancelRegistry();
  const sessions = new Set<PgSession>();
  const identity = identityHolder(opts.tls);

  const logLimiter = new ConnectionLogLimiter(opts.log, opts.metrics, { ...DEFAULT_CONNECTION_LOG_LIMITS, ...opts.connectionLog });
  const log = rateLimitedConnectionLog(opts.log, logLimiter);
  const env: SessionEnv = {
    limits,
    log,
    metrics,
    backend: opts.backend,
    cancels,
    ackGate: opts.ackGate,
    forbiddenUsers: new Set([...('socketDir' in opts.backend ? [os.userInfo().username] : []), ...(opts.forbiddenUsers ?? [])]),
    secureContext: () => identity.context,
    onClosed: (s: PgSession) => {
      sessions.delete(s);
    },
  };

  /** A session (or a refusal session: negotiation, TLS if asked, startup, then 53300/57P03). */
  function run(sock: net.Socket, conn: ListenerConnection, refusal?: ListenerRefusal): Conversation {
    const session = new PgSession(sock, env, conn, refusal);
    sessions.add(session);
    void session.run();
    return {
      stop: (why) => why === 'drain_deadline'
        ? session.endWithError('57P01', 'terminating connection due to administrator command', 'drain timeout')
        : session.destroy('proxy closing'),
    };
  }

  const listener = createListener({
    protocol: 'pg', listen: opts.listen, log, metrics,
    limits: { maxConnections: limits.maxConnections, maxPendingHandshakes: limits.maxPendingHandshakes, maxRefusalHandshakes: limits.maxRefusalHandshakes },
    engine: { converse: (sock, conn) => run(sock, conn), refuse: (sock, reason, conn) => run(sock, conn, reason) },
  });

  return {
    async listen() {
      const addr = await listener.listen() as { host: string; port: number };
      opts.log.info({ event: 'pg.listening', host: addr.host, port: addr.port, backend: describeBackend(opts.backend) }, 'PostgreSQL endpoint listening');
      return addr;
    },
    stopAccepting: () => listener.stopAccepting(),
    drain: (timeoutMs) => listener.drain(timeoutMs),
    async close() {
      await listener.close();
      logLimiter.stop();
    },
    stats() {
      let authenticated = 0;
      for (const s of sessions) if (s.authenticated) authenticated++;
      return { ...listener.stats(), authenticated };
    },
  };
}
