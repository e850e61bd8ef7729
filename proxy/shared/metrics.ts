/**
 * Connection metrics shared by the protocol endpoints, all labelled with the protocol
 * ("mysql", "postgresql"). Registered on the caller's MetricsRegistry (get-or-create, so several
 * endpoints can share one registry), or on a private one when the caller passes none.
 *
 * Stable API:
 *   const m = new EndpointMetrics('mysql', registry?);
 *   m.opened(); m.closed(); m.refused(reason); m.bytes(inBytes, outBytes);
 *   m.tlsHandshake(); m.tlsFailure(); m.authFailure(); m.handshakeTimeout();
 *   m.pendingHandshakes(n); m.drained(n);          // from the listener (listener.ts)
 *
 * Names: cdbp_connections_open{protocol}, cdbp_connections_total{protocol},
 * cdbp_connections_refused_total{protocol,reason}, cdbp_bytes_total{protocol,direction="in"|"out"},
 * cdbp_tls_handshakes_total{protocol}, cdbp_tls_handshake_failures_total{protocol},
 * cdbp_auth_failures_total{protocol}, cdbp_handshake_timeouts_total{protocol},
 * cdbp_handshakes_pending{protocol}, cdbp_connections_drained_total{protocol}.
 * "in" is client → database, "out" is database → client (plaintext bytes).
 */
import { MetricsRegistry, type Counter, type Gauge } from '../../src/kernel/metrics.ts';

/**
 * Why a connection was refused (label `reason`), one vocabulary for both endpoints: `max_connections`
 * (every slot taken), `overload` (maxPendingHandshakes connections still handshaking), `insecure_transport` (no TLS), `draining`,
 * `backend_unavailable`, `protocol` (bad bytes), `frame_too_large`, `no_alpn` (direct TLS without
 * ALPN, PG), `forbidden_user`.
 */
export type RefuseReason = 'max_connections' | 'overload' | 'insecure_transport' | 'draining' | 'backend_unavailable' | 'protocol'
  | 'frame_too_large' | 'no_alpn' | 'forbidden_user';

/** `Reason`: the endpoint's refusal reasons (label `reason`). */
export class EndpointMetrics<Reason extends string = RefuseReason> {
  private readonly labels: { protocol: string };
  private readonly open: Gauge;
  private readonly total: Counter;
  private readonly refusedC: Counter;
  private readonly bytesC: Counter;
  private readonly tls: Counter;
  private readonly tlsFail: Counter;
  private readonly authFail: Counter;
  private readonly timeouts: Counter;
  private readonly dataPlaneG: Gauge;
  private readonly pendingG: Gauge;
  private readonly drainedC: Counter;

  constructor(protocol: string, registry: MetricsRegistry = new MetricsRegistry()) {
    this.labels = { protocol };
    this.open = registry.gauge('cdbp_connections_open', 'Client connections currently open');
    this.total = registry.counter('cdbp_connections_total', 'Client connections accepted');
    this.refusedC = registry.counter('cdbp_connections_refused_total', 'Client connections refused, by reason');
    this.bytesC = registry.counter('cdbp_bytes_total', 'Plaintext bytes relayed (in: client to database, out: database to client)');
    this.tls = registry.counter('cdbp_tls_handshakes_total', 'Client TLS handshakes completed');
    this.tlsFail = registry.counter('cdbp_tls_handshake_failures_total', 'Client TLS handshakes failed');
    this.authFail = registry.counter('cdbp_auth_failures_total', 'Authentications refused by the database');
    this.dataPlaneG = registry.gauge('cdbp_data_plane_info', 'Which data plane serves the endpoint (1 for the active kind)');
    this.timeouts = registry.counter('cdbp_handshake_timeouts_total', 'Connections closed because the handshake took too long');
    this.pendingG = registry.gauge('cdbp_handshakes_pending', 'Client connections open but not yet logged in');
    this.drainedC = registry.counter('cdbp_connections_drained_total', 'Sessions ended by a drain deadline or an endpoint close');
    this.open.set(this.open.get(this.labels), this.labels);
  }

  opened(): void { this.open.inc(this.labels); this.total.inc(this.labels); }
  closed(): void { this.open.dec(this.labels); }
  /** cdbp_data_plane_info{protocol,kind} = 1: which data plane relays this endpoint (native | node). */
  dataPlane(kind: string): void { this.dataPlaneG.set(1, { ...this.labels, kind }); }
  refused(reason: Reason): void { this.refusedC.inc({ ...this.labels, reason }); }
  bytes(inBytes: number, outBytes: number): void {
    if (inBytes) this.bytesC.inc({ ...this.labels, direction: 'in' }, inBytes);
    if (outBytes) this.bytesC.inc({ ...this.labels, direction: 'out' }, outBytes);
  }
  tlsHandshake(): void { this.tls.inc(this.labels); }
  tlsFailure(): void { this.tlsFail.inc(this.labels); }
  authFailure(): void { this.authFail.inc(this.labels); }
  handshakeTimeout(): void { this.timeouts.inc(this.labels); }
  pendingHandshakes(n: number): void { this.pendingG.set(n, this.labels); }
  drained(n: number): void { if (n > 0) this.drainedC.inc(this.labels, n); }
}
