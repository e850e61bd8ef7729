import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { copyFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { FreshnessGuard } from '../../proxy/freshness/guard.ts';
import { RecordStore } from '../../proxy/freshness/store.ts';
import type { DurablePosition } from '../../proxy/freshness/record.ts';
import { silentLogger } from '../../src/kernel/log.ts';
import { MetricsRegistry } from '../../src/kernel/metrics.ts';
import { MemoryCounter } from '../support/memory-counter.ts';
import { tempDir } from '../support/tmp.ts';

class FakePosition {
  lsn = 1000;
  reads = 0;
  async read(): Promise<DurablePosition> {
    this.reads++;
    return { engine: 'mariadb', lsnFlushed: String(this.lsn), lsnCheckpoint: String(this.lsn), gtid: `0-1-${this.lsn}` };
  }
  async close() {}
}

function setup(dir: string, counter = new MemoryCounter(), key = randomBytes(32)) {
  const store = new RecordStore(path.join(dir, 'freshness.sealed'));
  const make = (mode: 'strict' | 'relaxed' | 'off' = 'strict', holdTimeoutMs = 2000) => new FreshnessGuard({
    store, key, databaseId: 'db-test', counter, mode, log: silentLogger(), metrics: new MetricsRegistry(),
    holdTimeoutMs, sealIntervalMs: 60_000,
  });
  return { store, counter, key, make };
}

test('first start seals epoch 1; a restart on the same volume is fresh', async (t) => {
  const dir = tempDir('fg'); t.after(() => dir.remove());
  const { make, counter } = setup(dir.path);
  assert.equal((await make().verifyAtStartup()).kind, 'first-start');
  assert.equal(counter.state.value, 1);
  assert.equal((await make().verifyAtStartup()).kind, 'fresh');
});

test('strict mode: concurrent acks share one counter advance, and the record covers them', async (t) => {
  const dir = tempDir('fg'); t.after(() => dir.remove());
  const { make, counter } = setup(dir.path);
  const g = make();
  await g.verifyAtStartup();
  const pos = new FakePosition();
  g.startRuntime(pos);
  const before = counter.advances;
  pos.lsn = 5000;
  const holds = Array.from({ length: 50 }, () => g.holdAck());
  assert.ok(holds.every((h) => h instanceof Promise));
  await Promise.all(holds);
  assert.ok(counter.advances - before <= 2, `group commit: ${counter.advances - before} advances for 50 acks`);
  assert.equal((g.status().position as DurablePosition).lsnFlushed, '5000');
  await g.stop();
});

test('relaxed and off modes never hold an ack', async (t) => {
  const dir = tempDir('fg'); t.after(() => dir.remove());
  const { make } = setup(dir.path);
  for (const mode of ['relaxed', 'off'] as const) {
    const g = make(mode);
    await g.verifyAtStartup();
    g.startRuntime(new FakePosition());
    assert.equal(g.holdAck(), undefined);
    await g.stop();
  }
});

test('rollback: data behind the position the CAS anchors is refused with expected vs seen; a stale record cache is not a rollback', async (t) => {
  const dir = tempDir('fg'); t.after(() => dir.remove());
  const { make, store } = setup(dir.path);
  const g = make();
  await g.verifyAtStartup();
  const pos = new FakePosition();
  g.startRuntime(pos);
  await g.writeCacheNow();
  const snapshot = path.join(dir.path, 'snapshot');
  copyFileSync(store.file, snapshot);
  pos.lsn = 2000;
  await g.holdAck();
  await g.stop();
  // Only the cache rolled back: the CAS holds the record, so this start is fresh.
  copyFileSync(snapshot, store.file);
  const again = make();
  assert.equal((await again.verifyAtStartup()).kind, 'fresh');
  assert.equal(again.status().epoch, 2);
  // The data rolled back (position behind the anchored one): refused.
  const old = new FakePosition();
  old.lsn = 1000;
  await assert.rejects(again.verifyOnline(old), (e: any) => e.code === 'ROLLBACK_DETECTED' && /behind/.test(e.message));
  assert.equal(again.violated?.kind, 'rollback');
});

test('legacy counter without a record (older CAS, or cdbp recover): an older record on the volume is a rollback', async (t) => {
  const dir = tempDir('fg'); t.after(() => dir.remove());
  const { make, store, counter } = setup(dir.path);
  counter.keepRecords = false;
  const g = make();
  await g.verifyAtStartup();
  const pos = new FakePosition();
  g.startRuntime(pos);
  await g.writeCacheNow();
  const snapshot = path.join(dir.path, 'snapshot');
  copyFileSync(store.file, snapshot);
  pos.lsn = 2000;
  await g.holdAck();
  await g.sealNow();
  await g.stop();
  copyFileSync(snapshot, store.file);
  const again = make();
  await assert.rejects(again.verifyAtStartup(), (e: any) => e.code === 'ROLLBACK_DETECTED' && /epoch 1 .*counter is at 3/.test(e.message));
  assert.equal(again.violated?.kind, 'rollback');
});

test('a forged or foreign record cache is tamper even when the CAS holds the record', async (t) => {
  const dir = tempDir('fg'); t.after(() => dir.remove());
  const { make, store } = setup(dir.path);
  const g = make();
  await g.verifyAtStartup();
  await g.writeCacheNow();
  await g.stop();
  const b = store.read()!;
  b[b.length - 3] = b[b.length - 3]! ^ 1;
  writeFileSync(store.file, b);
  await assert.rejects(make().verifyAtStartup(), (e: any) => e.code === 'TAMPER_DETECTED' && /failed authentication/.test(e.message));
});

test('a fork loses the counter race and is told so', async (t) => {
  const dir = tempDir('fg'); t.after(() => dir.remove());
  const dir2 = tempDir('fg2'); t.after(() => dir2.remove());
  const { make, store, counter, key } = setup(dir.path);
  const first = make();
  await first.verifyAtStartup();
  await first.writeCacheNow();
  copyFileSync(store.file, path.join(dir2.path, 'freshness.sealed'));
  const a = make();
  const b = setup(dir2.path, counter, key).make();
  await a.verifyAtStartup();
  await b.verifyAtStartup();
  const pa = new FakePosition(); const pb = new FakePosition();
  a.startRuntime(pa); b.startRuntime(pb);
  pa.lsn = 3000; pb.lsn = 4000;
  await a.holdAck();
  await assert.rejects(b.holdAck()!, (e: any) => e.code === 'TAMPER_DETECTED' && /fork/.test(e.message));
  assert.equal(b.violated?.kind, 'fork');
  await a.stop(); await b.stop();
});

test('CAS down: a held ack fails with a clear error after the timeout, then works again when it is back', async (t) => {
  const dir = tempDir('fg'); t.after(() => dir.remove());
  const { make, counter } = setup(dir.path);
  const g = make('strict', 300);
  await g.verifyAtStartup();
  const pos = new FakePosition();
  g.startRuntime(pos);
  counter.down = true;
  pos.lsn = 9000;
  await assert.rejects(g.holdAck()!, (e: any) => e.code === 'CAS_UNREACHABLE' && /not acknowledged/.test(e.message));
  counter.down = false;
  await g.holdAck();
  await g.stop();
});

test('crash with the advance unsent or lost: the next start is fresh at the counted epoch (nothing to finish)', async (t) => {
  const dir = tempDir('fg'); t.after(() => dir.remove());
  const { make, counter } = setup(dir.path);
  const g = make('strict', 200);
  await g.verifyAtStartup();
  const pos = new FakePosition();
  g.startRuntime(pos);
  counter.down = true;
  pos.lsn = 7000;
  await assert.rejects(g.holdAck()!);
  await g.stop();
  counter.down = false;
  assert.equal(counter.state.value, 1);
  assert.equal((await make().verifyAtStartup()).kind, 'fresh');
  assert.equal(counter.state.value, 1);
});

test('legacy: crash between record write and counter advance: the next start finishes the advance', async (t) => {
  const dir = tempDir('fg'); t.after(() => dir.remove());
  const { make, counter, store, key } = setup(dir.path);
  counter.keepRecords = false;
  const g = make('strict', 200);
  await g.verifyAtStartup();
  await g.writeCacheNow();
  await g.stop();
  // An older proxy wrote record 2 to the volume, then crashed before the advance.
  const { sealRecord } = await import('../../proxy/freshness/record.ts');
  await store.write(await sealRecord({ databaseId: 'db-test', epoch: 2, position: { engine: 'mariadb', lsnFlushed: '7000' }, sealedAt: new Date().toISOString() }, key));
  const verdict = await make().verifyAtStartup();
  assert.equal(verdict.kind, 'finish-advance');
  assert.equal(counter.state.value, 2);
});

test('a lost counter answer is not a fork: the same record is confirmed and the held acks are released', async (t) => {
  const dir = tempDir('fg'); t.after(() => dir.remove());
  const { make, counter, store } = setup(dir.path);
  const g = make('strict', 5000);
  await g.verifyAtStartup();
  const pos = new FakePosition();
  g.startRuntime(pos);
  counter.loseNextAnswer = true;
  pos.lsn = 4242;
  await g.holdAck();
  assert.equal(g.violated, undefined, 'no fork raised');
  await g.writeCacheNow();
  const { recordDigest } = await import('../../proxy/freshness/record.ts');
  assert.equal(recordDigest(store.read()!), counter.state.digest, 'the cached record is the one the counter anchors');
  await g.stop();
  assert.equal((await make().verifyAtStartup()).kind, 'fresh');
});

test('the final seal queues behind seals in flight instead of racing them', async (t) => {
  const dir = tempDir('fg'); t.after(() => dir.remove());
  const { make, counter } = setup(dir.path);
  const g = make('strict', 5000);
  await g.verifyAtStartup();
  const pos = new FakePosition();
  g.startRuntime(pos);
  counter.delayMs = 30;
  pos.lsn = 5000;
  const holds = Array.from({ length: 10 }, () => g.holdAck()!);
  pos.lsn = 6000;
  await Promise.all([...holds, g.sealNow(), g.sealNow()]);
  assert.equal(g.violated, undefined, 'no self-inflicted fork');
  await g.stop();
  assert.equal((await make().verifyAtStartup()).kind, 'fresh');
});

test('bounded mode: acks at once, seals at most every W ms, and reports W and the live window', async (t) => {
  const dir = tempDir('fg'); t.after(() => dir.remove());
  const counter = new MemoryCounter();
  const metrics = new MetricsRegistry();
  const g = new FreshnessGuard({
    store: new RecordStore(path.join(dir.path, 'freshness.sealed')), key: randomBytes(32), databaseId: 'db-test', counter,
    mode: 'bounded', log: silentLogger(), metrics, sealIntervalMs: 50,
  });
  await g.verifyAtStartup();
  const pos = new FakePosition();
  g.startRuntime(pos);
  assert.equal(g.holdAck(), undefined, 'no ack is held');
  const before = counter.advances;
  pos.lsn = 8000;
  await new Promise((r) => setTimeout(r, 400));
  const sealed = counter.advances - before;
  assert.ok(sealed >= 1 && sealed <= 9, `${sealed} seals in 400 ms with W = 50 ms (position moved once)`);
  const st = g.status() as { window: { boundMs: number; currentMs: number } };
  assert.equal(st.window.boundMs, 50);
  assert.ok(st.window.currentMs >= 0);
  assert.match(metrics.render(), /cdbp_freshness_window_seconds\{bound_ms="50"\} /);
  await g.stop();
});
