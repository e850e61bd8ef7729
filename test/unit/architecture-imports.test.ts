/**
 * The layering of docs/ARCHITECTURE.md, checked on every run: no import cycle, and arrows only downward.
 *   src/        imports only src/ (the shared kernel and contracts; never an outer layer)
 *   cas/        imports src/ and cas/
 *   keyring/    imports src/ and keyring/
 *   proxy/      imports src/ and proxy/; proxy/shared/ never imports an endpoint (mysql, pg, native, freshness)
 *   cli/        the composition root: anything
 */
import test from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildImportGraph, forbiddenArrows, importCycles } from '../support/import-graph.ts';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const layer = (file: string): string => file.split('/')[0]!;

function allowed(from: string, to: string): boolean {
  const [f, t] = [layer(from), layer(to)];
  switch (f) {
    case 'src': return t === 'src';
    case 'cas': return t === 'src' || t === 'cas';
    case 'keyring': return t === 'src' || t === 'keyring';
    case 'proxy':
      if (t !== 'src' && t !== 'proxy') return false;
      return !(from.startsWith('proxy/shared/') && to.startsWith('proxy/') && !to.startsWith('proxy/shared/'));
    case 'cli': return true;
    default: return false;
  }
}

test('the source tree has no import cycle', () => {
  const cycles = importCycles(buildImportGraph(root));
  assert.deepEqual(cycles.map((c) => c.join(' <-> ')), []);
});

test('imports point only down the layers of docs/ARCHITECTURE.md', () => {
  assert.deepEqual(forbiddenArrows(buildImportGraph(root), allowed), []);
});

test('the checker sees a cycle and an upward arrow when there is one', () => {
  const graph = new Map([
    ['src/a.ts', new Set(['cas/b.ts'])],
    ['cas/b.ts', new Set(['src/a.ts'])],
    ['proxy/shared/x.ts', new Set(['proxy/mysql/y.ts'])],
    ['proxy/mysql/y.ts', new Set<string>()],
  ]);
  assert.deepEqual(importCycles(graph), [['cas/b.ts', 'src/a.ts']]);
  assert.deepEqual(forbiddenArrows(graph, allowed), ['proxy/shared/x.ts -> proxy/mysql/y.ts', 'src/a.ts -> cas/b.ts']);
});
