/**
 * One structured log line when a client connection opens and one when it closes, shared by the
 * protocol endpoints. Never logs SQL, parameters or credentials: only who, how much, how long, how it ended.
 *
 * Stable API:
 *   const rec = new ConnectionRecord(log, { protocol: 'mysql', id, peer });  // logs "connection open"
 *   rec.user = 'app'; rec.backendId = 42; rec.tls = { protocol, cipher };
 *   rec.close({ outcome, bytesIn, bytesOut, error? })   // logs "connection closed" exactly once; later calls are ignored
 *
 * Outcomes are a closed set so dashboards can count them.
 */
import type { Logger } from '../../src/kernel/log.ts';

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
