/**
 * The import graph of the shipped source tree (src/, cas/, proxy/, keyring/, cli/; tests and bench aside),
 * from the relative import/export specifiers of each .ts file. Used by the architecture test to keep the
 * layering of docs/ARCHITECTURE.md ("Where things live") true.
 */
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';

export const SOURCE_ROOTS = ['src', 'cas', 'proxy', 'keyring', 'cli'] as const;

export type ImportGraph = Map<string, Set<string>>;

const SPECIFIER = /(?:import|export)\s[^'"]*?from\s*['"](\.[^'"]+)['"]|import\(\s*['"](\.[^'"]+)['"]\s*\)/g;

function sourceFiles(root: string, dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(path.join(root, dir)).sort()) {
    const rel = path.join(dir, name);
    if (statSync(path.join(root, rel)).isDirectory()) {
      if (name !== 'node_modules' && name !== 'build') out.push(...sourceFiles(root, rel));
    } else if (name.endsWith('.ts') && !name.endsWith('.test.ts')) {
      out.push(rel);
    }
  }
  return out;
}

/** Paths are relative to `root` with forward slashes, e.g. `proxy/mysql/session.ts`. */
export function buildImportGraph(root: string): ImportGraph {
  const files = SOURCE_ROOTS.filter((r) => existsSync(path.join(root, r))).flatMap((r) => sourceFiles(root, r));
  const known = new Set(files);
  const graph: ImportGraph = new Map();
  for (const file of files) {
    const targets = new Set<string>();
    for (const m of readFileSync(path.join(root, file), 'utf8').matchAll(SPECIFIER)) {
      const target = path.posix.normalize(path.posix.join(path.posix.dirname(file), m[1] ?? m[2]!));
      for (const candidate of [target, target.replace(/\.js$/, '.ts'), `${target}.ts`, `${target}/index.ts`]) {
        if (known.has(candidate)) { targets.add(candidate); break; }
      }
    }
    graph.set(file, targets);
  }
  return graph;
}

/** Strongly connected components with more than one file, or a file importing itself (Tarjan). */
export function importCycles(graph: ImportGraph): string[][] {
  let next = 0;
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const cycles: string[][] = [];
  const visit = (v: string): void => {
    index.set(v, next); low.set(v, next); next++;
    stack.push(v); onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!index.has(w)) { visit(w); low.set(v, Math.min(low.get(v)!, low.get(w)!)); }
      else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
    }
    if (low.get(v) === index.get(v)) {
      const component: string[] = [];
      let w: string;
      do { w = stack.pop()!; onStack.delete(w); component.push(w); } while (w !== v);
      if (component.length > 1 || graph.get(v)?.has(v)) cycles.push(component.sort());
    }
  };
  for (const v of graph.keys()) if (!index.has(v)) visit(v);
  return cycles;
}

/** Every arrow `from -> to` for which `allowed(from, to)` is false. */
export function forbiddenArrows(graph: ImportGraph, allowed: (from: string, to: string) => boolean): string[] {
  const out: string[] = [];
  for (const [from, targets] of graph) for (const to of targets) if (!allowed(from, to)) out.push(`${from} -> ${to}`);
  return out.sort();
}
