/**
 * The native data plane is built (or rebuilt when a C source is newer than the .node) on every path that
 * starts a proxy, not only by `npm run up` (issue 21, item 5: `node bin/cdbp.js up` ran the ~25 % slower
 * Node plane without a word). scripts/build-native.js stays the one place that knows the sources and
 * the compiler flags; this runs it (it exits at once when the .node is up to date).
 *
 * If it cannot be built: with CDBP_DATA_PLANE=native the proxy refuses to start (CONFIG_INVALID, the
 * compiler's reason); with auto it starts on the Node plane and says so loudly (error log here, and the
 * plane in /v1/status and metrics).
 */
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from '../src/kernel/log.ts';
import { CdbpError } from '../src/kernel/errors.ts';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

export interface NativeBuildResult {
  ok: boolean;
  /** What the build script said (compiler errors, "built ..."), trimmed. */
  output: string;
}

export function buildNativeDataPlane(o: { root?: string; env?: NodeJS.ProcessEnv } = {}): NativeBuildResult {
  const script = path.join(o.root ?? REPO, 'scripts', 'build-native.js');
  const r = spawnSync(process.execPath, [script], { encoding: 'utf8', env: o.env ?? process.env, timeout: 300_000 });
  return { ok: r.status === 0, output: `${r.stdout ?? ''}${r.stderr ?? ''}${r.error ? r.error.message : ''}`.trim() };
}

/** Builds if stale; refuses (native) or warns loudly (auto) if it cannot. Nothing to do for node/postgres. */
export function ensureNativeDataPlane(o: { dataPlane: string; engine: string; log: Logger; root?: string; env?: NodeJS.ProcessEnv }): NativeBuildResult | undefined {
  if (o.dataPlane === 'node' || o.engine !== 'mariadb') return undefined;
  const r = buildNativeDataPlane(o);
  if (r.ok) {
    if (r.output) o.log.info({ build: r.output.slice(-500) }, 'native data plane built (its sources were newer than the binary)');
    return r;
  }
  if (o.dataPlane === 'native') {
    throw new CdbpError('CONFIG_INVALID', `CDBP_DATA_PLANE=native but the native data plane cannot be built: ${r.output.slice(-500) || 'build failed'}`);
  }
  o.log.error({ build: r.output.slice(-500) },
    'NATIVE DATA PLANE NOT BUILT: this proxy runs the Node data plane (~25 % slower); install a C compiler (gcc libc6-dev) or set CDBP_DATA_PLANE=node to silence this');
  return r;
}
