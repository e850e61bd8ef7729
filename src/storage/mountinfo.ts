/**
 * `/proc/self/mountinfo` parsing (proc(5), "mountinfo"): one line per mount,
 * `id parent major:minor root mountpoint options [optional fields...] - fstype source superoptions`,
 * with space, tab, newline and backslash in paths escaped as octal (`\040`). Pure.
 */
import { readFileSync } from 'node:fs';

export interface MountEntry {
  id: number;
  parentId: number;
  mountPoint: string;
  fsType: string;
  source: string;
}

export function unescapeMountPath(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

export function parseMountinfo(text: string): MountEntry[] {
  const out: MountEntry[] = [];
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    const f = line.split(' ');
    const sep = f.indexOf('-', 6);
    if (f.length < 10 || sep < 0 || sep + 2 >= f.length) continue;
    out.push({
      id: Number(f[0]), parentId: Number(f[1]), mountPoint: unescapeMountPath(f[4]!),
      fsType: f[sep + 1]!, source: unescapeMountPath(f[sep + 2]!),
    });
  }
  return out;
}

/** Mounts stacked on `mountPoint`, bottom first (the last one is what a path lookup sees). */
export function mountsAt(entries: MountEntry[], mountPoint: string): MountEntry[] {
  return entries.filter((e) => e.mountPoint === mountPoint);
}

export function readMountinfo(file = '/proc/self/mountinfo'): MountEntry[] {
  return parseMountinfo(readFileSync(file, 'utf8'));
}
