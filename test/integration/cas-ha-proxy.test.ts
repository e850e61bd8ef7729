/**
 * A real proxy (strict freshness, its own MariaDB) against a replicated CAS: CDBP_CAS_URL lists the three
 * members, the proxy attests to any and counts by majority (src/cas-client/quorum-counter.ts).
 * kill -9 of one member under concurrent SQL writes: every acknowledged write is there; two members
 * frozen: reads are served, writes are held and then refused with the usual clear error, and they work
 * again as soon as one member is back. Every member lost and the deployment reopened by the owner: a
 * proxy whose sealed record the host deleted is refused (its counter is unanchored), not first-started.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { tempDir } from '../support/tmp.ts';
import { startHaCluster, type HaCluster } from '../support/etcd-cas-ha.ts';
import { applyProxyPolicy, startProxyProcess, type TestProxy } from '../support/proxy-process.ts';
import { runCdbp } from '../support/cas.ts';
import { until } from '../support/mysql-raw.ts';
import { writeSigningKeyFile } from '../../src/crypto/ed25519.ts';

test('real proxy over a replicated CAS: kill -9 a member under strict writes, freeze two, resume, reopen', { timeout: 330_000 }, async (t) => {
  const tmp = tempDir('cas-ha-proxy');
  let cluster: HaCluster | undefined;
  let proxy: TestProxy | undefined;
  t.after(async () => { await proxy?.kill(); await cluster?.stop(); tmp.remove(); });
  cluster = await startHaCluster(tmp.path, 3);
  const c = cluster;
  await c.start(1);
  await c.start(2);
  await c.start(3);
  await applyProxyPolicy({ url: c.urls[0]!, caPem: c.caPem }, { owner: c.owner });
  const proxyOptions = {
    root: tmp.path, cas: { url: c.urls.join(','), caFile: c.caFile, caPem: c.caPem, platformKeyFile: c.platformKeyFile },
    env: { CDBP_FRESHNESS: 'strict', CDBP_HOLD_TIMEOUT_MS: '3000' },
  };
  proxy = await startProxyProcess(proxyOptions);
  const p = proxy;
  await p.createUser('app', 'app-pw');
  const setup = await p.connect({ user: 'app', password: 'app-pw' });
  setup.on('error', () => undefined);
  await setup.query('CREATE DATABASE app');
  await setup.query('CREATE TABLE app.t (v VARCHAR(64) PRIMARY KEY) ENGINE=InnoDB');

  await t.test('kill -9 one member during concurrent strict writes: no acknowledged write is lost', async () => {
    const acked: string[] = [];
    const errors: string[] = [];
    let stop = false;
    const writer = async (w: number) => {
      const conn = await p.connect({ user: 'app', password: 'app-pw' });
      try {
        for (let i = 0; !stop; i++) {
          const v = `w${w}-${i}`;
          try {
            await conn.query('INSERT INTO app.t (v) VALUES (?)', [v]);
            acked.push(v);
          } catch (e) { errors.push((e as Error).message); }
        }
      } finally { await conn.end(); }
    };
    const writers = Array.from({ length: 4 }, (_, w) => writer(w));
    await new Promise((r) => setTimeout(r, 2000));
    const before = acked.length;
    c.kill(2);
    await new Promise((r) => setTimeout(r, 3000));
    stop = true;
    await Promise.all(writers);
    assert.deepEqual(errors, [], 'no write was refused: the two remaining members are a majority');
    assert.ok(before > 3 && acked.length - before > 3, `writes before/after the kill: ${before}/${acked.length - before}`);
    const rows = new Set((await setup.query('SELECT v FROM app.t') as Array<{ v: string }>).map((r) => r.v));
    assert.deepEqual(acked.filter((v) => !rows.has(v)), []);
    const st = (await p.get('/v1/status')).body as { freshness?: { verified?: boolean }; casMembers?: Array<{ url: string; transport: string; slot: number | null; lastAnswerAt: string | null; lastError: string | null }> };
    assert.equal(st.freshness?.verified, true);
    // The ops status says which members answer: the killed one fails, the two others answer over their channels.
    const members = st.casMembers ?? [];
    assert.deepEqual(members.map((m) => m.url), c.urls);
    const killed = members.find((m) => m.url === c.urls[1])!;
    assert.ok(killed.lastError, `the killed member's failure is shown: ${JSON.stringify(killed)}`);
    for (const m of members.filter((x) => x.url !== c.urls[1])) {
      assert.equal(m.transport, 'channel', JSON.stringify(m));
      assert.equal(m.lastError, null, JSON.stringify(m));
      assert.ok(m.slot !== null && m.lastAnswerAt !== null, JSON.stringify(m));
    }
    await c.start(2);
  });

  await t.test('two members frozen: reads served, writes held then refused; writes resume when one returns', async () => {
    c.members[1]!.cas!.proc.kill('SIGSTOP');
    c.members[2]!.cas!.proc.kill('SIGSTOP');
    try {
      const n = (await setup.query('SELECT COUNT(*) AS n FROM app.t') as Array<{ n: bigint }>)[0]!.n;
      assert.ok(n > 0n, 'reads are served');
      const held = await p.connect({ user: 'app', password: 'app-pw' });
      held.on('error', () => undefined); // the proxy closes a connection whose write it could not confirm
      const started = Date.now();
      await assert.rejects(held.query("INSERT INTO app.t (v) VALUES ('held')"), (e: Error) => {
        assert.match(e.message, /could not be confirmed durable \(freshness epoch not sealed\)/);
        return true;
      });
      assert.ok(Date.now() - started >= 2500, 'the write was held up to the hold timeout');
      c.members[1]!.cas!.proc.kill('SIGCONT');
      await new Promise((r) => setTimeout(r, 500));
      const conn = await p.connect({ user: 'app', password: 'app-pw' }).catch((e: Error) => {
        throw new Error(`${e.message}; proxy exit ${String(p.exitCode())} signal ${String(p.proc.signalCode)}: ${p.output().split('\n').filter((l) => !l.includes('"level":30')).slice(-8).join('\n')}`);
      });
      await conn.query("INSERT INTO app.t (v) VALUES ('after')");
      await conn.end();
    } finally {
      c.members[1]!.cas!.proc.kill('SIGCONT');
      c.members[2]!.cas!.proc.kill('SIGCONT');
    }
  });
  const rows = (await setup.query('SELECT COUNT(*) AS n FROM app.t') as Array<{ n: bigint }>)[0]!.n;
  await setup.end();
  assert.equal(await p.stop(), 0);
  proxy = undefined;

  await t.test('every member lost, the owner reopens: the proxy\'s record deleted → refused (COUNTER_UNANCHORED), not a first start; re-anchored → every row', async () => {
    c.kill(1);
    c.kill(2);
    c.kill(3);
    const ownerKeyFile = path.join(tmp.path, 'owner.key');
    writeSigningKeyFile(ownerKeyFile, c.owner, 'cdbp-owner-key/1');
    const statement = path.join(tmp.path, 'recover.json');
    const signed = await runCdbp(['recover', 'deployment', '--ca', c.caFile, '--owner-key', ownerKeyFile, '--out', statement, '--valid-minutes', '10']);
    assert.equal(signed.code, 0, signed.output);
    await c.start(1, { extraArgs: ['--ha-recover', statement] });
    await c.start(2);
    await c.start(3);
    // The attack: a reopened deployment lost every counter, and without the record "no counter" read as
    // "never advanced" — a first start that takes whatever data directory the host put there.
    const record = readFileSync(p.freshnessRecordFile);
    rmSync(p.freshnessRecordFile);
    const refused = await startProxyProcess({ ...proxyOptions, waitFor: 'none' });
    await until(() => /COUNTER_UNANCHORED|"state":"ready"/.test(refused.output()) || refused.exitCode() !== undefined, 60_000, 'the refusal');
    const out = refused.output();
    assert.match(out, /"code":"COUNTER_UNANCHORED"/, out.slice(-3000));
    assert.doesNotMatch(out, /first start of this database|"state":"ready"|mariadbd started/);
    if (refused.exitCode() === undefined) await refused.stop(); else await refused.exited;
    // The owner re-anchors to the record as found (here the one the host had hidden), on every member.
    writeFileSync(p.freshnessRecordFile, record);
    const r = await runCdbp(['recover', '--cas', c.urls.join(','), '--ca', c.caFile, '--owner-key', ownerKeyFile, '--service', 'mariadb', '--record', p.freshnessRecordFile]);
    assert.equal(r.code, 0, r.output);
    proxy = await startProxyProcess(proxyOptions);
    const conn = await proxy.connect({ user: 'app', password: 'app-pw' });
    try {
      assert.equal((await conn.query('SELECT COUNT(*) AS n FROM app.t') as Array<{ n: bigint }>)[0]!.n, rows);
      await conn.query("INSERT INTO app.t (v) VALUES ('after-reopen')");
    } finally { await conn.end(); }
    assert.equal(await proxy.stop(), 0);
    proxy = undefined;
  });
});
