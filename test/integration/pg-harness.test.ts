import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startPrivatePostgres } from '../support/postgres.ts';
import { latestCheckpointLsn, parseLsn } from '../../src/db/postgres-server.ts';

test('private PostgreSQL starts as an unprivileged user, answers, reports its LSN, stops without leftovers', async () => {
  const db = await startPrivatePostgres();
  try {
    const r = await db.query("SELECT current_setting('data_directory') AS d, current_setting('unix_socket_directories') AS s, pg_current_wal_flush_lsn()::text AS lsn");
    assert.equal(r.rows[0].d, db.server.datadir);
    assert.equal(r.rows[0].s, db.server.socketDir);
    assert.ok(parseLsn(r.rows[0].lsn) > 0n);
    const roles = await db.query("SELECT rolname, rolpassword LIKE 'md5%' AS md5 FROM pg_authid WHERE rolname IN ('app', 'app_md5') ORDER BY 1");
    assert.deepEqual(roles.rows, [{ rolname: 'app', md5: false }, { rolname: 'app_md5', md5: true }]);
    await db.query('CHECKPOINT');
    const lsnAfter = (await db.query('SELECT pg_current_wal_flush_lsn()::text AS lsn')).rows[0].lsn;
    const cp = await db.server.latestCheckpointLsn();
    assert.ok(cp > 0n && cp <= parseLsn(lsnAfter), 'checkpoint LSN read from pg_controldata is at or before the flush LSN');
  } finally {
    const pid = db.server.pid!;
    await db.stop();
    assert.throws(() => process.kill(pid, 0), /ESRCH/, 'postgres is gone after stop');
  }
});

test('latestCheckpointLsn parses pg_controldata output and rejects output without it', () => {
  const text = 'pg_control version number:            1300\nLatest checkpoint location:           0/1A2B3C4D\nLatest checkpoint\'s REDO location:    0/1A2B3C00\n';
  assert.equal(latestCheckpointLsn(text), 0x1a2b3c4dn);
  assert.equal(parseLsn('16/B374D848'), 0x16b374d848n);
  assert.throws(() => latestCheckpointLsn('nothing here'), /Latest checkpoint location/);
  assert.throws(() => parseLsn('0/xyz'), /not a PostgreSQL LSN/);
});
