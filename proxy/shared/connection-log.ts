/**
 * One structured log line when a client connection opens and one when it closes, shared by the
 * protocol endpoints. Never logs SQL, parameters or credentials: only who, how much, how long, how it ended.
 *
 * Stable API:
 *   const rec = new ConnectionRecord(log, { protocol: 'mysql', id, peer });  // logs "connection open"
 *   rec.user = 'app'; rec.backendId = 42; rec.tls = { protocol, cipher };
 *   rec.close({ outcome, bytesIn, bytesOut, error? })   // logs "connection closed" exactly once; later calls are ignored
 *
 * Outcomes are a closed set so dashboards can count them. Under a flood the lines are rate-limited
 * (ConnectionLogLimiter below).
 */
import type { Logger } from '../../src/kernel/log.ts';
import { MetricsRegistry, type Counter } from '../../src/kernel/metrics.ts';

export type ConnectionOutcome =
  | 'ok'              // client or server ended the session normally
  | 'refused'         // max connections, draining
  | 'insecure'        // client did not ask for TLS
  | 'tls_failed'      // TLS handshake failed
  | 'auth_failed'     // the database refused the credentials
  | 'handshake_timeout'
  | 'idle_timeout'
  | 'protocol_error'  // garbage, oversized frame, unsupported feature
  | 'backend_error'   // database unreachable or closed mid-session
  | 'client_error'    // client socket reset mid-session
  | 'ack_refused'     // the freshness gate refused to acknowledge a write
  | 'drained'         // destroyed by drain()/close()
  | 'forbidden_user';

export interface CloseFacts {
  outcome: ConnectionOutcome;
  bytesIn: number;
  bytesOut: number;
  /** A short, non-secret reason (error code/message). */
  error?: string;
}

export class ConnectionRecord {
  user: string | undefined;
  backendId: number | undefined;
  tls: { protocol: string | null; cipher: string } | undefined;
  readonly startedAt = performance.now();
  private closed = false;

  constructor(private readonly log: Logger, private readonly base: { protocol: string; id: number; peer: string }) {
    log.info({ event: 'connection_open', ...base }, 'connection open');
  }

  get isClosed(): boolean {
    return this.closed;
  }

  close(facts: CloseFacts): void {
    if (this.closed) return;
    this.closed = true;
    const durationMs = Math.round(performance.now() - this.startedAt);
    const line = {
      event: 'connection_close', ...this.base, user: this.user, backendId: this.backendId,
      tlsProtocol: this.tls?.protocol, cipher: this.tls?.cipher, durationMs, ...facts,
    };
    if (facts.outcome === 'ok' || facts.outcome === 'drained') this.log.info(line, 'connection closed');
    else this.log.warn(line, 'connection closed');
  }
}

// ---- rate limit --------------------------------------------------------------------------------

/**
 * Per-connection lines (open, close, refusal, failed authentication) are worth having one by one
 * under normal load and worthless by the million under a flood, where they turn a connection flood
 * into a disk flood (~450 bytes per connection). Each event name gets a token bucket; lines beyond it
 * are dropped and counted (`cdbp_log_lines_dropped_total{event}`), and one summary line per period
 * says how many of each were dropped (`connection_log_suppressed`).
 */
export interface ConnectionLogLimits {
  /** Lines of one event written in a burst before the rate applies. */
  burst: number;
  /** Sustained lines per second, per event. */
  perSecond: number;
  /** How often a summary of dropped lines is written (only when some were dropped). */
  summaryEveryMs: number;
}

export const DEFAULT_CONNECTION_LOG_LIMITS: ConnectionLogLimits = { burst: 100, perSecond: 20, summaryEveryMs: 60_000 };

/** Events that are written once per connection (and only those are limited). */
export const CONNECTION_EVENTS: ReadonlySet<string> = new Set([
  'connection_open', 'connection_close', 'pg.open', 'pg.close', 'pg.auth_failed',
]);

export class ConnectionLogLimiter {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();
  private dropped = new Map<string, number>();
  private readonly droppedC: Counter;
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly log: Logger,
    metrics: MetricsRegistry = new MetricsRegistry(),
    private readonly limits: ConnectionLogLimits = DEFAULT_CONNECTION_LOG_LIMITS,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.droppedC = metrics.counter('cdbp_log_lines_dropped_total', 'Per-connection log lines dropped by the rate limit, by event');
    this.timer = setInterval(() => this.summarize(), limits.summaryEveryMs);
    this.timer.unref();
  }

  /** True when a line of `event` may be written now; false when it is dropped (and counted). */
  admit(event: string): boolean {
    const t = this.now();
    let b = this.buckets.get(event);
    if (!b) {
      b = { tokens: this.limits.burst, at: t };
      this.buckets.set(event, b);
    }
    b.tokens = Math.min(this.limits.burst, b.tokens + ((t - b.at) / 1000) * this.limits.perSecond);
    b.at = t;
    if (b.tokens >= 1) {
      b.tokens -= 1;
      return true;
    }
    this.dropped.set(event, (this.dropped.get(event) ?? 0) + 1);
    this.droppedC.inc({ event });
    return false;
  }

  /** Writes the summary of lines dropped since the last one (if any). */
  summarize(): void {
    if (this.dropped.size === 0) return;
    const dropped = Object.fromEntries(this.dropped);
    const total = [...this.dropped.values()].reduce((a, b) => a + b, 0);
    this.dropped = new Map();
    this.log.warn({ event: 'connection_log_suppressed', dropped, total, limits: { burst: this.limits.burst, perSecond: this.limits.perSecond } },
      `${total} connection log lines dropped by the rate limit`);
  }

  stop(): void {
    clearInterval(this.timer);
    this.summarize();
  }
}

/**
 * The logger with per-connection lines (CONNECTION_EVENTS, at info or warn) passed through the limiter;
 * every other line, and children's lines, as before. Endpoints hand this to their sessions.
 */
export function rateLimitedConnectionLog(log: Logger, limiter: ConnectionLogLimiter): Logger {
  return new Proxy(log, {
    get(target, prop, receiver) {
      if (prop === 'info' || prop === 'warn') {
        const write = Reflect.get(target, prop, receiver) as (...a: unknown[]) => void;
        return (obj: unknown, ...rest: unknown[]) => {
          const event = obj !== null && typeof obj === 'object' ? (obj as { event?: unknown }).event : undefined;
          if (typeof event === 'string' && CONNECTION_EVENTS.has(event) && !limiter.admit(event)) return;
          write.call(target, obj, ...rest);
        };
      }
      if (prop === 'child') {
        return (...a: Parameters<Logger['child']>) => rateLimitedConnectionLog(target.child(...a) as unknown as Logger, limiter);
      }
      return Reflect.get(target, prop, receiver);
    },
  });
}
