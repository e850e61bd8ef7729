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
    t.commandStarted(Command.COM_QUERY);
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
  t.commandStarted(Command.COM_QUERY);
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
  t.commandStarted(Command.COM_STMT_EXECUTE);
  assert.equal(feed(t, Buffer.from([2, 0])), false);
  assert.equal(feed(t, Buffer.from([0x00, 0x00, 1, 2])), false); // binary row directly
  assert.equal(feed(t, okFe(AUTOCOMMIT)), false);
  assert.equal(t.pending, 0);
});
