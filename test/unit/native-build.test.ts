/**
 * Issue 21, item 5: every path that starts a proxy builds the native data plane when its binary is missing
 * or older than a C source, and refuses loudly (native) or warns loudly (auto) when it cannot. Runs the
 * real scripts/build-native.js with the real compiler on a private copy of proxy/native (the worktree's own
 * binary is never touched).
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { copyFileSync, existsSync, mkdirSync, readdirSync, statSync, utimesSync } from 'node:fs';
import { tempDir } from '../support/tmp.ts';
import { ensureNativeDataPlane } from '../../cli/native-build.ts';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const tmp = tempDir('native-build');
after(() => tmp.remove());

function copyTree(): { root: string; out: string; source: string } {
  const root = tmp.path;
  mkdirSync(path.join(root, 'scripts'), { recursive: true });
  mkdirSync(path.join(root, 'proxy', 'native'), { recursive: true });
  copyFileSync(path.join(REPO, 'scripts', 'build-native.js'), path.join(root, 'scripts', 'build-native.js'));
  const sources = readdirSync(path.join(REPO, 'proxy', 'native')).filter((f) => /\.[ch]$/.test(f));
  for (const f of sources) copyFileSync(path.join(REPO, 'proxy', 'native', f), path.join(root, 'proxy', 'native', f));
  return { root, out: path.join(root, 'proxy', 'native', 'build', 'cdbp_dataplane.node'), source: path.join(root, 'proxy', 'native', sources.find((f) => f.endsWith('.c'))!) };
}

function recordingLog() {
  const lines: Array<{ level: string; msg: string }> = [];
  const at = (level: string) => (a: unknown, b?: unknown) => { lines.push({ level, msg: String(typeof a === 'string' ? a : b) }); };
  return { lines, log: { info: at('info'), warn: at('warn'), error: at('error'), debug: at('debug') } as never };
}

test('missing → built; up to date → left alone; a newer source → rebuilt; no compiler → refused (native) or loud (auto)', async () => {
  const { root, out, source } = copyTree();
  const { lines, log } = recordingLog();
  assert.equal(existsSync(out), false);

  const first = ensureNativeDataPlane({ dataPlane: 'auto', engine: 'mariadb', log, root });
  assert.ok(first?.ok, first?.output);
  assert.ok(existsSync(out), 'built on the first start');
  const builtAt = statSync(out).mtimeMs;

  const second = ensureNativeDataPlane({ dataPlane: 'auto', engine: 'mariadb', log, root });
  assert.ok(second?.ok);
  assert.equal(statSync(out).mtimeMs, builtAt, 'up to date: not rebuilt');

  // A source edited after the build (mtime in the future of the binary).
  const later = new Date(builtAt + 60_000);
  utimesSync(source, later, later);
  const third = ensureNativeDataPlane({ dataPlane: 'native', engine: 'mariadb', log, root });
  assert.ok(third?.ok, third?.output);
  assert.ok(statSync(out).mtimeMs > builtAt, 'stale: rebuilt');

  // Stale again, and no working compiler.
  const evenLater = new Date(Date.now() + 120_000);
  utimesSync(source, evenLater, evenLater);
  const env = { ...process.env, CC: '/bin/false' };
  assert.throws(() => ensureNativeDataPlane({ dataPlane: 'native', engine: 'mariadb', log, root, env }),
    (e: any) => e.code === 'CONFIG_INVALID' && /CDBP_DATA_PLANE=native but the native data plane cannot be built/.test(e.message));
  const auto = ensureNativeDataPlane({ dataPlane: 'auto', engine: 'mariadb', log, root, env });
  assert.equal(auto?.ok, false);
  assert.ok(lines.some((l) => l.level === 'error' && /NATIVE DATA PLANE NOT BUILT/.test(l.msg)), JSON.stringify(lines));

  // Nothing to build for the Node plane or PostgreSQL.
  assert.equal(ensureNativeDataPlane({ dataPlane: 'node', engine: 'mariadb', log, root, env }), undefined);
  assert.equal(ensureNativeDataPlane({ dataPlane: 'auto', engine: 'postgres', log, root, env }), undefined);
});
