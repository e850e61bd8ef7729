/**
 * PostgreSQL drop-in endpoint: terminates client TLS (SSLRequest or direct TLS with ALPN
 * "postgresql") with the attested identity, relays startup and authentication to the database,
 * then pipes frames. The composition root gives it a TLS identity, a backend and a logger.
 */
import net from 'node:net';
import os from 'node:os';
import type { Logger } from '../../src/kernel/log.ts';
import { CdbpError } from '../../src/kernel/errors.ts';
import { ConnectionLimiter, type ConnectionSlot } from '../shared/connection-limiter.ts';
import {
  ConnectionLogLimiter, DEFAULT_CONNECTION_LOG_LIMITS, rateLimitedConnectionLog, type ConnectionLogLimits,
} from '../shared/connection-log.ts';
import { identityHolder, type TlsIdentitySource } from '../../src/crypto/tls-identity.ts';
import type { MetricsRegistry } from '../../src/kernel/metrics.ts';
import { validateBackend, describeBackend, type PgBackend } from './backend.ts';
import { CancelRegistry } from './cancel-registry.ts';
import { PgMetrics } from './metrics.ts';
import { DEFAULT_LIMITS, PgSession, type PgLimits } from './session.ts';
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

export interface PgProxyStats {
  /** Client connections open (handshaking or authenticated). */
  open: number;
  /** Sessions past authentication (piping). */
  authenticated: number;
  /** Backend slots in use (dialing, authenticating or piping). */
  slotsInUse: number;
  accepted: number;
  accepting: boolean;
}

export interface PgProxy {
  /** Binds the listener; resolves with the bound address (port 0 picks one). */
  listen(): Promise<{ host: string; port: number }>;
  /** Stops accepting new connections; open sessions continue. */
  stopAccepting(): Promise<void>;
  /** Stops accepting, waits up to timeoutMs for sessions to end, then closes the rest. Returns how many were forced. */
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
  const limiter = new ConnectionLimiter(limits.maxConnections);
  let accepted = 0;
  let accepting = false;
  let server: net.Server | undefined;
  const drainWaiters = new Set<() => void>();

  const logLimiter = new ConnectionLogLimiter(opts.log, opts.metrics, { ...DEFAULT_CONNECTION_LOG_LIMITS, ...opts.connectionLog });
  const env = {
    limits,
    log: rateLimitedConnectionLog(opts.log, logLimiter),
    metrics,
    backend: opts.backend,
    cancels,
    ackGate: opts.ackGate,
    forbiddenUsers: new Set([...('socketDir' in opts.backend ? [os.userInfo().username] : []), ...(opts.forbiddenUsers ?? [])]),
    secureContext: () => identity.context,
    tryAcquireSlot: (): ConnectionSlot | undefined => limiter.tryAcquire(),
    onClosed: (s: PgSession) => {
      sessions.delete(s);
      if (sessions.size === 0) for (const w of drainWaiters) w();
    },
  };

  // Over the accept-time cap a client still hears why, in its own terms (53300 after TLS if it asked
  // for TLS), from a bounded number of refusal sessions that never take a slot; past those, a flood is
  // dropped unanswered (answering would cost a TLS handshake each).
  let refusing = 0;
  const overflowEnv = {
    ...env,
    overflow: true,
    tryAcquireSlot: (): ConnectionSlot | undefined => undefined,
    onClosed: (s: PgSession) => {
      refusing--;
      env.onClosed(s);
    },
  };

  function onConnection(sock: net.Socket): void {
    accepted++;
    // Handshakes are cheap to start and costly to finish (TLS): bound how many may be in flight.
    const over = sessions.size >= limits.maxConnections + limits.maxPendingHandshakes;
    if (!accepting || (over && refusing >= limits.maxRefusalHandshakes)) {
      metrics.refused(accepting ? 'overload' : 'draining');
      sock.on('error', () => undefined);
      sock.destroy();
      return;
    }
    metrics.opened();
    if (over) refusing++;
    const session = new PgSession(sock, over ? overflowEnv : env);
    sessions.add(session);
    void session.run();
  }

  return {
    async listen() {
      if (server) throw new CdbpError('LIFECYCLE_INVALID_TRANSITION', 'PostgreSQL endpoint already listening');
      // Half-open: a client that sends its last bytes and FIN (SSLRequest + Terminate) still reads our answer.
      const srv = net.createServer({ noDelay: true, allowHalfOpen: true }, onConnection);
      server = srv;
      accepting = true;
      await new Promise<void>((resolve, reject) => {
        srv.once('error', reject);
        srv.listen(opts.listen.port, opts.listen.host, () => {
          srv.off('error', reject);
          resolve();
        });
      });
      srv.on('error', (e) => opts.log.error({ event: 'pg.listener_error', err: e.message }, 'pg listener error'));
      const addr = srv.address() as net.AddressInfo;
      opts.log.info({ event: 'pg.listening', host: addr.address, port: addr.port, backend: describeBackend(opts.backend) }, 'PostgreSQL endpoint listening');
      return { host: addr.address, port: addr.port };
    },

    async stopAccepting() {
      accepting = false;
      const srv = server;
      if (!srv || !srv.listening) return;
      await new Promise<void>((resolve) => {
        srv.close(() => resolve());
        // close() waits for open connections; we only want the listening socket gone.
        setImmediate(resolve);
      });
    },

    async drain(timeoutMs) {
      await this.stopAccepting();
      if (sessions.size > 0) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(done, timeoutMs);
          function done() {
            clearTimeout(timer);
            drainWaiters.delete(done);
            resolve();
          }
          drainWaiters.add(done);
        });
      }
      const forced = sessions.size;
      for (const s of [...sessions]) s.endWithError('57P01', 'terminating connection due to administrator command', 'drain timeout');
      return { forced };
    },

    async close() {
      await this.stopAccepting();
      logLimiter.stop();
      const closing = [...sessions];
      for (const s of closing) s.destroy('proxy closing');
      if (sessions.size > 0) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(done, 5_000);
          function done() {
            clearTimeout(timer);
            drainWaiters.delete(done);
            resolve();
          }
          drainWaiters.add(done);
        });
      }
    },

    stats() {
      let authenticated = 0;
      for (const s of sessions) if (s.authenticated) authenticated++;
      return { open: sessions.size, authenticated, slotsInUse: limiter.open, accepted, accepting };
    },
  };
}
