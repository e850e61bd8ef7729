/**
 * The replicated CAS's durable state on a real etcd (cas/replication/state-sync.ts, cas/store/etcd.ts):
 * revision-checked writes (two members never overwrite each other), and every way of serving older or
 * other state than the members' memory holds is refused as STATE_ROLLED_BACK.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { tempDir } from '../support/tmp.ts';
import { startEtcd } from '../support/etcd.ts';
import { EtcdClient } from '../../cas/store/etcd.ts';
import { StateSync, HEAD_KEY, serviceKey } from '../../cas/replication/state-sync.ts';
import { isCdbpError } from '../../src/kernel/errors.ts';

test('etcd state: revision-checked writes, rollback and replacement refused', { timeout: 60_000 }, async (t) => {
  const tmp = tempDir('cas-ha-etcd');
  const etcd = await startEtcd(tmp.path, 1);
  t.after(async () => { await etcd.stop(); tmp.remove(); });
  const client = new EtcdClient(etcd.endpoints);
  const key = randomBytes(32);
  const a = new StateSync(client, key);
  await a.bootstrap(Buffer.from('ca-v1'), new Map([['orders', Buffer.from('orders-v1')]]));
  // A second bootstrap into the same etcd is refused.
  await assert.rejects(new StateSync(client, key).bootstrap(Buffer.from('x'), new Map()), (e: unknown) => isCdbpError(e, 'STATE_ROLLED_BACK'));

  const b = new StateSync(client, key);
  const loaded = await b.load();
  assert.equal(loaded.seq, 1);
  assert.equal(loaded.services.get('orders')!.toString(), 'orders-v1');

  // Two members write concurrently from the same version: exactly one wins, the other must reload.
  const res = await Promise.allSettled([a.pushService('orders', Buffer.from('orders-a')), b.pushService('orders', Buffer.from('orders-b'))]);
  assert.equal(res.filter((r) => r.status === 'fulfilled').length, 1);
  assert.ok(res.some((r) => r.status === 'rejected' && isCdbpError(r.reason, 'STATE_STORE_CONFLICT')));
  const winner = res[0]!.status === 'fulfilled' ? a : b;
  const loser = winner === a ? b : a;
  await loser.load();
  await loser.pushService('billing', Buffer.from('billing-v1'));
  await winner.load();
  assert.equal(winner.headSeq, 3);
  const old = (await client.range(serviceKey('orders'))).kvs[0]!;

  // An older blob put back under the newest head: the head names another hash.
  await winner.pushService('orders', Buffer.from('orders-v3'));
  const cur = (await client.range(serviceKey('orders'))).kvs[0]!;
  await client.txn([{ key: serviceKey('orders'), value: old.value, expectModRevision: cur.modRevision }]);
  const notNamed = /not exactly the 3 the state head \(version 4\) names/;
  await assert.rejects(winner.load(), (e: unknown) => isCdbpError(e, 'STATE_ROLLED_BACK') && notNamed.test((e as Error).message));
  assert.match(winner.rollback ?? '', notNamed);
  await assert.rejects(winner.pushService('x', Buffer.from('x')), (e: unknown) => isCdbpError(e, 'STATE_ROLLED_BACK'));
  // The newest blob back: the state matches its head again, and so does a key added or removed behind it.
  await client.txn([{ key: serviceKey('orders'), value: cur.value, expectModRevision: (await client.range(serviceKey('orders'))).kvs[0]!.modRevision }]);
  assert.equal((await winner.load()).seq, 4);
  await client.txn([{ key: serviceKey('ghost'), value: Buffer.from('ghost'), expectModRevision: 0 }]);
  await assert.rejects(new StateSync(client, key).load(), (e: unknown) => isCdbpError(e, 'STATE_ROLLED_BACK') && /holds 4 state keys that are not exactly the 3/.test((e as Error).message));

  // The head deleted (or etcd wiped): refused against the version in memory.
  const fresh = new StateSync(client, key);
  fresh.raiseTo(4);
  const head = (await client.range(HEAD_KEY)).kvs[0]!;
  await client.txn([{ key: HEAD_KEY, value: Buffer.from('garbage'), expectModRevision: head.modRevision }]);
  await assert.rejects(fresh.load(), (e: unknown) => isCdbpError(e, 'STATE_ROLLED_BACK') && /does not open/.test((e as Error).message));

  // A head sealed with another deployment's key does not open either.
  const other = new StateSync(client, randomBytes(32));
  await assert.rejects(other.load(), (e: unknown) => isCdbpError(e, 'STATE_ROLLED_BACK'));
});
