import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { createLogger } from '../../src/kernel/log.ts';
import { MetricsRegistry } from '../../src/kernel/metrics.ts';
import { ConnectionLogLimiter, ConnectionRecord, rateLimitedConnectionLog } from '../../proxy/shared/connection-log.ts';

function capture() {
  const lines: any[] = [];
  const log = createLogger({ name: 't', level: 'info', destination: new Writable({ write(c, _e, cb) { lines.push(JSON.parse(String(c))); cb(); } }) as any });
  return { log, lines };
}

test('the limiter admits a burst, then the sustained rate, and counts what it drops', () => {
  const { log, lines } = capture();
  const metrics = new MetricsRegistry();
  let now = 0;
  const limiter = new ConnectionLogLimiter(log, metrics, { burst: 3, perSecond: 2, summaryEveryMs: 3_600_000 }, () => now);
  const first = Array.from({ length: 10 }, () => limiter.admit('connection_close'));
  assert.deepEqual(first.filter(Boolean).length, 3);
  assert.ok(limiter.admit('connection_open'), 'each event has its own bucket');
  now += 1000;
  assert.equal(Array.from({ length: 10 }, () => limiter.admit('connection_close')).filter(Boolean).length, 2);
  assert.match(metrics.render(), /cdbp_log_lines_dropped_total\{event="connection_close"\} 15/);
  limiter.summarize();
  const summary = lines.find((l) => l.event === 'connection_log_suppressed');
  assert.deepEqual(summary.dropped, { connection_close: 15 });
  assert.equal(summary.total, 15);
  limiter.summarize();
  assert.equal(lines.filter((l) => l.event === 'connection_log_suppressed').length, 1, 'no summary when nothing was dropped');
  limiter.stop();
});

test('the rate-limited logger limits only per-connection lines, also through children and ConnectionRecord', () => {
  const { log, lines } = capture();
  const limiter = new ConnectionLogLimiter(log, new MetricsRegistry(), { burst: 2, perSecond: 0.001, summaryEveryMs: 3_600_000 }, () => 0);
  const limited = rateLimitedConnectionLog(log.child({ component: 'x' }), limiter);
  for (let i = 0; i < 5; i++) limited.info({ event: 'tls_identity_swapped' }, 'other line');
  for (let i = 0; i < 5; i++) new ConnectionRecord(limited.child({ c: i }), { protocol: 'mysql', id: i, peer: 'p' }).close({ outcome: 'refused', bytesIn: 0, bytesOut: 0 });
  assert.equal(lines.filter((l) => l.event === 'tls_identity_swapped').length, 5);
  assert.equal(lines.filter((l) => l.event === 'connection_open').length, 2);
  assert.equal(lines.filter((l) => l.event === 'connection_close').length, 2);
  limiter.stop();
  assert.deepEqual(lines.at(-1).dropped, { connection_open: 3, connection_close: 3 });
});
