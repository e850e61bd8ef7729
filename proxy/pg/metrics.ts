/**
 * The PG endpoint's Prometheus metrics: the names and labels of proxy/shared/metrics.ts (label
 * protocol="pg"), plus cdbp_cancel_requests_total and PG-specific refusal reasons, which the shared
 * EndpointMetrics does not have.
 */
import { MetricsRegistry, type Counter, type Gauge } from '../../src/kernel/metrics.ts';

const P = { protocol: 'pg' } as const;

export type RefusalReason = 'max_connections' | 'overload' | 'plaintext' | 'protocol_violation' | 'frame_too_large'
  | 'no_alpn' | 'backend_unavailable' | 'draining' | 'forbidden_user';
export type CancelOutcome = 'forwarded' | 'unknown_key' | 'failed';

export class PgMetrics {
  private readonly open: Gauge;
  private readonly total: Counter;
  private readonly refusedTotal: Counter;
  private readonly bytes: Counter;
  private readonly tls: Counter;
  private readonly tlsFailures: Counter;
  private readonly authFailures: Counter;
  private readonly timeouts: Counter;
  private readonly cancels: Counter;

  constructor(registry: MetricsRegistry = new MetricsRegistry()) {
    this.open = registry.gauge('cdbp_connections_open', 'Client connections currently open');
    this.total = registry.counter('cdbp_connections_total', 'Client connections accepted');
    this.refusedTotal = registry.counter('cdbp_connections_refused_total', 'Client connections refused, by reason');
    this.bytes = registry.counter('cdbp_bytes_total', 'Bytes relayed between clients and the database');
    this.tls = registry.counter('cdbp_tls_handshakes_total', 'Completed client TLS handshakes');
    this.tlsFailures = registry.counter('cdbp_tls_handshake_failures_total', 'Failed client TLS handshakes');
    this.authFailures = registry.counter('cdbp_auth_failures_total', 'Authentications refused by the database');
    this.timeouts = registry.counter('cdbp_handshake_timeouts_total', 'Connections that did not finish the handshake in time');
    this.cancels = registry.counter('cdbp_cancel_requests_total', 'PostgreSQL CancelRequests, by outcome');
    this.open.set(0, P);
  }

  accepted(): void {
    this.total.inc(P);
    this.open.inc(P);
  }
  closed(clientToServer: number, serverToClient: number): void {
    this.open.dec(P);
    // Same labels as proxy/shared/metrics.ts: in = client → database, out = database → client.
    if (clientToServer) this.bytes.inc({ ...P, direction: 'in' }, clientToServer);
    if (serverToClient) this.bytes.inc({ ...P, direction: 'out' }, serverToClient);
  }
  refused(reason: RefusalReason): void {
    this.refusedTotal.inc({ ...P, reason });
  }
  tlsHandshake(): void {
    this.tls.inc(P);
  }
  tlsFailure(): void {
    this.tlsFailures.inc(P);
  }
  authFailure(): void {
    this.authFailures.inc(P);
  }
  handshakeTimeout(): void {
    this.timeouts.inc(P);
  }
  cancel(outcome: CancelOutcome): void {
    this.cancels.inc({ outcome });
  }
  get openConnections(): number {
    return this.open.get(P);
  }
  refusedCount(reason: RefusalReason): number {
    return this.refusedTotal.get({ ...P, reason });
  }
  cancelCount(outcome: CancelOutcome): number {
    return this.cancels.get({ outcome });
  }
}
