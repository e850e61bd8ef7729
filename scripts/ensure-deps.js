// Quick-start helper: a fresh clone has no node_modules; install them once, exactly as locked.
import { existsSync } from 'node:fs';
import { execSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
if (!existsSync(path.join(root, 'node_modules', 'tsx'))) {
  console.error('cdbp: node_modules missing, running npm ci ...');
  execSync('npm ci --no-audit --no-fund', { cwd: root, stdio: 'inherit' });
}

// The native data plane (proxy/native/dataplane.c): built when missing or older than its source. A
// machine without a C compiler still runs (the proxy falls back to its Node data plane and says so).
try {
  execSync(`"${process.execPath}" ${JSON.stringify(path.join(root, 'scripts', 'build-native.js'))}`, { cwd: root, stdio: 'inherit' });
} catch {
  console.error('cdbp: continuing without the native data plane');
}
