/**
 * PostgreSQL encrypted at rest behind a real proxy process (attest → freshness → key → mount → PostgreSQL):
 * distinctive markers written through the proxy (rows, an index, an out-of-line TOAST value, a sort that
 * spills to a temp file, and so WAL) appear nowhere on the disk; the control run with encryption off finds
 * each of them (so the search works). Then the fail-closed cases on the same encrypted database: a kill -9
 * leaves a dead FUSE mount that the next start clears; a mount that vanishes while running, a substituted
 * directory (wrong key) and a missing one each stop PostgreSQL and say why on /v1/status.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, readdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { startTestCas, type TestCas } from '../support/cas.ts';
import { applyProxyPolicy } from '../support/proxy-process.ts';
import { getCurrentPolicy } from '../../src/cas-client/policy.ts';
import { startPgProxyProcess, type PgTestProxy } from '../support/pg-proxy-process.ts';
import { describeHits, grepTree, type MarkerHit } from '../support/at-rest.ts';
import { tempDir } from '../support/tmp.ts';
import { GocryptfsDirectory, mountsAt, readMountinfo } from '../../src/storage/index.ts';

const APP = { user: 'app', password: `pw-${randomBytes(6).toString('hex')}` };
let tmp: ReturnType<typeof tempDir>;
let cas: TestCas;
const encRoot = () => path.join(tmp.path, 'enc');
const proxies: PgTestProxy[] = [];

before(async () => {
  tmp = tempDir('pg-at-rest');
  chmodSync(tmp.path, 0o711);
  cas = await startTestCas({ root: path.join(tmp.path, 'cas-root') });
  await applyProxyPolicy(cas, { service: 'postgres' });
  await applyProxyPolicy(cas, { service: 'pgplain' });
});

after(async () => {
  for (const p of proxies) await p.kill().catch(() => undefined);
  await cas?.stop();
  for (const m of mountsAt(readMountinfo(), path.join(encRoot(), 'run', 'pg', 'plain'))) spawnSync('fusermount3', ['-u', '-z', m.mountPoint]);
  tmp?.remove();
});

async function start(root: string, o: Parameters<typeof startPgProxyProcess>[0] extends infer T ? Partial<T> : never = {}): Promise<PgTestProxy> {
  const p = await startPgProxyProcess({ root, cas, ...o });
  proxies.push(p);
  return p;
}

function pidAlive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch { return false; }
}

async function until(cond: () => boolean | Promise<boolean>, ms = 20_000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The gocryptfs process serving `mountPoint` (argv scan of /proc), if any. */
function gocryptfsPid(mountPoint: string): number | undefined {
  for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
      if (argv[0]!.endsWith('gocryptfs') && argv.includes(mountPoint)) return Number(pid);
    } catch { /* exited */ }
  }
  return undefined;
}

interface Workload { heap: string; index: string; toast: string; tempHits: MarkerHit[]; tempFiles: number }

/**
 * Writes the markers through the proxy and, while a spilled sort is held open by a cursor, greps `dirs`.
 * Returns the relation files (relative to the datadir) so the control run can name where it found what.
 */
async function writeMarkers(p: PgTestProxy, marker: string, dirsDuringSpill: string[]): Promise<Workload> {
  await p.backendQuery(`CREATE ROLE ${APP.user} LOGIN SUPERUSER PASSWORD '${APP.password}'`);
  const c = await p.client(APP.user, APP.password);
  try {
    await c.query('CREATE TABLE atrest (id serial PRIMARY KEY, v text, big text)');
    await c.query('ALTER TABLE atrest ALTER COLUMN big SET STORAGE EXTERNAL'); // out of line, uncompressed
    await c.query(`INSERT INTO atrest (v) SELECT '${marker}_row_' || g || repeat('r', 100) FROM generate_series(1, 5000) g`);
    await c.query('CREATE INDEX atrest_v ON atrest (v)');
    await c.query(`INSERT INTO atrest (v, big) VALUES ('toast', repeat('${marker}_toast_', 20000))`);
    await c.query('CHECKPOINT');
    const files = (await c.query(`SELECT pg_relation_filepath('atrest') AS heap, pg_relation_filepath('atrest_v') AS index,
      pg_relation_filepath(reltoastrelid) AS toast FROM pg_class WHERE relname = 'atrest'`)).rows[0];
    // A sort that spills: tiny work_mem, an order no index provides; the cursor keeps the temp file open.
    await c.query("SET work_mem = '64kB'");
    await c.query('BEGIN');
    await c.query("DECLARE spill CURSOR FOR SELECT v || '_sorted' AS s FROM atrest ORDER BY reverse(v)");
    await c.query('FETCH 1 FROM spill');
    const tempFiles = (await p.backendQuery('SELECT count(*)::int AS n FROM pg_ls_tmpdir()')).rows[0].n as number;
    const tempHits = dirsDuringSpill.flatMap((d) => grepTree([d], `${marker}_row_`)).filter((h) => h.file.includes('pgsql_tmp') || !h.file.includes('/base/'));
    await c.query('CLOSE spill');
    await c.query('COMMIT');
    return { heap: files.heap, index: files.index, toast: files.toast, tempHits, tempFiles };
  } finally {
    await c.end();
  }
}

test('control: with encryption off every marker is found on the disk (rows, index, TOAST, temp spill, WAL)', async () => {
  const root = path.join(tmp.path, 'plain');
  const marker = `PGPLAIN${randomBytes(5).toString('hex')}`;
  const p = await start(root, { service: 'pgplain', encryption: 'off' });
  const datadir = p.encryptedDir;
  const w = await writeMarkers(p, marker, [datadir]);
  assert.equal(p.exitCode(), undefined);
  assert.equal((await p.get('/v1/status')).body.backend.storage.mounted, false);
  assert.equal(await p.stop(), 0, p.output().slice(-3000));
  assert.ok(w.tempFiles > 0, 'the sort spilled to a temp file');
  assert.ok(w.tempHits.some((h) => h.file.includes('pgsql_tmp')), `temp spill file holds the marker: ${describeHits(w.tempHits)}`);
  const hits = grepTree([root], marker);
  const at = (rel: string) => hits.some((h) => h.file === path.join(datadir, rel) || h.file.startsWith(`${path.join(datadir, rel)}.`));
  assert.ok(at(w.heap), `heap ${w.heap}: ${describeHits(hits)}`);
  assert.ok(at(w.index), `index ${w.index}`);
  assert.ok(at(w.toast), `toast ${w.toast}`);
  assert.ok(hits.some((h) => h.file.includes(`${path.sep}pg_wal${path.sep}`)), 'WAL');
});

test('encrypted: no marker anywhere on the disk, during the temp spill or after stop; the plaintext exists only inside the mount', async () => {
  const root = encRoot();
  const marker = `PGENC${randomBytes(5).toString('hex')}`;
  const p = await start(root);
  const status = (await p.get('/v1/status')).body;
  assert.equal(status.backend.storage.kind, 'gocryptfs');
  assert.equal(status.backend.storage.mounted, true);
  assert.ok(status.backend.socket.startsWith(p.mountPoint), 'socket (and its lock file) inside the mount');
  assert.equal(mountsAt(readMountinfo(), p.mountPoint).at(-1)?.fsType, 'fuse.gocryptfs');
  const w = await writeMarkers(p, marker, [path.join(root, 'untrusted')]);
  assert.ok(w.tempFiles > 0, 'the sort spilled to a temp file');
  assert.deepEqual(w.tempHits, [], `ciphertext of the temp spill holds no marker: ${describeHits(w.tempHits)}`);
  // The same search does find the plaintext inside the mount (the workload really wrote it).
  assert.ok(grepTree([path.join(p.mountPoint, 'pg', 'data', 'pg_wal')], marker).length > 0, 'plaintext WAL inside the mount');
  assert.equal(await p.stop(), 0, p.output().slice(-3000));
  assert.equal(mountsAt(readMountinfo(), p.mountPoint).length, 0, 'clean unmount on stop');
  assert.deepEqual(readdirSync(p.mountPoint), [], 'nothing left at the mount point');
  assert.ok(existsSync(path.join(p.encryptedDir, 'gocryptfs.conf')));
  assert.equal(existsSync(path.join(p.encryptedDir, 'PG_VERSION')), false);
  const hits = grepTree([root], marker);
  assert.deepEqual(hits, [], `plaintext on the disk:\n${describeHits(hits)}`);
  assert.match(p.output(), /encrypted directory created/);
  assert.doesNotMatch(p.output(), new RegExp(marker));
});

test('encrypted: after kill -9 the dead FUSE mount does not block the next start; data intact', async () => {
  const p = await start(encRoot());
  const pgPid = (await p.get('/v1/status')).body.backend.pid as number;
  const fusePid = gocryptfsPid(p.mountPoint);
  assert.ok(fusePid, 'gocryptfs serves the mount');
  // The whole pod dies: proxy and FUSE server. PostgreSQL follows its supervisor (setpriv --pdeathsig QUIT).
  p.proc.kill('SIGKILL');
  process.kill(fusePid, 'SIGKILL');
  await p.exited;
  await until(() => !pidAlive(pgPid), 20_000, 'postgres to exit after its supervisor died');
  await until(() => gocryptfsPid(p.mountPoint) === undefined, 10_000, 'gocryptfs to exit');
  assert.equal(mountsAt(readMountinfo(), p.mountPoint).length, 1, 'a stale (dead) mount is left behind');
  assert.throws(() => readdirSync(p.mountPoint), /ENOTCONN/);
  const q = await start(encRoot(), { pgPort: p.pgPort });
  assert.match(q.output(), /clearing a stale mount/);
  const c = await q.client(APP.user, APP.password);
  try {
    assert.equal((await c.query("SELECT count(*)::int AS n FROM atrest WHERE v <> 'toast'")).rows[0].n, 5000);
  } finally {
    await c.end();
  }
  assert.equal(await q.stop(), 0, q.output().slice(-3000));
  assert.equal(mountsAt(readMountinfo(), q.mountPoint).length, 0);
});

test('encrypted: a mount that vanishes while running fails closed (unready, reason on /v1/status, PostgreSQL stopped)', async () => {
  const p = await start(encRoot());
  const pgPid = (await p.get('/v1/status')).body.backend.pid as number;
  assert.equal(spawnSync('fusermount3', ['-u', '-z', p.mountPoint]).status, 0);
  await p.waitReadyz(503, 15_000);
  const s = (await p.get('/v1/status')).body;
  assert.equal(s.lifecycle.state, 'failed');
  assert.equal(s.lifecycle.reason.code, 'STORAGE_UNAVAILABLE', JSON.stringify(s.lifecycle.reason));
  assert.match(s.lifecycle.reason.message, /encrypted directory lost/);
  assert.equal(s.backend.storage.mounted, false);
  assert.ok(s.reasons.some((r: string) => /^storage: /.test(r)), JSON.stringify(s.reasons));
  await until(() => !pidAlive(pgPid), 30_000, 'postgres to be stopped');
  await assert.rejects(p.client(APP.user, APP.password));
  assert.equal(await p.stop(), 0, p.output().slice(-3000));
});

test('encrypted: a new key version makes the next start re-encrypt into a new directory; data intact, old wrap gone', async (t) => {
  const cipher = path.join(encRoot(), 'untrusted', 'postgres');
  const current = await getCurrentPolicy(cas.url, cas.caPem, 'postgres');
  await applyProxyPolicy(cas, { service: 'postgres', predecessor: current!.policyHash, dbKeys: [{ id: 1, versions: [1, 2] }, { id: 2, versions: [1] }] });
  const confBefore = readFileSync(path.join(cipher, 'gocryptfs.conf'), 'utf8');
  const p = await start(encRoot());
  const line = p.output().split('\n').find((l) => l.includes('re-encrypted the directory with the new key version'));
  assert.ok(line, p.output().slice(-3000));
  const { files, bytes, ms } = JSON.parse(line!) as { files: number; bytes: number; ms: number };
  t.diagnostic(`re-encryption: ${files} files, ${(bytes / 1048576).toFixed(1)} MiB in ${ms} ms`);
  assert.equal((await p.get('/v1/status')).body.backend.storage.keyVersion, 2);
  const c = await p.client(APP.user, APP.password);
  try {
    assert.equal((await c.query("SELECT count(*)::int AS n FROM atrest WHERE v <> 'toast'")).rows[0].n, 5000);
    assert.equal((await c.query("SELECT length(big) AS n FROM atrest WHERE v = 'toast'")).rows[0].n > 100_000, true);
  } finally {
    await c.end();
  }
  assert.equal(await p.stop(), 0, p.output().slice(-3000));
  assert.notEqual(readFileSync(path.join(cipher, 'gocryptfs.conf'), 'utf8'), confBefore, 'a new directory (new master key)');
  assert.equal(existsSync(`${cipher}.rekey`) || existsSync(`${cipher}.retired`), false, 'no copy left behind');
  const again = await start(encRoot());
  assert.doesNotMatch(again.output(), /re-encrypt/);
  assert.equal(await again.stop(), 0);
});

async function expectStorageFailure(code: string, message: RegExp): Promise<void> {
  const p = await start(encRoot(), { waitFor: 'ops' });
  await until(async () => (await p.get('/v1/status')).body.lifecycle.state === 'failed', 30_000, 'start-up to fail');
  const s = (await p.get('/v1/status')).body;
  assert.equal(s.lifecycle.reason.code, code, JSON.stringify(s.lifecycle.reason));
  assert.match(s.lifecycle.reason.message, message);
  assert.equal((await p.get('/readyz')).status, 503);
  assert.equal(s.backend.running, null, 'PostgreSQL was never started');
  assert.equal(s.backend.storage.mounted, false);
  assert.equal(mountsAt(readMountinfo(), p.mountPoint).length, 0, 'nothing mounted');
  assert.doesNotMatch(p.output(), /postgres started/);
  await p.stop();
}

test('encrypted: a substituted directory (another key) and a missing one are refused before PostgreSQL starts', async () => {
  const cipher = path.join(encRoot(), 'untrusted', 'postgres');
  const saved = `${cipher}.saved`;
  renameSync(cipher, saved);
  // The adversary's own gocryptfs directory, with a plausible-looking but foreign key.
  const foreign = new GocryptfsDirectory({ encryptedPath: cipher, plaintextPath: path.join(tmp.path, 'foreign-mnt') });
  await foreign.mount({ version: 1, secret: randomBytes(32) }, { create: true });
  await foreign.unmount();
  await expectStorageFailure('STORAGE_KEY_INVALID', /does not open with any provisioned key/);
  rmSync(cipher, { recursive: true, force: true });
  await expectStorageFailure('STORAGE_UNAVAILABLE', /missing or empty but the freshness record says this database has data/);
  renameSync(saved, cipher);
  assert.ok(readFileSync(path.join(cipher, 'gocryptfs.conf'), 'utf8').includes('EncryptedKey'));
});
