import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { aeadOpen, aeadSeal } from '../../src/crypto/aead.ts';
import { openBlob, sealBlob } from '../../src/crypto/sealed-file.ts';
import { generateSealingKeyPair, openSealed, sealToPublicKey } from '../../src/crypto/box.ts';
import { writeFileDurable } from '../../src/crypto/atomic-file.ts';
import { constantTimeEqual } from '../../src/crypto/hash.ts';
import { isCdbpError } from '../../src/kernel/errors.ts';
import { tempDir } from '../support/tmp.ts';

const KEY = Buffer.alloc(32, 1);

test('AEAD: round trip; any change to ciphertext, nonce, AD or key fails', async () => {
  const pt = Buffer.from('secret state');
  const ad = Buffer.from('header');
  const sealed = await aeadSeal(KEY, pt, ad);
  assert.deepEqual(await aeadOpen(KEY, sealed, ad), pt);
  for (let i = 0; i < sealed.length; i += 7) {
    const bad = Buffer.from(sealed);
    bad[i] = bad[i]! ^ 0x80;
    await assert.rejects(aeadOpen(KEY, bad, ad), (e: unknown) => isCdbpError(e, 'SEAL_INVALID'), `byte ${i}`);
  }
  await assert.rejects(aeadOpen(KEY, sealed, Buffer.from('headex')), (e: unknown) => isCdbpError(e, 'SEAL_INVALID'));
  await assert.rejects(aeadOpen(Buffer.alloc(32, 2), sealed, ad), (e: unknown) => isCdbpError(e, 'SEAL_INVALID'));
  await assert.rejects(aeadOpen(KEY, sealed.subarray(0, 10), ad), (e: unknown) => isCdbpError(e, 'SEAL_INVALID'));
  assert.notDeepEqual(await aeadSeal(KEY, pt, ad), sealed, 'fresh nonce each time');
});

test('sealed blobs bind their label: another label or a flipped header byte fails', async () => {
  const blob = await sealBlob(KEY, 'cas/service/a', Buffer.from('{"x":1}'));
  assert.equal((await openBlob(KEY, 'cas/service/a', blob)).toString(), '{"x":1}');
  await assert.rejects(openBlob(KEY, 'cas/service/b', blob), (e: unknown) => isCdbpError(e, 'SEAL_INVALID'));
  const bad = Buffer.from(blob);
  bad[8] = 2; // version byte
  await assert.rejects(openBlob(KEY, 'cas/service/a', bad), (e: unknown) => isCdbpError(e, 'SEAL_INVALID'));
  await assert.rejects(openBlob(KEY, 'cas/service/a', Buffer.from('garbage')), (e: unknown) => isCdbpError(e, 'SEAL_INVALID'));
});

test('sealed box: only the holder of the private key opens it', async () => {
  const kp = await generateSealingKeyPair();
  const other = await generateSealingKeyPair();
  const box = await sealToPublicKey(kp.publicKey, Buffer.from('keys'));
  assert.equal((await openSealed(kp, box)).toString(), 'keys');
  await assert.rejects(openSealed(other, box), (e: unknown) => isCdbpError(e, 'SEAL_INVALID'));
});

test('durable write replaces the file and leaves no temp or backup copies', async (t) => {
  const d = tempDir('durable');
  t.after(() => d.remove());
  const f = path.join(d.path, 'state.sealed');
  await writeFileDurable(f, 'one');
  await writeFileDurable(f, 'two');
  assert.equal(readFileSync(f, 'utf8'), 'two');
  assert.deepEqual(readdirSync(d.path), ['state.sealed']);
});

test('constantTimeEqual', () => {
  assert.ok(constantTimeEqual('abc', 'abc'));
  assert.ok(!constantTimeEqual('abc', 'abd'));
  assert.ok(!constantTimeEqual('abc', 'abcd'));
});
