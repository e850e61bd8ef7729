/**
 * docs/ERRORS.md documents every error code of src/kernel/errors.ts, with the HTTP status the edges
 * really answer: a code added later without its line here fails this test.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { httpStatusFor, type ErrorCode } from '../../src/kernel/errors.ts';

const read = (rel: string) => readFileSync(fileURLToPath(new URL(`../../${rel}`, import.meta.url)), 'utf8');

/** The members of the ErrorCode union, from the source (the type has no runtime form). */
function codesInSource(): string[] {
  const src = read('src/kernel/errors.ts');
  const union = /export type ErrorCode =([\s\S]*?);/.exec(src)?.[1] ?? '';
  return [...union.matchAll(/'([A-Z][A-Z0-9_]*)'/g)].map((m) => m[1]!);
}

function rowsInDoc(): Map<string, number> {
  const rows = new Map<string, number>();
  for (const m of read('docs/ERRORS.md').matchAll(/^\| `([A-Z][A-Z0-9_]*)` \| (\d{3}) \|/gm)) {
    assert.ok(!rows.has(m[1]!), `${m[1]} documented twice`);
    rows.set(m[1]!, Number(m[2]));
  }
  return rows;
}

test('every error code is in docs/ERRORS.md, and nothing else is', () => {
  const codes = codesInSource();
  assert.ok(codes.length >= 40 && codes.includes('CONFIG_INVALID') && codes.includes('INTERNAL'), `parsed ${codes.length} codes`);
  const rows = rowsInDoc();
  const missing = codes.filter((c) => !rows.has(c));
  assert.deepEqual(missing, [], `codes without a line in docs/ERRORS.md: ${missing.join(', ')}`);
  const stale = [...rows.keys()].filter((c) => !codes.includes(c));
  assert.deepEqual(stale, [], `docs/ERRORS.md lists codes that no longer exist: ${stale.join(', ')}`);
});

test('the HTTP status in docs/ERRORS.md is the one the edges answer', () => {
  for (const [code, status] of rowsInDoc()) {
    assert.equal(status, httpStatusFor(code as ErrorCode), `${code}: doc says ${status}, httpStatusFor says ${httpStatusFor(code as ErrorCode)}`);
  }
});
