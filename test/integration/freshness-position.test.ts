import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MariadbPositionSource, readOfflineCheckpoint } from '../../proxy/freshness/mariadb-position.ts';
import { startPrivateMariadb } from '../support/mariadb.ts';

test('the monitoring connection survives a MariaDB restart and the offline checkpoint matches the online one', async () => {
  const db = await startPrivateMariadb();
  const source = new MariadbPositionSource({ socket: db.server.socket });
  try {
    const before = await source.read();
    assert.equal(before.engine, 'mariadb');
    assert.ok(BigInt(before.lsnFlushed!) > 0n);
    await db.rootQuery('CREATE TABLE IF NOT EXISTS test.p (a INT PRIMARY KEY) ENGINE=InnoDB; INSERT INTO test.p VALUES (1)');
    await db.server.stop();
    // While the server is down the connection closes under the source: no uncaught error, a clear rejection.
    await new Promise((r) => setTimeout(r, 200));
    await assert.rejects(source.read());
    const offline = readOfflineCheckpoint(db.server.datadir);
    assert.ok(offline !== undefined && offline >= BigInt(before.lsnCheckpoint!), 'offline checkpoint is readable and not behind');
    await db.server.start();
    const after = await source.read();
    assert.ok(BigInt(after.lsnFlushed!) > BigInt(before.lsnFlushed!), 'the write moved the LSN');
    assert.equal(BigInt(after.lsnCheckpoint!), offline, 'a clean restart starts at the offline checkpoint');
  } finally {
    await source.close();
    await db.stop();
  }
});
