import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, statfsSync } from 'node:fs';
import path from 'node:path';
import {
  describeHits, grepOpenFiles, grepSpilledTempFiles, grepTree, startKeyedMariadb, writeMarkerRows, type MarkerHit,
} from '../support/at-rest.ts';

/** Which MariaDB subsystem wrote a file, by its name. */
function kind(file: string): 'innodb' | 'binlog' | 'aria' | 'aria-log' | 'other' {
  const base = path.basename(file);
  if (/\.ibd$|^ibdata\d|^ib_logfile\d|^undo\d+|^ibtmp\d/.test(base)) return 'innodb';
  if (/^mariadb-bin\.\d+$/.test(base)) return 'binlog';
  if (/^aria_log\./.test(base)) return 'aria-log';
  if (/\.(MAD|MAI)$/.test(base)) return 'aria';
  return 'other';
}

function kinds(hits: MarkerHit[]): Set<string> {
  return new Set(hits.map((h) => kind(h.file)));
}

const TMPFS_MAGIC = 0x01021994;
/**
 * A small Aria page cache so the on-disk temp table of the GROUP BY really reaches its file (control run),
 * and so Aria pages are evicted and written under pressure (pressure test).
 */
const SMALL_CACHES = ['aria_pagecache_buffer_size=262144'];

test('encrypted: the marker reaches no persistent file (InnoDB, redo, binlog, Aria, spilled temp files)', async () => {
  const marker = 'CDBPMARK_' + randomBytes(8).toString('hex');
  const db = await startKeyedMariadb({ encryption: true });
  try {
    await writeMarkerRows((sql) => db.query(sql), marker);
    // The data really is there and readable through the server.
    const [{ n }] = await db.query('SELECT COUNT(*) AS n FROM atrest.inno WHERE v LIKE ?', [`${marker}%`]);
    assert.equal(Number(n), 4096);
    const spilled = await grepSpilledTempFiles(db.server, marker);
    assert.ok(spilled.opened > 0, 'the sort/GROUP BY really held temp files open under tmpdir');
    assert.deepEqual(spilled.sort, [], `sort spill files (encrypt_tmp_files) hold the marker:\n${describeHits(spilled.sort)}`);
    // MariaDB 10.11 writes internal on-disk Aria temp tables (this GROUP BY) in plaintext despite
    // encrypt_tmp_disk_tables=ON (observed here; see docs/KEYRING.md). We keep the tmpdir on tmpfs
    // so that plaintext stays in memory; this asserts that is where it is.
    assert.equal(Number(statfsSync(db.server.tmpdir).type), TMPFS_MAGIC, 'tmpdir is tmpfs');
    assert.ok(spilled.groupBy.every((h) => h.file.startsWith(db.volatileDir! + '/')), describeHits(spilled.groupBy));

    const enc = await db.query(
      "SELECT NAME, ENCRYPTION_SCHEME, CURRENT_KEY_VERSION FROM information_schema.INNODB_TABLESPACES_ENCRYPTION WHERE NAME = 'atrest/inno'");
    assert.equal(enc.length, 1);
    assert.equal(Number(enc[0].ENCRYPTION_SCHEME), 1, 'atrest/inno is encrypted');
    const vars = await db.query("SELECT @@encrypt_binlog AS b, @@aria_encrypt_tables AS a, @@innodb_encrypt_log AS l, @@log_bin AS lb");
    assert.deepEqual(Object.values(vars[0]).map(Number), [1, 1, 1, 1], 'binlog, Aria, redo encryption and binlog are on');

    await db.stop(); // clean shutdown: everything flushed to disk
    assert.ok(db.persistentDirs.every((d) => db.server.datadir.startsWith(d)), 'the datadir (and binlogs in it) is grepped');
    const hits = grepTree(db.persistentDirs, marker);
    assert.deepEqual(hits, [], `marker found in persistent files:\n${describeHits(hits)}`);

    // The only plaintext copy is the Aria transaction log, which MariaDB does not encrypt: it lives on
    // a memory-backed directory, never on the data disk.
    assert.equal(Number(statfsSync(db.ariaLogDir!).type), TMPFS_MAGIC, 'Aria log dir is tmpfs');
    const ariaLogHits = grepTree([db.ariaLogDir!], marker);
    assert.ok(ariaLogHits.every((h) => kind(h.file) === 'aria-log'), describeHits(ariaLogHits));

    // The token never reached a file of the instance (my.cnf, logs): only mariadbd's environment.
    const cnf = readFileSync(db.server.cnfPath, 'utf8');
    assert.match(cnf, /^hashicorp-key-management-token=$/m);
    assert.match(cnf, /^innodb_encrypt_tables=FORCE$/m);
  } finally {
    await db.destroy();
  }
});

test('control without encryption: the same workload leaves the marker in every kind of file (the grep can fail)', async () => {
  const marker = 'CDBPMARK_' + randomBytes(8).toString('hex');
  const db = await startKeyedMariadb({ encryption: false, extraConfig: SMALL_CACHES });
  try {
    await writeMarkerRows((sql) => db.query(sql), marker);
    const spilled = await grepSpilledTempFiles(db.server, marker);
    assert.ok(spilled.sort.length > 0 && spilled.groupBy.length > 0,
      `unencrypted sort and temp-table spill files hold the marker: sort ${describeHits(spilled.sort)}; group by ${describeHits(spilled.groupBy)}`);
    await db.stop();
    const hits = grepTree(db.persistentDirs, marker);
    const found = kinds(hits);
    for (const k of ['innodb', 'binlog', 'aria', 'aria-log']) {
      assert.ok(found.has(k), `control: marker expected in ${k} files; hits:\n${describeHits(hits)}`);
    }
  } finally {
    await db.destroy();
  }
});

test('grepOpenFiles sees unlinked files through /proc (self-check of the helper)', async () => {
  const { openSync, writeSync, unlinkSync, closeSync, mkdtempSync, rmSync } = await import('node:fs');
  const dir = mkdtempSync('/tmp/cdbp-grep-');
  const file = path.join(dir, 'f');
  const fd = openSync(file, 'w+');
  try {
    writeSync(fd, 'aaa NEEDLE_1 bbb NEEDLE_1');
    unlinkSync(file);
    assert.deepEqual(grepOpenFiles(process.pid, [dir], 'NEEDLE_1').map((h) => h.count), [2]);
  } finally {
    closeSync(fd);
    rmSync(dir, { recursive: true, force: true });
  }
});

test('encrypted under Aria page-cache pressure: no marker in InnoDB, binlog or Aria data (.MAD); index (.MAI) leftovers reported', async (t) => {
  const marker = 'CDBPMARK_' + randomBytes(8).toString('hex');
  const db = await startKeyedMariadb({ encryption: true, extraConfig: SMALL_CACHES });
  try {
    await writeMarkerRows((sql) => db.query(sql), marker);
    const spilled = await grepSpilledTempFiles(db.server, marker);
    assert.deepEqual(spilled.sort, [], describeHits(spilled.sort));
    // Observed: the GROUP BY's internal Aria temp table is plaintext; it is on tmpfs (asserted).
    assert.ok(spilled.groupBy.every((h) => h.file.startsWith(db.volatileDir! + '/')), describeHits(spilled.groupBy));
    t.diagnostic(`internal temp table plaintext (tmpfs): ${describeHits(spilled.groupBy)}`);
    await db.stop();
    const hits = grepTree(db.persistentDirs, marker);
    const isAriaIndex = (h: MarkerHit) => kind(h.file) === 'aria' && h.file.endsWith('.MAI');
    const serious = hits.filter((h) => !isAriaIndex(h));
    assert.deepEqual(serious, [], `marker in persistent files:\n${describeHits(serious)}`);
    // Observed with MariaDB 10.11.19: Aria encrypts only the used part of an index page, and the unused
    // tail can carry stale plaintext row bytes. Reported, not asserted (it depends on eviction timing).
    t.diagnostic(`Aria index (.MAI) plaintext leftovers: ${describeHits(hits.filter(isAriaIndex))}`);
  } finally {
    await db.destroy();
  }
});
