/**
 * The CAS's freshness counters, all services in one append-only log (issue 17): one write and one
 * fdatasync per batch, however many services and proxies advance at the same time (group commit).
 *
 *   DIR/state/counters.log     JSON lines, hash-chained and MACed like the audit log: every advance or
 *                              recovery of any service, oldest first. The state of a counter is the
 *                              last entry for its service (or the legacy value in its service file).
 *   DIR/state/counters.anchor  two fixed slots, written alternately: slot (batch mod 2) holds the lines
 *                              of the latest batch. Written and fdatasync'ed *in parallel* with the log
 *                              (not after it), and an answer leaves only once both are on disk.
 *
 * Why the anchor holds the batch itself and not just "last seq + hash": both files are synced
 * concurrently, so a crash can leave either one ahead. Anchor ahead of the log → the anchor carries the
 * missing lines and the log is repaired from it (they are MACed: only this CAS wrote them). Log ahead of
 * the anchor → accepted, as the audit log's anchor accepts it. A log that ends *before* the anchored
 * batch, or whose anchored entries differ, was truncated, rolled back or replaced: STATE_TAMPERED at
 * start. A torn slot (crash mid-write) fails its checksum and the other slot, one batch older and fully
 * durable in the log, is used. Rolling back the log *and* the anchor together is the known limit of a
 * CAS without a monotonic anchor of its own (docs/CAS.md), exactly as for ca.sealed and the audit log.
 *
 * No ca.sealed rewrite per advance: ca.sealed only records, once, that this directory has a counter
 * log (so deleting both files is caught too).
 */
import { open, readFile, type FileHandle } from 'node:fs/promises';
import { existsSync, writeSync } from 'node:fs';
import { createHash, createHmac } from 'node:crypto';
import path from 'node:path';
import { CdbpError } from '../src/kernel/errors.ts';
import { canonicalJson, constantTimeEqual, sha256Hex } from '../src/crypto/hash.ts';

export const COUNTER_LOG = 'counters.log';
export const COUNTER_ANCHOR = 'counters.anchor';
const GENESIS = '0'.repeat(64);
const SLOT_BYTES = 64 * 1024;
const SLOT_MAGIC = Buffer.from('CDBPCA01', 'ascii');
const SLOT_HEAD = SLOT_MAGIC.length + 4 + 32;
/** A batch never grows past what one anchor slot holds. */
const BATCH_BYTES = SLOT_BYTES - SLOT_HEAD - 1024;
/** The opaque sealed record a proxy anchors with its counter (base64); bounded so batches stay small. */
export const MAX_RECORD_BYTES = 4096;

/** A counter as the CAS keeps it: the epoch, the digest it anchors and (new) the sealed record itself. */
export interface CounterValue {
  value: number;
  digest: string;
  /** Base64 of the proxy's sealed record (opaque to the CAS; SHA-256 of its bytes = digest). */
  record?: string;
  updatedAt: string;
}

interface EntryBody {
  seq: number;
  service: string;
  op: 'advance' | 'recover';
  value: number;
  digest: string;
  record?: string;
  at: string;
  prev: string;
}
interface Entry extends EntryBody {
  hash: string;
  mac: string;
}

function entryHash(body: EntryBody): string {
  return sha256Hex(`cdbp-counter/1\0${canonicalJson(body)}`);
}

interface Pending {
  entry: Entry;
  line: string;
  resolve: () => void;
  reject: (e: unknown) => void;
}

export interface CounterLogStats {
  batches: number;
  entries: number;
}

export class CounterLog {
  private pending: Pending[] = [];
  private flushing = false;
  private idleWaiters: Array<() => void> = [];
  private failed: Error | undefined;
  private closed = false;
  readonly stats: CounterLogStats = { batches: 0, entries: 0 };

  private constructor(private readonly logFh: FileHandle, private readonly anchorFh: FileHandle, private readonly macKey: Buffer,
    private seq: number, private head: string, private batch: number, readonly counters: Map<string, CounterValue>) {}

  /**
   * Opens the log under `stateDir`, verifying it against the anchor (and repairing a log the anchor is
   * ahead of). `mustExist`: the sealed state says this directory has a counter log; missing files are
   * then STATE_TAMPERED instead of a first start.
   */
  static async open(stateDir: string, macKey: Buffer, o: { mustExist: boolean }): Promise<CounterLog> {
    const logFile = path.join(stateDir, COUNTER_LOG);
    const anchorFile = path.join(stateDir, COUNTER_ANCHOR);
    const haveLog = existsSync(logFile);
    const haveAnchor = existsSync(anchorFile);
    if (o.mustExist && (!haveLog || !haveAnchor)) {
      throw new CdbpError('STATE_TAMPERED', `counter log rolled back or deleted: ${!haveLog ? COUNTER_LOG : COUNTER_ANCHOR} is missing in ${stateDir} but the sealed state says it exists`);
    }
    if (haveLog !== haveAnchor) {
      throw new CdbpError('STATE_TAMPERED', `counter log ${!haveLog ? COUNTER_LOG : COUNTER_ANCHOR} is missing in ${stateDir}`);
    }
    const text0 = haveLog ? await readFile(logFile, 'utf8') : '';
    const anchor = haveAnchor ? await readAnchor(anchorFile) : undefined;
    if (haveAnchor && !anchor) throw new CdbpError('STATE_TAMPERED', `${COUNTER_ANCHOR}: neither slot is readable`);
    const { text, torn, entries, prev, repair } = checkCounterLog(text0, anchor, macKey);
    if (torn || repair.length > 0) {
      // Rewrite the verified prefix plus the repaired lines: a torn tail is dropped, missing lines restored.
      const fh = await open(logFile, 'r+');
      try {
        await fh.truncate(Buffer.byteLength(text));
        await fh.write(repair.join(''), Buffer.byteLength(text));
        await fh.datasync();
      } finally {
        await fh.close();
      }
    }
    const counters = new Map<string, CounterValue>();
    for (const e of entries) counters.set(e.service, { value: e.value, digest: e.digest, ...(e.record ? { record: e.record } : {}), updatedAt: e.at });
    const logFh = await open(logFile, 'a', 0o600);
    const anchorFh = await open(anchorFile, haveAnchor ? 'r+' : 'w+', 0o600);
    const log = new CounterLog(logFh, anchorFh, macKey, entries.length, prev, (anchor?.batch ?? 0) + 1, counters);
    if (!haveAnchor) {
      // Both slots start valid and empty, so a torn first write still leaves a readable slot.
      await log.writeSlot(0, 0, []);
      await log.writeSlot(1, 0, []);
    }
    return log;
  }

  get entries(): number {
    return this.seq;
  }

  /**
   * Appends one change; resolves once it is on disk in both files. Order is fixed at call time and
   * `counters` reflects an entry only once it is durable (a reader never sees a value a crash could undo).
   */
  append(service: string, op: EntryBody['op'], value: number, digest: string, record?: string): Promise<void> {
    if (this.failed) return Promise.reject(new CdbpError('INTERNAL', `counter log unavailable after a write error: ${this.failed.message}`));
    if (this.closed) return Promise.reject(new CdbpError('INTERNAL', 'counter log is closed'));
    const body: EntryBody = { seq: ++this.seq, service, op, value, digest, ...(record ? { record } : {}), at: new Date().toISOString(), prev: this.head };
    const hash = entryHash(body);
    this.head = hash;
    const entry: Entry = { ...body, hash, mac: createHmac('sha256', this.macKey).update(hash).digest('hex') };
    return new Promise((resolve, reject) => {
      this.pending.push({ entry, line: JSON.stringify(entry), resolve, reject });
      if (!this.flushing) void this.flush();
    });
  }

  /** Resolves when everything appended so far is durable (or failed). */
  idle(): Promise<void> {
    if (!this.flushing && this.pending.length === 0) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }

  private async flush(): Promise<void> {
    this.flushing = true;
    while (this.pending.length > 0) {
      let size = 0;
      let n = 0;
      while (n < this.pending.length && (n === 0 || size + this.pending[n]!.line.length + 1 <= BATCH_BYTES)) size += this.pending[n++]!.line.length + 1;
      const batch = this.pending.splice(0, n);
      const lines = batch.map((p) => p.line);
      try {
        if (this.failed) throw this.failed;
        const slot = this.batch % 2;
        // The writes go to the page cache synchronously (microseconds); only the two fdatasyncs leave the
        // event loop, in parallel. An async write per file cost two more thread-pool round trips per batch.
        writeSync(this.logFh.fd, lines.join('\n') + '\n');
        const buf = encodeSlot(this.batch, lines);
        writeSync(this.anchorFh.fd, buf, 0, buf.length, slot * SLOT_BYTES);
        await Promise.all([this.logFh.datasync(), this.anchorFh.datasync()]);
        this.batch++;
        this.stats.batches++;
        this.stats.entries += batch.length;
        for (const p of batch) {
          const e = p.entry;
          this.counters.set(e.service, { value: e.value, digest: e.digest, ...(e.record ? { record: e.record } : {}), updatedAt: e.at });
        }
        for (const p of batch) p.resolve();
      } catch (e) {
        // The files may now hold part of this batch: nothing more may be appended behind it.
        this.failed ??= e instanceof Error ? e : new Error(String(e));
        for (const p of [...batch, ...this.pending.splice(0)]) p.reject(e);
      }
    }
    this.flushing = false;
    for (const w of this.idleWaiters.splice(0)) w();
  }

  private async writeSlot(slot: number, batch: number, lines: string[]): Promise<void> {
    const buf = encodeSlot(batch, lines);
    await this.anchorFh.write(buf, 0, buf.length, slot * SLOT_BYTES);
    await this.anchorFh.datasync();
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.idle();
    await this.logFh.close();
    await this.anchorFh.close();
  }
}

/**
 * Verifies a counter log's text against its anchor (pure; no repair is written): the hash chain and MAC
 * of every entry, and that the log reaches the anchored batch with the same entries. Returns the
 * verified prefix (a torn last line dropped) and the anchored lines the log lacks (a crash between the
 * two parallel fdatasyncs: put back at the next CAS start). Throws STATE_TAMPERED.
 */
export function checkCounterLog(text0: string, anchor: { batch: number; lines: string[] } | undefined, macKey: Buffer):
  { text: string; torn: boolean; entries: Entry[]; prev: string; repair: string[] } {
  let text = text0;
  // A crash mid-append can leave a torn last line: it was never answered (its batch was not synced),
  // unless the anchor holds it, in which case the repair puts it back.
  const tornAt = text.lastIndexOf('\n') + 1;
  const torn = tornAt < text.length;
  if (torn) text = text.slice(0, tornAt);
  const lines = text.length === 0 ? [] : text.slice(0, -1).split('\n');
  const entries: Entry[] = [];
  let prev = GENESIS;
  for (const [i, line] of lines.entries()) {
    const e = verifyLine(line, macKey, entries.length + 1, prev, `${COUNTER_LOG} line ${i + 1}`);
    entries.push(e);
    prev = e.hash;
  }
  const repair: string[] = [];
  if (anchor && anchor.lines.length > 0) {
    const parse = (line: string): Partial<Entry> => {
      try {
        return (JSON.parse(line) ?? {}) as Partial<Entry>;
      } catch {
        throw new CdbpError('STATE_TAMPERED', `${COUNTER_ANCHOR}: an anchored line is not JSON`);
      }
    };
    const hashOf = (line: string): unknown => parse(line).hash;
    const first = Number(parse(anchor.lines[0]!).seq);
    if (!Number.isSafeInteger(first) || first < 1) throw new CdbpError('STATE_TAMPERED', `${COUNTER_ANCHOR}: malformed anchored batch`);
    const last = first + anchor.lines.length - 1;
    const end = entries.length;
    if (end < first - 1) {
      throw new CdbpError('STATE_TAMPERED', `counter log truncated or rolled back: it ends at entry ${end} but the anchor holds entries ${first}..${last}`);
    }
    for (const [k, line] of anchor.lines.entries()) {
      const seq = first + k;
      if (seq <= end) {
        if (entries[seq - 1]!.hash !== hashOf(line)) {
          throw new CdbpError('STATE_TAMPERED', `counter log entry ${seq} is not the one the anchor holds (log rolled back or replaced)`);
        }
        continue;
      }
      const e = verifyLine(line, macKey, seq, prev, `${COUNTER_ANCHOR} entry ${seq}`);
      entries.push(e);
      prev = e.hash;
      repair.push(line + '\n');
    }
  } else if (anchor === undefined && entries.length > 0) {
    throw new CdbpError('STATE_TAMPERED', `counter log has ${entries.length} entries but no anchor`);
  }
  return { text, torn, entries, prev, repair };
}

/**
 * Read-only check of DIR/state/counters.log against counters.anchor, for `cdbp cas audit verify`:
 * the number of entries and services, and what the next CAS start would repair. Throws STATE_TAMPERED.
 */
export async function verifyCounterLogFiles(stateDir: string, macKey: Buffer): Promise<{ present: boolean; entries: number; services: number; tornTail: boolean; repairable: number }> {
  const logFile = path.join(stateDir, COUNTER_LOG);
  const anchorFile = path.join(stateDir, COUNTER_ANCHOR);
  const haveLog = existsSync(logFile);
  const haveAnchor = existsSync(anchorFile);
  if (!haveLog && !haveAnchor) return { present: false, entries: 0, services: 0, tornTail: false, repairable: 0 };
  if (haveLog !== haveAnchor) throw new CdbpError('STATE_TAMPERED', `counter log ${!haveLog ? COUNTER_LOG : COUNTER_ANCHOR} is missing in ${stateDir}`);
  const anchor = await readAnchor(anchorFile);
  if (!anchor) throw new CdbpError('STATE_TAMPERED', `${COUNTER_ANCHOR}: neither slot is readable`);
  const r = checkCounterLog(await readFile(logFile, 'utf8'), anchor, macKey);
  return { present: true, entries: r.entries.length, services: new Set(r.entries.map((e) => e.service)).size, tornTail: r.torn, repairable: r.repair.length };
}

function verifyLine(line: string, macKey: Buffer, seq: number, prev: string, where: string): Entry {
  const bad = (why: string) => new CdbpError('STATE_TAMPERED', `${where}: ${why}`);
  let e: Entry;
  try {
    e = JSON.parse(line) as Entry;
  } catch {
    throw bad('not JSON');
  }
  if (e === null || typeof e !== 'object') throw bad('not an object');
  if (e.seq !== seq) throw bad(`sequence ${String(e.seq)} where ${seq} was expected (entry removed, inserted or reordered)`);
  if (e.prev !== prev) throw bad('prev does not match the entry before it');
  const { hash, mac, ...body } = e;
  let computed: string;
  try {
    computed = entryHash(body);
  } catch {
    throw bad('entry is not canonical JSON');
  }
  if (typeof hash !== 'string' || !constantTimeEqual(computed, hash)) throw bad('entry hash does not match its content (entry edited)');
  if (typeof mac !== 'string' || !constantTimeEqual(createHmac('sha256', macKey).update(hash).digest('hex'), mac)) throw bad('entry MAC does not verify (not written by this CAS)');
  if (!Number.isSafeInteger(e.value) || typeof e.digest !== 'string' || typeof e.service !== 'string') throw bad('malformed entry');
  return e;
}

function encodeSlot(batch: number, lines: string[]): Buffer {
  // The batch number, then the log lines verbatim (they are JSON without newlines).
  const payload = Buffer.from([String(batch), ...lines].join('\n'));
  if (payload.length > SLOT_BYTES - SLOT_HEAD) throw new CdbpError('INTERNAL', 'counter batch larger than an anchor slot');
  const head = Buffer.alloc(SLOT_HEAD);
  SLOT_MAGIC.copy(head, 0);
  head.writeUInt32BE(payload.length, SLOT_MAGIC.length);
  createHash('sha256').update(payload).digest().copy(head, SLOT_MAGIC.length + 4);
  return Buffer.concat([head, payload]);
}

/** The valid slot with the highest batch number; a torn or garbled slot is skipped. */
async function readAnchor(file: string): Promise<{ batch: number; lines: string[] } | undefined> {
  const buf = await readFile(file);
  let best: { batch: number; lines: string[] } | undefined;
  for (const off of [0, SLOT_BYTES]) {
    if (buf.length < off + SLOT_HEAD || !buf.subarray(off, off + SLOT_MAGIC.length).equals(SLOT_MAGIC)) continue;
    const len = buf.readUInt32BE(off + SLOT_MAGIC.length);
    const payload = buf.subarray(off + SLOT_HEAD, off + SLOT_HEAD + len);
    if (payload.length !== len || !createHash('sha256').update(payload).digest().equals(buf.subarray(off + SLOT_MAGIC.length + 4, off + SLOT_HEAD))) continue;
    const [head, ...lines] = payload.toString('utf8').split('\n');
    const batch = Number(head);
    if (!Number.isSafeInteger(batch)) continue;
    if (!best || batch > best.batch) best = { batch, lines };
  }
  return best;
}
