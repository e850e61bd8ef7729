/**
 * The measurement of the simulated platform: a SHA-256 over the code we ship, standing in for the
 * launch digest a real TEE computes over the loaded image. The code runs from source through tsx (see
 * bin/cdbp.js), so hashing the source is hashing what runs.
 *
 * Covered: bin/, cli/, src/, cas/, proxy/, keyring/ (*.ts, *.js, and the native data plane's *.c, *.h and
 * built *.node; tests and benchmarks excluded) and
 * package-lock.json (pins the dependencies). Each file contributes `path NUL length NUL content`, in
 * sorted order of its relative POSIX path, so renames and moves change the measurement too.
 */
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, statSync, existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const MEASURED_DIRS = ['bin', 'cli', 'src', 'cas', 'proxy', 'keyring'] as const;
export const MEASURED_FILES = ['package-lock.json'] as const;

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const cache = new Map<string, string>();

function isMeasured(rel: string): boolean {
  // .c, .h and .node: the native data plane's source and the binary built from it run inside the TEE too.
  if (!/\.(ts|js|c|h|node)$/.test(rel)) return false;
  if (/\.(test|bench)\.(ts|js)$/.test(rel)) return false;
  return !rel.split('/').some((seg) => seg === 'test' || seg === 'bench' || seg === 'node_modules');
}

function walk(root: string, rel: string, out: string[]): void {
  const abs = path.join(root, rel);
  for (const name of readdirSync(abs)) {
    const r = rel ? `${rel}/${name}` : name;
    const st = statSync(path.join(root, r));
    if (st.isDirectory()) {
      if (name !== 'node_modules' && name !== 'test' && name !== 'bench') walk(root, r, out);
    } else if (st.isFile() && isMeasured(r)) {
      out.push(r);
    }
  }
}

/** The files a measurement covers, relative to `root`, sorted. */
export function measuredFiles(root: string = REPO_ROOT): string[] {
  const files: string[] = [];
  for (const dir of MEASURED_DIRS) if (existsSync(path.join(root, dir))) walk(root, dir, files);
  for (const f of MEASURED_FILES) if (existsSync(path.join(root, f))) files.push(f);
  return files.sort();
}

/** Hex SHA-256 of the shipped code under `root` (default: this checkout). Cached per process and root. */
export function measureShippedCode(root: string = REPO_ROOT): string {
  const key = path.resolve(root);
  const hit = cache.get(key);
  if (hit) return hit;
  const h = createHash('sha256');
  h.update('cdbp-measurement/1\0');
  for (const rel of measuredFiles(key)) {
    const content = readFileSync(path.join(key, rel));
    h.update(`${rel}\0${content.length}\0`);
    h.update(content);
  }
  const digest = h.digest('hex');
  cache.set(key, digest);
  return digest;
}
