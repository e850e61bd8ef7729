/**
 * Issue 16 item 5: what a client (even an admin with ALL PRIVILEGES) could put on the untrusted volume in
 * plaintext, tried against a real hardened mariadbd keyed by a real keyring, and the start-up check that
 * refuses a server whose encryption is off.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, statSync, statfsSync } from 'node:fs';
import path from 'node:path';
import mariadb, { type Connection } from 'mariadb';
import { describeHits, grepTree, startKeyedMariadb, type KeyedMariadb } from '../support/at-rest.ts';
import { checkMariadbServer, processUid } from '../../src/db/mariadb-encryption-check.ts';
import { hardeningPaths } from '../../src/db/mariadb-hardening.ts';
import { lookupOsUser } from '../../src/db/postgres-server.ts';
import { startPrivateMariadb } from '../support/mariadb.ts';
import { startTestCas } from '../support/cas.ts';
import { applyProxyPolicy, startProxyProcess, type TestProxy } from '../support/proxy-process.ts';
import { tempDir } from '../support/tmp.ts';

const TMPFS_MAGIC = 0x01021994;
const ADMIN = { user: 'admin', password: 'admin-' + randomBytes(6).toString('hex') };

async function asAdmin<T>(db: KeyedMariadb, fn: (c: Connection) => Promise<T>): Promise<T> {
  const conn = await mariadb.createConnection({ socketPath: db.server.socket, user: ADMIN.user, password: ADMIN.password });
  try {
    return await fn(conn);
  } finally {
    await conn.end();
  }
}

/** The SQL error a statement fails with (errno + message), or undefined when it succeeds. */
async function refusal(conn: Connection, sql: string): Promise<{ errno: number; message: string } | undefined> {
  try {
    await conn.query(sql);
    return undefined;
  } catch (e) {
    const err = e as { errno: number; sqlMessage?: string; message: string };
    return { errno: err.errno, message: err.sqlMessage ?? err.message };
  }
}

const expectHardened = (db: KeyedMariadb) => ({
  socket: db.server.socket,
  keysServed: () => db.keyring!.keysServedSinceToken(),
  serverPid: db.server.pid!,
  expect: { plugin: 'hashicorp_key_management', hardened: true, volatileDirs: [db.volatileDir!] },
  pendingTimeoutMs: 20_000,
});

test('hardened server: MyISAM/CSV refused, general log and INTO OUTFILE stay in memory, mariadbd is not root, the check passes', async () => {
  const db = await startKeyedMariadb({ encryption: true, hardening: true });
  const marker = 'CDBPSQL_' + randomBytes(8).toString('hex');
  try {
    const paths = hardeningPaths({ volatileDir: db.volatileDir! });
    // Same account shape as `cdbp up` creates: ALL PRIVILEGES ON *.* (so SUPER and FILE too).
    await db.query(`CREATE USER '${ADMIN.user}'@'localhost' IDENTIFIED BY '${ADMIN.password}'; GRANT ALL PRIVILEGES ON *.* TO '${ADMIN.user}'@'localhost' WITH GRANT OPTION; CREATE DATABASE app`);

    // mariadbd runs as the mysql OS user, not root.
    const uid = processUid(db.server.pid!);
    assert.equal(uid, lookupOsUser('mysql').uid, 'mariadbd runs as mysql');
    assert.notEqual(uid, 0);

    // The check before ready passes on this server, and it did fetch keys from our keyring.
    const verdict = await checkMariadbServer(expectHardened(db));
    assert.equal(verdict.ok, true);
    assert.ok(db.keyring!.keysServedSinceToken() > 0);

    await asAdmin(db, async (c) => {
      // Engines that write plaintext are refused with a clear error (ER_OPTION_PREVENTS_STATEMENT).
      for (const engine of ['MyISAM', 'CSV', 'ARCHIVE', 'MRG_MyISAM']) {
        const err = await refusal(c, `CREATE TABLE app.t_${engine.toLowerCase()} (i INT NOT NULL) ENGINE=${engine}`);
        assert.ok(err, `ENGINE=${engine} must be refused`);
        assert.ok(err.errno === 1290 || err.errno === 1286, `${engine}: ${err.errno} ${err.message}`);
      }
      const noSub = await refusal(c, 'CREATE TABLE app.t1 (i INT) ENGINE=MyISAM');
      assert.equal(noSub?.errno, 1290);
      assert.match(noSub!.message, /NO_ENGINE_SUBSTITUTION/);
      await c.query('CREATE TABLE app.inno (i INT) ENGINE=InnoDB');
      assert.equal((await refusal(c, 'ALTER TABLE app.inno ENGINE=MyISAM'))?.errno, 1290, 'ALTER to MyISAM refused');
      assert.equal((await refusal(c, 'CREATE TEMPORARY TABLE app.tmp (i INT) ENGINE=MyISAM'))?.errno, 1290, 'temporary MyISAM refused');
      // Without NO_ENGINE_SUBSTITUTION the table silently becomes InnoDB: still encrypted.
      await c.query("SET SESSION sql_mode=''");
      await c.query('CREATE TABLE app.subst (i INT NOT NULL) ENGINE=CSV');
      const [{ ENGINE }] = await c.query("SELECT ENGINE FROM information_schema.TABLES WHERE TABLE_SCHEMA='app' AND TABLE_NAME='subst'");
      assert.equal(ENGINE, 'InnoDB');

      // INSTALL SONAME: the plugin dir holds only the key plugin (no server_audit / sql_errlog / ARCHIVE).
      for (const so of ['server_audit', 'sql_errlog', 'ha_archive']) {
        const err = await refusal(c, `INSTALL SONAME '${so}'`);
        assert.ok(err, `INSTALL SONAME '${so}' must fail`);
        assert.equal(err.errno, 1126, `${so}: ${err.message}`); // ER_CANT_OPEN_LIBRARY
      }

      // An admin switches the general log on: the SQL lands in memory (tmpfs), never in the datadir.
      await c.query('SET GLOBAL general_log=ON');
      await c.query(`SELECT '${marker}' AS m`);
      await c.query('SET GLOBAL general_log=OFF');
      const [{ f }] = await c.query('SELECT @@general_log_file AS f');
      assert.equal(f, paths.generalLog);
      assert.ok(readFileSync(paths.generalLog, 'utf8').includes(marker), 'the general log did log the query');
      assert.equal(Number(statfsSync(paths.generalLog).type), TMPFS_MAGIC, 'general log on tmpfs');
      assert.equal((await refusal(c, "SET GLOBAL log_output='TABLE'")), undefined);
      await c.query("SET GLOBAL log_output='FILE'");

      // INTO OUTFILE: confined to secure_file_priv (tmpfs); anywhere else is refused.
      for (const target of [path.join(db.server.datadir, 'leak.txt'), '/tmp/cdbp-outfile-leak.txt', '/etc/cdbp-leak']) {
        const err = await refusal(c, `SELECT '${marker}' INTO OUTFILE '${target}'`);
        assert.equal(err?.errno, 1290, `INTO OUTFILE ${target}: ${err?.message}`);
        assert.match(err!.message, /secure-file-priv/);
        assert.equal(existsSync(target), false);
      }
      const allowed = path.join(paths.filesDir, 'ok.txt');
      await c.query(`SELECT '${marker}' INTO OUTFILE '${allowed}'`);
      assert.equal(statSync(allowed).uid, uid, 'written as the mysql user, not root');
      assert.equal(Number(statfsSync(allowed).type), TMPFS_MAGIC);
      assert.equal((await refusal(c, "SELECT LOAD_FILE('/etc/passwd') IS NULL AS n")), undefined);
      const [{ n }] = await c.query("SELECT LOAD_FILE('/etc/shadow') IS NULL AS n");
      assert.equal(Number(n), 1, 'LOAD_FILE outside secure_file_priv reads nothing');
    });

    // The error log is on tmpfs too (a crash prints the running query into it).
    const [{ e }] = await db.query('SELECT @@log_error AS e');
    assert.equal(e, paths.errorLog);

    await db.stop();
    const hits = grepTree(db.persistentDirs, marker);
    assert.deepEqual(hits, [], `SQL marker on the volume:\n${describeHits(hits)}`);
  } finally {
    await db.destroy();
  }
});

test('a SUPER holder who lifts the engine rule for its session gets its table, and the check names it', async () => {
  const db = await startKeyedMariadb({ encryption: true, hardening: true });
  try {
    await db.query('CREATE DATABASE app; SET SESSION enforce_storage_engine=NULL; CREATE TABLE app.plain (i INT) ENGINE=MyISAM');
    await assert.rejects(checkMariadbServer(expectHardened(db)), (e: Error & { code?: string }) => {
      assert.equal(e.code, 'BACKEND_NOT_ENCRYPTED');
      assert.match(e.message, /app\.plain uses MyISAM/);
      return true;
    });
  } finally {
    await db.destroy();
  }
});

test('tampered start: a server with the key plugin but encryption off is refused with every reason', async () => {
  // What a tampered wrapper does: loads our plugin (so the keyring sees requests) but turns encryption off.
  const db = await startKeyedMariadb({
    encryption: true, hardening: true,
    extraConfig: ['innodb_encrypt_tables=OFF', 'innodb_encrypt_log=OFF', 'encrypt_binlog=OFF', 'aria_encrypt_tables=OFF', 'encrypt_tmp_files=OFF', 'skip-log-bin'],
  });
  try {
    await db.query('CREATE DATABASE app; CREATE TABLE app.t (i INT) ENGINE=InnoDB');
    const err = await checkMariadbServer(expectHardened(db)).then(() => undefined, (e: Error & { code?: string }) => e);
    assert.ok(err, 'the check must fail');
    assert.equal(err.code, 'BACKEND_NOT_ENCRYPTED');
    for (const want of [/innodb_encrypt_tables=OFF/, /innodb_encrypt_log=OFF/, /aria_encrypt_tables=OFF/, /encrypt_tmp_files=OFF/, /log_bin=OFF/, /tablespace app\/t is not encrypted/]) {
      assert.match(err.message, want);
    }
  } finally {
    await db.destroy();
  }
});

test('end to end: a proxy keyed for MariaDB in front of a server without encryption stays unready and says why', async () => {
  const tmp = tempDir('tampered');
  const cas = await startTestCas({ root: tmp.path });
  // The "tampered wrapper": a plain mariadbd, no key plugin, no encryption, on the socket the proxy is told to use.
  const plain = await startPrivateMariadb();
  let proxy: TestProxy | undefined;
  try {
    await applyProxyPolicy(cas, { service: 'mariadb' });
    proxy = await startProxyProcess({
      root: tmp.path, cas, waitFor: 'ops',
      env: { CDBP_MANAGE_MARIADB: '0', CDBP_KEYRING: '1', CDBP_BACKEND_SOCKET: plain.server.socket },
    });
    let status: any;
    const deadline = Date.now() + 60_000;
    for (;;) {
      status = (await proxy.get('/v1/status')).body;
      if (status.lifecycle?.state === 'failed' || Date.now() > deadline) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.equal(status.lifecycle.state, 'failed', JSON.stringify(status.lifecycle));
    assert.equal(status.lifecycle.reason.code, 'BACKEND_NOT_ENCRYPTED');
    assert.match(status.lifecycle.reason.message, /hashicorp_key_management is not active/);
    assert.match(status.lifecycle.reason.message, /innodb_encrypt_tables=OFF/);
    assert.equal(status.ready, false);
    assert.equal((await proxy.get('/readyz')).status, 503);
    // No MySQL listener was opened: nobody is served by this server through the proxy.
    await assert.rejects(proxy.connect({ user: plain.user, password: plain.password }));
  } finally {
    await proxy?.kill();
    await plain.stop();
    await cas.stop();
    tmp.remove();
  }
});
