/**
 * What PostgreSQL's own WAL proves about relation files that shrank since the last sweep, for the
 * crash-time check (postgres-check.ts):
 * - VACUUM's truncation of empty tail blocks is WAL-logged (XLOG_SMGR_TRUNCATE, flushed before the file is
 *   cut: storage.c RelationTruncate): a file shorter than a sealed witness is legitimate only if the WAL
 *   since the sweep cuts that relation below the witness;
 * - DROP, TRUNCATE, VACUUM FULL, CLUSTER, REINDEX and SET TABLESPACE replace a relfilenode; the old file is
 *   emptied to 0 bytes and kept until the next checkpoint (md.c mdunlinkfork), and the commit record lists
 *   it ("rels: base/5/16384"; an abort lists what the transaction created): an emptied file is legitimate
 *   only if such a record names it.
 * Without such a record the shorter or empty file is an older copy or an attack (an append-only table's
 * file put back has every witness past its end).
 *
 * The WAL is read with the server's own `pg_waldump` (record formats are version-specific; the text of
 * smgr_desc "TRUNCATE base/5/16384 to 0 blocks flags 7" and of xact_desc "…; rels: base/5/16384 …; …" is
 * stable), streamed line by line. It lies on the encrypted volume, so its records cannot be forged; an
 * older copy of it is behind the sealed WAL position.
 */
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import path from 'node:path';
import { findBinary } from '../../../src/kernel/binaries.ts';
import { formatLsn } from './postgres-page.ts';

/** SMGR_TRUNCATE_HEAP: the truncation cut the main fork (the only fork the inventory covers). */
const TRUNCATE_HEAP = 1;

/** The deepest cut of a relation in the WAL: its block count and the LSN of that TRUNCATE record. */
export interface WalCut { blocks: number; lsn: bigint }

export type WalEvidence =
  | { available: true; from: bigint; truncatedTo: Map<string, WalCut>; dropped: Set<string> }
  | { available: false; from: bigint; why: string };

/** What the lines read so far prove. */
export interface WalFacts {
  /** Relation path ("base/5/16384", "global/1262") → the deepest cut and the LSN of the (first) record that made it. */
  truncatedTo: Map<string, WalCut>;
  /** Relation paths a committed (or aborted) transaction dropped. */
  dropped: Set<string>;
  /** LSNs of the checkpoint records read (the read must reach the one pg_control names). */
  checkpoints: Set<bigint>;
  /**
   * A PREPARE record was read: pg_waldump prints its transaction name (chosen by any client, up to 200
   * bytes, newlines included) unescaped, so the lines after it may be forged. Its own line cannot be.
   */
  prepared: boolean;
  records: number;
}

export const newWalFacts = (): WalFacts => ({ truncatedTo: new Map(), dropped: new Set(), checkpoints: new Set(), prepared: false, records: 0 });

const lsnOf = (hi: string, lo: string): bigint => (BigInt(`0x${hi}`) << 32n) | BigInt(`0x${lo}`);

const TRUNCATE_RE = /lsn: ([0-9A-F]+)\/([0-9A-F]+),.*desc: TRUNCATE ((?:base\/\d+|global)\/\d+) to (\d+) blocks flags (\d+)/;
const RELS_RE = /desc: (?:COMMIT|ABORT)\S*.*?; rels:((?: (?:base\/\d+|global)\/\d+)+)/;
const CHECKPOINT_RE = /^rmgr: XLOG .*lsn: ([0-9A-F]+)\/([0-9A-F]+),.*desc: CHECKPOINT_(?:ONLINE|SHUTDOWN) /;

/** Adds one line of pg_waldump's output to `facts`. */
export function addWalLine(facts: WalFacts, line: string): void {
  if (!line.startsWith('rmgr: ')) return;
  facts.records++;
  if (/^rmgr: Transaction .*desc: PREPARE /.test(line)) facts.prepared = true;
  const c = CHECKPOINT_RE.exec(line);
  if (c) {
    facts.checkpoints.add(lsnOf(c[1]!, c[2]!));
    return;
  }
  const t = TRUNCATE_RE.exec(line);
  if (t) {
    if ((Number(t[5]) & TRUNCATE_HEAP) === 0) return;
    const blocks = Number(t[4]);
    const prev = facts.truncatedTo.get(t[3]!);
    if (!prev || blocks < prev.blocks) facts.truncatedTo.set(t[3]!, { blocks, lsn: lsnOf(t[1]!, t[2]!) });
    return;
  }
  const r = RELS_RE.exec(line);
  if (r) for (const rel of r[1]!.trim().split(' ')) facts.dropped.add(rel);
}

export function parseWalDump(dump: string): WalFacts {
  const facts = newWalFacts();
  for (const line of dump.split('\n')) addWalLine(facts, line);
  return facts;
}

/**
 * pg_waldump ends with an error at the end of the written WAL ("invalid record length", "invalid magic
 * number", or a next segment not created yet): normal. Records it printed are genuine whatever ends it
 * (it checks each segment's page addresses and each record's CRC), and a record it could not reach only
 * makes the check stricter. It proves nothing when it read no record and could not start: the segment
 * holding `from` is gone or unreadable (then the caller fails closed).
 */
export function classifyWaldump(from: bigint, status: number | null, facts: WalFacts, stderr: string, checkpoint?: bigint): WalEvidence {
  const read = facts.records > 0;
  if (!read && /could not (find file|open|locate|read)/i.test(stderr)) {
    return { available: false, from, why: `the WAL from ${formatLsn(from)} is gone (${firstError(stderr)})` };
  }
  if (!read && status !== 0 && !/error in WAL record|could not find a valid record after/.test(stderr)) {
    return { available: false, from, why: `pg_waldump failed (${firstError(stderr) || `exit ${status}`})` };
  }
  if (facts.prepared) {
    return { available: false, from, why: `the WAL from ${formatLsn(from)} holds a prepared transaction, whose client-chosen name pg_waldump prints unescaped (its lines cannot be trusted)` };
  }
  // The history PostgreSQL will recover from: every record links to the one before it, so a segment put
  // back from another history (a lost, unacknowledged tail) ends the read before pg_control's checkpoint.
  if (checkpoint !== undefined && checkpoint >= from && !facts.checkpoints.has(checkpoint)) {
    return { available: false, from, why: `the WAL read from ${formatLsn(from)} does not reach the checkpoint at ${formatLsn(checkpoint)} that pg_control names (${firstError(stderr) || 'it ends before'})` };
  }
  return { available: true, from, truncatedTo: facts.truncatedTo, dropped: facts.dropped };
}

function firstError(stderr: string): string {
  return stderr.split('\n').find((l) => l.includes('error'))?.replace(/^pg_waldump: error: /, '').trim() ?? '';
}

/**
 * Reads the WAL of pg_control's timeline from `from` to its end, PostgreSQL not running; it must reach
 * pg_control's checkpoint record. Streamed: the WAL since a sweep can hold millions of commit records.
 */
export async function readWalEvidence(datadir: string, from: bigint, control?: { timeline: number; checkpoint: bigint }): Promise<WalEvidence> {
  const timeline = control?.timeline ?? 1;
  let bin: string;
  try {
    bin = findBinary('pg_waldump');
  } catch (e) {
    return { available: false, from, why: (e as Error).message };
  }
  const child = spawn(bin, ['--path', path.join(datadir, 'pg_wal'), '--timeline', String(timeline), '--start', formatLsn(from),
    '--rmgr', 'Storage', '--rmgr', 'Transaction', '--rmgr', 'XLOG'], { stdio: ['ignore', 'pipe', 'pipe'] });
  const facts = newWalFacts();
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => { if (stderr.length < 64 * 1024) stderr += d.toString('utf8'); });
  const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
  try {
    const exited = new Promise<{ status: number | null; error?: Error }>((resolve) => {
      child.on('error', (error) => resolve({ status: null, error }));
      child.on('close', (status) => resolve({ status }));
    });
    for await (const line of createInterface({ input: child.stdout, crlfDelay: Infinity })) addWalLine(facts, line);
    const { status, error } = await exited;
    if (error) return { available: false, from, why: `pg_waldump: ${error.message}` };
    if (status === null) return { available: false, from, why: 'pg_waldump was killed (over 120 s)' };
    return classifyWaldump(from, status, facts, stderr, control?.checkpoint);
  } finally {
    clearTimeout(timer);
  }
}
