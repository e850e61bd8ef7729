/**
 * Differential test of proxy/native/tracker.c against its reference, proxy/mysql/tracker.ts
 * (ResponseTracker) and proxy/mysql/statement-class.ts (classifyStatement): the same inputs go to both
 * and every answer must be equal, packet by packet. Inputs: the cases of the TS unit suites, then
 * seeded random statement texts and seeded random protocol streams (fixed seeds: a failure names its
 * seed and step and reproduces).
 *
 * The C side is tracker.c (unchanged) linked with its bindings, test/support/native-tracker-api.c, into a
 * test-only module built here (the production module carries no test bindings). Without a C compiler
 * this test fails with the reason; it does not skip.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { buildTestAddon } from '../support/native-build.ts';
import { ResponseTracker, INSPECT_BYTES } from '../../proxy/mysql/tracker.ts';
import { classifyStatement, STATEMENT_PREFIX_BYTES } from '../../proxy/mysql/statement-class.ts';
import { Cap, Command, ServerStatus } from '../../proxy/mysql/constants.ts';
import { rng, randomStatement, StreamGen, type Pkt } from '../support/mysql-stream-gen.ts';

/** The bindings of test/support/native-tracker-api.c. */
interface TrackerApi {
  trackerNew(deprecateEof: boolean, cacheMetadata: boolean): unknown;
  trackerCommand(h: unknown, command: number, rest: Buffer, complete: boolean): boolean;
  trackerServerPacket(h: unknown, prefix: Buffer, length: number): boolean;
  trackerState(h: unknown): { pending: number; untracked: boolean; preparedCount: number };
  classifyStatement(text: Buffer, complete: boolean): 'read' | 'begin' | 'dml' | 'write';
}

let built: { addon: TrackerApi; remove(): void } | undefined;
after(() => built?.remove());

function native(): TrackerApi {
  built ??= buildTestAddon<TrackerApi>('native-tracker-api', ['test/support/native-tracker-api.c', 'proxy/native/tracker.c']);
  const api = built.addon;
  for (const f of ['trackerNew', 'trackerCommand', 'trackerServerPacket', 'trackerState', 'classifyStatement'] as const) {
    assert.equal(typeof api[f], 'function', `the tracker test module exports ${f}`);
  }
  return api;
}

/** mulberry32: small, seedable, good enough to pick inputs. */

const latin1 = (s: string): Buffer => Buffer.from(s, 'latin1');
const show = (b: Buffer): string => JSON.stringify(b.toString('latin1'));

// ------------------------------------------------------------------------------------------------
// classifyStatement

/** Every input of test/unit/mysql-statement-class.test.ts, and edge cases of the rules the C spells out by hand. */
const STATEMENTS: string[] = [
  // mysql-statement-class.test.ts
  'SET NAMES utf8mb4', 'set names utf8mb4', '  SET @a = 1', "SET @@session.sql_mode = 'ANSI'",
  'SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED', 'USE app', 'select 1', 'SHOW TABLES',
  '/* comment */ SELECT 1', '-- note\nSELECT 1', '# note\nSHOW STATUS', 'ROLLBACK', 'DESCRIBE t', 'EXPLAIN SELECT 1', 'SELECT(1)',
  'BEGIN', 'begin work', 'BEGIN;', 'START TRANSACTION', 'START TRANSACTION READ ONLY', 'start transaction with consistent snapshot',
  'BEGIN NOT ATOMIC INSERT INTO t VALUES (1); END', 'START SLAVE', 'START REPLICA', 'BEGINX',
  'INSERT INTO t VALUES (1)', 'update t set a=1', 'DELETE FROM t', 'REPLACE INTO t VALUES (1)', "INSERT INTO t (v) VALUES ('b') RETURNING id",
  'COMMIT', 'COMMIT AND CHAIN', 'CREATE TABLE t (a INT)', 'DROP TABLE t', 'ALTER TABLE t ADD b INT', 'CALL p()', 'DO f()',
  'LOAD DATA INFILE "x" INTO TABLE t', 'GRANT ALL ON *.* TO x', 'TRUNCATE t', 'RENAME TABLE a TO b', '', '   ',
  '/* unterminated', '-- unterminated', 'XA COMMIT 1', 'FLUSH TABLES', 'SELECTX', 'SELECT1', 'SAVEPOINT s1',
  '/*!40101 SET NAMES utf8 */', '/*M!100101 SET x=1 */', 'WITH x AS (SELECT 1) SELECT * FROM x',
  'SET autocommit = 1', 'SET @@session.AUTOCOMMIT=1', "SET PASSWORD FOR 'low'@'%' = PASSWORD('x')",
  "SET PASSWORD = 'x'", 'SET STATEMENT max_statement_time=1 FOR INSERT INTO t VALUES (1)', 'SET GLOBAL max_connections = 10',
  'SET @@global.max_connections = 10', 'SET DEFAULT ROLE r FOR u', 'SET @x = f()', 'SET @x = (SELECT COUNT(*) FROM t)',
  'SET @x = NEXT VALUE FOR s', 'SET @a = 1 /*!, @@global.x = 1 */',
  `${' '.repeat(STATEMENT_PREFIX_BYTES - 3)}SEL`, `${' '.repeat(10)}SELECT`, 'BEGIN  ',
  // \b, \s and case folding of SET_WRITES; JS \s in latin1 is \t \n \v \f \r space NBSP (not NEL 0x85)
  'SET @passwords = 1', 'SET @x_password = 1', 'SET @password = 1', 'SET @a=1,@next=2', 'SET @a=next1', 'SET @a = 1 global',
  'SET a=globalx', 'SET a=xglobal', 'SET a.global=1', 'SET a$global=1', 'SET a=1#autocommit', 'SET PaSsWoRd', 'SET\tNAMES x',
  'SET default role', 'SET default  \t\nrole x', 'SET default\x0brole', 'SET default\x0crole', 'SET default\xa0role',
  'SET default\x85role', 'SET defaultrole', 'SET xdefault rolex', 'SET default\x1crole', 'SET DEFAULT\xa0\xa0ROLE',
  'SET a = "/*"', 'SET a = 1 */', 'SET a = \'(\'', 'SET a=1 /', 'SET a=1 *', 'SET\xa0NAMES x', 'SET\x85', 'SET\xe9',
  'SET next\xe9', 'SET \xe9next', 'SET next\xa0', 'SET global\x00', 'SET_X = 1', 'SET1', 'SET$', 'SET', 'set',
  // skipBlanks: executable comments, /*M, unterminated, "--" needing a space
  '/*M SELECT */ SELECT 1', '/**/SELECT 1', '/* a */ /* b */ SELECT 1', '/*/ SELECT 1', '/*', '/', '*/SELECT 1',
  '--\tx\nSELECT 1', '--\nSELECT 1', '--x\nSELECT 1', '--', '-- ', '#', '#\n', '#\nSELECT', '\r\n\t SELECT 1', '\x0bSELECT 1',
  '\xa0SELECT 1', '-- a\r\nSELECT', '# a\n# b\n-- c\n/* d */SELECT 1', '/*!*/SELECT',
  // wordAt: the 12-letter limit, case, letters only
  'TRANSACTIONX', 'ABCDEFGHIJKL', 'ABCDEFGHIJKLM', 'DeScRiBe t', 'desc', 'DESC1', 'DESC_', 'DESC$', 'HELP me', 'SHOW\xe9',
  'S\xe9LECT', 'SELECT\xe9', 'SELECT\x00', 'SELECT;', 'ROLLBACK TO s',
  // transactionStart
  'BEGIN WORK', 'BEGIN WORKX', 'BEGIN WORK1', 'BEGIN /* c */ WORK', 'BEGIN -- c\n', 'BEGIN /*!', 'BEGIN /* x', 'BEGIN ;',
  'BEGIN\t;', 'BEGIN;;', 'BEGIN ATOMIC', 'START', 'START ', 'START;', 'START TRANSACTIONS', 'START TRANSACTION;', 'START\nTRANSACTION',
  'START TRANSACTIO', 'start transaction', 'BEGIN w', 'BEGIN\xa0WORK', 'BEGIN 1',
];

function checkClassify(api: TrackerApi, text: Buffer, complete: boolean, where: string): void {
  const expected = classifyStatement(text, complete);
  const actual = api.classifyStatement(text, complete);
  if (actual !== expected) assert.fail(`${where}: classifyStatement(${show(text)}, ${complete}): C ${actual}, TS ${expected}`);
}

/** Every prefix of every listed statement, complete or not: the TS and C classes are equal. */
test('classifyStatement: the unit-suite statements and edge cases, at every truncation', (t) => {
  const api = native();
  // Spot checks that both see the answers the TS suite asserts (the differential part then covers the rest).
  assert.equal(api.classifyStatement(latin1('SET NAMES utf8mb4'), true), 'read');
  assert.equal(api.classifyStatement(latin1('SET NAMES utf8mb4'), false), 'write');
  assert.equal(api.classifyStatement(latin1('START TRANSACTION READ ONLY'), true), 'begin');
  assert.equal(api.classifyStatement(latin1("INSERT INTO t (v) VALUES ('b') RETURNING id"), true), 'dml');
  assert.equal(api.classifyStatement(latin1('SET default\xa0role'), true), 'write');
  assert.equal(api.classifyStatement(latin1('SET default\x85role'), true), 'read');
  let cases = 0;
  for (const s of STATEMENTS) {
    const full = latin1(s);
    for (let k = 0; k <= full.length; k++) {
      for (const complete of [true, false]) {
        checkClassify(api, full.subarray(0, k), complete, `table ${JSON.stringify(s)}`);
        cases++;
      }
    }
  }
  t.diagnostic(`${STATEMENTS.length} statements, ${cases} cases`);
});

test('classifyStatement: seeded random statement texts, every truncation, complete or not', (t) => {
  const api = native();
  let cases = 0;
  for (let seed = 1; seed <= 20000; seed++) {
    const r = rng(seed);
    const text = randomStatement(r);
    for (let k = 0; k <= text.length; k++) {
      for (const complete of [true, false]) {
        checkClassify(api, text.subarray(0, k), complete, `seed ${seed}`);
        cases++;
      }
    }
  }
  t.diagnostic(`${cases} cases`);
  assert.ok(cases > 500_000, `${cases} cases`);
});

// ------------------------------------------------------------------------------------------------
// ResponseTracker

/** One TS tracker and one C tracker fed the same inputs; every answer and the state after each step must match. */
class Twin {
  readonly ts: ResponseTracker;
  readonly c: unknown;

  constructor(private readonly api: TrackerApi, deprecateEof: boolean, cacheMetadata: boolean, private readonly where = '') {
    this.ts = new ResponseTracker((deprecateEof ? Cap.CLIENT_DEPRECATE_EOF : 0n) | (cacheMetadata ? Cap.MARIADB_CLIENT_CACHE_METADATA : 0n));
    this.c = api.trackerNew(deprecateEof, cacheMetadata);
  }

  cmd(command: number, rest: Buffer = Buffer.alloc(0), complete = rest.length === 0, what = ''): void {
    this.ts.commandStarted(command, rest, complete);
    assert.equal(this.api.trackerCommand(this.c, command, rest, complete), true, `${this.where} command refused`);
    this.compareState(`after command 0x${command.toString(16)} ${show(rest)} ${complete} ${what}`);
  }

  /** Feeds one logical packet as the pump does: its first min(length, INSPECT_BYTES) bytes and its length. */
  feed(payload: Buffer, length = payload.length, what = ''): boolean {
    const prefix = payload.subarray(0, Math.min(length, INSPECT_BYTES));
    const expected = this.ts.onServerPacket(prefix, length);
    const actual = this.api.trackerServerPacket(this.c, prefix, length);
    if (actual !== expected) assert.fail(`${this.where} packet ${show(prefix)} length ${length} ${what}: C ${actual}, TS ${expected}`);
    this.compareState(`after packet ${show(prefix)} length ${length} ${what}`);
    return expected;
  }

  compareState(what: string): void {
    const s = this.api.trackerState(this.c);
    const expected = { pending: this.ts.pending, untracked: this.ts.untracked, preparedCount: this.ts.preparedCount };
    if (s.pending !== expected.pending || s.untracked !== expected.untracked || s.preparedCount !== expected.preparedCount) {
      assert.fail(`${this.where} ${what}: C state ${JSON.stringify(s)}, TS ${JSON.stringify(expected)}`);
    }
  }
}

// Packets, as in test/unit/mysql-tracker.test.ts
const ok = (status: number) => Buffer.from([0x00, 0x01, 0x00, status & 0xff, status >> 8, 0, 0]);
const okFe = (status: number) => Buffer.from([0xfe, 0x00, 0x00, status & 0xff, status >> 8, 0, 0]);
const eof = (status: number) => Buffer.from([0xfe, 0, 0, status & 0xff, status >> 8]);
const err = () => Buffer.concat([Buffer.from([0xff, 0x28, 0x04, 0x23]), Buffer.from('42000syntax')]);
const progress = () => Buffer.from([0xff, 0xff, 0xff, 1, 1, 0, 0, 0, 0]);
const colCount = (n: number) => Buffer.from([n]);
const colDef = () => Buffer.from('\x03def\x00\x00\x00\x01a\x00\x0c\x3f\x00', 'latin1');
const row = (s: string) => Buffer.concat([Buffer.from([s.length]), Buffer.from(s)]);
const AUTOCOMMIT = ServerStatus.AUTOCOMMIT;
const IN_TRANS = ServerStatus.IN_TRANS | AUTOCOMMIT;
const MORE = ServerStatus.MORE_RESULTS_EXISTS;
const stmtId = (id: number) => { const b = Buffer.alloc(9); b.writeUInt32LE(id >>> 0, 0); return b; };
const prepareOk = (id: number, columns: number, params: number) => {
  const b = Buffer.from([0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
  b.writeUInt32LE(id >>> 0, 1); b.writeUInt16LE(columns, 5); b.writeUInt16LE(params, 7);
  return b;
};

test('ResponseTracker: the scenarios of the TS unit suite give the same answers in C', () => {
  const api = native();
  const twin = (deprecate: boolean, cache = false) => new Twin(api, deprecate, cache);
  const query = (t: Twin, sql: string) => t.cmd(Command.COM_QUERY, latin1(sql), true);

  let t = twin(true);
  t.cmd(Command.COM_QUERY);
  assert.equal(t.feed(ok(AUTOCOMMIT)), true);
  t.cmd(Command.COM_QUERY);
  assert.equal(t.feed(ok(IN_TRANS)), false);
  t.cmd(Command.COM_QUERY);
  assert.equal(t.feed(ok(AUTOCOMMIT)), true);

  for (const deprecate of [true, false]) {
    t = twin(deprecate);
    query(t, 'SELECT a, b FROM t');
    for (const p of [colCount(2), colDef(), colDef(), ...(deprecate ? [] : [eof(AUTOCOMMIT)]), row('a'), Buffer.from([0x00, 0x01])]) {
      assert.equal(t.feed(p), false);
    }
    assert.equal(t.feed(deprecate ? okFe(AUTOCOMMIT) : eof(AUTOCOMMIT)), false);
  }

  t = twin(true);
  query(t, 'SELECT 1; INSERT INTO t VALUES (1)');
  t.feed(colCount(1)); t.feed(colDef()); t.feed(row('1'));
  assert.equal(t.feed(okFe(AUTOCOMMIT | MORE)), false);
  assert.equal(t.feed(ok(AUTOCOMMIT)), true);
  t.cmd(Command.COM_QUERY);
  assert.equal(t.feed(ok(AUTOCOMMIT | MORE)), false);
  assert.equal(t.feed(err()), true);

  t = twin(false);
  t.cmd(Command.COM_STMT_PREPARE);
  t.cmd(Command.COM_STMT_EXECUTE);
  t.cmd(Command.COM_STMT_CLOSE);
  assert.equal(t.feed(Buffer.from([0x00, 1, 0, 0, 0, 1, 0, 2, 0, 0, 0, 0])), false);
  for (const p of [colDef(), colDef(), eof(AUTOCOMMIT), colDef(), eof(AUTOCOMMIT)]) assert.equal(t.feed(p), false);
  assert.equal(t.feed(ok(AUTOCOMMIT)), true);

  t = twin(true);
  t.cmd(Command.COM_QUERY);
  assert.equal(t.feed(progress()), false);
  assert.equal(t.feed(ok(AUTOCOMMIT)), true);
  t.cmd(Command.COM_CHANGE_USER);
  assert.equal(t.feed(latin1('\xfeclient_ed25519\x00nonce')), false);
  assert.equal(t.feed(progress()), false);
  assert.equal(t.feed(ok(AUTOCOMMIT)), false);

  t = twin(true);
  t.cmd(Command.COM_QUERY);
  assert.equal(t.feed(latin1('\xfb/tmp/x.csv')), false);
  assert.equal(t.feed(ok(AUTOCOMMIT)), true);

  t = twin(true, true);
  t.cmd(Command.COM_STMT_PREPARE, latin1('SELECT a, b FROM t WHERE id = ?'), true);
  t.feed(prepareOk(7, 2, 1)); t.feed(colDef()); t.feed(colDef());
  assert.equal(t.feed(colDef()), false);
  t.cmd(Command.COM_STMT_EXECUTE, stmtId(7), false);
  assert.equal(t.feed(Buffer.from([2, 0])), false);
  assert.equal(t.feed(Buffer.from([0x00, 0x00, 1, 2])), false);
  assert.equal(t.feed(okFe(AUTOCOMMIT)), false);
  t.cmd(Command.COM_STMT_EXECUTE, stmtId(7), false);
  assert.equal(t.feed(Buffer.from([2, 1])), false, 'metadata follows');
  for (const p of [colDef(), colDef(), Buffer.from([0x00, 0x00, 1, 2])]) assert.equal(t.feed(p), false);
  assert.equal(t.feed(okFe(AUTOCOMMIT)), false);

  t = twin(true);
  query(t, "INSERT INTO t (v) VALUES ('x') RETURNING id");
  t.feed(colCount(1)); t.feed(colDef()); t.feed(row('1'));
  assert.equal(t.feed(okFe(AUTOCOMMIT)), true);
  t.cmd(Command.COM_STMT_PREPARE, latin1('DELETE FROM t WHERE id = ? RETURNING id'), true);
  t.feed(prepareOk(3, 1, 1)); t.feed(colDef()); t.feed(colDef());
  t.cmd(Command.COM_STMT_EXECUTE, stmtId(3), false);
  t.feed(colCount(1)); t.feed(colDef()); t.feed(Buffer.from([0x00, 0x00, 1]));
  assert.equal(t.feed(okFe(AUTOCOMMIT)), true);
  t.cmd(Command.COM_STMT_EXECUTE, stmtId(3), false);
  t.feed(colCount(1)); t.feed(colDef()); t.feed(Buffer.from([0x00, 0x00, 1]));
  assert.equal(t.feed(okFe(IN_TRANS)), false);

  t = twin(false);
  t.cmd(Command.COM_STMT_PREPARE, latin1('SELECT c FROM sbtest1 WHERE id=?'), true);
  t.cmd(Command.COM_STMT_EXECUTE, stmtId(-1), false);
  for (const p of [prepareOk(1, 1, 1), colDef(), eof(AUTOCOMMIT), colDef(), eof(AUTOCOMMIT)]) t.feed(p);
  const selectRows = () => [colCount(1), colDef(), eof(AUTOCOMMIT), Buffer.from([0x00, 0x00, 1])];
  for (const p of selectRows()) assert.equal(t.feed(p), false);
  assert.equal(t.feed(eof(AUTOCOMMIT)), false);
  t.cmd(Command.COM_STMT_EXECUTE, stmtId(1), false);
  for (const p of selectRows()) t.feed(p);
  assert.equal(t.feed(eof(AUTOCOMMIT)), false);
  t.cmd(Command.COM_STMT_EXECUTE, stmtId(99), false);
  for (const p of selectRows()) t.feed(p);
  assert.equal(t.feed(eof(AUTOCOMMIT)), true);
  t.cmd(Command.COM_STMT_PREPARE, latin1('SELECT nope FROM'), true);
  t.cmd(Command.COM_STMT_EXECUTE, stmtId(-1), false);
  t.feed(err());
  for (const p of selectRows()) t.feed(p);
  assert.equal(t.feed(eof(AUTOCOMMIT)), true);
  t.cmd(Command.COM_STMT_CLOSE, stmtId(1), true);
  t.cmd(Command.COM_STMT_PREPARE, latin1('SELECT 1'), true);
  t.feed(prepareOk(2, 1, 0)); t.feed(colDef()); t.feed(eof(AUTOCOMMIT));
  t.cmd(Command.COM_RESET_CONNECTION);
  t.feed(ok(AUTOCOMMIT));
  t.cmd(Command.COM_STMT_PREPARE, latin1('SELECT 1'), true);
  t.feed(prepareOk(2, 1, 0)); t.feed(colDef()); t.feed(eof(AUTOCOMMIT));
  t.cmd(Command.COM_CHANGE_USER, latin1('u\0'), false);
  t.feed(ok(AUTOCOMMIT));

  t = twin(true);
  const steps: [string, Buffer, boolean][] = [
    ['BEGIN', ok(IN_TRANS), false], ['INSERT INTO t VALUES (1)', ok(IN_TRANS), false], ['START TRANSACTION', ok(IN_TRANS), true],
    ['UPDATE t SET a = 2', ok(IN_TRANS), false], ['COMMIT AND CHAIN', ok(IN_TRANS), true], ['INSERT INTO t VALUES (1)', err(), false],
    ['CREATE TABLE t (a INT)', err(), true], ['ROLLBACK', ok(AUTOCOMMIT), false], ['INSERT INTO t VALUES (1)', err(), false],
    ['CALL p()', err(), true],
  ];
  for (const [sql, p, held] of steps) {
    query(t, sql);
    assert.equal(t.feed(p), held, sql);
  }

  for (const deprecate of [false, true]) {
    t = twin(deprecate);
    t.cmd(Command.COM_STMT_FETCH, stmtId(1), false);
    query(t, 'INSERT INTO t VALUES (1)');
    assert.equal(t.feed(Buffer.from([0x00, 0x00, 1, 0, 0, 0, 0, 0, 0])), false);
    assert.equal(t.feed(Buffer.from([0x00, 0x00, 2, 0, 0, 0, 0, 0, 0])), false);
    const cursorDone = ServerStatus.CURSOR_EXISTS | ServerStatus.LAST_ROW_SENT | AUTOCOMMIT;
    assert.equal(t.feed(deprecate ? okFe(cursorDone) : eof(cursorDone)), false);
    assert.equal(t.feed(ok(AUTOCOMMIT)), true);
  }

  // Beyond the suite: a cursor opened by an execute (classic EOF after the columns), COM_FIELD_LIST,
  // COM_STATISTICS, COM_SET_OPTION's EOF, a bulk execute failing alone, replication making it untracked.
  t = twin(false);
  t.cmd(Command.COM_STMT_PREPARE, latin1('UPDATE t SET a = ?'), true);
  t.feed(prepareOk(5, 0, 1)); t.feed(colDef());
  assert.equal(t.feed(eof(AUTOCOMMIT)), false);
  t.cmd(Command.COM_STMT_EXECUTE, stmtId(5), false);
  t.feed(colCount(1)); t.feed(colDef());
  assert.equal(t.feed(eof(AUTOCOMMIT | ServerStatus.CURSOR_EXISTS)), true, 'the cursor ends the execute response');
  t.cmd(Command.COM_FIELD_LIST, latin1('t\0'), true);
  assert.equal(t.feed(colDef()), false);
  assert.equal(t.feed(eof(AUTOCOMMIT)), false);
  t.cmd(Command.COM_STATISTICS);
  assert.equal(t.feed(latin1('Uptime: 1')), false);
  t.cmd(Command.COM_SET_OPTION, Buffer.from([1, 0]), true);
  assert.equal(t.feed(eof(AUTOCOMMIT)), false);
  t.cmd(Command.COM_STMT_BULK_EXECUTE, stmtId(5), false);
  assert.equal(t.feed(err()), true, 'a bulk execute is not atomic');
  t.cmd(Command.COM_STMT_EXECUTE, stmtId(5), false);
  assert.equal(t.feed(err()), false, 'a single DML execute failing alone changed nothing');
  t.cmd(Command.COM_STMT_CLOSE, stmtId(5), true);
  t.cmd(Command.COM_CREATE_DB, latin1('d'), true);
  assert.equal(t.feed(ok(AUTOCOMMIT)), true);
  t.cmd(Command.COM_BINLOG_DUMP, Buffer.alloc(10), true);
  t.cmd(Command.COM_QUERY, latin1('INSERT INTO t VALUES (1)'), true);
  assert.equal(t.feed(ok(AUTOCOMMIT)), false, 'untracked');
});

test('ResponseTracker: an OK whose length fields start with 0xFB/0xFF reads as an OK without status (held), in both, without throwing', () => {
  const api = native();
  for (const bad of [0xfb, 0xff]) {
    for (const deprecate of [false, true]) {
      const t = new Twin(api, deprecate, false);
      t.cmd(Command.COM_QUERY, latin1('BEGIN'), true);
      t.feed(ok(IN_TRANS));
      t.cmd(Command.COM_QUERY, latin1('INSERT INTO t VALUES (1)'), true);
      // affected rows 0xFB/0xFF: an OK without status (0: not in a transaction), so held
      assert.equal(t.feed(Buffer.from([0x00, bad, 0x00, 0x01, 0x00, 0, 0])), true);
      t.cmd(Command.COM_QUERY, latin1('INSERT INTO t VALUES (1)'), true);
      assert.equal(t.feed(Buffer.from([0x00, 0x01, bad, 0x01, 0x00, 0, 0])), true, 'the insert id field');
      t.cmd(Command.COM_CHANGE_USER, latin1('u\0'), false);
      assert.equal(t.feed(Buffer.from([0x00, bad, 0x00, 0x01, 0x00])), false);
    }
  }
});

test('ResponseTracker (C only): the pending queue is bounded, and an untracked session queues nothing more', () => {
  const api = native();
  const h = api.trackerNew(true, false);
  const select = latin1('SELECT 1');
  for (let i = 0; i < 65536; i++) assert.equal(api.trackerCommand(h, Command.COM_QUERY, select, true), true);
  assert.equal(api.trackerCommand(h, Command.COM_QUERY, select, true), false, 'TRACKER_MAX_PENDING');
  assert.equal(api.trackerCommand(h, Command.COM_STMT_CLOSE, stmtId(1), true), true, 'no response: nothing queued');
  assert.equal(api.trackerState(h).pending, 65536);
  api.trackerServerPacket(h, ok(AUTOCOMMIT), 7);
  assert.equal(api.trackerCommand(h, Command.COM_QUERY, select, true), true, 'room again');

  const u = api.trackerNew(false, false);
  api.trackerCommand(u, Command.COM_QUERY, select, true);
  api.trackerCommand(u, Command.COM_REGISTER_SLAVE, Buffer.alloc(4), true);
  for (let i = 0; i < 70000; i++) assert.equal(api.trackerCommand(u, Command.COM_QUERY, select, true), true);
  assert.deepEqual(api.trackerState(u), { pending: 1, untracked: true, preparedCount: 0 });

  // At most 2^20 prepared statements (MariaDB's largest max_prepared_stmt_count); past it an id is
  // unknown, i.e. a write, also through "-1".
  const m = api.trackerNew(true, false);
  const prep = Buffer.from([0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
  for (let id = 0; id <= 2 ** 20; id++) {
    api.trackerCommand(m, Command.COM_STMT_PREPARE, select, true);
    prep.writeUInt32LE(id, 1);
    api.trackerServerPacket(m, prep, prep.length);
  }
  assert.equal(api.trackerState(m).preparedCount, 2 ** 20);
  for (const [id, held] of [[2 ** 20 - 1, false], [2 ** 20, true], [0xffffffff, true]] as const) {
    api.trackerCommand(m, Command.COM_STMT_EXECUTE, stmtId(id), false);
    assert.equal(api.trackerServerPacket(m, ok(AUTOCOMMIT), 7), held, `execute ${id}`);
  }
  api.trackerCommand(m, Command.COM_STMT_CLOSE, stmtId(0), true);
  api.trackerCommand(m, Command.COM_STMT_PREPARE, select, true);
  api.trackerServerPacket(m, prep, prep.length); // id 2^20 again: room for it now
  api.trackerCommand(m, Command.COM_STMT_EXECUTE, stmtId(2 ** 20), false);
  assert.equal(api.trackerServerPacket(m, ok(AUTOCOMMIT), 7), false);

  for (const bad of [[], [{}], ['x', false], [h, 3, 'SELECT 1', true], [h, 3, select, 1], [h, -1, select, true], [h, 1.5, select, true],
    [{}, 3, select, true], [null, 3, select, true]]) {
    assert.throws(() => (api.trackerCommand as (...a: unknown[]) => unknown)(...bad), TypeError);
  }
  assert.throws(() => (api.trackerServerPacket as (...a: unknown[]) => unknown)(h, ok(0), 2 ** 32), TypeError);
  assert.throws(() => (api.trackerServerPacket as (...a: unknown[]) => unknown)(h, 'x', 1), TypeError);
  assert.throws(() => (api.classifyStatement as (...a: unknown[]) => unknown)('SELECT 1', true), TypeError);
  assert.throws(() => (api.trackerNew as (...a: unknown[]) => unknown)(1, 0), TypeError);
  assert.throws(() => api.trackerState(Buffer.alloc(8)), TypeError);
});

test('ResponseTracker: the prepared-statement map under many ids, closes and resets (growth, deletion, lookups)', () => {
  const api = native();
  const r = rng(4242);
  const t = new Twin(api, true, false, 'map');
  const ids: number[] = [];
  const classes = [latin1('SELECT 1'), latin1('INSERT INTO t VALUES (1)'), latin1('BEGIN'), latin1('DROP TABLE t')];
  for (let step = 0; step < 30000; step++) {
    const c = r.next();
    if (c < 0.45) {
      // clustered ids (as a server hands them out) and random ones; sometimes an id already known
      const id = r.chance(0.6) ? (step & 0xfff) : r.chance(0.5) && ids.length > 0 ? r.pick(ids) : r.int(2 ** 32);
      t.cmd(Command.COM_STMT_PREPARE, r.pick(classes), true, `step ${step}`);
      t.feed(prepareOk(id, 0, 0), undefined, `step ${step}`);
      ids.push(id);
    } else if (c < 0.75 && ids.length > 0) {
      t.cmd(Command.COM_STMT_CLOSE, stmtId(r.pick(ids)), true, `step ${step}`);
    } else if (c < 0.9995) {
      const id = ids.length > 0 && r.chance(0.8) ? r.pick(ids) : r.chance(0.5) ? 0xffffffff : r.int(2 ** 32);
      t.cmd(Command.COM_STMT_EXECUTE, stmtId(id), false, `step ${step}`);
      t.feed(ok(r.chance(0.5) ? IN_TRANS : AUTOCOMMIT), undefined, `step ${step}`);
    } else {
      t.cmd(Command.COM_RESET_CONNECTION);
      t.feed(ok(AUTOCOMMIT));
    }
  }
  assert.ok(t.ts.preparedCount > 1000, `the map grew (${t.ts.preparedCount})`);
  // A small map under heavy churn: deletions that shift entries back across the end of the table.
  const small = new Twin(api, false, false, 'small map');
  const live: number[] = [];
  for (let step = 0; step < 20000; step++) {
    if (live.length < 12 && r.chance(0.55)) {
      const id = r.chance(0.5) ? r.int(64) : r.int(2 ** 32);
      small.cmd(Command.COM_STMT_PREPARE, r.pick(classes), true, `step ${step}`);
      small.feed(prepareOk(id, 0, 0), undefined, `step ${step}`);
      live.push(id);
    } else if (live.length > 0 && r.chance(0.6)) {
      small.cmd(Command.COM_STMT_CLOSE, stmtId(live.splice(r.int(live.length), 1)[0]!), true, `step ${step}`);
    } else {
      small.cmd(Command.COM_STMT_EXECUTE, stmtId(live.length > 0 && r.chance(0.9) ? r.pick(live) : r.int(64)), false, `step ${step}`);
      small.feed(ok(AUTOCOMMIT), undefined, `step ${step}`);
    }
  }
});

// ------------------------------------------------------------------------------------------------
// Protocol fuzzer (streams from test/support/mysql-stream-gen.ts, shared with native-relay.test.ts)

test('ResponseTracker: seeded random protocol streams give the same answer in C for every packet', (t) => {
  const api = native();
  let packets = 0;
  let commands = 0;
  let held = 0;
  let malformedOks = 0;
  let tracked = 0;
  for (let seed = 1; seed <= 1000; seed++) {
    const r = rng(seed * 7919);
    const deprecate = r.chance(0.5);
    const cache = r.chance(0.4);
    const gen = new StreamGen(r, deprecate, cache);
    const twin = new Twin(api, deprecate, cache, `seed ${seed} (deprecateEof ${deprecate}, cacheMetadata ${cache})`);
    // Responses owed, in order; a command is sent, or the next packet of the oldest response arrives.
    const owed: Pkt[] = [];
    for (let step = 0; step < 500; step++) {
      const c = r.next();
      if (c < 0.03) {
        const junk = gen.junk();
        held += twin.feed(junk.payload, junk.length, `step ${step} (junk)`) ? 1 : 0;
        packets++;
      } else if (c < 0.05 && owed.length > 0) {
        owed.splice(r.int(owed.length), 1); // a lost packet: both trackers go out of step the same way
      } else if (owed.length === 0 || c < 0.3) {
        const cmd = gen.command();
        twin.cmd(cmd.command, cmd.rest, cmd.complete, `step ${step} ${cmd.what}`);
        owed.push(...cmd.response);
        commands++;
      } else {
        const p = owed.shift()!;
        if (!twin.ts.untracked && twin.ts.pending > 0) tracked++;
        held += twin.feed(p.payload, p.length, `step ${step}`) ? 1 : 0;
        packets++;
      }
    }
    malformedOks += gen.malformed;
  }
  // The streams reach the interesting parts (not a vacuous comparison).
  const stats = `${packets} packets (${tracked} parsed by a tracking tracker), ${commands} commands, ${held} held, ${malformedOks} OKs with a 0xFB/0xFF length`;
  t.diagnostic(stats);
  assert.ok(packets > 300_000 && tracked > 200_000 && commands > 100_000 && held > 10_000 && malformedOks > 100, stats);
});
