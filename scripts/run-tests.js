// Runs the test files under the given folders (default: test/unit and test/integration) with
// node's own test runner; its summary is what CI reads. Node 20's --test takes no globs, so the
// files are listed here.
import { readdirSync, statSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import path from 'node:path';

const roots = process.argv.slice(2).filter((a) => !a.startsWith('-'));
const extra = process.argv.slice(2).filter((a) => a.startsWith('-'));
const dirs = roots.length > 0 ? roots : ['test/unit', 'test/integration'];

function collect(dir) {
  let out = [];
  let entries;
  try { entries = readdirSync(dir); } catch { return out; }
  for (const name of entries.sort()) {
    const p = path.join(dir, name);
    if (statSync(p).isDirectory()) out = out.concat(collect(p));
    else if (name.endsWith('.test.ts')) out.push(p);
  }
  return out;
}

const files = dirs.flatMap((d) => (d.endsWith('.ts') ? [d] : collect(d)));
if (files.length === 0) {
  console.error(`no test files under ${dirs.join(', ')}`);
  process.exit(1);
}
const concurrency = process.env.CDBP_TEST_CONCURRENCY ?? '2';
const res = spawnSync(process.execPath,
  ['--import', 'tsx', '--test', `--test-concurrency=${concurrency}`, ...extra, ...files],
  { stdio: 'inherit' });
process.exit(res.status ?? 1);
