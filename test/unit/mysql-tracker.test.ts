import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ResponseTracker, INSPECT_BYTES } from '../../proxy/mysql/tracker.ts';
import { Cap, Command, ServerStatus } from '../../proxy/mysql/constants.ts';

/** Feeds one logical packet the way the pump does: its first INSPECT_BYTES payload bytes and its length. */
function feed(t: ResponseTracker, payload: Buffer): boolean {
  return t.onServerPacket(payload.subarray(0, Math.min(payload.length, INSPECT_BYTES)), payload.length);
}
const ok = (status: number) => Buffer.from([0x00, 0x01, 0x00, status & 0xff, status >> 8, 0, 0]);
const okFe = (status: number) => Buffer.from([0xfe, 0x00, 0x00, status & 0xff, status >> 8, 0, 0]);
const eof = (status: number) => Buffer.from([0xfe, 0, 0, status & 0xff, status >> 8]);
const err = () => Buffer.concat([Buffer.from([0xff, 0x28, 0x04, 0x23]), Buffer.from('42000syntax')]);
const colCount = (n: number) => Buffer.from([n]);
const colDef = () => Buffer.from('\x03def\x00\x00\x00\x01a\x00\x0c\x3f\x00');
const row = (s: string) => Buffer.concat([Buffer.from([s.length]), Buffer.from(s)]);
const AUTOCOMMIT = ServerStatus.AUTOCOMMIT;
const IN_TRANS = ServerStatus.IN_TRANS | AUTOCOMMIT;
const MORE = ServerStatus.MORE_RESULTS_EXISTS;
const text = (sql: string) => Buffer.from(sql, 'latin1');
/** A COM_QUERY start as the pump reports it: the whole (short) statement text, complete. */
const query = (t: ResponseTracker, sql: string) => t.commandStarted(Command.COM_QUERY, text(sql), true);
const stmtId = (id: number) => { const b = Buffer.alloc(9); b.writeUInt32LE(id >>> 0, 0); return b; };
const prepareOk = (id: number, columns: number, params: number) => {
  const b = Buffer.from([0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
  b.writeUInt32LE(id, 1); b.writeUInt16LE(columns, 5); b.writeUInt16LE(params, 7);
  return b;
};

test('autocommit write: the final OK outside a transaction is the gated ack; inside a transaction it is not', () => {
  const t = new ResponseTracker(Cap.CLIENT_DEPRECATE_EOF);
  t.commandStarted(Command.COM_QUERY);
  assert.equal(feed(t, ok(AUTOCOMMIT)), true);
  t.commandStarted(Command.COM_QUERY); // INSERT inside BEGIN
  assert.equal(feed(t, ok(IN_TRANS)), false);
  t.commandStarted(Command.COM_QUERY); // COMMIT
  assert.equal(feed(t, ok(AUTOCOMMIT)), true);
  assert.equal(t.pending, 0);
});

test('SELECT result sets are not gated (DEPRECATE_EOF and classic EOF), and rows starting with 0xFE-like bytes do not end them early', () => {
  for (const deprecate of [true, false]) {
    const t = new ResponseTracker(deprecate ? Cap.CLIENT_DEPRECATE_EOF : 0n);
    query(t, 'SELECT a, b FROM t');
    assert.equal(feed(t, colCount(2)), false);
    assert.equal(feed(t, colDef()), false);
    assert.equal(feed(t, colDef()), false);
    if (!deprecate) assert.equal(feed(t, eof(AUTOCOMMIT)), false);
    assert.equal(feed(t, row('a')), false);
    assert.equal(feed(t, Buffer.from([0x00, 0x01])), false); // binary row
    assert.equal(t.pending, 1);
    assert.equal(feed(t, deprecate ? okFe(AUTOCOMMIT) : eof(AUTOCOMMIT)), false);
    assert.equal(t.pending, 0);
  }
});

test('multi-statement "SELECT; INSERT" is gated once at its end; "INSERT; bad" (ERR) is gated too', () => {
  const t = new ResponseTracker(Cap.CLIENT_DEPRECATE_EOF);
  query(t, 'SELECT 1; INSERT INTO t VALUES (1)');
  feed(t, colCount(1)); feed(t, colDef()); feed(t, row('1'));
  assert.equal(feed(t, okFe(AUTOCOMMIT | MORE)), false);
  assert.equal(feed(t, ok(AUTOCOMMIT)), true);
  t.commandStarted(Command.COM_QUERY);
  assert.equal(feed(t, ok(AUTOCOMMIT | MORE)), false);
  assert.equal(feed(t, err()), true, 'the first statement was committed; its ack rides on the ERR');
  assert.equal(t.pending, 0);
});

test('pipelined prepare + execute + close: prepare definitions are skipped, execute OK is gated, close has no response', () => {
  const t = new ResponseTracker(0n);
  t.commandStarted(Command.COM_STMT_PREPARE);
  t.commandStarted(Command.COM_STMT_EXECUTE);
  t.commandStarted(Command.COM_STMT_CLOSE);
  assert.equal(t.pending, 2);
  const prepOk = Buffer.from([0x00, 1, 0, 0, 0, 1, 0, 2, 0, 0, 0, 0]); // 1 column, 2 params
  assert.equal(feed(t, prepOk), false);
  for (const p of [colDef(), colDef(), eof(AUTOCOMMIT), colDef(), eof(AUTOCOMMIT)]) assert.equal(feed(t, p), false);
  assert.equal(t.pending, 1);
  assert.equal(feed(t, ok(AUTOCOMMIT)), true);
  assert.equal(t.pending, 0);
});

test('MariaDB progress reports do not end a response; COM_CHANGE_USER auth switches are followed to the final OK', () => {
  const t = new ResponseTracker(Cap.CLIENT_DEPRECATE_EOF);
  t.commandStarted(Command.COM_QUERY);
  const progress = Buffer.from([0xff, 0xff, 0xff, 1, 1, 0, 0, 0, 0]);
  assert.equal(feed(t, progress), false);
  assert.equal(feed(t, ok(AUTOCOMMIT)), true);
  t.commandStarted(Command.COM_CHANGE_USER);
  assert.equal(feed(t, Buffer.from('\xfeclient_ed25519\x00nonce', 'latin1')), false);
  assert.equal(t.pending, 1);
  assert.equal(feed(t, ok(AUTOCOMMIT)), false, 'change-user OK is not a write ack');
  assert.equal(t.pending, 0);
});

test('LOAD DATA LOCAL: the OK after the client streams the file is gated', () => {
  const t = new ResponseTracker(Cap.CLIENT_DEPRECATE_EOF);
  t.commandStarted(Command.COM_QUERY);
  assert.equal(feed(t, Buffer.from('\xfb/tmp/x.csv', 'latin1')), false);
  assert.equal(feed(t, ok(AUTOCOMMIT)), true);
});

test('MariaDB metadata cache: a result set without column definitions (metadata_follows = 0)', () => {
  const t = new ResponseTracker(Cap.CLIENT_DEPRECATE_EOF | Cap.MARIADB_CLIENT_CACHE_METADATA);
  t.commandStarted(Command.COM_STMT_PREPARE, text('SELECT a, b FROM t WHERE id = ?'), true);
  feed(t, prepareOk(7, 2, 1)); // DEPRECATE_EOF: no EOFs after the definitions
  feed(t, colDef()); feed(t, colDef());
  assert.equal(feed(t, colDef()), false);
  assert.equal(t.pending, 0);
  t.commandStarted(Command.COM_STMT_EXECUTE, stmtId(7), false);
  assert.equal(feed(t, Buffer.from([2, 0])), false);
  assert.equal(feed(t, Buffer.from([0x00, 0x00, 1, 2])), false); // binary row directly
  assert.equal(feed(t, okFe(AUTOCOMMIT)), false);
  assert.equal(t.pending, 0);
});

test('a result set ending the response of a statement that is not read-only is held (INSERT ... RETURNING), text and prepared', () => {
  const t = new ResponseTracker(Cap.CLIENT_DEPRECATE_EOF);
  query(t, "INSERT INTO t (v) VALUES ('x') RETURNING id");
  feed(t, colCount(1)); feed(t, colDef()); feed(t, row('1'));
  assert.equal(feed(t, okFe(AUTOCOMMIT)), true);
  t.commandStarted(Command.COM_STMT_PREPARE, text('DELETE FROM t WHERE id = ? RETURNING id'), true);
  feed(t, prepareOk(3, 1, 1)); feed(t, colDef()); feed(t, colDef());
  t.commandStarted(Command.COM_STMT_EXECUTE, stmtId(3), false);
  feed(t, colCount(1)); feed(t, colDef()); feed(t, Buffer.from([0x00, 0x00, 1]));
  assert.equal(feed(t, okFe(AUTOCOMMIT)), true);
  // The same shapes inside a transaction are not acknowledgments of a durable write.
  t.commandStarted(Command.COM_STMT_EXECUTE, stmtId(3), false);
  feed(t, colCount(1)); feed(t, colDef()); feed(t, Buffer.from([0x00, 0x00, 1]));
  assert.equal(feed(t, okFe(IN_TRANS)), false);
});

test('prepared statements keep the class of their text by id; unknown ids, id -1 after a failed prepare, and closed ids are writes', () => {
  const t = new ResponseTracker(0n);
  // A prepared point select is never held; pipelined prepare + execute(-1) resolves at the end.
  t.commandStarted(Command.COM_STMT_PREPARE, text('SELECT c FROM sbtest1 WHERE id=?'), true);
  t.commandStarted(Command.COM_STMT_EXECUTE, stmtId(-1), false);
  for (const p of [prepareOk(1, 1, 1), colDef(), eof(AUTOCOMMIT), colDef(), eof(AUTOCOMMIT)]) feed(t, p);
  const selectRows = () => [colCount(1), colDef(), eof(AUTOCOMMIT), Buffer.from([0x00, 0x00, 1])];
  for (const p of selectRows()) assert.equal(feed(t, p), false);
  assert.equal(feed(t, eof(AUTOCOMMIT)), false, 'prepared read via id -1 is not held');
  t.commandStarted(Command.COM_STMT_EXECUTE, stmtId(1), false);
  for (const p of selectRows()) feed(t, p);
  assert.equal(feed(t, eof(AUTOCOMMIT)), false, 'prepared read via its id is not held');
  t.commandStarted(Command.COM_STMT_EXECUTE, stmtId(99), false);
  for (const p of selectRows()) feed(t, p);
  assert.equal(feed(t, eof(AUTOCOMMIT)), true, 'an unknown id is a write');
  // Failed prepare: "-1" no longer names the read-only statement.
  t.commandStarted(Command.COM_STMT_PREPARE, text('SELECT nope FROM'), true);
  t.commandStarted(Command.COM_STMT_EXECUTE, stmtId(-1), false);
  feed(t, err());
  for (const p of selectRows()) feed(t, p);
  assert.equal(feed(t, eof(AUTOCOMMIT)), true);
  // Close, reset and change-user forget statements.
  t.commandStarted(Command.COM_STMT_CLOSE, stmtId(1), true);
  assert.equal(t.preparedCount, 0);
  t.commandStarted(Command.COM_STMT_PREPARE, text('SELECT 1'), true);
  feed(t, prepareOk(2, 1, 0)); feed(t, colDef()); feed(t, eof(AUTOCOMMIT));
  assert.equal(t.preparedCount, 1);
  t.commandStarted(Command.COM_RESET_CONNECTION);
  feed(t, ok(AUTOCOMMIT));
  assert.equal(t.preparedCount, 0);
  assert.equal(t.pending, 0);
});

test('BEGIN / START TRANSACTION inside an open transaction commits it: that OK is held even though it carries IN_TRANS', () => {
  const t = new ResponseTracker(Cap.CLIENT_DEPRECATE_EOF);
  query(t, 'BEGIN');
  assert.equal(feed(t, ok(IN_TRANS)), false, 'BEGIN with no open transaction commits nothing');
  query(t, 'INSERT INTO t VALUES (1)');
  assert.equal(feed(t, ok(IN_TRANS)), false);
  query(t, 'START TRANSACTION');
  assert.equal(feed(t, ok(IN_TRANS)), true, 'implicit commit of the INSERT');
  query(t, 'UPDATE t SET a = 2');
  assert.equal(feed(t, ok(IN_TRANS)), false);
  query(t, 'COMMIT AND CHAIN');
  assert.equal(feed(t, ok(IN_TRANS)), true, 'commit that opens the next transaction at once');
  query(t, 'INSERT INTO t VALUES (1)');
  assert.equal(feed(t, err()), false, 'a DML statement failing inside a transaction acknowledges nothing');
  query(t, 'CREATE TABLE t (a INT)');
  assert.equal(feed(t, err()), true, 'a failing DDL has committed the open transaction first');
  query(t, 'ROLLBACK');
  assert.equal(feed(t, ok(AUTOCOMMIT)), false);
  query(t, 'INSERT INTO t VALUES (1)');
  assert.equal(feed(t, err()), false, 'an autocommit DML that failed changed nothing');
  query(t, 'CALL p()');
  assert.equal(feed(t, err()), true, 'a procedure may have committed statements before its error');
});

test('COM_STMT_FETCH: rows until EOF; a binary row (0x00 first) is not an OK, and pipelined commands stay in step', () => {
  for (const deprecate of [false, true]) {
    const t = new ResponseTracker(deprecate ? Cap.CLIENT_DEPRECATE_EOF : 0n);
    t.commandStarted(Command.COM_STMT_FETCH, stmtId(1), false);
    query(t, 'INSERT INTO t VALUES (1)');
    assert.equal(feed(t, Buffer.from([0x00, 0x00, 1, 0, 0, 0, 0, 0, 0])), false);
    assert.equal(feed(t, Buffer.from([0x00, 0x00, 2, 0, 0, 0, 0, 0, 0])), false);
    assert.equal(t.pending, 2, 'the fetch is still answering');
    const cursorDone = ServerStatus.CURSOR_EXISTS | ServerStatus.LAST_ROW_SENT | AUTOCOMMIT;
    assert.equal(feed(t, deprecate ? okFe(cursorDone) : eof(cursorDone)), false);
    assert.equal(t.pending, 1);
    assert.equal(feed(t, ok(AUTOCOMMIT)), true, 'the INSERT after the fetch is matched to its own OK');
  }
});

test('"the statement prepared last" (-1) never reaches an older statement: after a prepare_ok without an id, or once it is closed', () => {
  const LAST = 0xffffffff;
  const t = new ResponseTracker(Cap.CLIENT_DEPRECATE_EOF);
  t.commandStarted(Command.COM_STMT_PREPARE, text('SELECT ?'), true);
  feed(t, prepareOk(7, 1, 1)); feed(t, colDef()); feed(t, colDef());
  t.commandStarted(Command.COM_STMT_EXECUTE, stmtId(LAST), false);
  assert.equal(feed(t, ok(AUTOCOMMIT)), false, 'a read, as prepared');
  // A prepare_ok too short to carry its id: -1 is unknown from here on (a write), not statement 7.
  t.commandStarted(Command.COM_STMT_PREPARE, text('DELETE FROM t'), true);
  feed(t, Buffer.from([0x00, 0x08]));
  t.commandStarted(Command.COM_STMT_EXECUTE, stmtId(LAST), false);
  assert.equal(feed(t, ok(AUTOCOMMIT)), true);
  // COM_STMT_CLOSE of -1 closes the last prepared statement (the server's LAST_STMT_ID).
  t.commandStarted(Command.COM_STMT_PREPARE, text('SELECT 1'), true);
  feed(t, prepareOk(9, 1, 0)); feed(t, colDef());
  assert.equal(t.preparedCount, 2);
  t.commandStarted(Command.COM_STMT_CLOSE, stmtId(LAST), true);
  assert.equal(t.preparedCount, 1, 'statement 9 is gone');
  t.commandStarted(Command.COM_STMT_EXECUTE, stmtId(LAST), false);
  assert.equal(feed(t, ok(AUTOCOMMIT)), true, 'and -1 names nothing: held');
});

test('an OK whose length fields start with 0xFB/0xFF (not a valid length) is read as an OK without status: held, no exception', () => {
  for (const bad of [0xfb, 0xff]) {
    const t = new ResponseTracker(Cap.CLIENT_DEPRECATE_EOF);
    query(t, 'INSERT INTO t VALUES (1)');
    assert.equal(feed(t, Buffer.from([0x00, bad, 0x00, 0x01, 0x00, 0, 0])), true);
    query(t, 'INSERT INTO t VALUES (1)');
    assert.equal(feed(t, Buffer.from([0x00, 0x01, bad, 0x01, 0x00, 0, 0])), true);
  }
});

test('once untracked (a replication stream), commands are no longer queued', () => {
  const t = new ResponseTracker(0n);
  t.commandStarted(Command.COM_BINLOG_DUMP, Buffer.alloc(10), true);
  for (let i = 0; i < 1000; i++) query(t, 'INSERT INTO t VALUES (1)');
  assert.equal(t.untracked, true);
  assert.equal(t.pending, 0);
});
