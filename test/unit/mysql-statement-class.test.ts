import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isReadOnlyStatement, STATEMENT_PREFIX_BYTES } from '../../proxy/mysql/statement-class.ts';

const ro = (s: string) => isReadOnlyStatement(Buffer.from(s, 'latin1'));

test('session and read statements need no freshness hold', () => {
  for (const s of ['SET NAMES utf8mb4', 'set names utf8mb4', '  SET @a = 1', 'USE app', 'select 1', 'SHOW TABLES',
    '/* comment */ SELECT 1', '-- note\nSELECT 1', '# note\nSHOW STATUS', 'BEGIN', 'START TRANSACTION', 'ROLLBACK',
    'DESCRIBE t', 'EXPLAIN SELECT 1']) {
    assert.equal(ro(s), true, s);
  }
});

test('anything that may change durable state, or is not recognised, is held', () => {
  for (const s of ['INSERT INTO t VALUES (1)', 'update t set a=1', 'DELETE FROM t', 'REPLACE INTO t VALUES (1)', 'COMMIT',
    'CREATE TABLE t (a INT)', 'DROP TABLE t', 'ALTER TABLE t ADD b INT', 'CALL p()', 'DO f()', 'LOAD DATA INFILE "x" INTO TABLE t',
    'SET autocommit = 1', 'SET @@session.AUTOCOMMIT=1', '/*!40101 SET NAMES utf8 */', '/*M!100101 SET x=1 */', 'GRANT ALL ON *.* TO x',
    'TRUNCATE t', 'RENAME TABLE a TO b', '', '   ', '/* unterminated', '-- unterminated', 'XA COMMIT 1', 'FLUSH TABLES',
    'SELECTX', 'SAVEPOINT s1']) {
    assert.equal(ro(s), false, s);
  }
});

test('a keyword cut off by the end of the inspected prefix is not trusted', () => {
  const pad = ' '.repeat(STATEMENT_PREFIX_BYTES - 3);
  assert.equal(isReadOnlyStatement(Buffer.from(`${pad}SEL`, 'latin1')), false);
  assert.equal(isReadOnlyStatement(Buffer.from(`${' '.repeat(10)}SELECT`, 'latin1')), true);
});
