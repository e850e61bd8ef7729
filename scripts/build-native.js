// Builds the native data plane (proxy/native/*.c: dataplane.c, relay.c, worker.c, tracker.c) into
// proxy/native/build/cdbp_dataplane.node.
//
// Plain `cc`, no node-gyp: the C files of proxy/native, compiled against the headers of the Node that runs it (they ship
// its N-API and its bundled OpenSSL; the node binary exports both, so nothing is linked but pthread).
// Rebuilds only when a source (.c or .h) is newer than the output. Exit code 0 when built or up to date; on a
// machine without a C compiler it prints why and exits 1 (the proxy then runs its Node data plane, and
// says so in its logs, /v1/status and metrics).
import { existsSync, mkdirSync, statSync, renameSync, readdirSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const srcDir = path.join(root, 'proxy', 'native');
const sources = readdirSync(srcDir).filter((f) => /\.[ch]$/.test(f)).sort().map((f) => path.join(srcDir, f));
const cFiles = sources.filter((f) => f.endsWith('.c'));
const outDir = path.join(root, 'proxy', 'native', 'build');
const out = path.join(outDir, 'cdbp_dataplane.node');
const force = process.argv.includes('--force');

if (!force && existsSync(out) && sources.every((f) => statSync(out).mtimeMs >= statSync(f).mtimeMs)) process.exit(0);

const includeDir = [
  process.env.CDBP_NODE_INCLUDE,
  path.join(path.dirname(process.execPath), '..', 'include', 'node'),
  '/usr/include/node',
  '/usr/local/include/node',
].find((d) => d && existsSync(path.join(d, 'node_api.h')) && existsSync(path.join(d, 'openssl', 'ssl.h')));
if (!includeDir) {
  console.error('cdbp: cannot build the native data plane: Node headers (node_api.h, openssl/) not found; set CDBP_NODE_INCLUDE');
  process.exit(1);
}
mkdirSync(outDir, { recursive: true });
const tmp = `${out}.${process.pid}.tmp`;
const args = [
  // No -g: the binary is measured, and debug info embeds build paths (not reproducible).
  '-std=gnu11', '-O2', '-Wall', '-Wextra', '-Werror', '-fPIC', '-shared', '-fvisibility=hidden',
  '-fstack-protector-strong', '-D_FORTIFY_SOURCE=2', '-Wl,-z,relro,-z,now',
  '-DNODE_GYP_MODULE_NAME=cdbp_dataplane', `-I${includeDir}`, '-o', tmp, ...cFiles, '-lpthread',
];
try {
  execFileSync(process.env.CC || 'cc', args, { stdio: 'inherit' });
  renameSync(tmp, out); // atomic: a concurrent test run never loads a half-written file
  console.error(`cdbp: built ${path.relative(root, out)}`);
} catch (e) {
  console.error(`cdbp: cannot build the native data plane (${e.code === 'ENOENT' ? 'no C compiler: apt-get install gcc libc6-dev' : e.message}); the proxy will use its Node data plane`);
  process.exit(1);
}
