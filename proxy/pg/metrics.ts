/**
 * The PG endpoint's Prometheus metrics: the shared endpoint metrics (proxy/shared/metrics.ts, label
 * protocol="pg", the shared refusal reasons), plus cdbp_cancel_requests_total{outcome}.
 */
import { MetricsRegistry, type Counter } from '../../src/kernel/metrics.ts';
import { EndpointMetrics, type RefuseReason } from '../shared/metrics.ts';

/** The shared refusal vocabulary (proxy/shared/metrics.ts). */
export type RefusalReason = RefuseReason;
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
