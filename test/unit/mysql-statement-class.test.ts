import { test } from 'node:test';
import assert from 'node:assert/strict';
import { classifyStatement, isReadOnlyStatement, STATEMENT_PREFIX_BYTES } from '../../proxy/mysql/statement-class.ts';

const cls = (s: string, complete = true) => classifyStatement(Buffer.from(s, 'latin1'), complete);

test('session and read statements need no freshness hold', () => {
  for (const s of ['SET NAMES utf8mb4', 'set names utf8mb4', '  SET @a = 1', 'SET @@session.sql_mode = \'ANSI\'',
    'SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED', 'USE app', 'select 1', 'SHOW TABLES',
    '/* comment */ SELECT 1', '-- note\nSELECT 1', '# note\nSHOW STATUS', 'ROLLBACK', 'DESCRIBE t', 'EXPLAIN SELECT 1', 'SELECT(1)']) {
    assert.equal(cls(s), 'read', s);
  }
});

test('BEGIN and START TRANSACTION are their own class (they commit an open transaction); BEGIN NOT ATOMIC is a write', () => {
  for (const s of ['BEGIN', 'begin work', 'BEGIN;', 'START TRANSACTION', 'START TRANSACTION READ ONLY', 'start transaction with consistent snapshot']) {
    assert.equal(cls(s), 'begin', s);
  }
  for (const s of ['BEGIN NOT ATOMIC INSERT INTO t VALUES (1); END', 'START SLAVE', 'START REPLICA', 'BEGINX']) {
    assert.equal(cls(s), 'write', s);
  }
});

test('DML is its own class; anything else that may change durable state, or is not recognised, is a write', () => {
  for (const s of ['INSERT INTO t VALUES (1)', 'update t set a=1', 'DELETE FROM t', 'REPLACE INTO t VALUES (1)',
    "INSERT INTO t (v) VALUES ('b') RETURNING id"]) {
    assert.equal(cls(s), 'dml', s);
  }
  for (const s of ['COMMIT', 'COMMIT AND CHAIN', 'CREATE TABLE t (a INT)', 'DROP TABLE t', 'ALTER TABLE t ADD b INT', 'CALL p()', 'DO f()',
    'LOAD DATA INFILE "x" INTO TABLE t', 'GRANT ALL ON *.* TO x', 'TRUNCATE t', 'RENAME TABLE a TO b', '', '   ',
    '/* unterminated', '-- unterminated', 'XA COMMIT 1', 'FLUSH TABLES', 'SELECTX', 'SELECT1', 'SAVEPOINT s1',
    '/*!40101 SET NAMES utf8 */', '/*M!100101 SET x=1 */', 'WITH x AS (SELECT 1) SELECT * FROM x']) {
    assert.equal(cls(s), 'write', s);
  }
});

test('SET is read-only only in plainly session-only forms, with the whole statement visible', () => {
  for (const s of ['SET autocommit = 1', 'SET @@session.AUTOCOMMIT=1', "SET PASSWORD FOR 'low'@'%' = PASSWORD('x')",
    "SET PASSWORD = 'x'", 'SET STATEMENT max_statement_time=1 FOR INSERT INTO t VALUES (1)', 'SET GLOBAL max_connections = 10',
    'SET @@global.max_connections = 10', 'SET DEFAULT ROLE r FOR u', 'SET @x = f()', 'SET @x = (SELECT COUNT(*) FROM t)',
    'SET @x = NEXT VALUE FOR s', 'SET @a = 1 /*!, @@global.x = 1 */']) {
    assert.equal(cls(s), 'write', s);
  }
  assert.equal(cls('SET NAMES utf8mb4', false), 'write', 'the end of the statement is not visible');
});

test('a keyword cut off by the end of the inspected prefix is not trusted', () => {
  const pad = ' '.repeat(STATEMENT_PREFIX_BYTES - 3);
  assert.equal(classifyStatement(Buffer.from(`${pad}SEL`, 'latin1'), false), 'write');
  assert.equal(isReadOnlyStatement(Buffer.from(`${' '.repeat(10)}SELECT`, 'latin1')), true);
  assert.equal(classifyStatement(Buffer.from('BEGIN  ', 'latin1'), false), 'write', 'BEGIN followed by something not visible');
});
