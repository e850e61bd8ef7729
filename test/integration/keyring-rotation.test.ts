import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { cpSync } from 'node:fs';
import path from 'node:path';
import { startKeyedMariadb, testKeys } from '../support/at-rest.ts';
import { tempDir } from '../support/tmp.ts';
import { silentLogger } from '../../src/kernel/log.ts';
import { MariadbInventory } from '../../proxy/freshness/inventory/mariadb-inventory.ts';
import { InventoryStore } from '../../proxy/freshness/inventory/store.ts';

async function waitFor<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what} (last: ${JSON.stringify(v, (_k, x) => typeof x === 'bigint' ? Number(x) : x)})`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

test('rotation: a new key version becomes latest, InnoDB re-encrypts to it, and the server restarts with old versions kept', async (t) => {
  const db = await startKeyedMariadb({
    encryption: true,
    keys: testKeys([1, 2]),
    // Pick the new latest version up quickly (production default: 60 s).
    config: { cacheVersionTimeoutMs: 500, rotateKeyAge: 1 },
  });
  try {
    await db.query('CREATE DATABASE rot; CREATE TABLE rot.t (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(100)) ENGINE=InnoDB');
    await db.query("INSERT INTO rot.t (v) SELECT CONCAT('row ', seq) FROM rot.seq_1_to_2000");
    const state = async () => (await db.query(
      "SELECT MIN_KEY_VERSION AS minv, CURRENT_KEY_VERSION AS cur FROM information_schema.INNODB_TABLESPACES_ENCRYPTION WHERE NAME = 'rot/t'"))[0];
    const s1 = await state();
    assert.deepEqual([Number(s1.minv), Number(s1.cur)], [1, 1]);

    // One new version: it becomes latest at once (plugin version cache 500 ms), but InnoDB re-encrypts a
    // page only when page_version + rotate_key_age < latest (observed; the --help text says "or more").
    db.keyring!.addKeys([{ id: 1, version: 2, key: randomBytes(32) }]);
    await waitFor('latest key version 2 seen by InnoDB', async () => {
      const s = await state();
      return Number(s.cur) === 2 ? s : undefined;
    }, 15_000);
    assert.equal(Number((await state()).minv), 1, 'one version behind: not re-encrypted with rotate_key_age=1');

    // A second version: pages (version 1) are now old enough and move to the latest.
    const t0 = Date.now();
    db.keyring!.addKeys([{ id: 1, version: 3, key: randomBytes(32) }]);
    const s2 = await waitFor('rot/t re-encrypted with key version 3', async () => {
      const s = await state();
      return Number(s.minv) === 3 && Number(s.cur) === 3 ? s : undefined;
    }, 30_000).catch(async (e) => {
      t.diagnostic(JSON.stringify(await db.query("SELECT * FROM information_schema.INNODB_TABLESPACES_ENCRYPTION WHERE NAME='rot/t'"), (_k, x) => typeof x === 'bigint' ? Number(x) : x));
      throw e;
    });
    t.diagnostic(`re-encrypted to version 3 in ${Date.now() - t0} ms`);
    assert.equal(Number(s2.minv), 3);
    assert.ok(db.audit.some((e) => e.id === 1 && e.outcome === 'served'), 'mariadbd fetched key 1');

    // Restart: the redo log / system tablespace pages may still carry version 1, which is still served.
    await db.stop();
    await db.start();
    const [{ n }] = await db.query('SELECT COUNT(*) AS n FROM rot.t');
    assert.equal(Number(n), 2000);
    const s3 = await state();
    assert.equal(Number(s3.cur), 3, 'latest version stays 3 after restart');
    const system = await db.query('SELECT NAME, MIN_KEY_VERSION AS minv FROM information_schema.INNODB_TABLESPACES_ENCRYPTION ORDER BY NAME');
    t.diagnostic(`tablespaces: ${system.map((r: any) => `${r.NAME}=${r.minv}`).join(' ')}`);
    // Changing bytes of an existing version is refused (would make data unreadable).
    assert.throws(() => db.keyring!.addKeys([{ id: 1, version: 1, key: randomBytes(32) }]), /immutable/);
  } finally {
    await db.destroy();
  }
});

test('rotation under per-file freshness: pages re-encrypted in place only move forward; a crash after it and the next clean stop raise no alarm, an older table file still does', async (t) => {
  const db = await startKeyedMariadb({ encryption: true, keys: testKeys([1, 2]), config: { cacheVersionTimeoutMs: 500, rotateKeyAge: 1 } });
  const tmp = tempDir('rot-inventory');
  t.after(() => tmp.remove());
  try {
    await db.query('CREATE DATABASE rot; CREATE TABLE rot.t (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(100)) ENGINE=InnoDB');
    await db.query("INSERT INTO rot.t (v) SELECT CONCAT('row ', seq) FROM rot.seq_1_to_2000");
    await db.stop();
    const datadir = db.server.datadir;
    const store = new InventoryStore(tmp.path, 'rot', randomBytes(32), 'rot-db');
    const inventory = () => new MariadbInventory({ datadir, store, log: silentLogger(), sweepIntervalMs: 60_000, sweepBytesPerSecond: 0 });
    const atStop = await inventory().sweep(true); // the clean-stop sweep, as the proxy takes it
    assert.ok(atStop?.exact);
    cpSync(path.join(datadir, 'rot', 't.ibd'), path.join(tmp.path, 't.ibd.before-rotation'));

    await db.start();
    db.keyring!.addKeys([{ id: 1, version: 2, key: randomBytes(32) }]);
    db.keyring!.addKeys([{ id: 1, version: 3, key: randomBytes(32) }]);
    await waitFor('rot/t re-encrypted with key version 3', async () => {
      const [s] = await db.query("SELECT MIN_KEY_VERSION AS minv FROM information_schema.INNODB_TABLESPACES_ENCRYPTION WHERE NAME = 'rot/t'");
      return Number(s.minv) === 3 ? s : undefined;
    }, 30_000);
    await db.server.kill(); // a crash right after the rotation: the proxy would check the last (non-exact) sweep
    assert.deepEqual(await inventory().verifyOffline({ ...atStop, exact: false }), [], 'rotated pages carry newer LSNs, never older');

    await db.start(); // crash recovery
    assert.equal(Number((await db.query('SELECT COUNT(*) AS n FROM rot.t'))[0].n), 2000);
    await db.stop();
    const afterRotation = await inventory().sweep(true);
    assert.deepEqual(await inventory().verifyOffline(afterRotation), [], 'the next clean stop is exact and fresh');

    // Control: the table file from before the rotation is still an older copy.
    cpSync(path.join(tmp.path, 't.ibd.before-rotation'), path.join(datadir, 'rot', 't.ibd'));
    const [v] = await inventory().verifyOffline(afterRotation);
    assert.match(v?.message ?? '', /data file rot\/t\.ibd rolled back/);
  } finally {
    await db.destroy();
  }
});
