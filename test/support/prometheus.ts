/**
 * A strict parser for the Prometheus text exposition format (version 0.0.4), for tests: it throws on
 * anything a real scraper could reject or silently misread, so `parsePrometheus(await metrics())`
 * is itself an assertion.
 *
 * Checked: line grammar; metric and label name syntax (no reserved `__` labels); label value escapes
 * (only \\ \" \n); float values (incl. NaN, +Inf, -Inf) and optional integer timestamps; at most one
 * HELP and one TYPE per family, TYPE before the family's first sample; a family's samples contiguous;
 * no duplicate series; sample names legal for the family's type (counter: name or name_total
 * pattern; histogram: _bucket with le, _sum, _count; buckets cumulative, +Inf bucket == _count);
 * trailing newline.
 *
 *   const m = parsePrometheus(text);
 *   m.value('cdbp_connections_open', { protocol: 'mysql' });   // number | undefined
 *   m.family('cdbp_mode')?.type                                // 'gauge'
 */
export type MetricType = 'counter' | 'gauge' | 'histogram' | 'summary' | 'untyped';

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
  timestamp?: number;
}

export interface Family {
  name: string;
  help?: string;
  type: MetricType;
  samples: Sample[];
}

export interface Exposition {
  families: Map<string, Family>;
  family(name: string): Family | undefined;
  /** The value of the one sample with exactly these labels (default none). */
  value(name: string, labels?: Record<string, string>): number | undefined;
  /** Every sample whose name is `name`. */
  samples(name: string): Sample[];
}

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const FLOAT = /^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$/;
const TYPES = new Set<MetricType>(['counter', 'gauge', 'histogram', 'summary', 'untyped']);

export class PrometheusParseError extends Error {
  constructor(readonly line: number, message: string, readonly text: string) {
    super(`line ${line}: ${message}: ${JSON.stringify(text)}`);
  }
}

export function parseFloatValue(s: string): number | undefined {
  if (s === 'NaN') return NaN;
  if (s === '+Inf' || s === 'Inf') return Infinity;
  if (s === '-Inf') return -Infinity;
  return FLOAT.test(s) ? Number(s) : undefined;
}

/** Which family a sample name belongs to, given the declared families. */
function familyOf(sample: string, families: Map<string, Family>): string {
  for (const suffix of ['_bucket', '_sum', '_count']) {
    if (sample.endsWith(suffix)) {
      const base = sample.slice(0, -suffix.length);
      const f = families.get(base);
      if (f && (f.type === 'histogram' || f.type === 'summary')) return base;
    }
  }
  return sample;
}

function parseLabels(body: string, fail: (m: string) => never): Record<string, string> {
  const labels: Record<string, string> = {};
  let i = 0;
  while (i < body.length) {
    const eq = body.indexOf('=', i);
    if (eq < 0) fail('label without =');
    const name = body.slice(i, eq).trim();
    if (!LABEL_NAME.test(name)) fail(`bad label name '${name}'`);
    if (name.startsWith('__')) fail(`reserved label name '${name}'`);
    if (name in labels) fail(`duplicate label '${name}'`);
    if (body[eq + 1] !== '"') fail('label value must be quoted');
    let j = eq + 2;
    let value = '';
    for (;;) {
      if (j >= body.length) fail('unterminated label value');
      const c = body[j]!;
      if (c === '"') break;
      if (c === '\n') fail('raw newline in label value');
      if (c === '\\') {
        const n = body[j + 1];
        if (n === '\\') value += '\\';
        else if (n === '"') value += '"';
        else if (n === 'n') value += '\n';
        else fail(`bad escape \\${n ?? ''} in label value`);
        j += 2;
        continue;
      }
      value += c;
      j++;
    }
    labels[name] = value;
    i = j + 1;
    if (i < body.length) {
      if (body[i] !== ',') fail('expected , between labels');
      i++;
    }
  }
  return labels;
}

export function parsePrometheus(text: string): Exposition {
  const families = new Map<string, Family>();
  const seenSeries = new Set<string>();
  const closed = new Set<string>();
  let current: string | undefined;
  if (text.length > 0 && !text.endsWith('\n')) throw new PrometheusParseError(0, 'exposition must end with a newline', text.slice(-40));
  const lines = text.split('\n');
  lines.pop();
  const enter = (name: string, lineNo: number, line: string) => {
    if (current !== name) {
      if (closed.has(name)) throw new PrometheusParseError(lineNo, `samples of '${name}' are not contiguous`, line);
      if (current !== undefined) closed.add(current);
      current = name;
    }
  };
  lines.forEach((line, idx) => {
    const lineNo = idx + 1;
    const fail = (m: string): never => { throw new PrometheusParseError(lineNo, m, line); };
    if (line.trim() === '') return;
    if (line.startsWith('#')) {
      const m = /^#\s+(HELP|TYPE)\s+(\S+)(?:\s(.*))?$/.exec(line);
      if (!m) return; // a plain comment
      const [, kind, name, rest = ''] = m;
      if (!METRIC_NAME.test(name!)) fail(`bad metric name '${name}'`);
      let f = families.get(name!);
      if (kind === 'TYPE') {
        if (!TYPES.has(rest.trim() as MetricType)) fail(`unknown type '${rest}'`);
        if (f?.samples.length) fail(`TYPE of '${name}' after its samples`);
        if (f && (f as Family & { typed?: boolean }).typed) fail(`second TYPE for '${name}'`);
        if (!f) { f = { name: name!, type: 'untyped', samples: [] }; families.set(name!, f); }
        f.type = rest.trim() as MetricType;
        (f as Family & { typed?: boolean }).typed = true;
      } else {
        if (f?.help !== undefined) fail(`second HELP for '${name}'`);
        if (!f) { f = { name: name!, type: 'untyped', samples: [] }; families.set(name!, f); }
        if (/\\[^\\n]/.test(rest.replace(/\\\\/g, ''))) fail('bad escape in HELP');
        f.help = rest;
      }
      enter(name!, lineNo, line);
      return;
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?[ \t]+(\S+)(?:[ \t]+(-?\d+))?[ \t]*$/.exec(line);
    if (!m) fail('not a sample line');
    const [, name, , labelBody, rawValue, rawTs] = m!;
    const labels = labelBody !== undefined ? parseLabels(labelBody, fail) : {};
    const value = parseFloatValue(rawValue!);
    if (value === undefined) fail(`bad value '${rawValue}'`);
    const famName = familyOf(name!, families);
    let f = families.get(famName);
    if (!f) { f = { name: famName, type: 'untyped', samples: [] }; families.set(famName, f); }
    enter(famName, lineNo, line);
    if (f.type === 'histogram') {
      if (name === `${famName}_bucket`) {
        if (!('le' in labels)) fail('histogram bucket without le');
        if (parseFloatValue(labels.le!) === undefined) fail(`bad le '${labels.le}'`);
      } else if (name !== `${famName}_sum` && name !== `${famName}_count`) fail(`'${name}' is not a sample of histogram ${famName}`);
    } else if (name !== famName) {
      fail(`'${name}' is not a sample of ${f.type} ${famName}`);
    }
    if ((f.type === 'counter' || name!.endsWith('_count') || name!.endsWith('_bucket')) && value! < 0) fail('negative counter');
    const key = `${name}{${Object.keys(labels).sort().map((k) => `${k}=${JSON.stringify(labels[k])}`).join(',')}}`;
    if (seenSeries.has(key)) fail(`duplicate series ${key}`);
    seenSeries.add(key);
    f.samples.push({ name: name!, labels, value: value!, ...(rawTs ? { timestamp: Number(rawTs) } : {}) });
  });
  for (const f of families.values()) if (f.type === 'histogram') checkHistogram(f);

  const samples = (name: string) => [...families.values()].flatMap((f) => f.samples.filter((s) => s.name === name));
  return {
    families,
    family: (name) => families.get(name),
    samples,
    value(name, labels = {}) {
      const want = JSON.stringify(Object.entries(labels).sort());
      const hit = samples(name).filter((s) => JSON.stringify(Object.entries(s.labels).sort()) === want);
      return hit[0]?.value;
    },
  };
}

function checkHistogram(f: Family): void {
  const groups = new Map<string, { buckets: Array<[number, number]>; count?: number }>();
  for (const s of f.samples) {
    const { le, ...rest } = s.labels;
    const key = JSON.stringify(Object.entries(rest).sort());
    const g = groups.get(key) ?? { buckets: [] };
    groups.set(key, g);
    if (s.name.endsWith('_bucket')) g.buckets.push([parseFloatValue(le!)!, s.value]);
    if (s.name.endsWith('_count')) g.count = s.value;
  }
  for (const [key, g] of groups) {
    const sorted = [...g.buckets].sort((a, b) => a[0] - b[0]);
    for (let i = 1; i < sorted.length; i++) {
      if (sorted[i]![1] < sorted[i - 1]![1]) throw new PrometheusParseError(0, `histogram ${f.name} buckets not cumulative`, key);
    }
    const inf = sorted.find(([le]) => le === Infinity);
    if (!inf) throw new PrometheusParseError(0, `histogram ${f.name} has no +Inf bucket`, key);
    if (g.count !== undefined && inf[1] !== g.count) throw new PrometheusParseError(0, `histogram ${f.name}: +Inf bucket != _count`, key);
  }
}
