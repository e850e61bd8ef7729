import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startPrivateMariadb } from '../support/mariadb.ts';

test('private MariaDB harness starts its own instance, answers, and stops without leftovers', async () => {
  const db = await startPrivateMariadb();
  try {
    assert.ok(db.server.pid, 'mariadbd has a pid');
    const rows = await db.rootQuery('SELECT @@socket AS s, @@datadir AS d');
    assert.equal(rows[0].s, db.server.socket);
    assert.equal(rows[0].d.replace(/\/$/, ''), db.server.datadir);
  } finally {
    const pid = db.server.pid!;
    await db.stop();
    assert.throws(() => process.kill(pid, 0), /ESRCH/, 'mariadbd is gone after stop');
  }
});
