/**
 * What PostgreSQL's own WAL proves about relation files shrinking: VACUUM's truncation of empty tail
 * blocks is WAL-logged (XLOG_SMGR_TRUNCATE, flushed before the file is cut, smgr.c / storage.c
 * RelationTruncate), so after a crash a relation file shorter than a sealed witness is legitimate only if
 * the WAL since the sweep holds a truncation of that relation below the witness. Without such a record the
 * shorter file is an older copy (an append-only table's file put back: every witness lies past its end).
 *
 * The WAL is read with the server's own `pg_waldump` (its record formats are version-specific; the text
 * of smgr_desc is stable: "TRUNCATE base/5/16384 to 0 blocks flags 7"). It lies on the encrypted volume,
 * so its records cannot be forged; an older copy of it is behind the sealed WAL position.
 */
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { findBinary } from '../../../src/kernel/binaries.ts';
import { formatLsn } from './postgres-page.ts';

/** SMGR_TRUNCATE_HEAP: the truncation cut the main fork (the only fork the inventory covers). */
const TRUNCATE_HEAP = 1;

/** The deepest cut of a relation in the WAL: its block count and the LSN of that TRUNCATE record. */
export interface WalCut { blocks: number; lsn: bigint }

export type WalTruncations =
  | { available: true; from: bigint; truncatedTo: Map<string, WalCut> }
  | { available: false; from: bigint; why: string };

/**
 * Relation path ("base/5/16384", "global/1262") → the smallest block count the WAL truncated it to, and
 * the LSN of the (first) record that did: every block at or past that count that exists now was written
 * again after it.
 */
export function parseWalTruncations(dump: string): Map<string, WalCut> {
  const out = new Map<string, WalCut>();
  for (const m of dump.matchAll(/lsn: ([0-9A-F]+)\/([0-9A-F]+),.*desc: TRUNCATE ((?:base\/\d+|global)\/\d+) to (\d+) blocks flags (\d+)/g)) {
    if ((Number(m[5]) & TRUNCATE_HEAP) === 0) continue;
    const blocks = Number(m[4]);
    const rel = m[3]!;
    const prev = out.get(rel);
    if (!prev || blocks < prev.blocks) out.set(rel, { blocks, lsn: (BigInt(`0x${m[1]}`) << 32n) | BigInt(`0x${m[2]}`) });
  }
  return out;
}

/**
 * pg_waldump ends with an error at the end of the written WAL ("invalid record length", "invalid magic
 * number", or a next segment not created yet): normal. Records it printed are genuine whatever ends it
 * (it checks each segment's page addresses and each record's CRC), and a record it could not reach only
 * makes the check stricter. It proves nothing when it read no record and could not start: the segment
 * holding `from` is gone or unreadable (then the caller fails closed).
 */
export function classifyWaldump(from: bigint, status: number | null, stdout: string, stderr: string): WalTruncations {
  const read = /^rmgr: /m.test(stdout);
  if (!read && /could not (find file|open|locate|read)/i.test(stderr)) {
    return { available: false, from, why: `the WAL from ${formatLsn(from)} is gone (${firstError(stderr)})` };
  }
  if (!read && status !== 0 && !/error in WAL record|could not find a valid record after/.test(stderr)) {
    return { available: false, from, why: `pg_waldump failed (${firstError(stderr) || `exit ${status}`})` };
  }
  return { available: true, from, truncatedTo: parseWalTruncations(stdout) };
}

function firstError(stderr: string): string {
  return stderr.split('\n').find((l) => l.includes('error'))?.replace(/^pg_waldump: error: /, '').trim() ?? '';
}

/** Reads the truncations of the WAL of `timeline` (pg_control's) from `from` to its end (PostgreSQL not running). */
export function readWalTruncations(datadir: string, from: bigint, timeline = 1): WalTruncations {
  let bin: string;
  try {
    bin = findBinary('pg_waldump');
  } catch (e) {
    return { available: false, from, why: (e as Error).message };
  }
  const r = spawnSync(bin, ['--path', path.join(datadir, 'pg_wal'), '--timeline', String(timeline), '--start', formatLsn(from), '--rmgr', 'Storage'],
    { encoding: 'utf8', maxBuffer: 256 * 2 ** 20, timeout: 120_000 });
  if (r.error) return { available: false, from, why: `pg_waldump: ${r.error.message}` };
  return classifyWaldump(from, r.status, r.stdout, r.stderr);
}
