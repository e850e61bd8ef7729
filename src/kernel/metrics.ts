/**
 * A small Prometheus registry: counters, gauges and histograms with labels, rendered in the text
 * exposition format (version 0.0.4). Hot paths only do a Map lookup and an add.
 */
type Labels = Record<string, string>;

function labelKey(labels: Labels | undefined): string {
  if (!labels) return '';
  const keys = Object.keys(labels).sort();
  return keys.map((k) => `${k}="${escapeLabel(labels[k] ?? '')}"`).join(',');
}

function escapeLabel(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
}

abstract class Metric {
  constructor(readonly name: string, readonly help: string, readonly type: 'counter' | 'gauge' | 'histogram') {}
  abstract render(): string[];
}

export class Counter extends Metric {
  private readonly values = new Map<string, number>();
  constructor(name: string, help: string) {
    super(name, help, 'counter');
  }
  inc(labels?: Labels, by = 1): void {
    const k = labelKey(labels);
    this.values.set(k, (this.values.get(k) ?? 0) + by);
  }
  get(labels?: Labels): number {
    return this.values.get(labelKey(labels)) ?? 0;
  }
  render(): string[] {
    if (this.values.size === 0) return [`${this.name} 0`];
    return [...this.values].map(([k, v]) => `${this.name}${k ? `{${k}}` : ''} ${v}`);
  }
}

export class Gauge extends Metric {
  private readonly values = new Map<string, number>();
  private collector: (() => void) | undefined;
  constructor(name: string, help: string, collect?: (g: Gauge) => void) {
    super(name, help, 'gauge');
    if (collect) this.collector = () => collect(this);
  }
  set(value: number, labels?: Labels): void {
    this.values.set(labelKey(labels), value);
  }
  /** Drops every label set (an info gauge whose labels changed, e.g. a new TCB after renewal). */
  clear(): void {
    this.values.clear();
  }
  inc(labels?: Labels, by = 1): void {
    const k = labelKey(labels);
    this.values.set(k, (this.values.get(k) ?? 0) + by);
  }
  dec(labels?: Labels, by = 1): void {
    this.inc(labels, -by);
  }
  get(labels?: Labels): number {
    return this.values.get(labelKey(labels)) ?? 0;
  }
  render(): string[] {
    this.collector?.();
    if (this.values.size === 0) return [];
    return [...this.values].map(([k, v]) => `${this.name}${k ? `{${k}}` : ''} ${formatNumber(v)}`);
  }
}

export class Histogram extends Metric {
  private readonly series = new Map<string, { counts: number[]; sum: number; count: number }>();
  constructor(name: string, help: string, readonly buckets: number[]) {
    super(name, help, 'histogram');
  }
  observe(value: number, labels?: Labels): void {
    const k = labelKey(labels);
    let s = this.series.get(k);
    if (!s) {
      s = { counts: new Array(this.buckets.length).fill(0), sum: 0, count: 0 };
      this.series.set(k, s);
    }
    for (let i = 0; i < this.buckets.length; i++) if (value <= this.buckets[i]!) s.counts[i]!++;
    s.sum += value;
    s.count++;
  }
  /** Approximate quantile from the buckets (upper bound of the bucket holding it). */
  quantile(q: number, labels?: Labels): number | undefined {
    const s = this.series.get(labelKey(labels));
    if (!s || s.count === 0) return undefined;
    const rank = q * s.count;
    for (let i = 0; i < this.buckets.length; i++) if (s.counts[i]! >= rank) return this.buckets[i];
    return Infinity;
  }
  render(): string[] {
    const out: string[] = [];
    for (const [k, s] of this.series) {
      const sep = k ? `${k},` : '';
      this.buckets.forEach((b, i) => out.push(`${this.name}_bucket{${sep}le="${b}"} ${s.counts[i]}`));
      out.push(`${this.name}_bucket{${sep}le="+Inf"} ${s.count}`);
      out.push(`${this.name}_sum${k ? `{${k}}` : ''} ${formatNumber(s.sum)}`);
      out.push(`${this.name}_count${k ? `{${k}}` : ''} ${s.count}`);
    }
    return out;
  }
}

function formatNumber(v: number): string {
  if (Number.isNaN(v)) return 'NaN';
  if (v === Infinity) return '+Inf';
  if (v === -Infinity) return '-Inf';
  return String(v);
}

export class MetricsRegistry {
  private readonly metrics = new Map<string, Metric>();

  counter(name: string, help: string): Counter {
    return this.register(name, () => new Counter(name, help)) as Counter;
  }
  gauge(name: string, help: string, collect?: (g: Gauge) => void): Gauge {
    return this.register(name, () => new Gauge(name, help, collect)) as Gauge;
  }
  histogram(name: string, help: string, buckets: number[]): Histogram {
    return this.register(name, () => new Histogram(name, help, buckets)) as Histogram;
  }

  /** Prometheus text exposition format. */
  render(): string {
    const lines: string[] = [];
    for (const m of this.metrics.values()) {
      const body = m.render();
      lines.push(`# HELP ${m.name} ${m.help.replace(/\\/g, '\\\\').replace(/\n/g, '\\n')}`, `# TYPE ${m.name} ${m.type}`, ...body);
    }
    return lines.join('\n') + '\n';
  }

  private register(name: string, make: () => Metric): Metric {
    const existing = this.metrics.get(name);
    if (existing) return existing;
    const m = make();
    this.metrics.set(name, m);
    return m;
  }
}

/** Latency buckets in seconds, 50 µs to 30 s. */
export const LATENCY_BUCKETS = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
