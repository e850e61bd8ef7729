import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { openRecord, recordDigest, sealRecord, type FreshnessRecord } from '../../proxy/freshness/record.ts';
import { decideStartup } from '../../proxy/freshness/decide.ts';
import { crc32c, parseGtidPos, parseRedoCheckpoint, positionBehind } from '../../proxy/freshness/position.ts';

const key = randomBytes(32);
const rec: FreshnessRecord = {
  databaseId: 'db-1', epoch: 7, sealedAt: '2026-01-01T00:00:00.000Z',
  position: { engine: 'mariadb', lsnFlushed: '123456', lsnCheckpoint: '120000', gtid: '0-1-42' },
};

test('a sealed record opens with its key and round-trips', async () => {
  const bytes = await sealRecord(rec, key);
  assert.deepEqual(await openRecord(bytes, key), rec);
});

test('every single flipped byte of a sealed record is detected', async () => {
  const bytes = await sealRecord(rec, key);
  for (let i = 0; i < bytes.length; i++) {
    const copy = Buffer.from(bytes);
    copy[i] = copy[i]! ^ 0x01;
    await assert.rejects(openRecord(copy, key), (e: any) => e.code === 'SEAL_INVALID', `byte ${i}`);
  }
});

test('a record sealed with another key, or truncated, is refused', async () => {
  const bytes = await sealRecord(rec, key);
  await assert.rejects(openRecord(bytes, randomBytes(32)), /failed authentication/);
  await assert.rejects(openRecord(bytes.subarray(0, 20), key), /truncated|bad magic/);
  await assert.rejects(openRecord(Buffer.from('hello world, not a record'), key), /bad magic/);
});

test('two seals of the same record differ (fresh nonce), so digests tell forks apart', async () => {
  const a = await sealRecord(rec, key);
  const b = await sealRecord(rec, key);
  assert.notEqual(recordDigest(a), recordDigest(b));
});

test('start-up rules: fresh, finish, rollback, tamper', () => {
  const ok = (epoch: number, digest = 'd') => ({ kind: 'ok' as const, record: { ...rec, epoch }, digest });
  assert.equal(decideStartup({ kind: 'missing' }, { value: 0, digest: '' }, 'db-1').kind, 'first-start');
  assert.equal(decideStartup({ kind: 'missing' }, { value: 3, digest: 'x' }, 'db-1').kind, 'tamper');
  assert.equal(decideStartup(ok(5), { value: 5, digest: 'd' }, 'db-1').kind, 'fresh');
  assert.equal(decideStartup(ok(5, 'other'), { value: 5, digest: 'd' }, 'db-1').kind, 'tamper');
  assert.equal(decideStartup(ok(6), { value: 5, digest: 'd' }, 'db-1').kind, 'finish-advance');
  const rb = decideStartup(ok(4), { value: 5, digest: 'd' }, 'db-1');
  assert.equal(rb.kind, 'rollback');
  assert.match((rb as { message: string }).message, /epoch 4 .* counter is at 5/);
  assert.equal(decideStartup(ok(7), { value: 5, digest: 'd' }, 'db-1').kind, 'tamper');
  assert.equal(decideStartup(ok(5), { value: 5, digest: 'd' }, 'db-2').kind, 'tamper');
  assert.equal(decideStartup({ kind: 'invalid', message: 'x' }, { value: 5, digest: 'd' }, 'db-1').kind, 'tamper');
});

test('positions: LSN and GTID behind are caught, equal or ahead pass', () => {
  const sealed = rec.position;
  assert.equal(positionBehind({ engine: 'mariadb', lsnFlushed: '123456', gtid: '0-1-42' }, sealed), undefined);
  assert.equal(positionBehind({ engine: 'mariadb', lsnFlushed: '999999', gtid: '0-1-50,1-1-3' }, sealed), undefined);
  assert.match(positionBehind({ engine: 'mariadb', lsnFlushed: '100', gtid: '0-1-42' }, sealed)!, /LSN 100 is behind/);
  assert.match(positionBehind({ engine: 'mariadb', lsnFlushed: '123456', gtid: '0-1-41' }, sealed)!, /GTID domain 0/);
  assert.match(positionBehind({ engine: 'mariadb', lsnFlushed: '123456', gtid: '' }, sealed)!, /GTID domain 0 is at nothing/);
  assert.deepEqual([...parseGtidPos('0-1-5,2-3-9')], [[0, 5n], [2, 9n]]);
});

test('crc32c matches the standard check value and redo checkpoints need a valid CRC', () => {
  assert.equal(crc32c(Buffer.from('123456789')), 0xe3069283);
  const head = Buffer.alloc(0x3000);
  const put = (off: number, lsn: bigint) => {
    head.writeBigUInt64BE(lsn, off);
    head.writeBigUInt64BE(lsn + 10n, off + 8);
    head.writeUInt32BE(crc32c(head.subarray(off, off + 60)), off + 60);
  };
  put(0x1000, 5000n);
  put(0x2000, 7000n);
  assert.equal(parseRedoCheckpoint(head), 7000n);
  head[0x2000 + 3] = head[0x2000 + 3]! ^ 0xff; // corrupt the newer block: its CRC fails, the older one wins
  assert.equal(parseRedoCheckpoint(head), 5000n);
});
