import { test } from 'node:test';
import assert from 'node:assert/strict';
import https from 'node:https';
import tls from 'node:tls';
import { readFileSync } from 'node:fs';
import { startKeyedMariadb, testKeys } from '../support/at-rest.ts';

type Answer = { status: number; body: any } | { error: string };

function get(url: string, ca: string, path: string, token: string | undefined): Promise<Answer> {
  const u = new URL(url);
  return new Promise((resolve) => {
    const headers: Record<string, string> = token === undefined ? {} : { 'x-vault-token': token };
    const req = https.get({ host: u.hostname, port: Number(u.port), path, ca, headers, agent: false }, (res) => {
      let raw = '';
      res.on('data', (c) => (raw += c));
      res.on('end', () => resolve({ status: res.statusCode!, body: raw ? JSON.parse(raw) : undefined }));
    });
    req.on('error', (e: NodeJS.ErrnoException) => resolve({ error: e.code ?? e.message }));
  });
}

function rawTls(url: string, ca: string, payload: string): Promise<string> {
  const u = new URL(url);
  return new Promise((resolve) => {
    let data = '';
    const s = tls.connect({ host: u.hostname, port: Number(u.port), ca, servername: 'localhost' }, () => s.write(payload));
    s.on('data', (c) => (data += c.toString('latin1')));
    s.on('error', () => {});
    s.on('close', () => resolve(data));
  });
}

function tokenOf(pid: number): string | undefined {
  const env = readFileSync(`/proc/${pid}/environ`, 'latin1').split('\0');
  return env.find((e) => e.startsWith('VAULT_TOKEN='))?.slice('VAULT_TOKEN='.length);
}

test('attacks on the keyring while mariadbd runs: wrong token, unknown id, garbage, oversized — mariadbd keeps serving', async () => {
  const db = await startKeyedMariadb({ encryption: true, keys: testKeys([1, 2, 3, 4]) });
  try {
    const url = db.vaultUrl!;
    const mount = new URL(url).pathname; // /v1/cdbp
    const pid = db.server.pid!;
    await db.query('CREATE DATABASE f; CREATE TABLE f.t (id INT PRIMARY KEY, v VARCHAR(50)) ENGINE=InnoDB; INSERT INTO f.t VALUES (1, \'before\')');

    // What a root adversary on this host sees when MariaDB is not in a TEE: the token (docs/KEYRING.md).
    const token = tokenOf(pid);
    assert.ok(token && token.length >= 43, 'VAULT_TOKEN is in mariadbd\'s environment (readable by root)');

    const wrong = await get(url, db.pki.caPem, `${mount}/data/1`, 'not-the-token');
    assert.ok('error' in wrong, `wrong token must get no HTTP answer: ${JSON.stringify(wrong)}`);
    const none = await get(url, db.pki.caPem, `${mount}/data/1`, undefined);
    assert.ok('error' in none);
    assert.equal(await rawTls(url, db.pki.caPem, 'garbage\r\n\r\n'), '', 'garbage: no HTTP answer');
    assert.equal(await rawTls(url, db.pki.caPem, `GET ${mount}/data/1 HTTP/1.1\r\nx: ${'y'.repeat(20_000)}\r\n\r\n`), '', 'oversized: no answer');
    const unknown = await get(url, db.pki.caPem, `${mount}/data/999`, token);
    assert.deepEqual(unknown, { status: 404, body: { errors: [] } });

    // mariadbd is unharmed and the keyring still serves it: a new table with a key id not used so far
    // makes the plugin fetch key 3 now.
    assert.ok(db.server.running);
    const servedBefore = db.audit.filter((e) => e.outcome === 'served' && e.id === 3).length;
    await db.query('CREATE TABLE f.k3 (id INT PRIMARY KEY, v VARCHAR(50)) ENGINE=InnoDB ENCRYPTION_KEY_ID=3; INSERT INTO f.k3 VALUES (1, \'after\')');
    assert.ok(db.audit.filter((e) => e.outcome === 'served' && e.id === 3).length > servedBefore, 'key 3 fetched by mariadbd after the attacks');
    const rows = await db.query('SELECT (SELECT v FROM f.t WHERE id=1) AS a, (SELECT v FROM f.k3 WHERE id=1) AS b');
    assert.deepEqual({ ...rows[0] }, { a: 'before', b: 'after' });

    // A table asking for a key id the CAS never provisioned: 404 → a clean SQL error, no crash.
    await assert.rejects(db.query('CREATE TABLE f.k99 (id INT PRIMARY KEY) ENGINE=InnoDB ENCRYPTION_KEY_ID=99'));
    assert.ok(db.server.running, 'mariadbd survived the unknown key id');
    assert.equal(Number((await db.query('SELECT COUNT(*) AS n FROM f.t'))[0].n), 1);

    const refused = db.audit.filter((e) => e.outcome === 'refused');
    assert.ok(refused.some((e) => e.reason === 'token'));
    assert.match(db.metrics.render(), /cdbp_keyring_requests_total\{outcome="refused"\} [1-9]/);

    // The token stolen above is useless after a restart: each start gets a fresh one.
    await db.stop();
    await db.start();
    assert.notEqual(tokenOf(db.server.pid!), token);
    const stale = await get(url, db.pki.caPem, `${mount}/data/1`, token);
    assert.ok('error' in stale, 'the previous token is refused after the restart');
    assert.equal(Number((await db.query('SELECT COUNT(*) AS n FROM f.k3'))[0].n), 1);
  } finally {
    await db.destroy();
  }
});

test('keyring unreachable at start: mariadbd refuses to start, fast, and says why', async (t) => {
  const db = await startKeyedMariadb({ encryption: true, startTimeoutMs: 20_000 });
  try {
    await db.stop();
    await db.keyring!.close(); // nothing listens on the vault port any more
    const t0 = Date.now();
    await assert.rejects(db.server.start(), (e: Error) => {
      t.diagnostic(e.message.slice(-400));
      assert.match(e.message, /mariadbd did not start/);
      assert.match(e.message, /Initialization of encryption failed|hashicorp|Couldn't connect/i, `reason from the error log: ${e.message}`);
      return true;
    });
    const ms = Date.now() - t0;
    t.diagnostic(`start failed after ${ms} ms`);
    assert.ok(ms < 15_000, `start failed after ${ms} ms`);
    assert.equal(db.server.running, false);
  } finally {
    await db.destroy();
  }
});

test('keyring up but token not current (stale token from a previous start): mariadbd refuses to start', async () => {
  const db = await startKeyedMariadb({ encryption: true, startTimeoutMs: 20_000 });
  try {
    await db.stop();
    db.keyring!.issueToken(); // revokes the token still in db.server's env
    await assert.rejects(db.server.start(), /mariadbd did not start/);
    assert.equal(db.server.running, false);
    assert.ok(db.audit.some((e) => e.outcome === 'refused' && e.reason === 'token'));
  } finally {
    await db.destroy();
  }
});
