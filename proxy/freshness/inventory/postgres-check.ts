/**
 * The start-up comparison of a sealed PostgreSQL inventory with the data files found now. Pure: reads come
 * through `PgFileReader`, so every rule is tested without files (test/unit/inventory-pg.test.ts).
 *
 * Rules (docs/FRESHNESS.md "Per-file freshness", PostgreSQL):
 *   - a witness page whose pd_lsn is below the sealed one → an older copy of the relation file; after a
 *     clean stop (exact) nothing ran since the sweep, so any other LSN (a swapped file) is refused too;
 *   - a witness page past the end of the file: exact → a shorter (older) copy; after a crash it is
 *     legitimate only if the WAL since the sweep truncated the relation below that block (VACUUM cutting
 *     empty tail pages, postgres-wal.ts) *and* the file agrees with that cut (at least as long as the cut
 *     left it, every block past the cut written after it), else a shorter (older) copy — an append-only
 *     table's older file has every witness past its end, so "maybe VACUUM" must be proven, never assumed;
 *     a first segment emptied to 0 bytes is what DROP / TRUNCATE / VACUUM FULL leave until the next
 *     checkpoint: legitimate only if a commit (or abort) record since the sweep drops that relfilenode
 *     (`dropped`); without the WAL, `emptied`, decided online (its relfilenode must be no relation's);
 *   - a pg_xact segment whose witness xid no longer has the sealed final status → an older copy;
 *   - a relation file not in the inventory whose written pages are older than the sweep began → foreign
 *     (a file created since, e.g. by VACUUM FULL / TRUNCATE / CLUSTER / CREATE DATABASE, has only newer
 *     pages); a new pg_xact segment is the xid counter moving on;
 *   - exact: a missing file is refused; otherwise (after a crash) a relation file may be gone by a DROP,
 *     TRUNCATE or VACUUM FULL since the sweep, and a pg_xact segment by CLOG truncation: `deferred` to the
 *     online check against pg_class and the oldest xid.
 */
import type { FileViolation } from './check.ts';
import type { PgInventory, PgInventoryFile, PgObservedFile } from './types.ts';
import { CLOG_XIDS_PER_SEGMENT, RELSEG_BLOCKS, formatLsn, relationOfFile } from './postgres-page.ts';
import type { WalCut, WalEvidence } from './postgres-wal.ts';

export { formatLsn };

export interface PgFileReader {
  /** pd_lsn of block `page` (0n for a page never initialized), undefined past the end of the file. */
  readLsn(file: string, page: number): bigint | undefined;
  /** Lowest non-zero pd_lsn of the file's initialized pages (undefined: no page carries one). */
  lowestLsn(file: string): bigint | undefined;
  /** Status bits of slot `offset` of a pg_xact segment. */
  xactStatus(file: string, offset: number): number;
}

export interface PgCheckResult {
  violations: FileViolation[];
  /** Files of a non-exact inventory missing now: decided online (pgDeferredViolations). */
  deferred: PgInventoryFile[];
  checked: number;
  added: string[];
  /** Files shorter than a witness because the WAL since the sweep truncated them (VACUUM): legitimate. */
  truncated: string[];
  /** First segments emptied to 0 bytes that a transaction since the sweep dropped (the WAL's commit record). */
  dropped: string[];
  /** First segments emptied to 0 bytes when the WAL could not be read: decided online (pgDeferredViolations). */
  emptied: PgInventoryFile[];
}

const STATUS = ['in progress', 'committed', 'aborted', 'sub-committed'];
export const xactStatusName = (s: number): string => STATUS[s] ?? String(s);

/**
 * `walEvidence` is asked (once, lazily: it runs pg_waldump) only after a crash and only when a witness
 * lies past the end of its file.
 */
export function checkPgInventory(inv: PgInventory, exact: boolean, found: PgObservedFile[], reader: PgFileReader,
  walEvidence: () => WalEvidence = () => ({ available: false, from: BigInt(inv.durableLsn), why: 'no WAL reader' })): PgCheckResult {
  let wal: WalEvidence | undefined;
  const violations: FileViolation[] = [];
  const deferred: PgInventoryFile[] = [];
  const added: string[] = [];
  const truncated: string[] = [];
  const emptied: PgInventoryFile[] = [];
  const dropped: string[] = [];
  let checked = 0;
  const byPath = new Map(found.map((f) => [f.path, f]));
  const known = new Set(inv.files.map((f) => f.path));

  for (const entry of inv.files) {
    const now = byPath.get(entry.path);
    if (!now) {
      if (exact) {
        violations.push({
          file: entry.path, reason: 'deleted',
          message: `data file ${entry.path} is missing; PostgreSQL stopped cleanly with it (${entry.pages} blocks)`,
          expected: { path: entry.path, pages: entry.pages }, seen: { path: entry.path, file: 'missing' },
        });
      } else {
        deferred.push(entry);
      }
      continue;
    }
    checked++;
    if (entry.kind === 'pg-xact') {
      if (!entry.xact) continue;
      const s = reader.xactStatus(now.path, entry.xact.offset);
      if (s !== entry.xact.status) {
        const xid = xidOf(entry.path, entry.xact.offset);
        violations.push({
          file: now.path, reason: 'older-copy',
          message: `pg_xact segment ${now.path} rolled back: transaction ${xid ?? `at offset ${entry.xact.offset}`} is ${xactStatusName(s)}, the sealed inventory saw it ${xactStatusName(entry.xact.status)} (a final status never changes)`,
          expected: { xid, status: xactStatusName(entry.xact.status) }, seen: { xid, status: xactStatusName(s) },
        });
      }
      continue;
    }
    // After a crash, a witness gone past the end (or a zero page there) may be VACUUM's cut: asked once per file.
    let verdict: CutVerdict | undefined;
    const cutCovers = (page: number): CutVerdict => {
      verdict ??= judgeCut(now, (wal ??= walEvidence()), reader);
      const { cut, firstBlock, from, relation } = verdict;
      if (!cut || cut.blocks <= firstBlock + page) return verdict;
      return { ...verdict, proven: false, why: `: the WAL since ${formatLsn(from)} truncates ${relation} only to ${cut.blocks} blocks` };
    };
    for (const w of entry.witnesses) {
      const lsn = reader.readLsn(now.path, w.page);
      // Regrown past a cut and caught by the crash before its first write reached the disk: a zero page.
      if (lsn === 0n && !exact && cutCovers(w.page).proven) {
        if (!truncated.includes(now.path)) truncated.push(now.path);
        continue;
      }
      if (lsn === undefined) {
        let why = 'an older, shorter copy';
        if (!exact) {
          const v = cutCovers(w.page);
          // Emptied and dropped since the sweep (perhaps cut by VACUUM first): the tombstone.
          if (now.pages === 0 && v.firstBlock === 0 && v.dropped) {
            dropped.push(now.path);
            break;
          }
          if (v.proven) { // VACUUM cut it off since the sweep
            if (!truncated.includes(now.path)) truncated.push(now.path);
            continue;
          }
          if (now.pages === 0 && v.firstBlock === 0 && !v.cut) {
            if (!v.walRead) { // no WAL to ask: the catalog decides, online (pgDeferredViolations)
              emptied.push(entry);
              break;
            }
            why = `emptied: the WAL since ${formatLsn(v.from)} neither truncates nor drops ${v.relation}`;
          } else {
            why = `an older, shorter copy${v.why}`;
          }
        }
        violations.push({
          file: now.path, reason: 'shorter-copy',
          message: `data file ${now.path} rolled back: it has ${now.pages} blocks, behind the sealed inventory, which saw block ${w.page} written at LSN ${formatLsn(BigInt(w.lsn))} (${why})`,
          expected: { page: w.page, lsn: formatLsn(BigInt(w.lsn)), pagesAtLeast: w.page + 1 }, seen: { pages: now.pages },
        });
        break;
      }
      const sealed = BigInt(w.lsn);
      if (lsn < sealed || (exact && lsn !== sealed)) {
        const older = lsn < sealed;
        violations.push({
          file: now.path, reason: older ? 'older-copy' : 'swapped',
          message: older
            ? `data file ${now.path} rolled back: block ${w.page} carries LSN ${formatLsn(lsn)}, behind the ${formatLsn(sealed)} the sealed inventory saw`
            : `data file ${now.path} changed while PostgreSQL was stopped: block ${w.page} carries LSN ${formatLsn(lsn)}, not the ${formatLsn(sealed)} sealed at the clean stop (another relation's file)`,
          expected: { page: w.page, lsn: formatLsn(sealed) }, seen: { page: w.page, lsn: formatLsn(lsn) },
        });
        break;
      }
    }
  }

  const start = BigInt(inv.startLsn);
  for (const f of found) {
    if (known.has(f.path)) continue;
    if (f.kind === 'pg-relation') {
      const lowest = reader.lowestLsn(f.path);
      if (lowest !== undefined && lowest < start) {
        violations.push({
          file: f.path, reason: 'foreign',
          message: `data file ${f.path} is not in the sealed inventory and has blocks written at LSN ${formatLsn(lowest)}, before the sweep began at ${formatLsn(start)}: a file from elsewhere`,
          expected: { pathIn: 'inventory', orPagesNewerThan: formatLsn(start) }, seen: { path: f.path, lowestLsn: formatLsn(lowest) },
        });
        continue;
      }
    }
    added.push(f.path);
  }
  return { violations, deferred, checked, added, truncated, dropped, emptied };
}

/** What the WAL says of one file's relation: `proven` = a cut the file agrees with; `why` explains a refusal. */
interface CutVerdict {
  /** A cut the file agrees with. */
  proven: boolean;
  cut?: WalCut;
  /** A commit or abort since the sweep dropped the relation (its emptied file is the tombstone). */
  dropped: boolean;
  walRead: boolean;
  relation: string;
  firstBlock: number;
  from: bigint;
  /** Why a shorter file is refused (appended to the message). */
  why: string;
}

function judgeCut(now: PgObservedFile, wal: WalEvidence, reader: PgFileReader): CutVerdict {
  const base = { ...relationOfFile(now.path), from: wal.from, proven: false, dropped: false, walRead: wal.available };
  if (!wal.available) return { ...base, why: `, or a truncation that cannot be proven: ${wal.why}` };
  base.dropped = wal.dropped.has(base.relation);
  const cut = wal.truncatedTo.get(base.relation);
  if (!cut) return { ...base, why: `: the WAL since ${formatLsn(wal.from)} truncates ${base.relation} nowhere` };
  const disagrees = disagreesWithCut(now, cut, base.firstBlock, reader);
  return disagrees ? { ...base, cut, why: `: ${disagrees}` } : { ...base, cut, proven: true, why: '' };
}

/**
 * Why the file now cannot be what is left after the WAL's cut (undefined: it can): a cut to N blocks
 * leaves at least N (later cuts go no deeper than the deepest), and a block at or past N exists again only
 * if written after the cut. An older copy that happens to be shorter than a real cut fails one of the two.
 */
function disagreesWithCut(now: PgObservedFile, cut: WalCut, firstBlock: number, reader: PgFileReader): string | undefined {
  const from = Math.max(0, Math.min(cut.blocks - firstBlock, RELSEG_BLOCKS));
  if (now.pages < from) return `it is shorter than the ${cut.blocks} blocks the WAL's truncation at ${formatLsn(cut.lsn)} left`;
  for (let b = from; b < now.pages; b++) {
    const lsn = reader.readLsn(now.path, b);
    if (lsn !== undefined && lsn !== 0n && lsn <= cut.lsn) {
      return `block ${b} carries LSN ${formatLsn(lsn)}, from before the WAL's truncation to ${cut.blocks} blocks at ${formatLsn(cut.lsn)}`;
    }
  }
  return undefined;
}

/** What the running PostgreSQL says, for the files a non-exact inventory misses (postgres-inventory.ts). */
export interface PgCatalog {
  /** Database oids that exist now (pg_database). */
  databases: Set<number>;
  /** "<db oid>/<relfilenode>" ("global/<relfilenode>" for shared catalogs) → main fork size in bytes. */
  relations: Map<string, number>;
  /** Oldest xid still needed (pg_control_checkpoint().oldest_xid): CLOG below it may be truncated. */
  oldestXid: number;
  /** Databases the check could not look into (datallowconn false, e.g. template0): never dropped silently. */
  unreadable: Set<number>;
}

/**
 * Online, before ready: a relation file missing since a non-exact sweep is legitimate only when its
 * relfilenode is no longer any relation's (DROP, TRUNCATE, VACUUM FULL, CLUSTER, DROP DATABASE) or, for a
 * segment N.k, when the relation is now at most k GiB (VACUUM truncation); a pg_xact segment only when every
 * xid in it is below the oldest xid (CLOG truncation after freezing).
 */
export function pgDeferredViolations(missing: PgInventoryFile[], cat: PgCatalog, emptied: PgInventoryFile[] = []): FileViolation[] {
  const out: FileViolation[] = [];
  // Emptied to 0 bytes: legitimate only as the tombstone of a dropped or rewritten relation. Unlike a
  // missing file, an empty one of a live relation would start (as an empty table): its size proves nothing.
  for (const e of emptied) {
    const m = /^(base\/(\d+)|global)\/(\d+)$/.exec(e.path);
    if (!m) continue;
    const db = m[2] === undefined ? undefined : Number(m[2]);
    if (db !== undefined && !cat.databases.has(db)) continue;
    const key = `${db === undefined ? 'global' : db}/${m[3]}`;
    if (db !== undefined && cat.unreadable.has(db)) {
      out.push({ file: e.path, reason: 'shorter-copy', message: `data file ${e.path} is empty in database ${db}, which takes no connections (its relations never change)`,
        expected: { path: e.path, pages: e.pages }, seen: { path: e.path, pages: 0 } });
      continue;
    }
    if (!cat.relations.has(key)) continue;
    out.push({
      file: e.path, reason: 'shorter-copy',
      message: `data file ${e.path} rolled back: it is empty, the sealed inventory saw ${e.pages} blocks, the WAL truncated nothing and relfilenode ${m[3]} still belongs to a relation (not dropped or rewritten)`,
      expected: { path: e.path, pages: e.pages }, seen: { path: e.path, pages: 0 },
    });
  }
  for (const e of missing) {
    if (e.kind === 'pg-xact') {
      const seg = parseInt(e.path.split('/')[1]!, 16);
      if ((seg + 1) * CLOG_XIDS_PER_SEGMENT <= cat.oldestXid) continue;
      out.push({
        file: e.path, reason: 'deleted',
        message: `pg_xact segment ${e.path} is missing but holds transactions at or above the oldest xid ${cat.oldestXid} still needed`,
        expected: { path: e.path, oldestXid: cat.oldestXid }, seen: { path: e.path, file: 'missing' },
      });
      continue;
    }
    const m = /^(base\/(\d+)|global)\/(\d+)(?:\.(\d+))?$/.exec(e.path);
    if (!m) continue;
    const db = m[2] === undefined ? undefined : Number(m[2]);
    const key = `${db === undefined ? 'global' : db}/${m[3]}`;
    const segment = m[4] ? Number(m[4]) : 0;
    if (db !== undefined && !cat.databases.has(db)) continue;
    if (db !== undefined && cat.unreadable.has(db)) {
      out.push({
        file: e.path, reason: 'deleted',
        message: `data file ${e.path} is missing from database ${db}, which takes no connections (its relations never change)`,
        expected: { path: e.path }, seen: { path: e.path, file: 'missing' },
      });
      continue;
    }
    const size = cat.relations.get(key);
    if (size === undefined || size <= segment * 2 ** 30) continue;
    out.push({
      file: e.path, reason: 'deleted',
      message: `data file ${e.path} is missing but relfilenode ${m[3]} still belongs to a relation (${size} bytes): it was not dropped or rewritten`,
      expected: { path: e.path, relationBytes: size }, seen: { path: e.path, file: 'missing' },
    });
  }
  return out;
}

function xidOf(file: string, offset: number): number | undefined {
  const seg = parseInt(file.split('/').pop() ?? '', 16);
  return Number.isFinite(seg) ? seg * CLOG_XIDS_PER_SEGMENT + offset : undefined;
}

