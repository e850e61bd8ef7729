/**
 * The CAS counter log (cas/counter-log.ts): group commit, replay, crash repair from the anchor, and
 * truncation / rollback / replacement of the log detected at open.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { readFileSync, writeFileSync, rmSync, truncateSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tempDir } from '../support/tmp.ts';
import { CounterLog, COUNTER_LOG, COUNTER_ANCHOR } from '../../cas/counter-log.ts';
import { isCdbpError } from '../../src/kernel/errors.ts';

const key = randomBytes(32);
const d = (n: number) => n.toString(16).padStart(2, '0').repeat(32);

async function filled(dir: string, n: number): Promise<void> {
  const log = await CounterLog.open(dir, key, { mustExist: false });
  for (let i = 1; i <= n; i++) await log.append(i % 2 ? 'a' : 'b', 'advance', i, d(i));
  await log.close();
}

test('concurrent appends share fdatasyncs; state replays from the log', async (t) => {
  const tmp = tempDir('ctrlog');
  t.after(() => tmp.remove());
  const log = await CounterLog.open(tmp.path, key, { mustExist: false });
  const all = [];
  for (let i = 1; i <= 200; i++) all.push(log.append(`s${i % 7}`, 'advance', i, d(i % 250), i % 3 ? Buffer.from('rec' + i).toString('base64') : undefined));
  await Promise.all(all);
  assert.equal(log.stats.entries, 200);
  assert.ok(log.stats.batches < 50, `200 concurrent appends took ${log.stats.batches} batches`);
  const before = [...log.counters.entries()];
  await log.close();
  const again = await CounterLog.open(tmp.path, key, { mustExist: true });
  assert.deepEqual([...again.counters.entries()], before);
  assert.equal(again.counters.get('s1')!.value, 197);
  await again.close();
});

test('a value is visible only once durable', async (t) => {
  const tmp = tempDir('ctrlog-vis');
  t.after(() => tmp.remove());
  const log = await CounterLog.open(tmp.path, key, { mustExist: false });
  const p = log.append('a', 'advance', 1, d(1));
  assert.equal(log.counters.get('a'), undefined);
  await p;
  assert.equal(log.counters.get('a')!.value, 1);
  await log.close();
});

test('truncated, rolled back, replaced or deleted log: refused at open (STATE_TAMPERED)', async (t) => {
  const tmp = tempDir('ctrlog-tamper');
  t.after(() => tmp.remove());
  const dir = tmp.path;
  await filled(dir, 3);
  const older = readFileSync(path.join(dir, COUNTER_LOG));
  await filled(dir, 0); // reopen/close keeps it intact
  const log = await CounterLog.open(dir, key, { mustExist: true });
  for (let i = 4; i <= 9; i++) await log.append('a', 'advance', i, d(i));
  await log.close();
  const file = path.join(dir, COUNTER_LOG);
  const current = readFileSync(file);
  const lines = current.toString().trim().split('\n');
  const cases: Array<[string, () => void]> = [
    ['last three entries removed', () => writeFileSync(file, lines.slice(0, -3).join('\n') + '\n')],
    ['rolled back to an older copy', () => writeFileSync(file, older)],
    ['emptied', () => writeFileSync(file, '')],
    ['deleted', () => rmSync(file)],
    ['anchor deleted', () => rmSync(path.join(dir, COUNTER_ANCHOR))],
    ['an entry edited', () => writeFileSync(file, current.toString().replace('"value":5', '"value":50'))],
  ];
  const anchor = readFileSync(path.join(dir, COUNTER_ANCHOR));
  for (const [what, edit] of cases) {
    edit();
    await assert.rejects(CounterLog.open(dir, key, { mustExist: true }), (e: unknown) => isCdbpError(e, 'STATE_TAMPERED'), what);
    writeFileSync(file, current);
    writeFileSync(path.join(dir, COUNTER_ANCHOR), anchor);
  }
  // Removing only the last batch (here entry 9 alone) looks exactly like a crash before the log's sync
  // with the anchor's sync done: the anchor holds that batch, so it is put back. Nothing is lost.
  writeFileSync(file, lines.slice(0, -1).join('\n') + '\n');
  const ok = await CounterLog.open(dir, key, { mustExist: true });
  assert.equal(ok.counters.get('a')!.value, 9);
  await ok.close();
  assert.deepEqual(readFileSync(file), current);
});

test('crash points: torn log tail dropped; log behind the anchor by its batch repaired; torn anchor slot falls back', async (t) => {
  const tmp = tempDir('ctrlog-crash');
  t.after(() => tmp.remove());
  const dir = tmp.path;
  await filled(dir, 4);
  const file = path.join(dir, COUNTER_LOG);
  const full = readFileSync(file);
  // Torn last line (crash mid-append, the batch was never answered... but the anchor holds it): repaired.
  truncateSync(file, full.length - 7);
  let log = await CounterLog.open(dir, key, { mustExist: true });
  assert.equal(log.counters.get('b')!.value, 4);
  await log.close();
  assert.deepEqual(readFileSync(file), full);
  // A torn newest anchor slot: the older slot is used, and the log (ahead of it) is accepted.
  const anchorFile = path.join(dir, COUNTER_ANCHOR);
  const a = readFileSync(anchorFile);
  for (const off of [0, 65536]) {
    const b = Buffer.from(a);
    b[off + 50] = b[off + 50]! ^ 0xff;
    writeFileSync(anchorFile, b);
    log = await CounterLog.open(dir, key, { mustExist: true });
    assert.equal(log.counters.get('b')!.value, 4);
    await log.close();
    writeFileSync(anchorFile, a);
  }
  // Both slots garbled: refused.
  const b = Buffer.from(a);
  b[50] = b[50]! ^ 0xff;
  b[65536 + 50] = b[65536 + 50]! ^ 0xff;
  writeFileSync(anchorFile, b);
  await assert.rejects(CounterLog.open(dir, key, { mustExist: true }), (e: unknown) => isCdbpError(e, 'STATE_TAMPERED'));
  writeFileSync(anchorFile, a);
});
