/**
 * The replicated CAS's etcd state check (cas/replication/state-sync.ts) against races, over an in-memory
 * stand-in for etcd's range/txn semantics (revision-checked transactions; the real etcd is exercised by
 * test/integration/cas-ha-etcd.test.ts). A read in flight while a newer version is written or announced
 * is not a rollback; an etcd really behind the versions known before the read still is.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { StateSync, serviceKey } from '../../cas/replication/state-sync.ts';
import type { EtcdClient } from '../../cas/store/etcd.ts';

interface Kv { key: string; value: Buffer; modRevision: number }

/** etcd's semantics this module relies on: a revision per write, compare-on-mod_revision transactions. */
class MemoryEtcd {
  revision = 1;
  kvs = new Map<string, Kv>();
  /** While set, a range answers with the snapshot taken when it was called, after this promise resolves. */
  hold: Promise<void> | undefined;
  async range(prefix: string): Promise<{ revision: number; kvs: Kv[] }> {
    const snapshot = { revision: this.revision, kvs: [...this.kvs.values()].filter((kv) => kv.key.startsWith(prefix)).map((kv) => ({ ...kv })) };
    if (this.hold) await this.hold;
    return snapshot;
  }
  async rangeKeys(prefix: string): Promise<Map<string, number>> {
    return new Map([...this.kvs.values()].filter((kv) => kv.key.startsWith(prefix)).map((kv) => [kv.key, kv.modRevision]));
  }
  async txn(puts: Array<{ key: string; value: Buffer; expectModRevision: number }>): Promise<{ succeeded: boolean; revision: number }> {
    if (!puts.every((p) => (this.kvs.get(p.key)?.modRevision ?? 0) === p.expectModRevision)) return { succeeded: false, revision: this.revision };
    this.revision++;
    for (const p of puts) this.kvs.set(p.key, { key: p.key, value: p.value, modRevision: this.revision });
    return { succeeded: true, revision: this.revision };
  }
}

test('a read in flight while this member writes, or another announces, a newer version is no rollback; an etcd behind what was known before the read is', async () => {
  const etcd = new MemoryEtcd();
  const key = randomBytes(32);
  const sync = new StateSync(etcd as unknown as EtcdClient, key);
  await sync.bootstrap(randomBytes(64), new Map([['a', randomBytes(32)]]));
  assert.equal(sync.headSeq, 1);

  // A poll's read starts; a policy apply on this member completes before the read answers.
  let release!: () => void;
  etcd.hold = new Promise((r) => { release = r; });
  const reading = sync.load();
  etcd.hold = undefined;
  await sync.pushService('b', randomBytes(32));
  assert.equal(sync.headSeq, 2);
  release();
  const seen = await reading;
  assert.equal(seen.seq, 1, 'the read saw the version before the write');
  assert.equal(sync.rollback, undefined, 'no alarm');
  assert.equal(sync.headSeq, 2, 'the older head read was not adopted');
  await sync.pushService('c', randomBytes(32)); // and the next write still expects the right revisions
  assert.equal(sync.headSeq, 3);

  // Another member announces version 4 while a read is in flight: still no alarm.
  etcd.hold = new Promise((r) => { release = r; });
  const reading2 = sync.load();
  etcd.hold = undefined;
  sync.raiseTo(4);
  release();
  await reading2;
  assert.equal(sync.rollback, undefined);

  // etcd really behind a version known before the read: a rollback.
  const stale = new StateSync(etcd as unknown as EtcdClient, key);
  stale.raiseTo(9);
  await assert.rejects(stale.load(), /STATE_ROLLED_BACK|older than version 9/);
  assert.match(stale.rollback ?? '', /older than version 9/);
  assert.ok(etcd.kvs.has(serviceKey('c')));
});

test('the poll\'s shortcut: unchanged only while etcd\'s keys and revisions are those last verified or written and no newer version was announced', async () => {
  const etcd = new MemoryEtcd();
  const key = randomBytes(32);
  const writer = new StateSync(etcd as unknown as EtcdClient, key);
  await writer.bootstrap(randomBytes(64), new Map([['a', randomBytes(32)]]));
  assert.equal(await writer.unchanged(), true, 'right after its own write');
  const reader = new StateSync(etcd as unknown as EtcdClient, key);
  assert.equal(await reader.unchanged(), false, 'nothing verified yet');
  await reader.load();
  assert.equal(await reader.unchanged(), true);
  await writer.pushService('b', randomBytes(32));
  assert.equal(await reader.unchanged(), false, 'another member wrote');
  await reader.load();
  assert.equal(await reader.unchanged(), true);
  // A blob put back through etcd's API: its revision moves.
  const a = etcd.kvs.get(serviceKey('a'))!;
  await etcd.txn([{ key: serviceKey('a'), value: Buffer.from('older'), expectModRevision: a.modRevision }]);
  assert.equal(await reader.unchanged(), false);
  await assert.rejects(reader.load(), /not exactly the/);
  // A newer version announced but not in etcd: not unchanged (the full check must run and alarm).
  const fresh = new StateSync(etcd as unknown as EtcdClient, key);
  await etcd.txn([{ key: serviceKey('a'), value: a.value, expectModRevision: etcd.kvs.get(serviceKey('a'))!.modRevision }]);
  await fresh.load();
  fresh.raiseTo(fresh.headSeq + 1);
  assert.equal(await fresh.unchanged(), false);
});
