import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { AuditLog, verifyAuditText } from '../../cas/audit.ts';
import { tempDir } from '../support/tmp.ts';
import { isCdbpError } from '../../src/kernel/errors.ts';

const KEY = Buffer.alloc(32, 7);

async function writeLog(file: string, n: number): Promise<string> {
  const log = await AuditLog.open(file, KEY);
  await Promise.all(Array.from({ length: n }, (_, i) => log.append({ event: 'attest', outcome: i % 2 ? 'ok' : 'refused', service: `s${i}`, details: { i } })));
  await log.close();
  return readFileSync(file, 'utf8');
}

test('a written chain verifies (with and without the MAC key) and reopens where it left off', async (t) => {
  const d = tempDir('audit');
  t.after(() => d.remove());
  const file = path.join(d.path, 'audit.log');
  const text = await writeLog(file, 20);
  assert.deepEqual({ ...verifyAuditText(text, KEY), head: '' }, { ok: true, entries: 20, head: '' });
  assert.ok(verifyAuditText(text).ok);
  const log = await AuditLog.open(file, KEY);
  await log.append({ event: 'cas.start', outcome: 'ok' });
  await log.close();
  const v = verifyAuditText(readFileSync(file, 'utf8'), KEY);
  assert.ok(v.ok);
  assert.equal(v.entries, 21);
});

test('every kind of edit breaks the chain at the right line', async (t) => {
  const d = tempDir('audit');
  t.after(() => d.remove());
  const text = await writeLog(path.join(d.path, 'audit.log'), 6);
  const lines = text.trim().split('\n');
  const join = (ls: string[]) => ls.join('\n') + '\n';
  const cases: Array<[string, string, number]> = [
    ['edit', join(lines.map((l, i) => (i === 3 ? l.replace('"s3"', '"s9"') : l))), 4],
    ['delete', join([...lines.slice(0, 2), ...lines.slice(3)]), 3],
    ['insert duplicate', join([...lines.slice(0, 2), lines[1]!, ...lines.slice(2)]), 3],
    ['reorder', join([lines[0]!, lines[2]!, lines[1]!, ...lines.slice(3)]), 2],
    ['garbage', join([...lines.slice(0, 5), 'not json']), 6],
    ['torn tail', text.slice(0, -5), 6],
    ['wrong MAC key', text, 1],
  ];
  for (const [what, t2, line] of cases) {
    const v = verifyAuditText(t2, what === 'wrong MAC key' ? Buffer.alloc(32, 8) : KEY);
    assert.equal(v.ok, false, what);
    assert.equal(v.line, line, `${what}: ${v.problem}`);
  }
});

test('AuditLog.open refuses a broken chain', async (t) => {
  const d = tempDir('audit');
  t.after(() => d.remove());
  const file = path.join(d.path, 'audit.log');
  const text = await writeLog(file, 3);
  const { writeFileSync } = await import('node:fs');
  writeFileSync(file, text.replace('"s1"', '"sX"'));
  await assert.rejects(AuditLog.open(file, KEY), (e: unknown) => isCdbpError(e, 'AUDIT_CHAIN_BROKEN'));
});
