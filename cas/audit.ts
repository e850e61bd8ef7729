/**
 * Append-only, hash-chained audit log (JSON lines). Each entry carries the hash of the one before it,
 * and its own hash over its canonical JSON; an edit, insertion, deletion or reordering anywhere breaks
 * the chain from that point on. A plain hash chain can be recomputed by whoever rewrites the whole
 * file, so each hash is also MACed with a key derived from the CAS sealing key: only the CAS (or an
 * operator holding that key) can extend the chain.
 *
 * Deleting the newest entries still leaves a valid chain, so the CAS also keeps the last sequence
 * number and head hash in its sealed state (the "anchor", updated after every fsync, in append order):
 * a log that ends before the anchor, or whose anchored entry differs, is truncated or rolled back.
 *
 * Entries hold what happened, to which service, with which outcome and error code: never a secret
 * (no keys, tokens, CSRs, evidence bodies, sealed payloads).
 */
import { open, readFile, type FileHandle } from 'node:fs/promises';
import { createHmac } from 'node:crypto';
import { CdbpError } from '../src/kernel/errors.ts';
import { canonicalJson, constantTimeEqual, sha256Hex } from '../src/crypto/hash.ts';

/** counter.read is audited only when refused (reads are frequent and harmless when allowed). */
export type AuditEventType = 'cas.start' | 'cas.owners' | 'policy.apply' | 'attest' | 'counter.read' | 'counter.advance' | 'counter.recover' | 'freshness.alarm'
  // replicated CAS (cas/replication/)
  | 'ha.bootstrap' | 'ha.join' | 'ha.state-rollback' | 'ha.recover';

export interface AuditEvent {
  event: AuditEventType;
  outcome: 'ok' | 'refused';
  service?: string;
  code?: string;
  /** Non-secret facts only: hashes, values, modes, measurements, remote address. */
  details?: Record<string, string | number | boolean | null | undefined>;
}

export interface AuditEntry extends AuditEvent {
  seq: number;
  time: string;
  prev: string;
  hash: string;
  mac?: string;
}

export const GENESIS = '0'.repeat(64);

export function entryHash(body: Omit<AuditEntry, 'hash' | 'mac'>): string {
  return sha256Hex(`cdbp-audit/1\0${canonicalJson(body)}`);
}

function entryMac(key: Buffer, hash: string): string {
  return createHmac('sha256', key).update(hash).digest('hex');
}

export interface AuditVerification {
  ok: boolean;
  entries: number;
  head: string;
  /** 1-based line of the first problem. */
  line?: number;
  problem?: string;
}

export interface AuditAnchorRef {
  seq: number;
  head: string;
}

/**
 * Verifies a whole log's text. With `macKey`, every entry's MAC is checked too; with `anchor` (from the
 * sealed state), the log must reach the anchored entry and that entry must be the anchored one. Pure.
 */
export function verifyAuditText(text: string, macKey?: Buffer, anchor?: AuditAnchorRef): AuditVerification {
  let prev = GENESIS;
  let n = 0;
  if (text.length > 0 && !text.endsWith('\n')) {
    const lines = text.split('\n').length;
    return { ok: false, entries: lines - 1, head: prev, line: lines, problem: 'last line is incomplete (torn write or truncation)' };
  }
  const lines = text.length === 0 ? [] : text.slice(0, -1).split('\n');
  for (const [i, line] of lines.entries()) {
    const fail = (problem: string): AuditVerification => ({ ok: false, entries: n, head: prev, line: i + 1, problem });
    let e: AuditEntry;
    try {
      e = JSON.parse(line) as AuditEntry;
    } catch {
      return fail('not JSON');
    }
    if (e === null || typeof e !== 'object') return fail('not an object');
    if (e.seq !== n + 1) return fail(`sequence ${String(e.seq)} where ${n + 1} was expected (entry removed, inserted or reordered)`);
    if (e.prev !== prev) return fail('prev does not match the hash of the entry before it');
    const { hash, mac, ...body } = e;
    let computed: string;
    try {
      computed = entryHash(body);
    } catch {
      return fail('entry is not canonical JSON');
    }
    if (typeof hash !== 'string' || !constantTimeEqual(computed, hash)) return fail('entry hash does not match its content (entry edited)');
    if (macKey && (typeof mac !== 'string' || !constantTimeEqual(entryMac(macKey, hash), mac))) return fail('entry MAC does not verify (not written by this CAS)');
    if (anchor && e.seq === anchor.seq && !constantTimeEqual(hash, anchor.head)) {
      return fail(`entry ${e.seq} is not the one the sealed state anchors (log rolled back or replaced)`);
    }
    prev = hash;
    n++;
  }
  if (anchor && n < anchor.seq) {
    return { ok: false, entries: n, head: prev, line: n + 1,
      problem: `log ends at entry ${n} but the sealed state anchors entry ${anchor.seq}: ${anchor.seq - n} entries removed from the end (tail truncated or log rolled back)` };
  }
  return { ok: true, entries: n, head: prev };
}

export async function verifyAuditFile(file: string, macKey?: Buffer, anchor?: AuditAnchorRef): Promise<AuditVerification> {
  let text = '';
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  return verifyAuditText(text, macKey, anchor);
}

interface Pending {
  line: string;
  seq: number;
  hash: string;
  resolve: () => void;
  reject: (e: unknown) => void;
}

export class AuditLog {
  private pending: Pending[] = [];
  private flushing = false;
  private closed = false;

  private constructor(private readonly fh: FileHandle, private seq: number, private head: string, private readonly macKey: Buffer,
    private readonly onDurable?: (a: AuditAnchorRef) => Promise<void>) {}

  /**
   * Opens (creating) the log after verifying the existing chain against the sealed anchor; a broken
   * chain, a truncated or rolled-back log → AUDIT_CHAIN_BROKEN. `onDurable` is called after each fsync
   * with the new end (the caller seals it as the next anchor) and once at open with the verified end.
   */
  static async open(file: string, macKey: Buffer, o: { anchor?: AuditAnchorRef; onDurable?: (a: AuditAnchorRef) => Promise<void> } = {}): Promise<AuditLog> {
    const v = await verifyAuditFile(file, macKey, o.anchor);
    if (!v.ok) throw new CdbpError('AUDIT_CHAIN_BROKEN', `audit log ${file} line ${v.line}: ${v.problem}`);
    const fh = await open(file, 'a', 0o600);
    if (o.onDurable && (!o.anchor || o.anchor.seq !== v.entries)) await o.onDurable({ seq: v.entries, head: v.head });
    return new AuditLog(fh, v.entries, v.head, macKey, o.onDurable);
  }

  get entries(): number {
    return this.seq;
  }

  /**
   * Appends an entry; resolves once it is on disk (fsync). Order is fixed at call time; concurrent
   * appends share one fsync (group commit).
   */
  append(event: AuditEvent): Promise<void> {
    if (this.closed) return Promise.reject(new CdbpError('INTERNAL', 'audit log is closed'));
    const body: Omit<AuditEntry, 'hash' | 'mac'> = { seq: ++this.seq, time: new Date().toISOString(), ...event, prev: this.head };
    const hash = entryHash(body);
    this.head = hash;
    const line = JSON.stringify({ ...body, hash, mac: entryMac(this.macKey, hash) }) + '\n';
    return new Promise((resolve, reject) => {
      this.pending.push({ line, seq: body.seq, hash, resolve, reject });
      if (!this.flushing) void this.flush();
    });
  }

  private async flush(): Promise<void> {
    this.flushing = true;
    while (this.pending.length > 0) {
      const batch = this.pending;
      this.pending = [];
      try {
        await this.fh.write(batch.map((p) => p.line).join(''));
        await this.fh.datasync();
        // Anchor after the entries are durable: a crash between leaves the log ahead of the anchor
        // (accepted), never behind it.
        const last = batch[batch.length - 1]!;
        await this.onDurable?.({ seq: last.seq, head: last.hash });
        for (const p of batch) p.resolve();
      } catch (e) {
        for (const p of batch) p.reject(e);
      }
    }
    this.flushing = false;
  }

  async close(): Promise<void> {
    this.closed = true;
    while (this.flushing || this.pending.length > 0) await new Promise((r) => setTimeout(r, 5));
    await this.fh.close();
  }
}
