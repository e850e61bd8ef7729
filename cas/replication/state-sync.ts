/**
 * The replicated CAS's durable state on etcd (untrusted storage), checked against the instances' memory.
 *
 * Layout (every value sealed by the CAS state key; a file value is byte for byte the sealed file the
 * single-instance CAS keeps in DIR/state):
 *
 *   cdbp/ca          ca.sealed (CA, answer meta, owner allow-list)
 *   cdbp/svc/<name>  the service's sealed record (policy, keys, token)
 *   cdbp/head        sealed {seq, count, digest}: the state's version and exactly which blobs it is —
 *                    digest = SHA-256 over the sorted "key NUL sha256(value)" lines of every other key, so
 *                    the head stays a few bytes however many services there are (format 1 listed every
 *                    key's hash: 6,000 services made each write re-seal and store ~600 KB; still read)
 *
 * Every write is one etcd transaction, revision-checked on the keys it replaces (mod_revision) and on
 * the head, so two instances never overwrite each other; head.seq grows by one per write. Writes that
 * arrive while one is in flight go out together as the next transaction (group commit: provisioning
 * thousands of services is not one etcd round trip and one majority notice each). Each running
 * instance keeps the highest head.seq it wrote or saw IN MEMORY; a majority of instances therefore
 * knows the newest state, and an etcd that holds an older one (a restored snapshot, deleted or replaced
 * keys) is caught: head.seq below memory, or a blob whose hash the head does not name → STATE_ROLLED_BACK,
 * refused and alarmed. A joining instance checks etcd against the highest head.seq of the members it
 * caught up from.
 */
import { createHash } from 'node:crypto';
import { CdbpError } from '../../src/kernel/errors.ts';
import { openBlob, sealBlob } from '../../src/crypto/sealed-file.ts';
import type { EtcdClient } from '../store/etcd.ts';

export const ETCD_PREFIX = 'cdbp/';
export const CA_KEY = `${ETCD_PREFIX}ca`;
export const HEAD_KEY = `${ETCD_PREFIX}head`;
export const serviceKey = (name: string): string => `${ETCD_PREFIX}svc/${name}`;
const HEAD_LABEL = 'cas/etcd-head';

/** Format 1 (still read): every key's hash. Format 2 (written): the count and digest of that map. */
type Head = { format: 'cdbp-etcd-head/1'; seq: number; files: Record<string, string> }
  | { format: 'cdbp-etcd-head/2'; seq: number; count: number; digest: string };

/** The digest a format-2 head carries for a key → sha256(value) map. */
export function stateDigest(files: Map<string, string>): string {
  const h = createHash('sha256');
  for (const k of [...files.keys()].sort()) h.update(`${k}\0${files.get(k)!}\n`);
  return h.digest('hex');
}

/** Writes in one etcd transaction at most: etcd's default request limit is 1.5 MiB, and --max-txn-ops (128) counts the head too. */
const BATCH_BYTES = 512 * 1024;
const BATCH_KEYS = 100;

interface QueuedWrite { files: Record<string, Buffer>; resolve: () => void; reject: (e: unknown) => void }

export interface LoadedState {
  seq: number;
  ca: Buffer;
  services: Map<string, Buffer>;
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

export class StateSync {
  /** Highest head.seq this instance wrote or saw: the in-memory anchor etcd is checked against. */
  private seq = 0;
  /** key → sha256(value) of the state at `seq` (what the head's digest covers). */
  private files = new Map<string, string>();
  private readonly mods = new Map<string, number>();
  /** The version and key revisions last verified by load() or written by commit() (see unchanged()). */
  private verified: { seq: number; mods: Map<string, number> } | undefined;
  private rolledBack: string | undefined;
  /** Writes are serialised per instance (the head is one key); queued ones share the next transaction. */
  private queued: QueuedWrite[] = [];
  private writing = false;

  /**
   * Called after each write with the new version; resolves once a majority of members hold it in memory
   * (cas/replication/instance.ts). Only then is the write acknowledged: otherwise an etcd rolled back to
   * just before it could go unnoticed if the writer died.
   */
  onWritten: ((seq: number) => Promise<void>) | undefined;

  constructor(private readonly etcd: EtcdClient, private readonly stateKey: Buffer) {}

  get headSeq(): number {
    return this.seq;
  }

  /** Set when a rollback was detected: the reason (state writes and joins are refused while set). */
  get rollback(): string | undefined {
    return this.rolledBack;
  }

  /**
   * True when etcd's keys and their mod_revisions are exactly those of the last state this instance
   * verified or wrote, and no newer version was announced since: the periodic poll then skips reading
   * and opening every blob (O(services) per poll). Only a shortcut for the poll: whoever consumes the
   * state (install, join) runs load(), which checks every blob, and the poll still runs load() on any
   * change and every so often (instance.ts), so an etcd edited below the API is still caught.
   */
  async unchanged(): Promise<boolean> {
    if (this.verified === undefined || this.verified.seq !== this.seq) return false;
    const seq = this.seq;
    const now = await this.etcd.rangeKeys(ETCD_PREFIX);
    if (seq !== this.seq || now.size !== this.verified.mods.size) return false;
    for (const [k, rev] of now) if (this.verified.mods.get(k) !== rev) return false;
    return true;
  }

  /** Raises the in-memory anchor (a joiner learns it from the members it catches up from). */
  raiseTo(seq: number): void {
    if (seq > this.seq) this.seq = seq;
  }

  /** True if etcd already holds a deployment. */
  async exists(): Promise<boolean> {
    const r = await this.etcd.range(ETCD_PREFIX);
    return r.kvs.some((kv) => kv.key === CA_KEY || kv.key === HEAD_KEY);
  }

  /** First instance: writes the whole new state, only if etcd holds none (every key expected absent). */
  async bootstrap(ca: Buffer, services: Map<string, Buffer>): Promise<void> {
    const files: Record<string, Buffer> = { [CA_KEY]: ca };
    for (const [name, blob] of services) files[serviceKey(name)] = blob;
    await this.commit(files, true);
  }

  /** Writes one service's sealed record (called before the local file is replaced: etcd is the commit point). */
  pushService(name: string, blob: Buffer): Promise<void> {
    return new Promise((resolve, reject) => {
      this.queued.push({ files: { [serviceKey(name)]: blob }, resolve, reject });
      if (!this.writing) void this.drain();
    });
  }

  private async drain(): Promise<void> {
    this.writing = true;
    while (this.queued.length > 0) {
      let bytes = 0;
      let n = 0;
      const size = (q: QueuedWrite) => Object.values(q.files).reduce((a, b) => a + b.length, 0);
      while (n < this.queued.length && n < BATCH_KEYS && (n === 0 || bytes + size(this.queued[n]!) <= BATCH_BYTES)) bytes += size(this.queued[n++]!);
      const batch = this.queued.splice(0, n);
      try {
        await this.commit(Object.assign({}, ...batch.map((q) => q.files)) as Record<string, Buffer>, false);
        for (const q of batch) q.resolve();
      } catch (e) {
        for (const q of batch) q.reject(e);
      }
    }
    this.writing = false;
  }

  /** One transaction: the files and the next head, revision-checked; acknowledged once a majority holds the version. */
  private async commit(files: Record<string, Buffer>, fresh: boolean): Promise<void> {
    if (this.rolledBack) throw new CdbpError('STATE_ROLLED_BACK', `state writes refused: ${this.rolledBack}`);
    const nextFiles = new Map(this.files);
    for (const [k, v] of Object.entries(files)) nextFiles.set(k, sha(v));
    const next: Head = { format: 'cdbp-etcd-head/2', seq: this.seq + 1, count: nextFiles.size, digest: stateDigest(nextFiles) };
    const headBlob = await sealBlob(this.stateKey, HEAD_LABEL, Buffer.from(JSON.stringify(next)));
    const puts = [...Object.entries(files).map(([key, value]) => ({ key, value, expectModRevision: fresh ? 0 : this.mods.get(key) ?? 0 })),
      { key: HEAD_KEY, value: headBlob, expectModRevision: fresh ? 0 : this.mods.get(HEAD_KEY) ?? 0 }];
    const r = await this.etcd.txn(puts);
    if (!r.succeeded) {
      throw new CdbpError(fresh ? 'STATE_ROLLED_BACK' : 'STATE_STORE_CONFLICT', fresh
        ? 'etcd already holds a CAS deployment: start this instance without --ha-bootstrap to join it'
        : 'the CAS state in etcd changed under this write (another instance wrote first, or etcd was replaced): retry');
    }
    // One transaction: every key it wrote now has the transaction's revision.
    for (const p of puts) this.mods.set(p.key, r.revision);
    this.files = nextFiles;
    this.seq = Math.max(this.seq, next.seq); // a notice that landed during the transaction is not undone
    this.verified = { seq: this.seq, mods: new Map(this.mods) };
    await this.onWritten?.(next.seq);
  }

  /**
   * Reads etcd's state and checks it against memory: the head must open with the state key, reach the
   * in-memory seq, and name exactly the blobs present. Anything else is a rollback/replacement of etcd.
   */
  async load(): Promise<LoadedState> {
    // The version the read must reach is the one known *before* it starts: a write of this member, or a
    // notice from another, may raise it while the read is in flight, and etcd's (linearizable) read
    // cannot be expected to hold a version committed after it. Comparing with the raised value was a
    // false rollback alarm under concurrent policy applies (bench/scenarios/cas-ha.ts provisioning).
    const floor = this.seq;
    const r = await this.etcd.range(ETCD_PREFIX);
    const byKey = new Map(r.kvs.map((kv) => [kv.key, kv]));
    const headKv = byKey.get(HEAD_KEY);
    if (!headKv) throw this.detected(`etcd holds no CAS state head, but this instance has seen state version ${this.seq}`);
    let head: Head;
    try {
      head = JSON.parse((await openBlob(this.stateKey, HEAD_LABEL, headKv.value)).toString('utf8')) as Head;
    } catch (e) {
      throw this.detected(`the state head in etcd does not open with the CAS state key (${(e as Error).message})`);
    }
    if (head.seq < floor) throw this.detected(`etcd holds state version ${head.seq}, older than version ${floor} that the instances hold in memory (an old snapshot restored?)`);
    const files = new Map<string, string>();
    if (head.format === 'cdbp-etcd-head/1') {
      for (const [key, hash] of Object.entries(head.files)) {
        const kv = byKey.get(key);
        if (!kv || sha(kv.value) !== hash) throw this.detected(`etcd key ${key} is ${kv ? 'not the version' : 'missing from what'} the state head (version ${head.seq}) names`);
        files.set(key, hash);
      }
    } else {
      for (const kv of r.kvs) if (kv.key !== HEAD_KEY) files.set(kv.key, sha(kv.value));
      if (files.size !== head.count || stateDigest(files) !== head.digest) {
        throw this.detected(`etcd holds ${files.size} state keys that are not exactly the ${head.count} the state head (version ${head.seq}) names (a key added, removed or replaced by an older version)`);
      }
    }
    const services = new Map<string, Buffer>();
    for (const key of files.keys()) if (key.startsWith(`${ETCD_PREFIX}svc/`)) services.set(key.slice(`${ETCD_PREFIX}svc/`.length), byKey.get(key)!.value);
    const ca = byKey.get(CA_KEY)?.value;
    if (!ca) throw this.detected('etcd holds no CA');
    // Adopted only if no newer version was written or announced meanwhile (an older head would make
    // the next write expect stale revisions).
    if (head.seq >= this.seq) {
      this.mods.clear();
      for (const kv of r.kvs) this.mods.set(kv.key, kv.modRevision);
      this.files = files;
      this.seq = head.seq;
      this.verified = { seq: this.seq, mods: new Map(this.mods) };
    }
    // etcd holds the newest state again (an operator restored it): writes may resume.
    this.rolledBack = undefined;
    return { seq: head.seq, ca, services };
  }

  private detected(reason: string): CdbpError {
    this.rolledBack ??= reason;
    return new CdbpError('STATE_ROLLED_BACK', `CAS state in etcd rolled back or replaced: ${reason}`);
  }
}
