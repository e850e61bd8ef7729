/**
 * Sealed state and audit log of a real `cdbp cas`: tampering stops it; the audit chain catches any
 * edit; nonces expire; simulation needs the CAS's opt-in; owner-signed recovery via `cdbp recover`;
 * the owner CLI (`cdbp policy`) end to end.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { copyFileSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import { tempDir } from '../support/tmp.ts';
import { startTestCas, applyTestPolicy, runCdbp } from '../support/cas.ts';
import { SimulatedProvider } from '../../src/attestation/simulated.ts';
import { attestAndProvision } from '../../src/cas-client/index.ts';
import { casRequest } from '../../src/cas-client/http.ts';
import { generateSealingKeyPair } from '../../src/crypto/box.ts';
import { createCsr, generateTlsKeyPair, spkiDer } from '../../src/crypto/x509.ts';
import { sha512 } from '../../src/crypto/hash.ts';
import { isCdbpError } from '../../src/kernel/errors.ts';
import { entryHash } from '../../cas/audit.ts';
import { signRecovery, loadOwnerKey } from '../../src/provisioning/policy.ts';
import { getCurrentPolicyHash } from '../../src/cas-client/policy.ts';
import { measureShippedCode } from '../../src/attestation/measurement.ts';

function flipByte(file: string, offsetFromEnd: number): void {
  const b = readFileSync(file);
  const i = b.length - offsetFromEnd;
  b[i] = b[i]! ^ 0x01;
  writeFileSync(file, b);
}

test('tampered sealed state stops the CAS; intact state restarts', async (t) => {
  const tmp = tempDir('cas-seal');
  t.after(() => tmp.remove());
  const cas = await startTestCas({ root: tmp.path });
  await applyTestPolicy(cas, { service: 'a' });
  await applyTestPolicy(cas, { service: 'b' });
  assert.equal(await cas.stop(), 0);
  const servicesDir = path.join(cas.dir, 'state', 'services');
  const files = readdirSync(servicesDir).filter((f) => f.endsWith('.sealed')).sort();
  assert.equal(files.length, 2);
  const backup = (f: string) => readFileSync(f);
  const casArgs = ['cas', '--dir', cas.dir, '--port', '0'];

  for (const [what, file, offset] of [
    ['service ciphertext', path.join(servicesDir, files[0]!), 5],
    ['service header (label)', path.join(servicesDir, files[0]!), -12],
    ['CA file', path.join(cas.dir, 'state', 'ca.sealed'), 40],
  ] as const) {
    const original = backup(file);
    if (offset < 0) {
      const b = readFileSync(file);
      b[-offset] = b[-offset]! ^ 0x20;
      writeFileSync(file, b);
    } else flipByte(file, offset);
    const r = await runCdbp(casArgs);
    assert.equal(r.code, 1, `${what}: ${r.output}`);
    assert.match(r.output, /STATE_TAMPERED/, what);
    writeFileSync(file, original);
  }
  // One service's file under the other's name: caught (the name is authenticated).
  const a = backup(path.join(servicesDir, files[0]!));
  const b = backup(path.join(servicesDir, files[1]!));
  copyFileSync(path.join(servicesDir, files[0]!), path.join(servicesDir, files[1]!));
  const swapped = await runCdbp(casArgs);
  assert.equal(swapped.code, 1);
  assert.match(swapped.output, /STATE_TAMPERED/);
  writeFileSync(path.join(servicesDir, files[0]!), a);
  writeFileSync(path.join(servicesDir, files[1]!), b);
  // Sealed with another key: caught.
  const keyFile = path.join(cas.dir, 'sealing.key');
  const key = readFileSync(keyFile);
  writeFileSync(keyFile, 'ab'.repeat(32) + '\n');
  const wrongKey = await runCdbp(casArgs);
  assert.equal(wrongKey.code, 1);
  assert.match(wrongKey.output, /STATE_TAMPERED/);
  writeFileSync(keyFile, key);
  // No leftovers: nothing but sealed files (no .old/.bak copies).
  assert.deepEqual(readdirSync(servicesDir).sort(), files);
  // Restored intact: starts and serves the same policies.
  const again = await startTestCas({ root: tmp.path, dir: cas.dir, platformKeyFile: cas.platformKeyFile });
  t.after(() => again.stop());
  assert.ok(await getCurrentPolicyHash(again.url, again.caPem, 'a'));
  assert.ok(await getCurrentPolicyHash(again.url, again.caPem, 'b'));
});

test('audit chain: verify passes, then fails after any edit; the CAS refuses to start on it', async (t) => {
  const tmp = tempDir('cas-audit');
  t.after(() => tmp.remove());
  const cas = await startTestCas({ root: tmp.path });
  await applyTestPolicy(cas, { service: 'x' });
  const p = await attestAndProvision({ casUrl: cas.url, caPem: cas.caPem, service: 'x', provider: new SimulatedProvider(cas.platformKeyFile), tls: {} });
  await p.counter.advance(0, 1, 'ab'.repeat(32));
  assert.equal(await cas.stop(), 0);
  const log = path.join(cas.dir, 'audit.log');
  const original = readFileSync(log, 'utf8');
  const ok = await runCdbp(['cas', 'audit', 'verify', '--dir', cas.dir]);
  assert.equal(ok.code, 0, ok.output);
  assert.match(ok.output, /audit log OK: \d+ entries.*MACs verified/);

  const lines = original.trim().split('\n');
  const edits: Array<[string, string]> = [
    ['field edited', original.replace('"outcome":"ok"', '"outcome":"refused"')],
    ['line deleted', [...lines.slice(0, 1), ...lines.slice(2)].join('\n') + '\n'],
    ['lines swapped', [lines[1], lines[0], ...lines.slice(2)].join('\n') + '\n'],
    ['tail truncated mid-line', original.slice(0, -10)],
    ['entry rewritten with a recomputed hash (no MAC key)', (() => {
      const e = JSON.parse(lines[lines.length - 1]!) as Record<string, unknown>;
      e.service = 'y';
      const { hash: _h, mac: _m, ...body } = e;
      e.hash = entryHash(body as never);
      return [...lines.slice(0, -1), JSON.stringify(e)].join('\n') + '\n';
    })()],
  ];
  for (const [what, text] of edits) {
    writeFileSync(log, text);
    const v = await runCdbp(['cas', 'audit', 'verify', '--dir', cas.dir]);
    assert.equal(v.code, 1, `${what}: ${v.output}`);
    assert.match(v.output, /audit log BROKEN/, what);
  }
  const start = await runCdbp(['cas', '--dir', cas.dir, '--port', '0']);
  assert.equal(start.code, 1);
  assert.match(start.output, /AUDIT_CHAIN_BROKEN/);
  writeFileSync(log, original);
  assert.equal((await runCdbp(['cas', 'audit', 'verify', '--dir', cas.dir])).code, 0);
});

test('expired nonce, CAS without simulation, fail-closed sealing', async (t) => {
  const tmp = tempDir('cas-misc');
  t.after(() => tmp.remove());
  const cas = await startTestCas({ root: tmp.path, env: { CDBP_CAS_NONCE_TTL_MS: '200' } });
  t.after(() => cas.stop());
  await applyTestPolicy(cas, { service: 's' });
  const provider = new SimulatedProvider(cas.platformKeyFile);
  const body = async () => {
    const { nonce } = await casRequest<{ nonce: string }>(cas.url, 'POST', '/v1/nonce', {}, { caPem: cas.caPem });
    const k = generateTlsKeyPair();
    const s = await generateSealingKeyPair();
    const evidence = await provider.collect(sha512(Buffer.from(nonce, 'hex'), spkiDer(k.publicKey), s.publicKey));
    return { service: 's', nonce, csr: createCsr({ ...k, commonName: 's' }), sealingPublicKey: s.publicKey.toString('hex'), evidence };
  };
  const late = await body();
  await new Promise((r) => setTimeout(r, 400));
  await assert.rejects(casRequest(cas.url, 'POST', '/v1/attest', late, { caPem: cas.caPem }), (e: unknown) => isCdbpError(e, 'NONCE_INVALID') && /expired/.test(e.message));
  // In time: accepted.
  assert.ok((await casRequest<{ certPem: string }>(cas.url, 'POST', '/v1/attest', await body(), { caPem: cas.caPem })).certPem);

  // A CAS started without --allow-simulated refuses simulated evidence even if the policy allows it.
  const strict = await startTestCas({ root: path.join(tmp.path, 'strict'), allowSimulated: false, platformKeyFile: cas.platformKeyFile });
  t.after(() => strict.stop());
  await applyTestPolicy(strict, { service: 's' });
  await assert.rejects(attestAndProvision({ casUrl: strict.url, caPem: strict.caPem, service: 's', provider, tls: {} }),
    (e: unknown) => isCdbpError(e, 'SIMULATION_NOT_ALLOWED'));

  const closed = await runCdbp(['cas', '--dir', path.join(tmp.path, 'closed'), '--port', '0', '--sealing', 'fail-closed']);
  assert.equal(closed.code, 1);
  assert.match(closed.output, /SEALING_UNAVAILABLE/);
});

test('owner CLI: policy init/new/sign/apply, then cdbp recover re-anchors the counter (audited, not replayable)', async (t) => {
  const tmp = tempDir('cas-cli');
  t.after(() => tmp.remove());
  const cas = await startTestCas({ root: tmp.path });
  t.after(() => cas.stop());
  const f = (n: string) => path.join(tmp.path, n);
  const init = await runCdbp(['policy', 'init', '--out', f('owner.key')]);
  assert.equal(init.code, 0, init.output);
  assert.match(init.output, /owner public key: [0-9a-f]{64}/);
  assert.equal((await runCdbp(['policy', 'new', '--service', 'db1', '--measurement', measureShippedCode(), '--keys', '1:1,2:1', '--out', f('p.json')])).code, 0);
  const policy = JSON.parse(readFileSync(f('p.json'), 'utf8')) as { tls: { dnsNames: string[]; ipAddresses: string[] } };
  assert.deepEqual(policy.tls.dnsNames, ['localhost']);
  assert.deepEqual(policy.tls.ipAddresses, ['127.0.0.1']);
  const sign = await runCdbp(['policy', 'sign', '--key', f('owner.key'), '--in', f('p.json'), '--out', f('s.json'), '--cas', cas.url, '--ca', cas.caFile]);
  assert.equal(sign.code, 0, sign.output);
  const apply = await runCdbp(['policy', 'apply', '--cas', cas.url, '--ca', cas.caFile, '--in', f('s.json')]);
  assert.equal(apply.code, 0, apply.output);
  assert.match(apply.output, /db1: created .*new keys 1v1, 2v1/);
  // Update with predecessor fetched from the CAS.
  const p2 = JSON.parse(readFileSync(f('p.json'), 'utf8')) as { dbKeys: Array<{ id: number; versions: number[] }> };
  p2.dbKeys[0]!.versions.push(2);
  writeFileSync(f('p2.json'), JSON.stringify(p2));
  assert.equal((await runCdbp(['policy', 'sign', '--key', f('owner.key'), '--in', f('p2.json'), '--out', f('s2.json'), '--cas', cas.url, '--ca', cas.caFile])).code, 0);
  const apply2 = await runCdbp(['policy', 'apply', '--cas', cas.url, '--ca', cas.caFile, '--in', f('s2.json')]);
  assert.match(apply2.output, /db1: updated .*new keys 1v2/);
  // Applying the first one again now breaks the chain.
  const stale = await runCdbp(['policy', 'apply', '--cas', cas.url, '--ca', cas.caFile, '--in', f('s.json')]);
  assert.equal(stale.code, 1);
  assert.match(stale.output, /POLICY_CHAIN_BROKEN/);

  // The proxy advances the counter; then a restore from backup needs it re-anchored to epoch 1.
  const p = await attestAndProvision({ casUrl: cas.url, caPem: cas.caPem, service: 'db1', provider: new SimulatedProvider(cas.platformKeyFile), tls: {} });
  await p.counter.advance(0, 1, '11'.repeat(32));
  await p.counter.advance(1, 5, '55'.repeat(32));
  const rec = await runCdbp(['recover', '--cas', cas.url, '--ca', cas.caFile, '--owner-key', f('owner.key'), '--service', 'db1', '--value', '1', '--digest', '11'.repeat(32)]);
  assert.equal(rec.code, 0, rec.output);
  assert.deepEqual(await p.counter.read(), { value: 1, digest: '11'.repeat(32) });
  // A captured signed recovery cannot be replayed.
  const owner = loadOwnerKey(f('owner.key'));
  const { nonce } = await casRequest<{ nonce: string }>(cas.url, 'POST', '/v1/nonce', { purpose: 'recover' }, { caPem: cas.caPem });
  const signed = await signRecovery({ service: 'db1', value: 0, digest: '', nonce }, owner);
  await casRequest(cas.url, 'POST', '/v1/services/db1/recover', signed, { caPem: cas.caPem });
  await assert.rejects(casRequest(cas.url, 'POST', '/v1/services/db1/recover', signed, { caPem: cas.caPem }), (e: unknown) => isCdbpError(e, 'NONCE_INVALID'));
  // An attest nonce is not a recover nonce.
  const { nonce: attestNonce } = await casRequest<{ nonce: string }>(cas.url, 'POST', '/v1/nonce', { purpose: 'attest' }, { caPem: cas.caPem });
  await assert.rejects(casRequest(cas.url, 'POST', '/v1/services/db1/recover', await signRecovery({ service: 'db1', value: 0, digest: '', nonce: attestNonce }, owner), { caPem: cas.caPem }),
    (e: unknown) => isCdbpError(e, 'NONCE_INVALID'));
  const audit = readFileSync(path.join(cas.dir, 'audit.log'), 'utf8');
  assert.match(audit, /"event":"counter.recover".*"outcome":"ok"/);
  assert.match(audit, /"toValue":1/);
});

test('audit tail truncated, log rolled back or deleted: the CAS refuses to start (AUDIT_CHAIN_BROKEN) and audit verify reports it', async (t) => {
  const tmp = tempDir('cas-trunc');
  t.after(() => tmp.remove());
  const cas = await startTestCas({ root: tmp.path });
  await applyTestPolicy(cas, { service: 'x' });
  assert.equal(await cas.stop(), 0);
  const log = path.join(cas.dir, 'audit.log');
  const older = readFileSync(log, 'utf8');
  // More history, including a recovery an adversary would like to erase.
  const again = await startTestCas({ root: tmp.path, dir: cas.dir, platformKeyFile: cas.platformKeyFile });
  const p = await attestAndProvision({ casUrl: again.url, caPem: again.caPem, service: 'x', provider: new SimulatedProvider(again.platformKeyFile), tls: {} });
  await p.counter.advance(0, 3, 'ab'.repeat(32));
  const { nonce } = await casRequest<{ nonce: string }>(again.url, 'POST', '/v1/nonce', { purpose: 'recover' }, { caPem: again.caPem });
  await casRequest(again.url, 'POST', '/v1/services/x/recover', await signRecovery({ service: 'x', value: 1, digest: 'cd'.repeat(32), nonce }, again.owner), { caPem: again.caPem });
  (p.counter as { close?: () => void }).close?.();
  assert.equal(await again.stop(), 0);
  const current = readFileSync(log, 'utf8');
  const lines = current.trim().split('\n');
  assert.match(lines[lines.length - 1]!, /"event":"counter.recover"/);

  const cases: Array<[string, string | undefined]> = [
    ['last two entries removed (chain still valid)', lines.slice(0, -2).join('\n') + '\n'],
    ['last entry removed', lines.slice(0, -1).join('\n') + '\n'],
    ['rolled back to an older copy', older],
    ['log deleted', undefined],
  ];
  for (const [what, text] of cases) {
    if (text === undefined) rmSync(log); else writeFileSync(log, text);
    const v = await runCdbp(['cas', 'audit', 'verify', '--dir', cas.dir]);
    assert.equal(v.code, 1, `${what}: ${v.output}`);
    if (text !== undefined) assert.match(v.output, /BROKEN.*(removed from the end|tail truncated|rolled back)/, what);
    const start = await runCdbp(['cas', '--dir', cas.dir, '--port', '0']);
    assert.equal(start.code, 1, `${what}: ${start.output}`);
    assert.match(start.output, /AUDIT_CHAIN_BROKEN/, what);
  }
  // Without the sealing key, only the chain can be checked, and the output says so.
  writeFileSync(log, lines.slice(0, -2).join('\n') + '\n');
  const noKey = await runCdbp(['cas', 'audit', 'verify', '--dir', cas.dir, '--sealing-key-file', path.join(tmp.path, 'nope')]);
  assert.equal(noKey.code, 0);
  assert.match(noKey.output, /truncation not checked/);
  // The intact log verifies and the CAS starts (and keeps anchoring).
  writeFileSync(log, current);
  const ok = await runCdbp(['cas', 'audit', 'verify', '--dir', cas.dir]);
  assert.equal(ok.code, 0, ok.output);
  assert.match(ok.output, new RegExp(`sealed anchor at entry ${lines.length} matches`));
  const third = await startTestCas({ root: tmp.path, dir: cas.dir, platformKeyFile: cas.platformKeyFile });
  assert.equal(await third.stop(), 0);
  assert.match((await runCdbp(['cas', 'audit', 'verify', '--dir', cas.dir])).output, new RegExp(`audit log OK: ${lines.length + 1} entries`));
});

test('nonce flood: more than 10,000 nonces within their lifetime neither fail nor block attestation', async (t) => {
  const tmp = tempDir('cas-flood');
  t.after(() => tmp.remove());
  const cas = await startTestCas({ root: tmp.path });
  t.after(() => cas.stop());
  await applyTestPolicy(cas, { service: 'f' });
  const agent = new https.Agent({ ca: cas.caPem, keepAlive: true, maxSockets: 16 });
  t.after(() => agent.destroy());
  const total = 10_500;
  let issued = 0;
  const refused: string[] = [];
  await Promise.all(Array.from({ length: 16 }, async () => {
    while (issued + refused.length < total) {
      try {
        await casRequest(cas.url, 'POST', '/v1/nonce', { purpose: 'attest' }, { agent });
        issued++;
      } catch (e) {
        refused.push((e as { code?: string }).code ?? String(e));
      }
    }
  }));
  assert.deepEqual(refused.slice(0, 3), []);
  assert.ok(issued >= total);
  // Attestation right after the flood (all those nonces are still within their 60 s).
  const p = await attestAndProvision({ casUrl: cas.url, caPem: cas.caPem, service: 'f', provider: new SimulatedProvider(cas.platformKeyFile), tls: {} });
  assert.equal(p.service, 'f');
  (p.counter as { close?: () => void }).close?.();
});
