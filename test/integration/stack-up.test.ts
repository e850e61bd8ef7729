import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { startStack, connectThroughProxy, alive, removeStackVolatile, CLI } from '../support/stack.ts';
import { grepTree } from '../support/at-rest.ts';
import { tempDir } from '../support/tmp.ts';

function mariadbCli(stack: any, args: string[]) {
  return spawnSync('mariadb', ['-h', stack.mysql.host, '-P', String(stack.mysql.port), '-u', stack.admin.user,
    `-p${stack.admin.password}`, ...args], { encoding: 'utf8', timeout: 20_000 });
}

test('cdbp up: ready with stack.json, stock client over verified TLS, plaintext refused, clean stop, resume with the same data', async (t) => {
  const dir = tempDir('up');
  t.after(() => dir.remove());
  t.after(() => removeStackVolatile(dir.path));
  const marker = `cdbp-marker-${Date.now()}-plaintext`;

  const first = await startStack(dir.path);
  const s = first.stack;
  try {
    // stack.json holds what the issue promises.
    assert.equal(s.mode, 'simulated');
    for (const k of ['mysql', 'ops', 'cas', 'caFile', 'admin', 'mariadb', 'untrustedDir', 'trustedDir'] as const) assert.ok(s[k], `stack.json has ${k}`);
    assert.ok(s.mysql.port > 0 && s.mariadb.socket && s.mariadb.datadir.startsWith(s.untrustedDir));
    assert.match(first.output(), /cdbp up: ready \(SIMULATED TEE\): mariadb --ssl-ca=/);

    const ok = mariadbCli(s, ['--ssl-ca', s.caFile, '--ssl-verify-server-cert', '-N', '-e', 'select 1']);
    assert.equal(ok.status, 0, ok.stderr);
    assert.equal(ok.stdout.trim(), '1');

    const plain = mariadbCli(s, ['--skip-ssl', '-e', 'select 1']);
    assert.notEqual(plain.status, 0);
    assert.match(plain.stderr, /ERROR 3159 .*insecure transport are prohibited/);

    const status = spawnSync(process.execPath, [CLI, 'status', '--dir', dir.path], { encoding: 'utf8' });
    assert.equal(status.status, 0, status.stderr);
    assert.match(status.stdout, /READY/);
    assert.match(status.stdout, /SIMULATED/);

    const conn = await connectThroughProxy(s);
    await conn.query('CREATE DATABASE IF NOT EXISTS app');
    await conn.query('CREATE TABLE app.notes (id INT PRIMARY KEY AUTO_INCREMENT, body TEXT) ENGINE=InnoDB');
    await conn.query('INSERT INTO app.notes (body) VALUES (?)', [marker]);
    await conn.end();
  } finally {
    const code = await first.stop();
    assert.equal(code, 0, first.output());
  }
  // Nothing left behind: proxy, CAS and mariadbd are gone.
  assert.equal(alive(s.mariadb.pid), false, 'mariadbd stopped');
  const leftovers = spawnSync('pgrep', ['-f', dir.path], { encoding: 'utf8' }).stdout.trim();
  assert.equal(leftovers, '', `no process mentions ${dir.path}`);
  // The untrusted volume holds no plaintext of the row.
  assert.deepEqual(grepTree([s.untrustedDir], marker), [], 'marker not in plaintext on the untrusted volume');

  const second = await startStack(dir.path);
  try {
    const conn = await connectThroughProxy(second.stack);
    const rows = await conn.query('SELECT body FROM app.notes');
    await conn.end();
    assert.deepEqual(rows.map((r: any) => r.body), [marker]);
    assert.equal(second.stack.admin.password, s.admin.password, 'same admin account after resume');
    // The admin API: a cross-site style request is refused; `cdbp admin quit` (token file, JSON) stops the stack.
    const tokenFile = second.stack.control.tokenFile;
    assert.equal(statSync(tokenFile).mode & 0o777, 0o600);
    const evil = await fetch(`${second.stack.control.url}/v1/admin/quit`, {
      method: 'POST', headers: { 'content-type': 'text/plain', origin: 'https://evil.example' }, body: 'x',
    });
    assert.equal(evil.status, 403);
    assert.equal(((await evil.json()) as any).error.code, 'ORIGIN_REFUSED');
    const quit = spawnSync(process.execPath, [CLI, 'admin', 'quit', '--dir', dir.path], { encoding: 'utf8', timeout: 30_000 });
    assert.equal(quit.status, 0, quit.stderr);
    assert.match(quit.stdout, /cdbp admin quit: accepted/);
    const exit = await new Promise<number | null>((r) => second.proc.once('exit', (c) => r(c)));
    assert.equal(exit, 0, second.output());
    assert.match(second.output(), /proxy stopped \(admin request\)/);
    assert.equal(existsSync(tokenFile), false, 'the token file goes with the proxy');
  } finally {
    assert.equal(await second.stop(), 0);
  }
});

test('cdbp up: a missing system binary is one line naming the package, not a stack trace', () => {
  const dir = tempDir('up-missing');
  try {
    const r = spawnSync(process.execPath, [CLI, 'up', '--dir', dir.path], {
      encoding: 'utf8', env: { ...process.env, CDBP_BIN_PATH: '/nonexistent' }, timeout: 30_000,
    });
    assert.equal(r.status, 1);
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0]!, /mariadbd not found: install the Debian package mariadb-server/);
    assert.doesNotMatch(r.stderr, /\n\s+at /);
  } finally {
    dir.remove();
  }
});

test('cdbp up --help documents the command', () => {
  const r = spawnSync(process.execPath, [CLI, 'up', '--help'], { encoding: 'utf8' });
  assert.equal(r.status, 0);
  assert.match(r.stdout, /--dir DIR/);
  assert.match(r.stdout, /--postgres/);
});
