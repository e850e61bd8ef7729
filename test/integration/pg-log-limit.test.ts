/**
 * Issue 16 item 8: a connection flood must not become a disk flood. 60 connections that open and close
 * at once write a bounded number of per-connection lines; the rest are counted and summarised.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { RawPg, startProxyUnderTest, type ProxyUnderTest } from './pg-support.ts';

let t: ProxyUnderTest;
before(async () => {
  t = await startProxyUnderTest({ connectionLog: { burst: 5, perSecond: 1, summaryEveryMs: 500 } });
});
after(async () => {
  await t?.stop();
});

test('a connection flood writes at most the burst of close lines, counts the rest and summarises them', async () => {
  const start = t.logs.length;
  for (let i = 0; i < 60; i++) {
    const raw = await RawPg.plain(t.port);
    raw.end();
  }
  for (let i = 0; i < 100 && t.proxy.stats().open > 0; i++) await new Promise((r) => setTimeout(r, 20));
  await new Promise((r) => setTimeout(r, 700)); // one summary period
  const lines = t.logs.slice(start).map((l) => JSON.parse(l));
  const closes = lines.filter((l) => l.event === 'pg.close').length;
  assert.ok(closes >= 5 && closes <= 8, `close lines written: ${closes}`);
  const dropped = Number(/cdbp_log_lines_dropped_total\{event="pg.close"\} (\d+)/.exec(t.metrics.render())?.[1]);
  assert.equal(dropped + closes, 60, 'every connection is either logged or counted');
  const summaries = lines.filter((l) => l.event === 'connection_log_suppressed');
  assert.ok(summaries.length >= 1);
  assert.equal(summaries.reduce((n, s) => n + (s.dropped['pg.close'] ?? 0), 0), dropped);
});
