/**
 * PostgreSQL per-file freshness, the pure parts: page headers and pg_xact bits (postgres-page.ts), the
 * witness choice over files built block by block (postgres-files.ts), every rule of postgres-check.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { tempDir } from '../support/tmp.ts';
import {
  CLOG_XIDS_PER_SEGMENT, PG_BLOCK_SIZE, highestFinalXact, isInitializedPage, pgRelationName, pgXactSegment, readPgPageHeader, xactStatus,
} from '../../proxy/freshness/inventory/postgres-page.ts';
import { checkPgInventory, formatLsn, pgDeferredViolations, type PgCatalog, type PgFileReader } from '../../proxy/freshness/inventory/postgres-check.ts';
import { classifyWaldump, newWalFacts, parseWalDump, type WalEvidence } from '../../proxy/freshness/inventory/postgres-wal.ts';
import { relationOfFile } from '../../proxy/freshness/inventory/postgres-page.ts';
import { PgDatadirReader, listPgFiles, observePgDatadir, readPgControl, sweepPgFile } from '../../proxy/freshness/inventory/postgres-files.ts';
import type { PgInventory, PgObservedFile } from '../../proxy/freshness/inventory/types.ts';

/** One heap-like block: pd_lsn little-endian (xlogid, xrecoff), pd_lower 28, pd_upper 8000, pd_special 8192. */
function block(lsn: bigint, init = true): Buffer {
  const b = Buffer.alloc(PG_BLOCK_SIZE);
  if (!init) return b;
  b.writeUInt32LE(Number(lsn >> 32n), 0);
  b.writeUInt32LE(Number(lsn & 0xffffffffn), 4);
  b.writeUInt16LE(28, 12);
  b.writeUInt16LE(8000, 14);
  b.writeUInt16LE(8192, 16);
  b.writeUInt16LE(8192 | 4, 18);
  return b;
}

test('page header: pd_lsn is xlogid:xrecoff little-endian; uninitialized and implausible headers are not pages', () => {
  const h = readPgPageHeader(block(0x1_0000_0abcn));
  assert.equal(h.lsn, 0x1_0000_0abcn);
  assert.equal(isInitializedPage(h), true);
  assert.equal(isInitializedPage(readPgPageHeader(block(5n, false))), false);
  const bad = block(5n);
  bad.writeUInt16LE(9000, 14); // pd_upper past pd_special
  assert.equal(isInitializedPage(readPgPageHeader(bad)), false);
  assert.equal(formatLsn(0x1_0000_0abcn), '1/ABC');
});

test('pg_xact: 2 bits per xid, lowest xid in the low bits; the highest final status below a limit', () => {
  const seg = Buffer.alloc(PG_BLOCK_SIZE);
  seg[0] = 0b01_10_00_01; // xid0 committed, xid1 in progress, xid2 aborted, xid3 committed
  seg[10] = 0b00_00_11_00; // xid41 sub-committed (not final)
  assert.deepEqual([0, 1, 2, 3].map((o) => xactStatus(seg, o)), [1, 0, 2, 1]);
  assert.deepEqual(highestFinalXact(seg), { offset: 3, status: 1 });
  assert.deepEqual(highestFinalXact(seg, 3), { offset: 2, status: 2 });
  assert.equal(highestFinalXact(seg, 0), undefined);
  assert.equal(highestFinalXact(Buffer.alloc(PG_BLOCK_SIZE)), undefined);
  assert.equal(CLOG_XIDS_PER_SEGMENT, 1_048_576);
});

test('names: main fork segments and pg_xact segments only (no _fsm, _vm, _init, temp relations)', () => {
  assert.deepEqual(pgRelationName('16384'), { relfilenode: 16384, segment: 0 });
  assert.deepEqual(pgRelationName('16384.2'), { relfilenode: 16384, segment: 2 });
  for (const n of ['16384_fsm', '16384_vm', '16384_init', 't3_16400', 'pg_filenode.map', 'PG_VERSION', 'pg_control']) assert.equal(pgRelationName(n), undefined, n);
  assert.equal(pgXactSegment('0000'), 0);
  assert.equal(pgXactSegment('000A'), 10);
  assert.equal(pgXactSegment('xyz'), undefined);
});

test('files: listing, observation and the sweep pick the highest-LSN blocks at or below the durable limit', async (t) => {
  const tmp = tempDir('inv-pg');
  t.after(() => tmp.remove());
  const d = tmp.path;
  for (const sub of ['global', 'base/5', 'base/pgsql_tmp', 'pg_xact']) mkdirSync(path.join(d, sub), { recursive: true });
  writeFileSync(path.join(d, 'base/5/100'), Buffer.concat([block(10n), block(50n), block(0n, false), block(40n), block(90n)]));
  writeFileSync(path.join(d, 'base/5/100_fsm'), block(1n));
  writeFileSync(path.join(d, 'base/pgsql_tmp/pgsql_tmp1.0'), block(1n));
  writeFileSync(path.join(d, 'global/1262'), block(7n));
  const control = Buffer.alloc(8192);
  control.writeUInt32LE(1300, 8); control.writeUInt32LE(4, 16); control.writeBigUInt64LE(0x3000028n, 32); control.writeBigUInt64LE(0x3000000n, 40); control.writeUInt32LE(3, 48);
  writeFileSync(path.join(d, 'global/pg_control'), control);
  const xact = Buffer.alloc(PG_BLOCK_SIZE); xact[0] = 0b01_01_01_01; xact[1] = 0b10;
  writeFileSync(path.join(d, 'pg_xact/0000'), xact);
  writeFileSync(path.join(d, 'base/5/300'), block(5n)); // an unlogged relation: crash recovery resets it
  writeFileSync(path.join(d, 'base/5/300_init'), block(0n, false));
  assert.deepEqual(listPgFiles(d).map((f) => f.path), ['base/5/100', 'global/1262', 'pg_xact/0000']);
  assert.deepEqual(observePgDatadir(d).find((f) => f.path === 'base/5/100'), { path: 'base/5/100', kind: 'pg-relation', pages: 5 });
  const r = await sweepPgFile(d, 'base/5/100', 'pg-relation', { lsn: 60n, xid: Infinity }, { bytesPerSecond: 0, chunkBytes: 2 * PG_BLOCK_SIZE });
  assert.deepEqual(r!.entry.witnesses, [{ page: 1, lsn: '50' }, { page: 3, lsn: '40' }, { page: 0, lsn: '10' }], 'block 4 (LSN 90) is not durable yet');
  const x = await sweepPgFile(d, 'pg_xact/0000', 'pg-xact', { lsn: 0n, xid: Infinity }, { bytesPerSecond: 0 });
  assert.deepEqual(x!.entry.xact, { offset: 4, status: 2 });
  const xLimited = await sweepPgFile(d, 'pg_xact/0000', 'pg-xact', { lsn: 0n, xid: 4 }, { bytesPerSecond: 0 });
  assert.deepEqual(xLimited!.entry.xact, { offset: 3, status: 1 }, 'xids at or above the oldest active one are not durable yet');
  const reader = new PgDatadirReader(d);
  assert.equal(reader.readLsn('base/5/100', 4), 90n);
  assert.equal(reader.readLsn('base/5/100', 2), 0n, 'an uninitialized block reads LSN 0');
  assert.equal(reader.readLsn('base/5/100', 5), undefined);
  assert.equal(reader.lowestLsn('base/5/100'), 10n);
  assert.equal(reader.xactStatus('pg_xact/0000', 4), 2);
  assert.equal(await sweepPgFile(d, 'base/5/999', 'pg-relation', { lsn: 1n, xid: 0 }, { bytesPerSecond: 0 }), undefined);
  assert.deepEqual(readPgControl(d), { state: 4, checkpoint: 0x3000028n, redo: 0x3000000n, timeline: 3 }, 'pg_waldump reads the timeline pg_control names');
});

/** A reader over in-memory files: path → block LSNs (undefined past the end) and pg_xact statuses. */
function memReader(blocks: Record<string, bigint[]>, xacts: Record<string, Record<number, number>> = {}): PgFileReader {
  return {
    readLsn: (f, p) => blocks[f]?.[p],
    lowestLsn: (f) => (blocks[f] ?? []).filter((l) => l > 0n).reduce<bigint | undefined>((a, l) => (a === undefined || l < a ? l : a), undefined),
    xactStatus: (f, o) => xacts[f]?.[o] ?? 0,
  };
}

const inv: PgInventory = {
  engine: 'postgres', startLsn: '100', durableLsn: '100', takenAt: 'now',
  files: [
    { path: 'base/5/100', kind: 'pg-relation', pages: 3, witnesses: [{ page: 2, lsn: '90' }, { page: 0, lsn: '60' }] },
    { path: 'global/1262', kind: 'pg-relation', pages: 1, witnesses: [{ page: 0, lsn: '20' }] },
    { path: 'pg_xact/0000', kind: 'pg-xact', pages: 1, witnesses: [], xact: { offset: 40, status: 1 } },
  ],
};
const obs = (blocks: Record<string, bigint[]>, extra: PgObservedFile[] = []): PgObservedFile[] => [
  ...Object.entries(blocks).map(([p, b]): PgObservedFile => ({ path: p, kind: 'pg-relation', pages: b.length })),
  { path: 'pg_xact/0000', kind: 'pg-xact', pages: 1 }, ...extra,
];
const current = { 'base/5/100': [60n, 70n, 90n], 'global/1262': [20n] };
const xacts = { 'pg_xact/0000': { 40: 1 } };

test('check: the sealed state passes, exact or not; newer blocks pass after a crash', () => {
  for (const exact of [true, false]) {
    const r = checkPgInventory(inv, exact, obs(current), memReader(current, xacts));
    assert.deepEqual(r.violations, []);
    assert.equal(r.checked, 3);
  }
  const newer = { 'base/5/100': [60n, 70n, 150n], 'global/1262': [30n] };
  assert.deepEqual(checkPgInventory(inv, false, obs(newer), memReader(newer, xacts)).violations, []);
});

test('check: an older relation file, a shorter one, a swapped one (exact), an older pg_xact segment', () => {
  const older = { 'base/5/100': [60n, 70n, 80n], 'global/1262': [20n] };
  const [v] = checkPgInventory(inv, false, obs(older), memReader(older, xacts)).violations;
  assert.equal(v!.reason, 'older-copy');
  assert.match(v!.message, /data file base\/5\/100 rolled back: block 2 carries LSN 0\/50, behind the 0\/5A/);

  const shorter = { 'base/5/100': [60n, 70n], 'global/1262': [20n] };
  assert.equal(checkPgInventory(inv, true, obs(shorter), memReader(shorter, xacts)).violations[0]!.reason, 'shorter-copy');
  // After a crash a shorter file is legitimate only on the WAL's word (VACUUM's TRUNCATE record).
  const wal = (truncatedTo: Record<string, number>, at = 95n, dropped: string[] = []): (() => WalEvidence) => () => ({ available: true, from: 100n,
    truncatedTo: new Map(Object.entries(truncatedTo).map(([r, blocks]) => [r, { blocks, lsn: at }])), dropped: new Set(dropped) });
  const crashShorter = (w: () => WalEvidence) => checkPgInventory(inv, false, obs(shorter), memReader(shorter, xacts), w);
  const proven = crashShorter(wal({ 'base/5/100': 2 }));
  assert.deepEqual(proven.violations, [], 'truncated to 2 blocks: block 2 is legitimately gone');
  assert.deepEqual(proven.truncated, ['base/5/100']);
  const [none] = crashShorter(wal({})).violations;
  assert.equal(none!.reason, 'shorter-copy');
  assert.match(none!.message, /data file base\/5\/100 rolled back: it has 2 blocks, .*block 2 .*the WAL since 0\/64 truncates base\/5\/100 nowhere/);
  assert.match(crashShorter(wal({ 'base/5/100': 3 })).violations[0]!.message, /truncates base\/5\/100 only to 3 blocks/, 'a truncation that kept block 2 does not explain its absence');
  assert.match(crashShorter(wal({ 'base/5/200': 0 })).violations[0]!.message, /nowhere/, 'another relation\'s truncation does not count');
  // A real cut does not cover any shorter file: the file must still hold what the cut left, and blocks
  // past the cut must have been written after it.
  assert.match(crashShorter(wal({ 'base/5/100': 0 })).violations[0]!.message, /block 0 carries LSN 0\/3C, from before the WAL's truncation to 0 blocks at 0\/5F/);
  assert.deepEqual(crashShorter(wal({ 'base/5/100': 0 }, 50n)).violations, [], 'regrown after the cut to 0');
  const oneBlock = { 'base/5/100': [60n], 'global/1262': [20n] };
  assert.match(checkPgInventory(inv, false, obs(oneBlock), memReader(oneBlock, xacts), wal({ 'base/5/100': 2 })).violations[0]!.message,
    /it is shorter than the 2 blocks the WAL's truncation at 0\/5F left/);
  // Cut, then regrown: the crash left the regrown block a zero page (its first write never reached the disk).
  const regrown = { 'base/5/100': [60n, 70n, 0n], 'global/1262': [20n] };
  assert.deepEqual(checkPgInventory(inv, false, obs(regrown), memReader(regrown, xacts), wal({ 'base/5/100': 2 })).violations, []);
  assert.match(checkPgInventory(inv, false, obs(regrown), memReader(regrown, xacts), wal({})).violations[0]!.message, /block 2 carries LSN 0\/0, behind the 0\/5A/);
  // Emptied to 0 bytes: DROP / TRUNCATE / VACUUM FULL's tombstone only if a commit since the sweep dropped it.
  const empty = { 'base/5/100': [] as bigint[], 'global/1262': [20n] };
  const d = checkPgInventory(inv, false, obs(empty), memReader(empty, xacts), wal({}, 95n, ['base/5/100']));
  assert.deepEqual(d.violations, []);
  assert.deepEqual(d.dropped, ['base/5/100']);
  const [attack] = checkPgInventory(inv, false, obs(empty), memReader(empty, xacts), wal({}, 95n, ['base/5/200'])).violations;
  assert.match(attack!.message, /data file base\/5\/100 rolled back: it has 0 blocks, .*emptied: the WAL since 0\/64 neither truncates nor drops base\/5\/100/);
  // Cut by VACUUM, then dropped (DELETE, autovacuum, TRUNCATE): the dropped tombstone, not a short copy.
  const cutThenDropped = checkPgInventory(inv, false, obs(empty), memReader(empty, xacts), wal({ 'base/5/100': 1 }, 95n, ['base/5/100']));
  assert.deepEqual(cutThenDropped.violations, []);
  assert.deepEqual(cutThenDropped.dropped, ['base/5/100']);
  // Without the WAL, the catalog decides online.
  const e = checkPgInventory(inv, false, obs(empty), memReader(empty, xacts), () => ({ available: false, from: 100n, why: 'gone' }));
  assert.deepEqual(e.violations, []);
  assert.deepEqual(e.emptied.map((x) => x.path), ['base/5/100']);
  const live: PgCatalog = { databases: new Set([5]), relations: new Map([['5/100', 0]]), oldestXid: 3, unreadable: new Set() };
  assert.match(pgDeferredViolations([], live, e.emptied)[0]!.message, /data file base\/5\/100 rolled back: it is empty, .*relfilenode 100 still belongs to a relation/,
    'an emptied file of a live relation is a rollback, even though the relation now reads as 0 bytes');
  assert.deepEqual(pgDeferredViolations([], { ...live, relations: new Map() }, e.emptied), [], 'a dropped or rewritten relation\'s tombstone');
  assert.deepEqual(pgDeferredViolations([], { ...live, databases: new Set() }, e.emptied), [], 'its database dropped');
  assert.match(crashShorter(() => ({ available: false, from: 100n, why: 'the WAL from 0/64 is gone' })).violations[0]!.message, /cannot be proven: the WAL from 0\/64 is gone/);
  assert.throws(() => crashShorter(() => { throw new Error('reader broke'); }), /reader broke/, 'a broken WAL reader stops the start, it never passes the file');
  assert.deepEqual(checkPgInventory(inv, false, obs(current), memReader(current, xacts), () => { throw new Error('asked'); }).violations, [], 'asked only for a witness past the end');

  const swapped = { 'base/5/100': [60n, 70n, 95n], 'global/1262': [20n] };
  assert.equal(checkPgInventory(inv, true, obs(swapped), memReader(swapped, xacts)).violations[0]!.reason, 'swapped');

  const [x] = checkPgInventory(inv, false, obs(current), memReader(current, { 'pg_xact/0000': { 40: 0 } })).violations;
  assert.equal(x!.reason, 'older-copy');
  assert.match(x!.message, /pg_xact segment pg_xact\/0000 rolled back: transaction 40 is in progress, the sealed inventory saw it committed/);
});

test('check: new files with only newer blocks are added, older ones are foreign; missing files exact vs deferred', () => {
  const withNew = { ...current, 'base/5/200': [120n, 130n], 'base/5/300': [40n, 200n] };
  const r = checkPgInventory(inv, false, obs(withNew, [{ path: 'pg_xact/0001', kind: 'pg-xact', pages: 1 }]), memReader(withNew, xacts));
  assert.deepEqual(r.added.sort(), ['base/5/200', 'pg_xact/0001']);
  assert.equal(r.violations.length, 1);
  assert.equal(r.violations[0]!.reason, 'foreign');
  assert.equal(r.violations[0]!.file, 'base/5/300');

  const gone = { 'global/1262': [20n] };
  const exact = checkPgInventory(inv, true, obs(gone), memReader(gone, xacts));
  assert.equal(exact.violations[0]!.reason, 'deleted');
  const crash = checkPgInventory(inv, false, obs(gone), memReader(gone, xacts));
  assert.deepEqual(crash.violations, []);
  assert.deepEqual(crash.deferred.map((e) => e.path), ['base/5/100']);
});

test('online: a missing file is fine when its relfilenode is no relation\'s any more, or its database is gone', () => {
  const missing = [
    { path: 'base/5/100', kind: 'pg-relation' as const, pages: 3, witnesses: [] },
    { path: 'base/5/101.1', kind: 'pg-relation' as const, pages: 3, witnesses: [] },
    { path: 'base/7/100', kind: 'pg-relation' as const, pages: 3, witnesses: [] },
    { path: 'pg_xact/0000', kind: 'pg-xact' as const, pages: 1, witnesses: [] },
  ];
  const cat: PgCatalog = { databases: new Set([5]), relations: new Map([['5/101', 2 ** 30 - 8192]]), oldestXid: CLOG_XIDS_PER_SEGMENT + 5, unreadable: new Set() };
  assert.deepEqual(pgDeferredViolations(missing, cat), [], 'dropped, truncated below segment 1, database dropped, CLOG truncated');
  const still: PgCatalog = { databases: new Set([5, 7]), relations: new Map([['5/100', 8192], ['7/100', 16384]]), oldestXid: 3, unreadable: new Set() };
  const v = pgDeferredViolations(missing, still);
  assert.deepEqual(v.map((x) => x.file), ['base/5/100', 'base/7/100', 'pg_xact/0000']);
  assert.match(v[0]!.message, /relfilenode 100 still belongs to a relation/);
});

test('WAL evidence: pg_waldump\'s TRUNCATE records, their heap flag, dropped relations, segment files, and a WAL that is not there', () => {
  const dump = [
    'rmgr: Storage     len (rec/tot):     42/    42, tx:        724, lsn: 0/01511B50, prev 0/01511B20, desc: CREATE base/5/16384',
    'rmgr: Storage     len (rec/tot):     46/    46, tx:          0, lsn: 0/0152A000, prev 0/01529FC8, desc: TRUNCATE base/5/16384 to 7 blocks flags 7',
    'rmgr: Storage     len (rec/tot):     46/    46, tx:          0, lsn: 0/0152B000, prev 0/0152A000, desc: TRUNCATE base/5/16384 to 3 blocks flags 1',
    'rmgr: Storage     len (rec/tot):     46/    46, tx:          0, lsn: 0/0152C000, prev 0/0152B000, desc: TRUNCATE base/5/16384 to 0 blocks flags 2',
    'rmgr: Storage     len (rec/tot):     46/    46, tx:          0, lsn: 0/0152D000, prev 0/0152C000, desc: TRUNCATE global/1262 to 0 blocks flags 7',
    // Real PostgreSQL 15 lines (DROP TABLE; VACUUM FULL), and an abort of a transaction that created two relations.
    'rmgr: Transaction len (rec/tot):    469/   469, tx:        725, lsn: 0/0152DE88, prev 0/0152DE50, desc: COMMIT 2026-12-03 07:40:29.264923 UTC; rels: base/5/16384; dropped stats: 2/5/16384; inval msgs: catcache 80 catcache 79',
    'rmgr: Transaction len (rec/tot):    114/   114, tx:        726, lsn: 0/0152E260, prev 0/0152E220, desc: COMMIT 2026-12-03 07:40:29.299895 UTC; rels: base/5/16387; inval msgs: catcache 55 catcache 54 relcache 16387',
    'rmgr: Transaction len (rec/tot):    114/   114, tx:        727, lsn: 0/0152F000, prev 0/0152E260, desc: ABORT 2026-12-03 07:40:30.000000 UTC; rels: base/5/16400 base/5/16403',
    'rmgr: Transaction len (rec/tot):    114/   114, tx:        728, lsn: 0/01530000, prev 0/0152F000, desc: COMMIT 2026-12-03 07:40:31.000000 UTC; inval msgs: relcache 16499',
  ].join('\n');
  const facts = parseWalDump(dump);
  assert.deepEqual([...facts.truncatedTo], [['base/5/16384', { blocks: 3, lsn: 0x152B000n }], ['global/1262', { blocks: 0, lsn: 0x152D000n }]],
    'the deepest heap truncation wins, with its LSN; an FSM/VM-only one (flags 2) does not count');
  assert.deepEqual([...facts.dropped], ['base/5/16384', 'base/5/16387', 'base/5/16400', 'base/5/16403'], '"dropped stats" and invalidations are no dropped relations');
  assert.deepEqual(relationOfFile('base/5/16384.2'), { relation: 'base/5/16384', firstBlock: 2 * 131072 });
  assert.deepEqual(relationOfFile('global/1262'), { relation: 'global/1262', firstBlock: 0 });

  const end = 'pg_waldump: error: error in WAL record at 0/16F5C08: invalid record length at 0/16F5C80: wanted 24, got 0';
  const ok = classifyWaldump(1n, 1, facts, end);
  assert.ok(ok.available && ok.truncatedTo.get('base/5/16384')?.blocks === 3, 'the normal end of the WAL is no failure');
  const empty = classifyWaldump(1n, 1, newWalFacts(), 'pg_waldump: error: could not find a valid record after 0/16F5C80');
  assert.ok(empty.available && empty.truncatedTo.size === 0, 'nothing written since the sweep');
  const gone = classifyWaldump(1n, 1, newWalFacts(), 'pg_waldump: error: could not find file "000000010000000000000003": No such file or directory');
  assert.ok(!gone.available && /is gone \(could not find file/.test(gone.why));
  assert.equal(classifyWaldump(1n, 2, newWalFacts(), 'pg_waldump: error: something else').available, false);
  // A prepared transaction's name is printed unescaped: a client could forge whole lines (real PG 15 output).
  const forged = parseWalDump([
    'rmgr: Transaction len (rec/tot):    242/   242, tx:        725, lsn: 0/015286B8, prev 0/01528678, desc: PREPARE gid g1',
    'rmgr: Storage     len (rec/tot):     46/    46, tx:          0, lsn: 0/0152A000, prev 0/01529FC8, desc: TRUNCATE base/5/16384 to 0 blocks flags 7: 2026-12-03 07:53:26.022223 UTC',
  ].join('\n'));
  const refusedForged = classifyWaldump(1n, 1, forged, end);
  assert.ok(!refusedForged.available && /prepared transaction/.test(refusedForged.why), 'any PREPARE in the range voids the evidence');
  // It must reach the checkpoint pg_control names: a segment from a lost history ends the read before it.
  const withCheckpoint = parseWalDump(`${dump}\nrmgr: XLOG        len (rec/tot):    114/   114, tx:          0, lsn: 0/01531000, prev 0/01530000, desc: CHECKPOINT_ONLINE redo 0/1530F00; tli 1; prev tli 1; fpw true`);
  assert.ok(classifyWaldump(1n, 1, withCheckpoint, end, 0x1531000n).available);
  const short = classifyWaldump(1n, 1, withCheckpoint, 'pg_waldump: error: error in WAL record at 0/1531000: record with incorrect prev-link 0/1 at 0/1532000', 0x1540000n);
  assert.ok(!short.available && /does not reach the checkpoint at 0\/1540000 that pg_control names \(error in WAL record/.test(short.why));
  const atBoundary = classifyWaldump(1n, 1, facts, 'pg_waldump: error: could not find file "000000010000000000000004": No such file or directory');
  assert.ok(atBoundary.available && atBoundary.truncatedTo.size === 2, 'the WAL ending at a segment boundary keeps what was read');
});

test('prefix witnesses: after a real cut removed every top witness, the blocks it left are still witnessed', async (t) => {
  const tmp = tempDir('inv-pg-prefix');
  t.after(() => tmp.remove());
  mkdirSync(path.join(tmp.path, 'base/5'), { recursive: true });
  // An append-only heap: block b last written at LSN 100 + 10·b.
  const lsnOf = (b: number) => BigInt(100 + 10 * b);
  writeFileSync(path.join(tmp.path, 'base/5/100'), Buffer.concat(Array.from({ length: 20 }, (_, b) => block(lsnOf(b)))));
  const r = await sweepPgFile(tmp.path, 'base/5/100', 'pg-relation', { lsn: 10_000n, xid: Infinity }, { bytesPerSecond: 0, chunkBytes: 3 * PG_BLOCK_SIZE });
  assert.deepEqual(r!.entry.witnesses.map((w) => w.page), [19, 18, 17, 0, 1, 2, 3, 5, 8, 12],
    'the three newest, then the newest below each boundary 1, 2, 3, 4, 6, 9, 13 (19 is a top one)');
  const sealed: PgInventory = { engine: 'postgres', startLsn: '1000', durableLsn: '1000', takenAt: 'now', files: [r!.entry] };
  // VACUUM cut the table to 10 blocks at LSN 500 (WAL-proven); every top witness is past the new end.
  const cutTo10: () => WalEvidence = () => ({ available: true, from: 1000n, truncatedTo: new Map([['base/5/100', { blocks: 10, lsn: 500n }]]), dropped: new Set() });
  const tenBlocks = (lsn: (b: number) => bigint) => ({ 'base/5/100': Array.from({ length: 10 }, (_, b) => lsn(b)) });
  const real = tenBlocks(lsnOf);
  const ok = checkPgInventory(sealed, false, obs(real, []).filter((f) => f.kind === 'pg-relation'), memReader(real, {}), cutTo10);
  assert.deepEqual(ok.violations, []);
  assert.deepEqual(ok.truncated, ['base/5/100']);
  // An older copy exactly as long as the cut left the file: caught by a prefix witness below the cut.
  const older = tenBlocks((b) => lsnOf(b) - 5n);
  const [v] = checkPgInventory(sealed, false, obs(older, []).filter((f) => f.kind === 'pg-relation'), memReader(older, {}), cutTo10).violations;
  assert.equal(v!.reason, 'older-copy');
  assert.match(v!.message, /data file base\/5\/100 rolled back: block 0 carries LSN 0\/5F, behind the 0\/64/);
});
