/**
 * The CAS's sealed state at rest. One sealed file for the CA, one per service (so a counter advance
 * rewrites a few KB, not the whole state):
 *
 *   DIR/state/ca.sealed                      label "cas/ca": CA, CAS-level meta (answer-signing key, owner
 *                                            allow-list) and the audit anchor (last seq + head hash)
 *   DIR/state/services/<sha256(name)>.sealed label "cas/service/<name>"
 *
 * Each file is AEAD-sealed with the header (including its label) as associated data and replaced
 * durably (tmp → fsync → rename → fsync dir). Everything is opened and checked at start: one file that
 * does not open, or a missing CA file in an initialised directory, stops the CAS with STATE_TAMPERED
 * before it serves anything.
 *
 * Known limit: a disk adversary can roll back a whole file to an older sealed version (the CAS has no
 * monotonic anchor of its own yet); see docs/CAS.md.
 */
import { mkdir, readdir, readFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { CdbpError } from '../src/kernel/errors.ts';
import { sha256Hex } from '../src/crypto/hash.ts';
import { openBlob, sealBlob } from '../src/crypto/sealed-file.ts';
import { writeFileDurable, fsyncDir } from '../src/crypto/atomic-file.ts';
import type { CaMaterial } from '../src/crypto/x509.ts';
import type { SignedPolicy } from '../src/provisioning/policy.ts';

export interface StoredKey {
  id: number;
  version: number;
  /** Hex, 32 bytes. */
  key: string;
  createdAt: string;
}

export interface ServiceRecord {
  service: string;
  /** Owner public key bound at first apply. */
  owner: string;
  policyHash: string;
  signed: SignedPolicy;
  /** Every policy hash applied, oldest first. */
  history: Array<{ policyHash: string; appliedAt: string }>;
  databaseId: string;
  /** Hex, 32 bytes. */
  keyringToken: string;
  /** Hex, 32 bytes. */
  freshnessKey: string;
  keys: StoredKey[];
  counter: { value: number; digest: string; updatedAt: string };
  /** Increments on every write. */
  generation: number;
}

/** CAS-level state that is not per service. */
export interface CasMeta {
  format: 'cdbp-cas-meta/1';
  /** Ed25519 answer-signing key, hex libsodium secret key (seed ‖ public). */
  signingSecretKey: string;
  /** Its certificate from the CAS CA (role cas-signing): how clients learn and trust the key. */
  signingCertPem: string;
  /** Owner keys allowed to create NEW services; empty = not bound yet (the first policy binds its owner). */
  owners: string[];
  ownersBoundBy: 'configured' | 'first-policy' | 'existing-services' | null;
}

/** The audit log's last durable entry, so a truncated or rolled-back log is caught at start. */
export interface AuditAnchor {
  seq: number;
  head: string;
}

/** What ca.sealed holds. Older states hold only the CaMaterial; they are upgraded at open. */
interface RootFile extends CaMaterial {
  meta?: CasMeta;
  audit?: AuditAnchor;
  /** Set once when the counter log (cas/counter-log.ts) is created: from then on it must exist. */
  counterLog?: true;
}

const CA_LABEL = 'cas/ca';
const serviceLabel = (name: string): string => `cas/service/${name}`;
const serviceFile = (name: string): string => `${sha256Hex(name).slice(0, 40)}.sealed`;

export class StateStore {
  private readonly services = new Map<string, ServiceRecord>();
  private readonly locks = new Map<string, Promise<unknown>>();
  private ca!: CaMaterial;
  private casMeta!: CasMeta;
  private anchor: AuditAnchor | undefined;
  private hasCounterLog = false;
  /** Serialises rewrites of ca.sealed (audit anchor, owner binding). */
  private rootWrite: Promise<unknown> = Promise.resolve();
  /**
   * Replicated CAS (cas/replication/): called with a service's new sealed bytes before the local file is
   * replaced; throwing leaves the change undone everywhere (etcd is the commit point).
   */
  beforeWrite: ((service: string, blob: Buffer) => Promise<void>) | undefined;

  private constructor(private readonly dir: string, private readonly key: Buffer) {}

  get stateDir(): string {
    return path.join(this.dir, 'state');
  }

  /**
   * Opens the state under `dir`, creating it (with a new CA from `makeCa`) if the directory was never
   * initialised. Any file that fails to open → STATE_TAMPERED.
   */
  static async open(dir: string, key: Buffer, makeCa: () => CaMaterial, makeMeta: (ca: CaMaterial, existingOwners: string[]) => Promise<CasMeta>):
    Promise<{ store: StateStore; created: boolean; upgraded: boolean }> {
    const store = new StateStore(dir, key);
    const stateDir = store.stateDir;
    const servicesDir = path.join(stateDir, 'services');
    const caFile = path.join(stateDir, 'ca.sealed');
    if (!existsSync(stateDir)) {
      await mkdir(servicesDir, { recursive: true, mode: 0o700 });
      store.ca = makeCa();
      store.casMeta = await makeMeta(store.ca, []);
      await store.writeRoot();
      await fsyncDir(dir);
      return { store, created: true, upgraded: false };
    }
    if (!existsSync(caFile) || !existsSync(servicesDir)) {
      // (ca.sealed also holds the owner binding and the audit anchor: deleting it must not reset them.)
      throw new CdbpError('STATE_TAMPERED', `${stateDir} exists but ${existsSync(caFile) ? 'services/' : 'ca.sealed'} is missing; refusing to start on partial state`);
    }
    const root = await store.openJson<RootFile>(caFile, CA_LABEL);
    store.ca = { keyPem: root.keyPem, certPem: root.certPem };
    store.anchor = root.audit;
    store.hasCounterLog = root.counterLog === true;
    for (const name of (await readdir(servicesDir)).sort()) {
      if (name.startsWith('.') && name.endsWith('.tmp')) continue; // an interrupted write: the target is intact
      if (!name.endsWith('.sealed')) throw new CdbpError('STATE_TAMPERED', `unexpected file in ${servicesDir}: ${name}`);
      const file = path.join(servicesDir, name);
      const rec = await store.openJson<ServiceRecord>(file, undefined);
      if (serviceFile(rec.service) !== name) throw new CdbpError('STATE_TAMPERED', `${file} holds service ${rec.service} under the wrong name`);
      store.services.set(rec.service, rec);
    }
    let upgraded = false;
    if (root.meta) store.casMeta = root.meta;
    else {
      // A state from before the CAS-level meta: keep serving its services' owners, add a signing key.
      store.casMeta = await makeMeta(store.ca, [...new Set([...store.services.values()].map((r) => r.owner))].sort());
      await store.writeRoot();
      upgraded = true;
    }
    return { store, created: false, upgraded };
  }

  /** Seals and durably replaces ca.sealed with the current CA, meta and audit anchor. */
  private writeRoot(): Promise<void> {
    const run = this.rootWrite.catch(() => {}).then(async () => {
      const root: RootFile = { ...this.ca, meta: this.casMeta, ...(this.anchor ? { audit: this.anchor } : {}),
        ...(this.hasCounterLog ? { counterLog: true as const } : {}) };
      await writeFileDurable(path.join(this.stateDir, 'ca.sealed'), await sealBlob(this.key, CA_LABEL, Buffer.from(JSON.stringify(root))));
    });
    this.rootWrite = run;
    return run;
  }

  get meta(): CasMeta {
    return this.casMeta;
  }

  /** The sealed audit anchor; undefined for a state that never had one (new, or from an older CAS). */
  get auditAnchor(): AuditAnchor | undefined {
    return this.anchor;
  }

  /** Records the audit log's durable end. Called after each audit fsync, in append order. */
  async setAuditAnchor(a: AuditAnchor): Promise<void> {
    if (this.anchor && a.seq < this.anchor.seq) return; // never move the anchor backwards
    this.anchor = { seq: a.seq, head: a.head };
    await this.writeRoot();
  }

  /** True once this directory has a counter log: it may then never be missing. */
  get counterLogCreated(): boolean {
    return this.hasCounterLog;
  }

  /** Seals, once, that the counter log exists (after its files were created and synced). */
  async markCounterLog(): Promise<void> {
    if (this.hasCounterLog) return;
    this.hasCounterLog = true;
    await this.writeRoot();
  }

  /** Replaces the meta (owner binding) durably before it takes effect. */
  async updateMeta(next: CasMeta): Promise<void> {
    const prev = this.casMeta;
    this.casMeta = next;
    try {
      await this.writeRoot();
    } catch (e) {
      this.casMeta = prev;
      throw e;
    }
  }

  /**
   * Opens a sealed JSON file. Service files carry their name in the label, which we learn from the
   * header itself and then require to authenticate (a renamed or swapped file fails).
   */
  private async openJson<T>(file: string, label: string | undefined): Promise<T> {
    let blob: Buffer;
    try {
      blob = await readFile(file);
    } catch (e) {
      throw new CdbpError('STATE_TAMPERED', `cannot read ${file}: ${(e as Error).message}`);
    }
    const actualLabel = label ?? readLabel(blob);
    if (actualLabel === undefined || (label === undefined && !actualLabel.startsWith('cas/service/'))) {
      throw new CdbpError('STATE_TAMPERED', `${file}: not a sealed CAS state file`);
    }
    try {
      const plain = await openBlob(this.key, actualLabel, blob);
      const parsed = JSON.parse(plain.toString('utf8')) as T;
      if (label === undefined && (parsed as unknown as ServiceRecord).service !== actualLabel.slice('cas/service/'.length)) {
        throw new CdbpError('STATE_TAMPERED', 'label and content disagree');
      }
      return parsed;
    } catch (e) {
      throw new CdbpError('STATE_TAMPERED', `sealed state file ${file} failed authentication (modified, truncated or sealed with another key): ${(e as Error).message}`);
    }
  }

  get caMaterial(): CaMaterial {
    return this.ca;
  }

  get(service: string): ServiceRecord | undefined {
    return this.services.get(service);
  }

  get size(): number {
    return this.services.size;
  }

  all(): ServiceRecord[] {
    return [...this.services.values()];
  }

  /**
   * Read-modify-write of one service under a per-service lock: `fn` sees the current record and
   * returns the new one (or undefined to leave it unchanged, with a result). The new record is sealed
   * and durably on disk before it becomes visible and before the caller's promise resolves.
   */
  async update<R>(service: string, fn: (current: ServiceRecord | undefined) => { next?: ServiceRecord; result: R } | Promise<{ next?: ServiceRecord; result: R }>): Promise<R> {
    const prev = this.locks.get(service) ?? Promise.resolve();
    const run = prev.catch(() => {}).then(async () => {
      const out = await fn(this.services.get(service));
      if (out.next) {
        const next = { ...out.next, generation: (this.services.get(service)?.generation ?? 0) + 1 };
        const blob = await sealBlob(this.key, serviceLabel(service), Buffer.from(JSON.stringify(next)));
        await this.beforeWrite?.(service, blob);
        await writeFileDurable(path.join(this.stateDir, 'services', serviceFile(service)), blob);
        this.services.set(service, next);
      }
      return out.result;
    });
    this.locks.set(service, run);
    try {
      return await run;
    } finally {
      if (this.locks.get(service) === run) this.locks.delete(service);
    }
  }
}

/** The label from a sealed blob's header, without authenticating it (openBlob does that next). */
function readLabel(blob: Buffer): string | undefined {
  if (blob.length < 11 || blob.subarray(0, 8).toString('latin1') !== 'CDBPSEAL') return undefined;
  const len = blob.readUInt16BE(9);
  if (blob.length < 11 + len) return undefined;
  return blob.subarray(11, 11 + len).toString('utf8');
}

/** Offline (`cdbp cas audit verify`): the audit anchor in DIR's sealed state, opened with the state key. */
export async function readSealedAuditAnchor(dir: string, key: Buffer): Promise<AuditAnchor | undefined> {
  const file = path.join(dir, 'state', 'ca.sealed');
  let plain: Buffer;
  try {
    plain = await openBlob(key, CA_LABEL, await readFile(file));
  } catch (e) {
    throw new CdbpError('STATE_TAMPERED', `cannot open ${file} with this sealing key: ${(e as Error).message}`);
  }
  return (JSON.parse(plain.toString('utf8')) as RootFile).audit;
}
