/**
 * Builds a test-only N-API module from C sources with cc, against the headers of the running Node (its
 * N-API and its bundled OpenSSL, which the node binary exports), like scripts/build-native.js does for
 * the production module. Used by the white-box tests of proxy/native: the relay harness
 * (native-relay-harness.c + relay.c + tracker.c) and the tracker's bindings (native-tracker-api.c +
 * tracker.c). A missing compiler or header fails the test with the reason; it never skips.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { tempDir } from './tmp.ts';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

/** Node's headers (node_api.h and its bundled OpenSSL): the candidates scripts/build-native.js tries. */
function nodeIncludeDir(): string {
  const candidates = [
    process.env.CDBP_NODE_INCLUDE,
    path.join(path.dirname(process.execPath), '..', 'include', 'node'),
    '/usr/include/node',
    '/usr/local/include/node',
  ];
  const found = candidates.find((d) => d && existsSync(path.join(d, 'node_api.h')) && existsSync(path.join(d, 'openssl', 'ssl.h')));
  if (!found) assert.fail(`Node's headers (node_api.h, openssl/) not found in ${candidates.filter(Boolean).join(', ')}; set CDBP_NODE_INCLUDE`);
  return found;
}

/** Compiles `sources` (paths relative to the repository) into a module and loads it; `remove()` deletes the build. */
export function buildTestAddon<T>(name: string, sources: string[]): { addon: T; remove(): void } {
  const dir = tempDir(name);
  const out = path.join(dir.path, `${name}.node`);
  const cc = process.env.CC || 'cc';
  const args = ['-std=gnu11', '-O1', '-Wall', '-Wextra', '-Werror', '-fPIC', '-shared', '-fvisibility=hidden',
    `-I${nodeIncludeDir()}`, '-o', out, ...sources.map((s) => path.join(REPO, s)), '-lpthread'];
  try {
    execFileSync(cc, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    dir.remove();
    const err = e as NodeJS.ErrnoException & { stderr?: Buffer };
    assert.fail(err.code === 'ENOENT'
      ? `no C compiler (${cc}): this test needs one (apt-get install gcc libc6-dev)`
      : `building ${sources.join(' ')} failed: ${(err.stderr?.toString() || err.message).trim().slice(0, 2000)}`);
  }
  return { addon: createRequire(import.meta.url)(out) as T, remove: () => dir.remove() };
}
