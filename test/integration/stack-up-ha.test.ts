/**
 * `cdbp up --ha` as a user runs it: 3 CAS members over a 3-member etcd behind the MariaDB proxy (strict
 * freshness). A member killed -9 under writes: every write is acknowledged, `up` restarts the member and
 * it rejoins (it then carries the majority when another one dies). Stopping the stack loses every
 * member's counters by design: the next `up --ha` refuses to reopen on its own, and `--ha-recover`
 * reopens it as the owner (audited), re-anchors the counter to the volume, and every row is there.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { startStack, expectStackFailure, connectThroughProxy, removeStackVolatile } from '../support/stack.ts';
import { tempDir } from '../support/tmp.ts';
import { casRequest } from '../../src/cas-client/http.ts';

/** The pid of the `cdbp cas` serving member i of the stack in `dir`. */
function memberPid(dir: string, i: number): number {
  const needle = path.join(dir, 'trusted', 'cas-ha', `m${i}`);
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const cmd = readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0');
      if (cmd.includes('cas') && cmd.includes(needle)) return Number(p);
    } catch { /* gone */ }
  }
  throw new Error(`no process serves ${needle}`);
}

test('cdbp up --ha: a member killed under writes is restarted and rejoins; after a stop, only an owner-signed --ha-recover reopens', { timeout: 420_000 }, async (t) => {
  const dir = tempDir('up-ha');
  t.after(() => dir.remove());
  t.after(() => removeStackVolatile(dir.path));

  const first = await startStack(dir.path, ['--ha'], {}, 180_000);
  let inserted = 0;
  try {
    const s = first.stack;
    assert.equal(s.ha?.casUrls.length, 3);
    assert.equal(s.ha?.etcd.length, 3);
    const caPem = readFileSync(s.caFile, 'utf8');
    const conn = await connectThroughProxy(s);
    try {
      await conn.query('CREATE DATABASE ha');
      await conn.query('CREATE TABLE ha.t (i INT PRIMARY KEY) ENGINE=InnoDB');
      const before = await casRequest<{ instance: string }>(s.ha!.casUrls[1]!, 'GET', '/v1/replication/status', undefined, { caPem });
      for (let i = 1; i <= 40; i++) {
        if (i === 10) process.kill(memberPid(dir.path, 2), 'SIGKILL');
        await conn.query('INSERT INTO ha.t VALUES (?)', [i]);
        inserted = i;
      }
      // `up` restarts member 2 as a new incarnation that catches up from the other two.
      let rejoined: string | undefined;
      for (let n = 0; n < 120 && !rejoined; n++) {
        await new Promise((r) => setTimeout(r, 500));
        const st = await casRequest<{ instance: string }>(s.ha!.casUrls[1]!, 'GET', '/v1/replication/status', undefined, { caPem }).catch(() => undefined);
        if (st && st.instance !== before.instance) rejoined = st.instance;
      }
      assert.ok(rejoined, `member 2 did not rejoin:\n${first.output()}`);
      assert.match(first.output(), /cas2 exited \(SIGKILL\): restarting it/);
      // With member 3 gone too, the rejoined member 2 and member 1 are the majority: writes go on.
      process.kill(memberPid(dir.path, 3), 'SIGKILL');
      for (let i = 41; i <= 60; i++) {
        await conn.query('INSERT INTO ha.t VALUES (?)', [i]);
        inserted = i;
      }
    } finally {
      await conn.end();
    }
  } finally {
    assert.equal(await first.stop(), 0, first.output());
  }

  // Every member stopped: counters gone. Not reopened silently.
  const refused = await expectStackFailure(dir.path, ['--ha']);
  assert.notEqual(refused.code, 0);
  assert.match(refused.output, /HA_RECOVERY_REFUSED/);
  assert.match(refused.output, /cdbp up --ha --ha-recover --dir /);

  const second = await startStack(dir.path, ['--ha', '--ha-recover'], {}, 180_000);
  try {
    assert.match(second.output(), /counter of mariadb re-anchored by the owner to its volume's sealed record \(epoch \d+; audited\)/);
    const conn = await connectThroughProxy(second.stack);
    try {
      const [row] = await conn.query('SELECT COUNT(*) AS n, MAX(i) AS m FROM ha.t');
      assert.equal(Number(row.n), inserted);
      assert.equal(Number(row.m), inserted);
      await conn.query('INSERT INTO ha.t VALUES (?)', [inserted + 1]);
    } finally {
      await conn.end();
    }
    const audit = readFileSync(path.join(dir.path, 'trusted', 'cas-ha', 'm1', 'audit.log'), 'utf8');
    assert.match(audit, /"event":"ha.recover","outcome":"ok"/);
  } finally {
    assert.equal(await second.stop(), 0, second.output());
  }
});
