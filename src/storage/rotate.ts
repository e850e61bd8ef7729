/**
 * Key rotation by re-encryption: gocryptfs cannot change its data key in place (`-passwd` only re-wraps
 * the same master key), so the plaintext is copied into a new encrypted directory made with the new key,
 * inside the TEE (only this process holds the keys), and the new directory replaces the old one.
 *
 * Crash-safe by construction (names relative to the encrypted path E):
 *   E.rekey    the new directory while it is being filled   → a leftover is deleted (E is still authoritative)
 *   E.retired  the old directory between the two renames     → renamed back if E is missing, deleted otherwise
 * The database position does not change (a byte copy of a cleanly stopped instance), so the freshness
 * record stays valid.
 */
import {
  closeSync, copyFileSync, existsSync, fsyncSync, lstatSync, lchownSync, mkdirSync, openSync, readdirSync, readlinkSync,
  renameSync, rmSync, symlinkSync, chmodSync, chownSync, utimesSync,
} from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { CdbpError } from '../kernel/errors.ts';
import type { Logger } from '../kernel/log.ts';
import type { EncryptedDirectory, StorageKey } from './types.ts';

export const rekeyPath = (encryptedPath: string) => `${encryptedPath}.rekey`;
export const retiredPath = (encryptedPath: string) => `${encryptedPath}.retired`;

/** Finishes or undoes an interrupted rotation; returns what it did (for the log), or null. */
export function recoverInterruptedRotation(encryptedPath: string): string | null {
  const rekey = rekeyPath(encryptedPath);
  const retired = retiredPath(encryptedPath);
  const notes: string[] = [];
  if (existsSync(retired)) {
    if (existsSync(encryptedPath)) {
      rmSync(retired, { recursive: true, force: true });
      notes.push('removed the retired directory of a finished rotation');
    } else {
      renameSync(retired, encryptedPath);
      fsyncDir(path.dirname(encryptedPath));
      notes.push('restored the old directory of an interrupted rotation');
    }
  }
  if (existsSync(rekey)) {
    rmSync(rekey, { recursive: true, force: true });
    notes.push('removed an incomplete re-encrypted copy');
  }
  return notes.length ? notes.join('; ') : null;
}

export interface CopyStats { files: number; bytes: number; ms: number }

/**
 * Copies a tree (mode, owner, times; symlinks as links). Not fsynced file by file (a fsync per file through
 * FUSE made the copy ~2× slower): the caller syncs the backing file system once after unmounting.
 */
export function copyTree(from: string, to: string): CopyStats {
  const t0 = Date.now();
  const stats = { files: 0, bytes: 0 };
  const walk = (src: string, dst: string) => {
    for (const name of readdirSync(src)) {
      const s = path.join(src, name);
      const d = path.join(dst, name);
      const st = lstatSync(s);
      if (st.isDirectory()) {
        mkdirSync(d);
        walk(s, d);
        chownSync(d, st.uid, st.gid);
        chmodSync(d, st.mode & 0o7777);
        utimesSync(d, st.atime, st.mtime);
      } else if (st.isSymbolicLink()) {
        symlinkSync(readlinkSync(s), d);
        lchownSync(d, st.uid, st.gid);
      } else if (st.isFile()) {
        copyFileSync(s, d);
        chownSync(d, st.uid, st.gid);
        chmodSync(d, st.mode & 0o7777);
        utimesSync(d, st.atime, st.mtime);
        stats.files++;
        stats.bytes += st.size;
      }
      // sockets and fifos are recreated by their owners (PostgreSQL's socket lives only while it runs)
    }
  };
  walk(from, to);
  return { ...stats, ms: Date.now() - t0 };
}

/**
 * Re-encrypts `current` (mounted with an older key) into a new directory made with `newKey` and puts it in
 * `current`'s place. `makeDirectory(encryptedPath, plaintextPath)` builds an unmounted directory of the same
 * kind. Leaves `current` unmounted; the caller mounts it again with `newKey`.
 */
export async function reencryptDirectory(o: {
  current: EncryptedDirectory;
  newKey: StorageKey;
  scratchMountPoint: string;
  makeDirectory: (encryptedPath: string, plaintextPath: string) => EncryptedDirectory;
  log?: Logger;
}): Promise<CopyStats> {
  const { current } = o;
  const enc = current.encryptedPath;
  rmSync(rekeyPath(enc), { recursive: true, force: true });
  const next = o.makeDirectory(rekeyPath(enc), o.scratchMountPoint);
  await next.mount(o.newKey, { create: true });
  let stats: CopyStats;
  try {
    const rootStat = lstatSync(current.plaintextPath);
    stats = copyTree(current.plaintextPath, next.plaintextPath);
    chownSync(next.plaintextPath, rootStat.uid, rootStat.gid);
  } finally {
    await next.unmount();
    await current.unmount();
  }
  // gocryptfs writes through to its backing files (no FUSE writeback cache): one syncfs of the volume
  // makes the whole new directory durable before it replaces the old one.
  const synced = spawnSync('sync', ['-f', rekeyPath(enc)]);
  if (synced.status !== 0) throw new CdbpError('STORAGE_UNAVAILABLE', `sync -f ${rekeyPath(enc)} failed: the re-encrypted copy may not be durable`, { details: { reason: 'mount_failed' } });
  renameSync(enc, retiredPath(enc));
  fsyncDir(path.dirname(enc));
  renameSync(rekeyPath(enc), enc);
  fsyncDir(path.dirname(enc));
  rmSync(retiredPath(enc), { recursive: true, force: true });
  o.log?.info({ dir: enc, keyVersion: o.newKey.version, files: stats.files, bytes: stats.bytes, ms: stats.ms }, 're-encrypted the directory with the new key version');
  return stats;
}

function fsyncDir(dir: string): void {
  const fd = openSync(dir, 'r');
  try { fsyncSync(fd); } finally { closeSync(fd); }
}
