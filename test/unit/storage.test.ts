/**
 * Pure parts of src/storage: mountinfo parsing (escapes, stacked mounts) and the recovery of an
 * interrupted key rotation (which directory is authoritative after a crash at each step).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { parseMountinfo, mountsAt } from '../../src/storage/mountinfo.ts';
import { recoverInterruptedRotation, rekeyPath, retiredPath } from '../../src/storage/rotate.ts';
import { tempDir } from '../support/tmp.ts';

const SAMPLE = [
  '22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw',
  '44 26 0:39 / /tmp/a\\040b/plain rw,nosuid,nodev,relatime - fuse.gocryptfs /tmp/a\\040b/cipher rw,user_id=0,group_id=0,default_permissions,allow_other',
  '45 44 0:40 / /tmp/a\\040b/plain rw,relatime shared:9 master:2 - tmpfs tmpfs rw',
  'garbage line',
  '',
].join('\n');

test('mountinfo: octal escapes are decoded, optional fields skipped, stacked mounts kept in order', () => {
  const m = parseMountinfo(SAMPLE);
  assert.equal(m.length, 3);
  const at = mountsAt(m, '/tmp/a b/plain');
  assert.deepEqual(at.map((e) => e.fsType), ['fuse.gocryptfs', 'tmpfs'], 'bottom first: a tmpfs mounted over our mount is on top');
  assert.equal(at[0]!.source, '/tmp/a b/cipher');
  assert.equal(mountsAt(m, '/tmp/a b').length, 0);
});

test('rotation recovery: leftover copy deleted; old directory restored between renames; retired one removed after', () => {
  const tmp = tempDir('rotate');
  try {
    const enc = path.join(tmp.path, 'postgres');
    const mk = (dir: string, tag: string) => { mkdirSync(dir, { recursive: true }); writeFileSync(path.join(dir, 'tag'), tag); };
    assert.equal(recoverInterruptedRotation(enc), null, 'nothing to do');
    // Crash while copying: the old directory is authoritative.
    mk(enc, 'old'); mk(rekeyPath(enc), 'new');
    assert.match(recoverInterruptedRotation(enc)!, /incomplete/);
    assert.equal(readFileSync(path.join(enc, 'tag'), 'utf8'), 'old');
    assert.equal(existsSync(rekeyPath(enc)), false);
    // Crash between the two renames: put the old one back, drop the copy.
    mk(rekeyPath(enc), 'new');
    renameSync(enc, retiredPath(enc));
    assert.match(recoverInterruptedRotation(enc)!, /restored the old directory/);
    assert.equal(readFileSync(path.join(enc, 'tag'), 'utf8'), 'old');
    assert.equal(existsSync(rekeyPath(enc)) || existsSync(retiredPath(enc)), false);
    // Crash after the second rename: the new directory stays, the retired one goes.
    mk(retiredPath(enc), 'old');
    writeFileSync(path.join(enc, 'tag'), 'new');
    assert.match(recoverInterruptedRotation(enc)!, /finished rotation/);
    assert.equal(readFileSync(path.join(enc, 'tag'), 'utf8'), 'new');
    assert.equal(existsSync(retiredPath(enc)), false);
  } finally {
    tmp.remove();
  }
});
