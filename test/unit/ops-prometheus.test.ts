/**
 * The strict exposition parser (test/support/prometheus.ts) must itself be right, or every metrics
 * assertion built on it is hollow: it accepts what the kernel registry renders and rejects each way a
 * scrape can be malformed.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parsePrometheus, PrometheusParseError } from '../support/prometheus.ts';
import { MetricsRegistry, LATENCY_BUCKETS } from '../../src/kernel/metrics.ts';

test('accepts what MetricsRegistry renders, values and labels round-trip', () => {
  const r = new MetricsRegistry();
  r.counter('cdbp_x_total', 'x').inc({ protocol: 'mysql' }, 2);
  r.gauge('cdbp_g', 'g with "quotes" and \\ backslash', (g) => g.set(-1.5, { path: 'a"b\\c\nd' }));
  r.gauge('cdbp_empty', 'no samples yet');
  const h = r.histogram('cdbp_h_seconds', 'h', LATENCY_BUCKETS);
  h.observe(0.003, { protocol: 'mysql' });
  h.observe(50, { protocol: 'mysql' });
  r.gauge('cdbp_inf', 'inf', (g) => g.set(Infinity));
  const m = parsePrometheus(r.render());
  assert.equal(m.value('cdbp_x_total', { protocol: 'mysql' }), 2);
  assert.equal(m.value('cdbp_g', { path: 'a"b\\c\nd' }), -1.5);
  assert.equal(m.family('cdbp_empty')?.samples.length, 0);
  assert.equal(m.family('cdbp_h_seconds')?.type, 'histogram');
  assert.equal(m.value('cdbp_h_seconds_count', { protocol: 'mysql' }), 2);
  assert.equal(m.value('cdbp_h_seconds_bucket', { protocol: 'mysql', le: '+Inf' }), 2);
  assert.equal(m.value('cdbp_inf'), Infinity);
});

const bad: Array<[string, string, RegExp]> = [
  ['no trailing newline', '# TYPE a gauge\na 1', /newline/],
  ['bad metric name', '# TYPE 1a gauge\n1a 1\n', /bad metric name|not a sample/],
  ['bad label name', 'a{1x="v"} 1\n', /bad label name/],
  ['reserved label', 'a{__name__="v"} 1\n', /reserved/],
  ['unquoted label', 'a{x=v} 1\n', /quoted/],
  ['bad escape', 'a{x="\\t"} 1\n', /bad escape/],
  ['unterminated', 'a{x="v} 1\n', /unterminated|not a sample/],
  ['bad value', 'a 1,5\n', /bad value/],
  ['missing value', 'a\n', /not a sample/],
  ['duplicate series', 'a{x="1"} 1\na{x="1"} 2\n', /duplicate series/],
  ['duplicate label', 'a{x="1",x="2"} 1\n', /duplicate label/],
  ['second TYPE', '# TYPE a gauge\n# TYPE a gauge\na 1\n', /second TYPE/],
  ['second HELP', '# HELP a x\n# HELP a y\na 1\n', /second HELP/],
  ['TYPE after samples', 'a 1\n# TYPE a gauge\n', /after its samples/],
  ['unknown type', '# TYPE a widget\na 1\n', /unknown type/],
  ['not contiguous', '# TYPE a gauge\na{x="1"} 1\n# TYPE b gauge\nb 1\na{x="2"} 1\n', /contiguous/],
  ['negative counter', '# TYPE a_total counter\na_total -1\n', /negative/],
  ['bucket without le', '# TYPE h histogram\nh_bucket 1\nh_count 1\n', /without le/],
  ['non-cumulative buckets', '# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="2"} 1\nh_bucket{le="+Inf"} 2\nh_count 2\n', /cumulative/],
  ['no +Inf bucket', '# TYPE h histogram\nh_bucket{le="1"} 2\nh_count 2\n', /\+Inf/],
  ['+Inf != count', '# TYPE h histogram\nh_bucket{le="+Inf"} 2\nh_count 3\n', /_count/],
];

for (const [name, text, why] of bad) {
  test(`rejects: ${name}`, () => {
    assert.throws(() => parsePrometheus(text), (e: Error) => e instanceof PrometheusParseError && why.test(e.message));
  });
}

test('accepts comments, timestamps, NaN and exponent floats', () => {
  const m = parsePrometheus('# just a comment\n# TYPE a gauge\na{x="1"} 1.5e3 1700000000000\na{x="2"} NaN\n');
  assert.equal(m.value('a', { x: '1' }), 1500);
  assert.ok(Number.isNaN(m.value('a', { x: '2' })!));
});
