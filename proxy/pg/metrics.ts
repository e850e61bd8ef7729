/**
 * The PG endpoint's Prometheus metrics: the shared endpoint metrics (proxy/shared/metrics.ts, label
 * protocol="pg") with PostgreSQL's own refusal reasons, plus cdbp_cancel_requests_total{outcome}.
 */
import { MetricsRegistry, type Counter } from '../../src/kernel/metrics.ts';
import { EndpointMetrics } from '../shared/metrics.ts';

export type RefusalReason = 'max_connections' | 'overload' | 'plaintext' | 'protocol_violation' | 'frame_too_large'
  | 'no_alpn' | 'backend_unavailable' | 'draining' | 'forbidden_user';
export type CancelOutcome = 'forwarded' | 'unknown_key' | 'failed';

export class PgMetrics extends EndpointMetrics<RefusalReason> {
  private readonly cancels: Counter;

  constructor(registry: MetricsRegistry = new MetricsRegistry()) {
    super('pg', registry);
    this.cancels = registry.counter('cdbp_cancel_requests_total', 'PostgreSQL CancelRequests, by outcome');
  }

  cancel(outcome: CancelOutcome): void {
    this.cancels.inc({ outcome });
  }
}
