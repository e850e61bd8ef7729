import { test } from 'node:test';
import assert from 'node:assert/strict';
import { serialize } from 'pg-protocol';
import { classifyStatement } from '../../proxy/pg/statement-class.ts';
import { Conversation } from '../../proxy/pg/conversation.ts';
import { ClientScanner } from '../../proxy/pg/client-scanner.ts';
import { encodeMessage } from '../../proxy/pg/codec.ts';

const reads = [
  'SELECT 1', 'select abalance from pgbench_accounts where aid = 5;', '  /* hi /* nested */ */ SELECT 1', '-- c\nSELECT 1',
  'VALUES (1), (2)', 'TABLE t', 'WITH x AS (SELECT 1) SELECT * FROM x', 'SHOW search_path', "SET search_path = 'a'",
  'RESET ALL', 'BEGIN', 'BEGIN ISOLATION LEVEL SERIALIZABLE', 'START TRANSACTION READ ONLY', 'COMMIT', 'END', 'ROLLBACK', 'ABORT',
  'SAVEPOINT s', 'RELEASE SAVEPOINT s', 'ROLLBACK TO SAVEPOINT s', 'DECLARE c CURSOR FOR SELECT * FROM t', 'FETCH 10 FROM c',
  'MOVE 5 IN c', 'CLOSE c', 'DEALLOCATE ALL', 'DISCARD ALL', 'LISTEN ch', 'UNLISTEN *', "NOTIFY ch, 'x'", 'EXPLAIN SELECT 1',
  'COPY t TO STDOUT', 'COPY (SELECT * FROM t ORDER BY id) TO STDOUT WITH (FORMAT csv)', 'BEGIN; SELECT 1; COMMIT', 'SELECT 1;;  ',
  "PREPARE TRANSACTION 'x'", 'SELECT pg_sleep(1)', 'SELECT now(), count(*) FROM t WHERE updated_at > now()',
];
const writes = [
  'INSERT INTO t VALUES (1)', 'UPDATE t SET a = 1', 'DELETE FROM t', 'MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE',
  'CREATE TABLE x (a int)', 'DROP TABLE x', 'ALTER TABLE t ADD b int', 'TRUNCATE t', 'VACUUM', 'ANALYZE t', 'CHECKPOINT',
  'GRANT ALL ON t TO u', 'CALL p()', 'DO $$BEGIN INSERT INTO t VALUES (1); END$$', "EXECUTE p(1)", 'LOCK TABLE t',
  'SELECT * INTO t2 FROM t', 'SELECT * FROM t FOR UPDATE', 'SELECT * FROM t FOR KEY SHARE', "SELECT nextval('s')",
  "SELECT setval('s', 5)", 'SELECT lo_create(0)', "SELECT lo_import('/etc/passwd')",
  'WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d', 'EXPLAIN ANALYZE SELECT 1', 'EXPLAIN (ANALYSE) CREATE TABLE x AS SELECT 1',
  'COPY t FROM STDIN', "COPY t FROM '/tmp/x'", "COPY t TO '/tmp/x'", 'COPY (INSERT INTO t VALUES (1) RETURNING *) TO STDOUT',
  'SELECT 1; DROP TABLE t', 'SELECT 1; /* ; */ DROP TABLE t', "SELECT 'x;'; CREATE TABLE y ()", 'select1', 'SELECT$1',
  '/* unterminated SELECT 1', 'REFRESH MATERIALIZED VIEW v', 'COMMIT PREPARED \'x\'', '', 'CLUSTER t', 'REINDEX TABLE t',
];

test('statement classes: plain reads are reads; anything that may write, or is not recognised, is a write', () => {
  for (const r of reads) assert.equal(classifyStatement(r, true), 'read', r);
  for (const w of writes) {
    if (w === '') continue;
    assert.equal(classifyStatement(w, true), 'write', w);
  }
  assert.equal(classifyStatement('SELECT 1', false), 'write', 'a text not seen whole is a write');
});

// ---- the hold decisions that follow from the classes ----
const msg = (t: string, body = '') => encodeMessage(t.charCodeAt(0), Buffer.from(body));
const C = (tag: string) => msg('C', `${tag}\0`);
const Z = (s: string) => msg('Z', s);

/**
 * Runs client messages through the mirror, then the backend answers; returns the messages whose verdict
 * is a hold (a ReadyForQuery hold also covers the CommandComplete kept before it).
 */
function holds(conv: Conversation, client: Buffer[], backend: Array<[string, string?]>): string[] {
  new ClientScanner(conv).scan(Buffer.concat(client));
  const out: string[] = [];
  for (const [type, body] of backend) {
    const b = body === undefined ? undefined : Buffer.from(type === 'C' ? `${body}\0` : body);
    const v = conv.onBackendMessage(type.charCodeAt(0), b);
    if (v === 'hold') out.push(`${type}${body ? ` ${body}` : ''}`);
  }
  return out;
}

test('reads never wait: autocommit SELECT, read-only transactions, prepared reads; writes and SELECT nextval() are held', () => {
  const conv = new Conversation(classifyStatement);
  const q = (text: string) => serialize.query(text);
  assert.deepEqual(holds(conv, [q('SELECT 1')], [['T'], ['D'], ['C', 'SELECT 1'], ['Z', 'I']]), []);
  assert.deepEqual(holds(conv, [q('BEGIN'), q('SELECT 1'), q('COMMIT')],
    [['C', 'BEGIN'], ['Z', 'T'], ['T'], ['C', 'SELECT 1'], ['Z', 'T'], ['C', 'COMMIT'], ['Z', 'I']]), [], 'a read-only transaction');
  assert.deepEqual(holds(conv, [q('INSERT INTO t VALUES (1)')], [['C', 'INSERT 0 1'], ['Z', 'I']]), ['Z I']);
  assert.deepEqual(holds(conv, [q("SELECT nextval('s')")], [['T'], ['D'], ['C', 'SELECT 1'], ['Z', 'I']]), ['Z I']);
  assert.deepEqual(holds(conv, [q('BEGIN'), q('INSERT INTO t VALUES (1)'), q('SELECT 1'), q('COMMIT')],
    [['C', 'BEGIN'], ['Z', 'T'], ['C', 'INSERT 0 1'], ['Z', 'T'], ['T'], ['C', 'SELECT 1'], ['Z', 'T'], ['C', 'COMMIT'], ['Z', 'I']]),
  ['C COMMIT'], 'a writing transaction is held at its COMMIT, once');
  assert.deepEqual(holds(conv, [q('BEGIN'), q('INSERT INTO t VALUES (1)'), q('ROLLBACK')],
    [['C', 'BEGIN'], ['Z', 'T'], ['C', 'INSERT 0 1'], ['Z', 'T'], ['C', 'ROLLBACK'], ['Z', 'I']]), [], 'a rolled-back transaction acknowledges nothing');
  assert.deepEqual(holds(conv, [q('BEGIN'), q('INSERT INTO t VALUES (1)'), q('SELECT 1/0'), q('COMMIT')],
    [['C', 'BEGIN'], ['Z', 'T'], ['C', 'INSERT 0 1'], ['Z', 'T'], ['E'], ['Z', 'E'], ['C', 'ROLLBACK'], ['Z', 'I']]), [], 'COMMIT of a failed transaction is a ROLLBACK');
  assert.deepEqual(holds(conv, [q('INSERT INTO t VALUES (1); SELECT 1')], [['C', 'INSERT 0 1'], ['T'], ['C', 'SELECT 1'], ['Z', 'I']]), ['Z I'], 'a multi-statement query with a write');
  assert.deepEqual(holds(conv, [q("COMMIT PREPARED 'x'")], [['C', 'COMMIT PREPARED'], ['Z', 'I']]), ['C COMMIT PREPARED'], 'whatever the prepared transaction did');
  assert.deepEqual(holds(conv, [serialize.query('COPY t FROM STDIN')], [['G', '\0\0\0']]), []);
  new ClientScanner(conv).scan(serialize.copyDone());
  assert.deepEqual(holds(conv, [], [['C', 'COPY 0'], ['Z', 'I']]), ['Z I'], 'COPY FROM is a write');
  assert.equal(conv.lost, undefined);
});

test('extended protocol: the class of a prepared statement follows it through Bind to every Execute, and a redefinition or Close resets it', () => {
  const conv = new Conversation(classifyStatement);
  const ext = (stmt: string, portal = '') => [serialize.bind({ statement: stmt, portal }), serialize.execute({ portal }), serialize.sync()];
  const answers: Array<[string, string?]> = [['2'], ['D'], ['C', 'SELECT 1'], ['Z', 'I']];
  assert.deepEqual(holds(conv, [serialize.parse({ name: 'r', text: 'SELECT $1::int' }), ...ext('r')], [['1'], ...answers]), []);
  assert.deepEqual(holds(conv, ext('r'), answers), [], 'the named read statement, executed again');
  assert.deepEqual(holds(conv, [serialize.parse({ name: 'w', text: 'INSERT INTO t VALUES ($1)' }), ...ext('w', 'p')], [['1'], ['2'], ['C', 'INSERT 0 1'], ['Z', 'I']]), ['Z I']);
  assert.deepEqual(holds(conv, [serialize.close({ type: 'S', name: 'r' } as any), serialize.sync()], [['3'], ['Z', 'I']]), []);
  assert.deepEqual(holds(conv, ext('r'), [['E'], ['Z', 'I']]), [], 'executing a closed statement fails');
  assert.deepEqual(holds(conv, [serialize.parse({ name: 'r', text: 'DELETE FROM t' }), ...ext('r')], [['1'], ['2'], ['C', 'DELETE 1'], ['Z', 'I']]), ['Z I'], 'a redefined name takes its new class');
  assert.deepEqual(holds(conv, [serialize.bind({ statement: 'unknown' }), serialize.execute({}), serialize.sync()], [['2'], ['C', 'SELECT 1'], ['Z', 'I']]), ['Z I'], 'a statement the proxy never saw is a write');
  assert.equal(conv.lost, undefined);
});
