/** Reading the proxy's /metrics text: samples by `name{labels}`, and quantiles from histogram deltas. */

export type Samples = Map<string, number>;

/** Parses Prometheus text exposition into `name{labels}` → value (comments skipped). */
export function parsePrometheus(text: string): Samples {
  const out: Samples = new Map();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^(\S+?(?:\{[^}]*\})?)\s+(\S+)$/.exec(line.trim());
    if (m) out.set(m[1]!, Number(m[2]));
  }
  return out;
}

export async function scrape(url: string): Promise<Samples> {
  const res = await fetch(url, { signal: AbortSignal.timeout(5000) });
  return parsePrometheus(await res.text());
}

export interface HistogramDelta { count: number; sum: number; buckets: Array<[number, number]> }

/** The change of an unlabelled histogram between two scrapes: cumulative buckets (le, count). */
export function histogramDelta(before: Samples, after: Samples, name: string): HistogramDelta {
  const buckets: Array<[number, number]> = [];
  for (const [k, v] of after) {
    const m = new RegExp(`^${name}_bucket\\{le="([^"]+)"\\}$`).exec(k);
    if (m && m[1] !== '+Inf') buckets.push([Number(m[1]), v - (before.get(k) ?? 0)]);
  }
  buckets.sort((a, b) => a[0] - b[0]);
  const d = (k: string) => (after.get(k) ?? 0) - (before.get(k) ?? 0);
  return { count: d(`${name}_count`), sum: d(`${name}_sum`), buckets };
}

/** Upper bound of the bucket holding quantile q (cumulative buckets); NaN when empty, Infinity past the last. */
export function cumulativeQuantile(h: HistogramDelta, q: number): number {
  if (h.count <= 0) return NaN;
  const rank = q * h.count;
  for (const [le, c] of h.buckets) if (c >= rank) return le;
  return Infinity;
}
