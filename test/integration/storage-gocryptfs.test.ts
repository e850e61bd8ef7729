/**
 * The gocryptfs encrypted directory with real gocryptfs and FUSE: the key reaches it only on a pipe, a
 * wrong key or a substituted directory is refused, the mount vanishing (unmounted from outside, the FUSE
 * server killed) is reported, and a dead mount left by a crash does not block the next mount.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { GocryptfsDirectory, openEncryptedDirectory, readMountinfo, mountsAt, storageKeyCandidates } from '../../src/storage/index.ts';
import type { StorageKey } from '../../src/storage/index.ts';
import { isCdbpError } from '../../src/kernel/errors.ts';
import { grepTree } from '../support/at-rest.ts';
import { tempDir } from '../support/tmp.ts';

const key = (version = 1): StorageKey => ({ version, secret: randomBytes(32) });

function gocryptfsPid(mountPoint: string): number | undefined {
  const r = spawnSync('pgrep', ['-f', `gocryptfs .*${mountPoint}`], { encoding: 'utf8' });
  const pids = r.stdout.trim().split('\n').filter(Boolean).map(Number);
  return pids.find((p) => readFileSync(`/proc/${p}/cmdline`, 'utf8').startsWith('/usr/bin/gocryptfs') || readFileSync(`/proc/${p}/comm`, 'utf8').trim() === 'gocryptfs');
}

function waitFor(cond: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  return new Promise((resolve, reject) => {
    const tick = () => (cond() ? resolve() : Date.now() > deadline ? reject(new Error('timed out')) : setTimeout(tick, 50));
    tick();
  });
}

test('gocryptfs directory: create, write, unmount leaves only ciphertext, reopen with the key, refuse a wrong key', async (t) => {
  const tmp = tempDir('gcfs');
  const dirs = { encryptedPath: path.join(tmp.path, 'cipher'), plaintextPath: path.join(tmp.path, 'plain') };
  const d = new GocryptfsDirectory(dirs);
  t.after(async () => { await d.unmount(); tmp.remove(); });
  const k = key();
  assert.equal(d.state(), 'empty');
  await d.mount(k, { create: true });
  assert.ok(d.isMounted());
  assert.equal(d.health().keyVersion, 1);
  assert.equal(mountsAt(readMountinfo(), dirs.plaintextPath).at(-1)?.fsType, 'fuse.gocryptfs');
  const marker = `MARK_${randomBytes(6).toString('hex')}`;
  mkdirSync(path.join(dirs.plaintextPath, 'sub'));
  writeFileSync(path.join(dirs.plaintextPath, 'sub', `${marker}.txt`), `${marker}\n`.repeat(1000));
  await d.unmount();
  assert.equal(d.isMounted(), false);
  assert.equal(mountsAt(readMountinfo(), dirs.plaintextPath).length, 0, 'unmounted');
  assert.equal(d.state(), 'initialized');
  assert.deepEqual(grepTree([tmp.path], marker), [], 'no plaintext content or file name on the disk');
  // The key never appears on the disk either (not even hex-encoded, which is what gocryptfs reads).
  assert.deepEqual(grepTree([tmp.path], k.secret.toString('hex')), []);

  const wrong = new GocryptfsDirectory(dirs);
  await assert.rejects(wrong.mount(key()), (e: unknown) => isCdbpError(e, 'STORAGE_KEY_INVALID') && /does not open/.test((e as Error).message));
  assert.equal(wrong.isMounted(), false);
  assert.equal(mountsAt(readMountinfo(), dirs.plaintextPath).length, 0);
  // openEncryptedDirectory tries every provisioned version, newest first.
  const opened = await openEncryptedDirectory(d, [key(2), { ...k }], { create: false });
  assert.equal(opened.version, 1);
  assert.equal(readFileSync(path.join(dirs.plaintextPath, 'sub', `${marker}.txt`), 'utf8').slice(0, marker.length), marker);
});

test('gocryptfs directory: refuses a missing directory unless creating, foreign content, and a non-empty mount point', async (t) => {
  const tmp = tempDir('gcfs');
  t.after(() => tmp.remove());
  const d = new GocryptfsDirectory({ encryptedPath: path.join(tmp.path, 'cipher'), plaintextPath: path.join(tmp.path, 'plain') });
  await assert.rejects(openEncryptedDirectory(d, [key()], { create: false, refuseCreateBecause: 'the database exists' }),
    (e: unknown) => isCdbpError(e, 'STORAGE_UNAVAILABLE') && (e as any).details.reason === 'missing' && /the database exists/.test((e as Error).message));
  mkdirSync(path.join(tmp.path, 'cipher'));
  writeFileSync(path.join(tmp.path, 'cipher', 'PG_VERSION'), '15\n');
  await assert.rejects(d.mount(key(), { create: true }), (e: unknown) => isCdbpError(e, 'STORAGE_UNAVAILABLE') && (e as any).details.reason === 'foreign_content'
    && /plaintext PostgreSQL cluster/.test((e as Error).message));
  const d2 = new GocryptfsDirectory({ encryptedPath: path.join(tmp.path, 'cipher2'), plaintextPath: path.join(tmp.path, 'plain2') });
  mkdirSync(path.join(tmp.path, 'plain2'));
  writeFileSync(path.join(tmp.path, 'plain2', 'postmaster.pid'), 'x');
  await assert.rejects(d2.mount(key(), { create: true }), (e: unknown) => (e as any).details?.reason === 'mountpoint_not_empty');
  assert.equal(existsSync(path.join(tmp.path, 'cipher2', 'gocryptfs.conf')), false, 'nothing created after a refusal');
});

test('gocryptfs directory: an unmount from outside and a killed FUSE server are reported; a dead mount does not block the next mount', async (t) => {
  const tmp = tempDir('gcfs');
  const dirs = { encryptedPath: path.join(tmp.path, 'cipher'), plaintextPath: path.join(tmp.path, 'plain'), healthIntervalMs: 200 };
  const k = key();
  const d = new GocryptfsDirectory(dirs);
  t.after(async () => { await d.unmount(); tmp.remove(); });
  await d.mount(k, { create: true });
  const lost: string[] = [];
  d.onLost((r) => lost.push(r));
  assert.equal(spawnSync('fusermount3', ['-u', '-z', dirs.plaintextPath]).status, 0);
  await waitFor(() => lost.length > 0);
  assert.equal(d.isMounted(), false);
  assert.match(d.health().reason ?? '', /no longer mounted|not a mount point/);

  await d.mount(k);
  assert.ok(d.isMounted());
  const pid = gocryptfsPid(dirs.plaintextPath);
  assert.ok(pid, 'gocryptfs process found');
  process.kill(pid, 'SIGKILL');
  await waitFor(() => lost.length > 1);
  assert.match(lost[1]!, /gocryptfs exited|not connected|mount point unusable/);
  // The dead mount is still in the table (ENOTCONN): a new process must clear it and mount.
  assert.equal(mountsAt(readMountinfo(), dirs.plaintextPath).length, 1, 'stale dead mount left behind');
  const next = new GocryptfsDirectory(dirs);
  await next.mount(k);
  t.after(() => next.unmount());
  writeFileSync(path.join(dirs.plaintextPath, 'after'), 'ok');
  assert.equal(mountsAt(readMountinfo(), dirs.plaintextPath).length, 1);
  await next.unmount();
});

test('gocryptfs directory: something mounted over the mount point is a lost mount (PostgreSQL would write plaintext there)', async (t) => {
  const tmp = tempDir('gcfs');
  const dirs = { encryptedPath: path.join(tmp.path, 'cipher'), plaintextPath: path.join(tmp.path, 'plain'), healthIntervalMs: 200 };
  const d = new GocryptfsDirectory(dirs);
  t.after(async () => {
    spawnSync('umount', ['-l', dirs.plaintextPath]);
    await d.unmount();
    tmp.remove();
  });
  await d.mount(key(), { create: true });
  const lost: string[] = [];
  d.onLost((r) => lost.push(r));
  const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', dirs.plaintextPath], { encoding: 'utf8' });
  assert.equal(m.status, 0, m.stderr);
  assert.equal(d.health().mounted, false, 'health() checks now, not only on the next poll');
  assert.match(lost[0] ?? '', /shows tmpfs/);
});

test('storage keys are derived per version from the provisioned DB keys, newest first', () => {
  const k1 = randomBytes(32);
  const k2 = randomBytes(32);
  const c = storageKeyCandidates([{ id: 1, version: 1, key: k1 }, { id: 2, version: 1, key: randomBytes(32) }, { id: 1, version: 2, key: k2 }]);
  assert.deepEqual(c.map((x) => x.version), [2, 1]);
  assert.notDeepEqual(c[0]!.secret, k2, 'derived, not the DB key itself');
  assert.equal(c[0]!.secret.length, 32);
  assert.throws(() => storageKeyCandidates([{ id: 2, version: 1, key: k1 }]), (e: unknown) => isCdbpError(e, 'STORAGE_KEY_INVALID'));
});
