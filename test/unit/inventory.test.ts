/**
 * The per-file freshness pieces without a server: InnoDB page headers, the sweep's witness choice over
 * real files built page by page, the start-up rules of check.ts, and the sealed inventory store.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { isDoublewritePage, pageSizeFromFlags, readFilHeader, readSpaceIdentity, selfConsistent } from '../../proxy/freshness/inventory/innodb-page.ts';
import { FilePageReader, SweepBudgetExceeded, innodbKind, listInnodbFiles, observeDatadir, sweepFile } from '../../proxy/freshness/inventory/innodb-files.ts';
import { checkDeferred, checkInventory, checkRecoveryRefusal, type PageReader } from '../../proxy/freshness/inventory/check.ts';
import { InventoryStore } from '../../proxy/freshness/inventory/store.ts';
import { pickWitnesses } from '../../proxy/freshness/inventory/witnesses.ts';
import { MariadbInventory } from '../../proxy/freshness/inventory/mariadb-inventory.ts';
import { crc32c } from '../../proxy/freshness/position.ts';
import { silentLogger } from '../../src/kernel/log.ts';
import type { Inventory, InventoryFile, ObservedFile } from '../../proxy/freshness/inventory/types.ts';
import { tempDir } from '../support/tmp.ts';

const PAGE = 16384;
/** FSP_SPACE_FLAGS of a 10.11 full_crc32 tablespace with 16 KiB pages (as INNODB_SYS_TABLESPACES shows: 21). */
const FLAGS_FCRC32_16K = 0x15;

/** Builds an InnoDB page: FIL header fields set, the rest random (as ciphertext would be). */
function page(no: number, lsn: bigint, opts: { spaceId?: number; flags?: number } = {}): Buffer {
  const p = randomBytes(PAGE);
  p.writeUInt32BE(no, 4);
  p.writeBigUInt64BE(lsn, 16);
  if (no === 0) {
    p.writeUInt32BE(opts.spaceId ?? 0, 34);
    p.writeUInt32BE(opts.spaceId ?? 0, 38);
    p.writeUInt32BE(opts.flags ?? FLAGS_FCRC32_16K, 38 + 16);
  }
  return p;
}

const zeroPage = () => Buffer.alloc(PAGE);

function tablespace(spaceId: number, lsns: Array<bigint | null>): Buffer {
  return Buffer.concat(lsns.map((l, i) => (l === null ? zeroPage() : page(i, l, { spaceId }))));
}

test('page headers: LSN, page number, space id and page size from page 0', () => {
  const p0 = page(0, 1234n, { spaceId: 7 });
  assert.deepEqual(readFilHeader(p0).lsn, 1234n);
  assert.deepEqual(readSpaceIdentity(p0.subarray(0, 64)), { spaceId: 7, pageSize: 16384, flags: FLAGS_FCRC32_16K });
  assert.equal(readSpaceIdentity(page(3, 5n)), undefined, 'not page 0');
  assert.equal(readSpaceIdentity(Buffer.alloc(64)), undefined, 'a just-created file reads zeros: not space 0');
  const bad = page(0, 1n, { spaceId: 7 });
  bad.writeUInt32BE(8, 38);
  assert.equal(readSpaceIdentity(bad), undefined, 'FIL and FSP space ids disagree');
  assert.equal(pageSizeFromFlags(0x10 | 3), 4096);
  assert.equal(pageSizeFromFlags(0), 16384, 'legacy format, default size');
  assert.equal(pageSizeFromFlags(4 << 6), 8192, 'legacy format, 8 KiB');
  assert.equal(selfConsistent({ pageNo: 5, lsn: 9n, type: 0 }, 5), true);
  assert.equal(selfConsistent({ pageNo: 6, lsn: 9n, type: 0 }, 5), false, 'a copy of another page');
  assert.equal(selfConsistent({ pageNo: 5, lsn: 0n, type: 0 }, 5), false, 'never written');
  assert.equal(isDoublewritePage(0, 64, PAGE), true);
  assert.equal(isDoublewritePage(0, 191, PAGE), true);
  assert.equal(isDoublewritePage(0, 192, PAGE), false);
  assert.equal(isDoublewritePage(5, 100, PAGE), false);
});

test('files: which are InnoDB data files', () => {
  assert.equal(innodbKind('ibdata1'), 'innodb-system');
  assert.equal(innodbKind('undo001'), 'innodb-undo');
  assert.equal(innodbKind('app/t.ibd'), 'innodb-table');
  assert.equal(innodbKind('app/t#P#p0.ibd'), 'innodb-table');
  for (const no of ['ibtmp1', 'ib_logfile0', 'mariadb-bin.000001', 'app/t.frm', 'mysql/user.MAD', 'aria_log_control']) assert.equal(innodbKind(no), undefined, no);
});

test('sweep: witnesses are the highest-LSN self-consistent pages at or below the durable limit, never doublewrite slots', async (t) => {
  const tmp = tempDir('inv-sweep');
  t.after(() => tmp.remove());
  const d = tmp.path;
  mkdirSync(path.join(d, 'app'));
  writeFileSync(path.join(d, 'app', 't.ibd'), tablespace(5, [100n, 200n, 900n, 500n, null, 800n, 300n]));
  // ibdata1 with a doublewrite slot (page 70) carrying a higher LSN copy whose number matches its slot.
  const sys = [...Array(200)].map((_, i) => (i === 0 ? 10n : i === 70 ? 5000n : i === 150 ? null : BigInt(i)));
  writeFileSync(path.join(d, 'ibdata1'), tablespace(0, sys));
  writeFileSync(path.join(d, 'ibtmp1'), tablespace(4294967294, [1n]));
  assert.deepEqual(listInnodbFiles(d), ['app/t.ibd', 'ibdata1']);

  const r = await sweepFile(d, 'app/t.ibd', 850n, { bytesPerSecond: 0 });
  assert.deepEqual(r!.entry.witnesses, [{ page: 5, lsn: '800' }, { page: 3, lsn: '500' }, { page: 6, lsn: '300' }], 'page 2 (LSN 900) is above the durable limit');
  assert.deepEqual(r!.pending, [{ page: 2, lsn: '900' }], 'kept for a later checkpoint to promote');
  assert.equal(r!.entry.spaceId, 5);
  assert.equal(r!.entry.pages, 7);
  const sysr = await sweepFile(d, 'ibdata1', 10_000n, { bytesPerSecond: 0 });
  assert.deepEqual(sysr!.entry.witnesses.map((w) => w.page), [199, 198, 197], 'the doublewrite slot is not a witness');

  const found = observeDatadir(d);
  assert.deepEqual(found.map((f) => [f.path, f.spaceId, f.pages]), [['app/t.ibd', 5, 7], ['ibdata1', 0, 200]]);
  const reader = new FilePageReader(d, () => PAGE);
  assert.equal(reader.readLsn('app/t.ibd', 5), 800n);
  assert.equal(reader.readLsn('app/t.ibd', 7), undefined, 'past the end');
  assert.equal(reader.lowestLsn('app/t.ibd'), 100n);
});

test('sweep: the read rate is bounded', async (t) => {
  const tmp = tempDir('inv-rate');
  t.after(() => tmp.remove());
  mkdirSync(path.join(tmp.path, 'app'));
  writeFileSync(path.join(tmp.path, 'app', 't.ibd'), tablespace(5, [...Array(128)].map((_, i) => BigInt(i + 1)))); // 2 MiB
  const t0 = Date.now();
  await sweepFile(tmp.path, 'app/t.ibd', 1000n, { bytesPerSecond: 4 << 20, chunkBytes: 256 << 10 });
  assert.ok(Date.now() - t0 >= 350, `2 MiB at 4 MiB/s took ${Date.now() - t0} ms`);
});

test('sweep: the clean-stop sweep gives up past its deadline instead of holding the stop', async (t) => {
  const tmp = tempDir('inv-budget');
  t.after(() => tmp.remove());
  mkdirSync(path.join(tmp.path, 'app'));
  writeFileSync(path.join(tmp.path, 'app', 't.ibd'), tablespace(5, [...Array(64)].map((_, i) => BigInt(i + 1))));
  await assert.rejects(sweepFile(tmp.path, 'app/t.ibd', 1000n, { bytesPerSecond: 0, chunkBytes: PAGE * 4, deadline: Date.now() - 1 }), SweepBudgetExceeded);
  const r = await sweepFile(tmp.path, 'app/t.ibd', 1000n, { bytesPerSecond: 0, chunkBytes: PAGE * 4, deadline: Date.now() + 60_000 });
  assert.equal(r!.entry.witnesses[0]!.lsn, '64');
});

const ws = (...pairs: Array<[number, number]>) => pairs.map(([page, lsn]) => ({ page, lsn: String(lsn) }));

test('witnesses: a version seen above the limit is promoted by a checkpoint past it, per page the highest on each side', () => {
  // A hot page (7) the sweep always finds above the checkpoint it read first: witnessed once a later one passes it.
  assert.deepEqual(pickWitnesses([ws([1, 100], [2, 90]), ws([7, 500])], 499n, 3).witnesses, ws([1, 100], [2, 90]));
  assert.deepEqual(pickWitnesses([ws([1, 100], [2, 90]), ws([7, 500])], 499n, 3).pending, ws([7, 500]));
  assert.deepEqual(pickWitnesses([ws([1, 100], [2, 90]), ws([7, 500])], 500n, 3), { witnesses: ws([7, 500], [1, 100], [2, 90]), pending: [] });
  // One page seen twice: its older version witnesses while the newer one waits; the same page never twice per side.
  assert.deepEqual(pickWitnesses([ws([7, 300]), ws([7, 500]), ws([7, 250])], 400n, 3), { witnesses: ws([7, 300]), pending: ws([7, 500]) });
  // Only the n highest per side.
  assert.deepEqual(pickWitnesses([ws([1, 1], [2, 2], [3, 3], [4, 4]), ws([5, 50], [6, 60], [8, 80], [9, 90])], 10n, 2), { witnesses: ws([4, 4], [3, 3]), pending: ws([9, 90], [8, 80]) });
  assert.deepEqual(pickWitnesses([], 10n, 3), { witnesses: [], pending: [] });
});

/** ib_logfile0 with a valid checkpoint block at `lsn` (what readOfflineCheckpoint reads). */
function writeCheckpoint(dir: string, lsn: bigint): void {
  const head = Buffer.alloc(0x3000);
  head.writeBigUInt64BE(lsn, 0x1000);
  head.writeBigUInt64BE(lsn, 0x1008);
  head.writeUInt32BE(crc32c(head.subarray(0x1000, 0x103c)), 0x103c);
  writeFileSync(path.join(dir, 'ib_logfile0'), head);
}

test('running sweeps: a version above the checkpoint is witnessed once a later checkpoint passes it; a tablespace one sweep missed is carried once, never by the exact sweep', async (t) => {
  const tmp = tempDir('inv-running');
  t.after(() => tmp.remove());
  const d = path.join(tmp.path, 'data');
  mkdirSync(path.join(d, 'app'), { recursive: true });
  writeFileSync(path.join(d, 'ibdata1'), tablespace(0, [10n, 20n]));
  // Page 2 is the hot one: always above the checkpoint a sweep reads first.
  writeFileSync(path.join(d, 'app', 'd.ibd'), tablespace(12, [100n, 200n, 900n]));
  writeCheckpoint(d, 500n);
  const store = new InventoryStore(path.join(tmp.path, 'inv'), 'mariadb', randomBytes(32), 'db-1');
  mkdirSync(path.join(tmp.path, 'inv'));
  const inventory = new MariadbInventory({ datadir: d, store, log: silentLogger(), sweepIntervalMs: 60_000, sweepBytesPerSecond: 0 });
  const entryOf = async (digest: string, space: number) => (await store.read(digest)).files.find((f) => f.spaceId === space);

  let ref = (await inventory.sweep(false))!;
  assert.deepEqual((await entryOf(ref.digest, 12))!.witnesses, [{ page: 1, lsn: '200' }, { page: 0, lsn: '100' }], 'LSN 900 is above the checkpoint (500)');
  writeCheckpoint(d, 1000n); // a later checkpoint passes the version the first sweep read
  ref = (await inventory.sweep(false))!;
  assert.equal((await entryOf(ref.digest, 12))!.witnesses[0]!.lsn, '900', 'the unchanged file\'s pending version is promoted');
  assert.equal(ref.durableLsn, '999');

  renameSync(path.join(d, 'app', 'd.ibd'), path.join(tmp.path, 'away.ibd')); // what a racing RENAME looks like to one sweep
  ref = (await inventory.sweep(false))!;
  assert.equal((await entryOf(ref.digest, 12))?.path, 'app/d.ibd', 'carried for one sweep');
  ref = (await inventory.sweep(false))!;
  assert.equal(await entryOf(ref.digest, 12), undefined, 'gone for two sweeps: dropped');

  renameSync(path.join(tmp.path, 'away.ibd'), path.join(d, 'app', 'd.ibd'));
  ref = (await inventory.sweep(false))!;
  assert.ok(await entryOf(ref.digest, 12));
  renameSync(path.join(d, 'app', 'd.ibd'), path.join(tmp.path, 'away.ibd'));
  ref = (await inventory.sweep(true))!;
  assert.equal(await entryOf(ref.digest, 12), undefined, 'the exact sweep lists only what is there');
});

// --- check.ts ---------------------------------------------------------------------------------

const entry = (p: string, spaceId: number, witnesses: Array<[number, number]>, kind: InventoryFile['kind'] = 'innodb-table'): InventoryFile =>
  ({ path: p, kind, spaceId, pageSize: PAGE, pages: 10, witnesses: witnesses.map(([page, lsn]) => ({ page, lsn: String(lsn) })) });
const inv = (files: InventoryFile[]): Inventory => ({ engine: 'mariadb', startLsn: '1000', durableLsn: '999', takenAt: '2026-01-01T00:00:00Z', files });
const seen = (p: string, spaceId: number | undefined, kind: InventoryFile['kind'] = 'innodb-table'): ObservedFile => ({ path: p, kind, spaceId, pageSize: PAGE, pages: 10 });

/** Pages as a map "path:page" → LSN; lowest per file. */
function pagesOf(lsns: Record<string, Record<number, number>>): PageReader {
  return {
    readLsn: (f, p) => (lsns[f]?.[p] === undefined ? undefined : BigInt(lsns[f]![p]!)),
    lowestLsn: (f) => {
      const v = Object.values(lsns[f] ?? {}).filter((x) => x > 0);
      return v.length ? BigInt(Math.min(...v)) : undefined;
    },
  };
}

const base = inv([entry('ibdata1', 0, [[5, 900]], 'innodb-system'), entry('app/t.ibd', 5, [[3, 800], [1, 700]]), entry('app/u.ibd', 6, [[2, 950]])]);
const now = [seen('ibdata1', 0, 'innodb-system'), seen('app/t.ibd', 5), seen('app/u.ibd', 6)];
const fresh = { ibdata1: { 5: 901 }, 'app/t.ibd': { 3: 800, 1: 750 }, 'app/u.ibd': { 2: 2000 } };

test('check: an untouched or newer volume passes', () => {
  for (const exact of [true, false]) {
    const r = checkInventory(base, exact, now, pagesOf(fresh));
    assert.deepEqual(r.violations, []);
    assert.equal(r.checked, 3);
  }
});

test('check: a file put back to an older or shorter copy', () => {
  let r = checkInventory(base, false, now, pagesOf({ ...fresh, 'app/t.ibd': { 3: 799, 1: 750 } }));
  assert.equal(r.violations.length, 1);
  assert.equal(r.violations[0]!.reason, 'older-copy');
  assert.match(r.violations[0]!.message, /data file app\/t\.ibd rolled back: page 3 carries LSN 799, behind the 800 the sealed inventory saw/);
  r = checkInventory(base, false, now, pagesOf({ ...fresh, 'app/t.ibd': { 1: 750 } }));
  assert.equal(r.violations[0]!.reason, 'shorter-copy');
  r = checkInventory(base, true, now, pagesOf({ ...fresh, ibdata1: { 5: 1 } }));
  assert.match(r.violations[0]!.message, /data file ibdata1 rolled back/);
});

test('check: swapped, moved, deleted, duplicate and foreign files', () => {
  const swapped = [seen('ibdata1', 0, 'innodb-system'), seen('app/t.ibd', 6), seen('app/u.ibd', 5)];
  const pages = pagesOf({ ...fresh, 'app/u.ibd': { 3: 800, 1: 750 }, 'app/t.ibd': { 2: 2000 } });
  let r = checkInventory(base, true, swapped, pages);
  assert.deepEqual(r.violations.map((v) => v.reason), ['swapped', 'swapped']);
  assert.match(r.violations[0]!.message, /data file app\/t\.ibd holds space id 6, not 5 \(whose file is now app\/u\.ibd\): files swapped/);
  // After a crash, a RENAME since the sweep could explain it: the dictionary decides online.
  r = checkInventory(base, false, swapped, pages);
  assert.deepEqual(r.violations, []);
  assert.equal(r.deferred.moved.length, 2);
  const dict = new Map([[5, 'app/t'], [6, 'app/u']]);
  assert.deepEqual(checkDeferred(r.deferred, dict).map((v) => v.reason), ['swapped', 'swapped']);
  assert.deepEqual(checkDeferred(r.deferred, new Map([[5, 'app/u'], [6, 'app/t']])), [], 'RENAME t→u, u→t since the sweep');

  const deleted = now.filter((f) => f.path !== 'app/u.ibd');
  r = checkInventory(base, true, deleted, pagesOf(fresh));
  assert.equal(r.violations[0]!.reason, 'deleted');
  r = checkInventory(base, false, deleted, pagesOf(fresh));
  assert.deepEqual(r.violations, []);
  assert.deepEqual(checkDeferred(r.deferred, dict).map((v) => v.reason), ['deleted'], 'still in the dictionary: deleted');
  assert.deepEqual(checkDeferred(r.deferred, new Map([[5, 'app/t']])), [], 'DROP TABLE since the sweep');
  r = checkInventory(base, false, now.filter((f) => f.path !== 'ibdata1'), pagesOf(fresh));
  assert.equal(r.violations[0]!.reason, 'deleted', 'the system tablespace cannot be dropped');

  r = checkInventory(base, false, [...now, seen('app/copy.ibd', 5)], pagesOf({ ...fresh, 'app/copy.ibd': { 3: 800, 1: 750 } }));
  assert.equal(r.violations[0]!.reason, 'duplicate');

  r = checkInventory(base, false, [...now, seen('app/old.ibd', 9)], pagesOf({ ...fresh, 'app/old.ibd': { 0: 400, 1: 1200 } }));
  assert.equal(r.violations[0]!.reason, 'foreign');
  r = checkInventory(base, false, [...now, seen('app/new.ibd', 9)], pagesOf({ ...fresh, 'app/new.ibd': { 0: 1001, 1: 1200, 2: 0 } }));
  assert.deepEqual(r.violations, [], 'a table created after the sweep began (TRUNCATE, OPTIMIZE, CREATE) has only newer pages');
  assert.deepEqual(r.added, ['app/new.ibd']);
});

test('check: after a crash, InnoDB recovery refusing a deferred tablespace settles it (deleted or swapped)', () => {
  // MariaDB 10.11's error log as logTail joins it, and as the file has it.
  const refusal = (id: number, at: string) => `2026-12-03 10:31:10 0 [ERROR] InnoDB: Tablespace ${id} was not found at ./${at}. | 2026-12-03 10:31:10 0 [ERROR] InnoDB: Plugin initialization aborted with error Tablespace not found`;
  const deleted = checkInventory(base, false, now.filter((f) => f.path !== 'app/u.ibd'), pagesOf(fresh)).deferred;
  let v = checkRecoveryRefusal(deleted, refusal(6, 'app/u.ibd'));
  assert.deepEqual(v.map((x) => [x.file, x.reason]), [['app/u.ibd', 'deleted']]);
  assert.match(v[0]!.message, /data file app\/u\.ibd \(space id 6\) is missing, and InnoDB's crash recovery still has changes for it/);
  assert.deepEqual(checkRecoveryRefusal(deleted, refusal(7, 'app/v.ibd')), [], 'a tablespace the offline check did not defer');
  assert.deepEqual(checkRecoveryRefusal(deleted, '[ERROR] InnoDB: Cannot allocate memory for the buffer pool'), [], 'another failure is no verdict');

  const swapped = checkInventory(base, false, [seen('ibdata1', 0, 'innodb-system'), seen('app/t.ibd', 6), seen('app/u.ibd', 5)],
    pagesOf({ ...fresh, 'app/u.ibd': { 3: 800, 1: 750 }, 'app/t.ibd': { 2: 2000 } })).deferred;
  v = checkRecoveryRefusal(swapped, `${refusal(6, 'app/u.ibd')}\n`);
  assert.deepEqual(v.map((x) => [x.file, x.reason]), [['app/t.ibd', 'swapped']]);
  assert.match(v[0]!.message, /data file app\/t\.ibd holds space id 6 \(sealed at app\/u\.ibd\), and InnoDB's crash recovery looks for it at app\/u\.ibd/);
});

test('store: the inventory opens only by its digest and key; unreferenced ones are removed', async (t) => {
  const tmp = tempDir('inv-store');
  t.after(() => tmp.remove());
  const key = randomBytes(32);
  const store = new InventoryStore(tmp.path, 'mariadb', key, 'db-1');
  const d1 = await store.write(base);
  const d2 = await store.write(inv([]));
  assert.deepEqual(await store.read(d1), base);
  const file = store.fileFor(d1);
  const bytes = readFileSync(file);
  bytes[bytes.length - 3]! ^= 1;
  writeFileSync(file, bytes);
  await assert.rejects(store.read(d1), /TAMPER|not the one the sealed record references/);
  await assert.rejects(new InventoryStore(tmp.path, 'mariadb', randomBytes(32), 'db-1').read(d2), /does not open/);
  await assert.rejects(new InventoryStore(tmp.path, 'mariadb', key, 'db-2').read(d2), /does not open/, 'bound to the database id');
  store.retain([d2]);
  assert.deepEqual(readdirSync(tmp.path), [path.basename(store.fileFor(d2))]);
  await assert.rejects(store.read(d1), /is missing from the volume/);
});
