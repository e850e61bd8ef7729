/**
 * The start-up comparison of a sealed inventory with the data files found now. Pure: page reads come
 * through `readLsn`, so this is tested without files.
 *
 * Rules (docs/FRESHNESS.md "Per-file freshness"):
 *   - a witness page whose LSN is below the sealed one → the file was put back to an older copy;
 *   - a witness page past the end of the file → the file was put back to a shorter (older) copy;
 *   - two files with one space id → a copy of a tablespace beside the original;
 *   - a file with a space id not in the inventory whose written pages are older than the sweep began
 *     (foreign: no table created after the sweep has such pages);
 *   - exact inventory (clean stop): a missing file, or a file at another path (swapped or moved);
 *   - otherwise (after a crash) a missing or moved file may be a DROP or RENAME since the sweep: it is
 *     left to the online check against InnoDB's dictionary (`deferred`).
 */
import type { Inventory, InventoryFile, ObservedFile } from './types.ts';

export interface FileViolation {
  file: string;
  reason: 'older-copy' | 'shorter-copy' | 'duplicate' | 'foreign' | 'deleted' | 'swapped' | 'moved';
  message: string;
  expected: Record<string, unknown>;
  seen: Record<string, unknown>;
}

export interface Deferred {
  /** A tablespace of the inventory with no file now (DROP since the sweep, or deleted). */
  missing: InventoryFile[];
  /** A tablespace of the inventory at another path now (RENAME since the sweep, or swapped). */
  moved: Array<{ entry: InventoryFile; now: string }>;
}

export interface CheckResult {
  violations: FileViolation[];
  deferred: Deferred;
  /** Files whose witnesses were read. */
  checked: number;
  /** New files (created since the sweep). */
  added: string[];
}

export interface PageReader {
  /** LSN of page `page` of `file`, or undefined past its end. */
  readLsn(file: string, page: number): bigint | undefined;
  /** Lowest non-zero self-consistent page LSN of a file (undefined when no page was ever written). */
  lowestLsn(file: string): bigint | undefined;
}

export function checkInventory(inv: Inventory, exact: boolean, found: ObservedFile[], pages: PageReader): CheckResult {
  const violations: FileViolation[] = [];
  const deferred: Deferred = { missing: [], moved: [] };
  const added: string[] = [];
  let checked = 0;
  const startLsn = BigInt(inv.startLsn);
  const bySpace = new Map<number, ObservedFile[]>();
  for (const f of found) {
    if (f.spaceId === undefined) continue;
    bySpace.set(f.spaceId, [...(bySpace.get(f.spaceId) ?? []), f]);
  }
  const known = new Map(inv.files.map((e) => [e.spaceId, e]));
  const byPath = new Map(found.map((f) => [f.path, f]));

  for (const [spaceId, files] of bySpace) {
    if (files.length > 1) {
      violations.push({
        file: files.map((f) => f.path).join(', '), reason: 'duplicate',
        message: `data files ${files.map((f) => f.path).join(' and ')} are the same tablespace (space id ${spaceId}): a copy was put beside the original`,
        expected: { spaceId, files: 1 }, seen: { spaceId, files: files.map((f) => f.path) },
      });
    }
  }

  for (const entry of inv.files) {
    const now = bySpace.get(entry.spaceId)?.[0];
    if (!now) {
      // The system and undo tablespaces cannot be dropped: missing is always a violation.
      if (exact || entry.kind !== 'innodb-table') {
        const there = byPath.get(entry.path);
        violations.push({
          file: entry.path, reason: 'deleted',
          message: `data file ${entry.path} (space id ${entry.spaceId}) is missing${there ? ` (the file there now holds space id ${there.spaceId ?? 'unreadable'})` : ''}; ${exact ? 'the database stopped cleanly with it' : 'it cannot be dropped'}`,
          expected: { path: entry.path, spaceId: entry.spaceId }, seen: { path: entry.path, spaceId: there?.spaceId ?? 'missing' },
        });
      } else {
        deferred.missing.push(entry);
      }
      continue;
    }
    if (now.path !== entry.path) {
      if (exact) {
        const other = byPath.get(entry.path);
        violations.push({
          file: now.path, reason: other ? 'swapped' : 'moved',
          message: other
            ? `data file ${entry.path} holds space id ${other.spaceId ?? 'unreadable'}, not ${entry.spaceId} (whose file is now ${now.path}): files swapped`
            : `data file of space id ${entry.spaceId} moved from ${entry.path} to ${now.path} while the database was stopped`,
          expected: { path: entry.path, spaceId: entry.spaceId }, seen: { path: now.path, spaceId: entry.spaceId, [`${entry.path}`]: other?.spaceId ?? 'missing' },
        });
      } else {
        deferred.moved.push({ entry, now: now.path });
      }
    }
    checked++;
    for (const w of entry.witnesses) {
      const lsn = pages.readLsn(now.path, w.page);
      if (lsn === undefined) {
        violations.push({
          file: now.path, reason: 'shorter-copy',
          message: `data file ${now.path} rolled back: it has ${now.pages} pages, behind the sealed inventory, which saw page ${w.page} written at LSN ${w.lsn} (an older, shorter copy)`,
          expected: { page: w.page, lsnAtLeast: w.lsn, pagesAtLeast: w.page + 1 }, seen: { pages: now.pages },
        });
        break;
      }
      if (lsn < BigInt(w.lsn)) {
        violations.push({
          file: now.path, reason: 'older-copy',
          message: `data file ${now.path} rolled back: page ${w.page} carries LSN ${lsn}, behind the ${w.lsn} the sealed inventory saw`,
          expected: { page: w.page, lsnAtLeast: w.lsn, spaceId: entry.spaceId }, seen: { page: w.page, lsn: lsn.toString() },
        });
        break;
      }
    }
  }

  for (const f of found) {
    if (f.spaceId === undefined || known.has(f.spaceId)) continue;
    const lowest = pages.lowestLsn(f.path);
    if (lowest !== undefined && lowest < startLsn) {
      violations.push({
        file: f.path, reason: 'foreign',
        message: `data file ${f.path} (space id ${f.spaceId}) is not in the sealed inventory and has pages written at LSN ${lowest}, before the sweep began at ${startLsn}: a file from elsewhere`,
        expected: { spaceIdIn: 'inventory', orPagesNewerThan: startLsn.toString() }, seen: { spaceId: f.spaceId, lowestLsn: lowest.toString() },
      });
    } else {
      added.push(f.path);
    }
  }
  return { violations, deferred, checked, added };
}

/** InnoDB's dictionary as the online check sees it: space id → name ("db/table"), from INNODB_SYS_TABLESPACES. */
export type SpaceNames = Map<number, string>;

/**
 * After the server started, before any client is served: a missing tablespace the dictionary still lists
 * was deleted (a DROP removes it from the dictionary); a moved one must sit where the dictionary says.
 */
export function checkDeferred(deferred: Deferred, dictionary: SpaceNames): FileViolation[] {
  const out: FileViolation[] = [];
  for (const e of deferred.missing) {
    const name = dictionary.get(e.spaceId);
    if (name !== undefined && e.kind === 'innodb-table') {
      out.push({
        file: e.path, reason: 'deleted',
        message: `data file ${e.path} (space id ${e.spaceId}, table ${name}) is missing but the table was not dropped`,
        expected: { path: e.path, spaceId: e.spaceId }, seen: { path: e.path, file: 'missing' },
      });
    }
  }
  for (const { entry, now } of deferred.moved) {
    const name = dictionary.get(entry.spaceId);
    if (name === undefined || `${name}.ibd` !== now) {
      out.push({
        file: now, reason: 'swapped',
        message: `data file ${now} holds space id ${entry.spaceId}, which InnoDB's dictionary names ${name ?? 'nothing'} (sealed at ${entry.path}): files swapped or moved`,
        expected: { path: name === undefined ? entry.path : `${name}.ibd`, spaceId: entry.spaceId }, seen: { path: now, spaceId: entry.spaceId },
      });
    }
  }
  return out;
}

/**
 * mariadbd refused to start after a crash. When InnoDB's crash recovery names a tablespace it still has redo
 * for ("Tablespace N was not found at ./db/t.ibd"), that tablespace was not dropped (a DROP logs
 * FILE_DELETE, which recovery applies instead of looking for the file): if the offline check left it to the
 * dictionary as missing or moved, the server's own refusal settles it as deleted or swapped. Anything else
 * is not a freshness verdict (the start failure stays what it is).
 */
export function checkRecoveryRefusal(deferred: Deferred, errorText: string): FileViolation[] {
  const out: FileViolation[] = [];
  for (const m of errorText.matchAll(/Tablespace (\d+) was not found at \.?\/?([^\s|]+?)\.?(?:\s|$|\|)/g)) {
    const spaceId = Number(m[1]);
    const wanted = m[2]!;
    const missing = deferred.missing.find((e) => e.spaceId === spaceId && e.kind === 'innodb-table');
    if (missing) {
      out.push({
        file: missing.path, reason: 'deleted',
        message: `data file ${missing.path} (space id ${spaceId}) is missing, and InnoDB's crash recovery still has changes for it (a dropped table's would not): deleted`,
        expected: { path: missing.path, spaceId }, seen: { path: missing.path, file: 'missing', recovery: `tablespace ${spaceId} not found at ${wanted}` },
      });
      continue;
    }
    const moved = deferred.moved.find((x) => x.entry.spaceId === spaceId);
    if (moved) {
      out.push({
        file: moved.now, reason: 'swapped',
        message: `data file ${moved.now} holds space id ${spaceId} (sealed at ${moved.entry.path}), and InnoDB's crash recovery looks for it at ${wanted}: files swapped or moved`,
        expected: { path: wanted, spaceId }, seen: { path: moved.now, spaceId },
      });
    }
  }
  return out;
}
