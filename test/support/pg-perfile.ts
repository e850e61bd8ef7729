/**
 * Shared by the PostgreSQL per-file freshness tests (issue 22): finding the ciphertext of a plaintext
 * file, copying trees as PostgreSQL's owner would need them, waiting, and killing the whole pod.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import type { PgTestProxy } from './pg-proxy-process.ts';

export async function until(cond: () => boolean | Promise<boolean>, ms = 20_000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export function pidAlive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch { return false; }
}

export function gocryptfsPid(mountPoint: string): number | undefined {
  for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
      if (argv[0]!.endsWith('gocryptfs') && argv.includes(mountPoint)) return Number(pid);
    } catch { /* exited */ }
  }
  return undefined;
}

/** Ciphertext path (relative to the encrypted dir) of each plaintext path, by inode (gocryptfs passes it through). */
export function cipherPaths(p: PgTestProxy, plain: string[]): Map<string, string> {
  const datadir = path.join(p.mountPoint, 'pg', 'data');
  const want = new Map(plain.map((rel) => [statSync(path.join(datadir, rel)).ino, rel]));
  const out = new Map<string, string>();
  const walk = (dir: string) => {
    for (const d of readdirSync(dir, { withFileTypes: true })) {
      const full = path.join(dir, d.name);
      const rel = want.get(statSync(full).ino);
      if (rel) out.set(rel, path.relative(p.encryptedDir, full));
      if (d.isDirectory()) walk(full);
    }
  };
  walk(p.encryptedDir);
  assert.equal(out.size, plain.length, `ciphertext found for ${[...out.keys()].join(', ')} of ${plain.join(', ')}`);
  return out;
}

/** `cp -a`: PostgreSQL runs as its own OS user, so owners and modes must survive the copy. */
export function copyTree(from: string, to: string): void {
  const r = spawnSync('cp', ['-a', from, to]);
  assert.equal(r.status, 0, r.stderr?.toString());
}

/**
 * kill -9 of the whole pod: the proxy, PostgreSQL's postmaster and gocryptfs, in one go (a power cut as
 * far as the processes can tell; the page cache survives, as it does for a container killed on a host).
 */
export async function killPod(p: PgTestProxy): Promise<void> {
  const pgPid = (await p.get('/v1/status')).body.backend.pid as number;
  const fusePid = gocryptfsPid(p.mountPoint);
  assert.ok(fusePid, 'gocryptfs serves the mount');
  for (const pid of [p.pid, pgPid, fusePid]) {
    try { process.kill(pid, 'SIGKILL'); } catch { /* already gone */ }
  }
  await p.exited;
  await until(() => !pidAlive(pgPid), 20_000, 'postgres to exit');
  await until(() => gocryptfsPid(p.mountPoint) === undefined, 10_000, 'gocryptfs to exit');
}
