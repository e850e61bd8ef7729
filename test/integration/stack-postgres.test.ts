/**
 * `cdbp up --postgres`: the PostgreSQL endpoint behind its own attested proxy, with psql as the stock
 * client (verify-full against the CAS root), and the freshness guard on the WAL position.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, cpSync, existsSync, rmSync } from 'node:fs';
import path from 'node:path';
import { startStack, expectStackFailure, removeStackVolatile, type RunningStack } from '../support/stack.ts';
import { tempDir } from '../support/tmp.ts';

function psql(s: RunningStack, sql: string) {
  const pg = s.stack.postgres!;
  return spawnSync('psql', [
    `host=${pg.host} port=${pg.port} user=${pg.user} dbname=postgres sslmode=verify-full sslrootcert=${s.stack.caFile}`,
    '-v', 'ON_ERROR_STOP=1', '-At', '-c', sql,
  ], { encoding: 'utf8', env: { ...process.env, PGPASSWORD: pg.password }, timeout: 30_000 });
}

test('cdbp up --postgres: psql over verify-full TLS, data survives a restart, a rolled-back PostgreSQL volume is refused', async (t) => {
  const tmp = tempDir('up-pg');
  t.after(() => tmp.remove());
  chmodSync(tmp.path, 0o711); // PostgreSQL runs as its own OS user and must reach its datadir
  const dir = path.join(tmp.path, 'stack');
  t.after(() => removeStackVolatile(dir));
  const untrusted = path.join(dir, 'untrusted');
  const snap = path.join(tmp.path, 'snap');

  let s = await startStack(dir, ['--postgres']);
  try {
    assert.ok(s.stack.postgres, 'stack.json has a postgres section');
    assert.ok(s.stack.postgres.datadir.startsWith(untrusted), 'the PostgreSQL datadir is on the untrusted volume');
    const r = psql(s, "CREATE TABLE notes (body text); INSERT INTO notes VALUES ('first'); SELECT count(*) FROM notes");
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim().split('\n').pop(), '1');
    const plain = spawnSync('psql', [`host=127.0.0.1 port=${s.stack.postgres.port} user=admin dbname=postgres sslmode=disable`, '-c', 'select 1'],
      { encoding: 'utf8', env: { ...process.env, PGPASSWORD: s.stack.postgres.password } });
    assert.notEqual(plain.status, 0);
    assert.match(plain.stderr, /TLS|SSL|encrypt/i);
    // The managed server trusts its superuser on the socket; through the proxy that name is refused.
    const su = spawnSync('psql', [`host=127.0.0.1 port=${s.stack.postgres.port} user=postgres dbname=postgres sslmode=verify-full sslrootcert=${s.stack.caFile}`,
      '-At', '-c', 'select current_user'], { encoding: 'utf8', env: { ...process.env, PGPASSWORD: 'anything' } });
    assert.notEqual(su.status, 0, `logged in as postgres through the proxy: ${su.stdout}`);
    assert.match(su.stderr, /may not log in through this proxy/);
  } finally {
    assert.equal(await s.stop(), 0, s.output());
  }
  // Encrypted at rest by default: the volume holds a gocryptfs directory, not a PostgreSQL datadir.
  assert.ok(existsSync(path.join(untrusted, 'postgres', 'gocryptfs.conf')), 'encrypted directory on the volume');
  assert.equal(existsSync(path.join(untrusted, 'postgres', 'PG_VERSION')), false, 'no plaintext datadir on the volume');
  rmSync(snap, { recursive: true, force: true });
  // cp -a, as an adversary's snapshot would: owners and modes kept (the ciphertext belongs to postgres).
  assert.equal(spawnSync('cp', ['-a', untrusted, snap]).status, 0);

  s = await startStack(dir, ['--postgres']);
  try {
    const r = psql(s, "INSERT INTO notes VALUES ('second'); SELECT string_agg(body, ',' ORDER BY body) FROM notes");
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim().split('\n').pop(), 'first,second');
  } finally {
    assert.equal(await s.stop(), 0, s.output());
  }

  // Roll back only PostgreSQL's part of the volume (its datadir and its sealed record).
  rmSync(path.join(untrusted, 'postgres'), { recursive: true, force: true });
  assert.equal(spawnSync('cp', ['-a', path.join(snap, 'postgres'), path.join(untrusted, 'postgres')]).status, 0);
  cpSync(path.join(snap, 'freshness-postgres.sealed'), path.join(untrusted, 'freshness-postgres.sealed'));
  const fail = await expectStackFailure(dir, ['--postgres']);
  assert.equal(fail.code, 1);
  assert.match(fail.output, /ROLLBACK_DETECTED: .*rolled back/);
});
