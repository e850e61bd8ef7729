/**
 * One member of a replicated CAS (docs/CAS.md "Replicated CAS"): how it comes to life (bootstrap a new
 * deployment, or join a running one), what it serves its peers (the join route) and how it keeps its
 * durable state in step with etcd.
 *
 * - Identity: every start is a NEW member incarnation with a fresh instance id and a fresh Ed25519 answer
 *   key, certified by the deployment CA with `urn:cdbp:cas-instance:<id>`. Counter answers (receipts) are
 *   signed with it, so a proxy counts distinct instances, never one instance twice (Nimble's endorser keys).
 * - Bootstrap: only into an empty etcd and an empty directory: fresh CA, keys, empty counters.
 * - Join: attest to the members with the same verifiers as proxies (simulated where the stack is simulated;
 *   the joiner must run exactly the members' own measurement), receive the state key and every member's
 *   counters over that channel (sealed box to a key bound in the evidence), hear from catchUpQuorum(n) of
 *   them, take the highest epoch per service, check etcd against the highest state version they hold, and
 *   only then serve. Nothing on the joiner's own disk is used: an old disk cannot bring back old state.
 */
import { randomBytes, X509Certificate, createHash, createHmac, hkdfSync } from 'node:crypto';
import { existsSync, rmSync, mkdirSync, writeFileSync, readFileSync } from 'node:fs';
import path from 'node:path';
import type { FastifyInstance } from 'fastify';
import type { Logger } from '../../src/kernel/log.ts';
import { CdbpError, asCdbpError } from '../../src/kernel/errors.ts';
import type { AttestationProvider, EvidenceVerifier, TeeMode, Evidence } from '../../src/attestation/types.ts';
import { generateSealingKeyPair, openSealed, sealToPublicKey } from '../../src/crypto/box.ts';
import { generateSigningKeyPair } from '../../src/crypto/ed25519.ts';
import { ed25519Spki, issueLeafCertificate, sha256Fingerprint, type CaMaterial } from '../../src/crypto/x509.ts';
import { isHex, constantTimeEqual } from '../../src/crypto/hash.ts';
import { casRequest } from '../../src/cas-client/http.ts';
import { joinReportData } from '../../src/cas-client/quorum-counter.ts';
import { CAS_INSTANCE_URN } from '../../src/cas-client/quorum.ts';
import { NonceStore } from '../nonces.ts';
import type { AuditLog } from '../audit.ts';
import type { StateStore } from '../state.ts';
import { deriveKey, type SealingKeyProvider } from '../sealing-key.ts';
import { openBlob } from '../../src/crypto/sealed-file.ts';
import { MemoryCounters, type CounterSnapshotEntry } from './memory-counters.ts';
import { StateSync } from './state-sync.ts';
import { catchUpQuorum, currentIncarnations, majority, formatMembership, parseMembership, slotUrn } from '../../src/cas-client/quorum.ts';
import { EtcdClient } from '../store/etcd.ts';
import { verifySignedHaRecovery, type SignedHaRecovery } from '../../src/provisioning/policy.ts';

export const JOIN_SECRETS_FORMAT = 'cdbp-cas-join/1';

export interface HaConfig {
  /** Number of members in the deployment (3 by default). */
  members: number;
  /** This member's place, 1..members: a restart fills the same slot with a new incarnation (fencing the old one). */
  slot: number;
  /** The other members' URLs. */
  peers: string[];
  etcdEndpoints: string[];
  bootstrap: boolean;
  /**
   * The owner's signed permission to reopen a deployment that lost a majority of its members at once:
   * this member opens etcd's state with its own sealed state key and starts with EMPTY counters, which
   * the owner then re-anchors per service (`cdbp recover`). Refused while any other member answers.
   */
  recover?: SignedHaRecovery;
  /** The deployment's CA (pinned out of band), to talk to peers when joining. */
  caPem?: string;
  /** The joiner's own evidence source (same provider kind as a proxy's). */
  provider?: AttestationProvider;
  /** The measurement a joiner must present: this code's own. */
  measurement: string;
  pollMs?: number;
}

interface JoinSecrets {
  format: typeof JOIN_SECRETS_FORMAT;
  instance: string;
  masterKey: string;
  stateSeq: number;
  counters: CounterSnapshotEntry[];
  /** Member incarnations this member knows of (itself, whom it joined from, whom it admitted). */
  known: string[];
  /** Its view of which generation holds each slot (formatMembership), and its own slot and generation. */
  membership: string;
  slot: number;
  gen: number;
  /** The deployment's size as the admitting member runs it (a joiner refuses a different one). */
  members: number;
}

/** What startCas needs from the replication layer (cas/app.ts). */
export interface HaRuntime {
  instanceId: string;
  /** This incarnation's slot view, signed into every counter answer (src/cas-client/quorum.ts currentIncarnations). */
  membership(): string;
  counters: MemoryCounters;
  sealing: SealingKeyProvider;
  /** Called once the state is open: the per-incarnation answer key and certificate. */
  instanceSigning(ca: CaMaterial): Promise<{ secretKey: Buffer; certPem: string }>;
  /** Called before startCas opens DIR/state: lays out the state a joiner received. */
  prepareDir(dir: string): void;
  /** Called after the state is open and the server built, before listening. */
  attach(x: { app: FastifyInstance; store: StateStore; audit: AuditLog; verifiers: Map<TeeMode, EvidenceVerifier>; stateKey: Buffer; masterKey: Buffer; allowSimulated: boolean; log: Logger }): Promise<void>;
  close(): Promise<void>;
}

/** The poll reads and checks every blob in etcd at least this often (every 10 s at the default 500 ms). */
const FULL_POLL_EVERY = 20;
/** Service files installed at once from etcd (each a durable write). */
const INSTALL_CONCURRENCY = 16;

const serviceFile = (name: string): string => `${createHash('sha256').update(name).digest('hex').slice(0, 40)}.sealed`;

export async function prepareHa(cfg: HaConfig, fileSealing: SealingKeyProvider, dir: string, log: Logger): Promise<HaRuntime> {
  const instanceId = randomBytes(8).toString('hex');
  const etcd = new EtcdClient(cfg.etcdEndpoints);
  const counters = new MemoryCounters();
  // Incarnations known to exist. Until a majority of them exists no counter can have been acknowledged,
  // so the first members may join from fewer than catchUpQuorum (the deployment is not "formed" yet).
  const known = new Set<string>([instanceId]);
  // Which generation holds each slot, as far as this member knows: raised by its own start, by the members
  // it joined from and by the joiners it admitted (fencing: docs/CAS.md "Membership"). A generation starts
  // at the wall clock in ms so that a deployment reopened after a majority loss outranks every incarnation
  // from before it; a join takes the next one above what its admitters know.
  const membership = new Map<number, number>();
  let gen = Date.now();
  let sealing = fileSealing;
  let sync: StateSync | undefined;
  let joined: { seq: number; ca: Buffer; services: Map<string, Buffer>; from: string[] } | undefined;
  let recovered: Record<string, string | number> | undefined;

  if (cfg.bootstrap) {
    if (existsSync(path.join(dir, 'state'))) {
      throw new CdbpError('CONFIG_INVALID', `--ha-bootstrap needs an empty directory: ${dir}/state exists (a member that restarts joins; it never bootstraps again)`);
    }
    const probe = new StateSync(etcd, Buffer.alloc(32));
    if (await probe.exists()) throw new CdbpError('STATE_ROLLED_BACK', 'etcd already holds a CAS deployment: start this instance without --ha-bootstrap to join it');
    membership.set(cfg.slot, gen);
  } else if (cfg.recover) {
    const r = await reopenDeployment(cfg, cfg.recover, etcd, fileSealing, log);
    sync = r.sync;
    joined = { ...r.loaded, from: [] };
    // Their counters died with the majority: refused, not "never advanced", until the owner re-anchors each.
    counters.unanchor(r.loaded.services.keys());
    recovered = { ...r.details, unanchored: counters.unanchored.size };
    // Every incarnation from before the reopen is retired, in every slot: one the host kept alive out of
    // sight (the "no other member answers" check runs over the host's network) must not hand its old
    // counters to a joiner's catch-up or count in a proxy's majority. Joiners take generations above it.
    for (let k = 1; k <= cfg.members; k++) membership.set(k, gen);
  } else {
    if (!cfg.caPem || !cfg.provider) throw new CdbpError('CONFIG_INVALID', 'joining a replicated CAS needs --ha-ca FILE (the deployment CA) and an attestation provider');
    const j = await joinMembers(cfg, instanceId, log);
    for (const k of j.known) known.add(k);
    for (const [slot, g] of j.membership) if (g > (membership.get(slot) ?? 0)) membership.set(slot, g);
    gen = j.gen;
    membership.set(cfg.slot, gen);
    sealing = { kind: 'file', simulated: fileSealing.simulated, masterKey: async () => Buffer.from(j.masterKey) };
    counters.merge(j.counters);
    if (counters.conflicts.length > 0) {
      throw new CdbpError('TAMPER_DETECTED', `members disagree on a counter (two digests for one epoch: ${counters.conflicts.map((c) => `${c.service}@${c.value}`).join(', ')}); refusing to join`);
    }
    // The simulated twin of sealing the state key to this member's hardware: any member may later reopen
    // the deployment after a majority loss (--ha-recover), not only the one that bootstrapped it.
    await fileSealing.keep?.(j.masterKey);
    sync = new StateSync(etcd, deriveKey(j.masterKey, 'state'));
    sync.raiseTo(j.stateSeq);
    const loaded = await sync.load();
    joined = { ...loaded, from: j.from };
    log.info({ instance: instanceId, from: j.from, services: counters.counters.size, stateSeq: loaded.seq }, 'caught up from a majority of members');
  }

  let timer: NodeJS.Timeout | undefined;
  return {
    instanceId, counters, sealing,
    membership: () => formatMembership(membership),
    async instanceSigning(ca) {
      const kp = await generateSigningKeyPair();
      const certPem = issueLeafCertificate(ca, {
        role: 'cas-signing', spki: ed25519Spki(kp.publicKey),
        subject: { commonName: `cdbp CAS instance ${instanceId}`, organization: 'confidential-db-proxy', organizationalUnit: 'cas' },
        dnsNames: [], ipAddresses: [], uris: [`${CAS_INSTANCE_URN}${instanceId}`, slotUrn({ slot: cfg.slot, gen, members: cfg.members })],
        notAfter: new Date(new X509Certificate(ca.certPem).validTo),
      });
      return { secretKey: kp.secretKey, certPem };
    },
    prepareDir(d) {
      if (!joined) return;
      // The members' state replaces whatever this disk held: an old copy of it never counts.
      rmSync(path.join(d, 'state'), { recursive: true, force: true });
      mkdirSync(path.join(d, 'state', 'services'), { recursive: true, mode: 0o700 });
      writeFileSync(path.join(d, 'state', 'ca.sealed'), joined.ca, { mode: 0o600 });
      for (const [name, blob] of joined.services) writeFileSync(path.join(d, 'state', 'services', serviceFile(name)), blob, { mode: 0o600 });
    },
    async attach(x) {
      sync ??= new StateSync(etcd, x.stateKey);
      const s = sync;
      if (cfg.bootstrap) {
        const services = new Map<string, Buffer>();
        const dirS = path.join(dir, 'state', 'services');
        for (const rec of x.store.all()) services.set(rec.service, readFileSync(path.join(dirS, serviceFile(rec.service))));
        await s.bootstrap(readFileSync(path.join(dir, 'state', 'ca.sealed')), services);
        await x.audit.append({ event: 'ha.bootstrap', outcome: 'ok', details: { instance: instanceId, members: cfg.members } });
      } else if (recovered) {
        await x.audit.append({ event: 'ha.recover', outcome: 'ok', details: { instance: instanceId, ...recovered } });
        x.log.warn({ instance: instanceId, ...recovered }, 'deployment reopened by owner-signed recovery: every service\'s counter is unanchored (reads and advances refused) until its owner re-anchors it (cdbp recover)');
      } else {
        await x.audit.append({ event: 'ha.join', outcome: 'ok', details: { instance: instanceId, from: joined!.from.join(','), stateSeq: s.headSeq, services: counters.counters.size } });
      }
      // etcd is the commit point of a state change: written (revision-checked) before the local file.
      const installing = new Set<string>();
      x.store.beforeWrite = async (service, blob) => {
        if (!installing.has(service)) await s.pushService(service, blob);
      };
      // A state write is acknowledged once a majority of members hold its version in memory.
      const macKey = Buffer.from(hkdfSync('sha256', x.masterKey, Buffer.alloc(0), 'cdbp-cas/replication/1', 32));
      const caPem = x.store.caMaterial.certPem;
      s.onWritten = async (seq) => {
        const mac = headMac(macKey, seq);
        const acks = await Promise.allSettled(cfg.peers.map((url) => casRequest(url, 'POST', '/v1/replication/head', { seq, mac }, { caPem, timeoutMs: 2000 })));
        const held = 1 + acks.filter((a) => a.status === 'fulfilled').length;
        // Before a majority of members exists (bootstrap, first joins) every member there is must hold it;
        // a joiner learns the version from the member it joins from.
        const needed = Math.min(majority(cfg.members), known.size);
        if (held < needed) {
          throw new CdbpError('CAS_QUORUM_UNAVAILABLE', `state version ${seq} is in etcd but only ${held} of ${cfg.members} members hold it in memory, ${needed} are needed: not acknowledged`);
        }
      };
      x.app.post<{ Body: { seq: number; mac: string } }>('/v1/replication/head', {
        schema: { body: { type: 'object', additionalProperties: false, required: ['seq', 'mac'], properties: { seq: { type: 'integer', minimum: 1 }, mac: { type: 'string', pattern: '^[0-9a-f]{64}$' } } } },
      }, async (req) => {
        // MAC under a key only members hold (derived from the state key): nobody else can raise it (a replay only repeats an old, lower version).
        if (!constantTimeEqual(headMac(macKey, req.body.seq), req.body.mac)) throw new CdbpError('FORBIDDEN', 'state version notice not from a member');
        s.raiseTo(req.body.seq);
        return { seq: s.headSeq };
      });
      registerJoinRoutes(x.app, { instanceId, known, membership, slot: cfg.slot, gen: () => gen, closeChannels: () => x.app.closeCounterChannels(), members: cfg.members, counters, sync: s, verifiers: x.verifiers, masterKey: Buffer.from(x.masterKey), allowSimulated: x.allowSimulated, measurement: cfg.measurement, audit: x.audit, log: x.log });
      let alarmed: string | undefined;
      let polls = 0;
      const seenBlobs = new Map<string, string>();
      const poll = async (): Promise<void> => {
        try {
          // Nothing changed since the last verified state: skip reading and opening every blob, but
          // still verify everything every FULL_POLL_EVERY polls (etcd edited below its API keeps revisions).
          if (polls++ % FULL_POLL_EVERY !== 0 && alarmed === undefined && await s.unchanged()) {
            timer = setTimeout(() => { void poll(); }, cfg.pollMs ?? 500);
            timer.unref();
            return;
          }
          const st = await s.load();
          alarmed = undefined;
          // A read that started before a newer write of ours (or a notice) holds older records: installing
          // them would put an older policy back over a newer one. The next poll sees the newer state.
          // Installed several at a time: each is a durable file write, and after a bulk apply by another
          // member (thousands of policies) one at a time left this member without them for many seconds.
          const changed = st.seq < s.headSeq ? [] : [...st.services];
          let next = 0;
          const installOne = async (name: string, blob: Buffer): Promise<void> => {
            // Opened (and installed if newer) once per version: not every blob at every poll.
            const blobHash = createHash('sha256').update(blob).digest('hex');
            if (seenBlobs.get(name) === blobHash) return;
            const rec = JSON.parse((await openBlob(x.stateKey, `cas/service/${name}`, blob)).toString('utf8')) as { policyHash: string; generation: number };
            const cur = x.store.get(name);
            if (cur && cur.policyHash === rec.policyHash && cur.keys.length === (rec as unknown as { keys: unknown[] }).keys.length) {
              seenBlobs.set(name, blobHash);
              return;
            }
            installing.add(name);
            let installed: boolean;
            try {
              // Re-checked under the service's lock: a local write that finished meanwhile raised headSeq.
              installed = await x.store.update(name, () => (st.seq < s.headSeq ? { result: false } : { next: rec as never, result: true }));
            } finally {
              installing.delete(name);
            }
            // Not installed (a newer version was announced meanwhile): not seen either, so a later poll
            // installs it. (Marking it seen made a member skip that version for good after a burst of
            // applies moved headSeq during its installs.)
            if (!installed) return;
            seenBlobs.set(name, blobHash);
            x.log.info({ service: name, policyHash: rec.policyHash }, 'installed a state change another member wrote');
          };
          await Promise.all(Array.from({ length: INSTALL_CONCURRENCY }, async () => {
            while (next < changed.length) {
              const [name, blob] = changed[next++]!;
              await installOne(name, blob);
            }
          }));
        } catch (e) {
          const err = asCdbpError(e);
          if (err.code === 'STATE_ROLLED_BACK' && alarmed !== err.message) {
            alarmed = err.message;
            x.log.error({ code: err.code, reason: err.message }, 'ALARM: CAS state in etcd rolled back; state writes refused');
            await x.audit.append({ event: 'ha.state-rollback', outcome: 'refused', code: err.code, details: { instance: instanceId, reason: err.message.slice(0, 400), memorySeq: s.headSeq } }).catch(() => {});
          } else if (err.code !== 'STATE_ROLLED_BACK') x.log.warn({ code: err.code, reason: err.message }, 'etcd poll failed');
        }
        timer = setTimeout(() => { void poll(); }, cfg.pollMs ?? 500);
        timer.unref();
      };
      timer = setTimeout(() => { void poll(); }, cfg.pollMs ?? 500);
      timer.unref();
    },
    async close() {
      if (timer) clearTimeout(timer);
    },
  };
}

/**
 * Owner-signed reopening after a majority loss: every other member must be gone (a running one holds
 * counters this member would start without), the state key comes from this member's own sealing (the
 * hardware, in a real TEE), etcd's state must open with it and be checked whole, and the owner's
 * statement must name this deployment's CA, be signed by one of its owners and not have expired.
 */
async function reopenDeployment(cfg: HaConfig, signed: SignedHaRecovery, etcd: EtcdClient, fileSealing: SealingKeyProvider, log: Logger):
  Promise<{ sync: StateSync; loaded: { seq: number; ca: Buffer; services: Map<string, Buffer> }; details: Record<string, string | number> }> {
  if (!cfg.caPem) throw new CdbpError('CONFIG_INVALID', '--ha-recover needs --ha-ca FILE (the deployment CA, to check that no other member still runs)');
  const alive = await Promise.all(cfg.peers.map((url) => casRequest<{ instance: string }>(url, 'GET', '/v1/replication/status', undefined, { caPem: cfg.caPem!, timeoutMs: 2000 })
    .then((s) => `${url} (instance ${s.instance})`, () => undefined)));
  const running = alive.filter((a): a is string => a !== undefined);
  if (running.length > 0) {
    throw new CdbpError('HA_RECOVERY_REFUSED', `other members still run: ${running.join(', ')}. Recovery is only for a deployment that lost its majority; start this member without --ha-recover to join them`);
  }
  const master = await fileSealing.masterKey();
  const stateKey = deriveKey(master, 'state');
  const sync = new StateSync(etcd, stateKey);
  const loaded = await sync.load().catch((e: unknown) => {
    throw asCdbpError(e).withContext('reopening the deployment (this member\'s sealed state key must open etcd\'s state)');
  });
  let root: { certPem?: string; meta?: { owners?: string[] } };
  try {
    root = JSON.parse((await openBlob(stateKey, 'cas/ca', loaded.ca)).toString('utf8')) as typeof root;
  } catch (e) {
    throw new CdbpError('STATE_ROLLED_BACK', `the deployment's CA in etcd does not open with this member's state key: ${(e as Error).message}`);
  }
  const caFingerprint = sha256Fingerprint(root.certPem ?? '');
  const caPinned = sha256Fingerprint(cfg.caPem);
  if (caFingerprint !== caPinned) throw new CdbpError('HA_RECOVERY_REFUSED', 'etcd holds another deployment than the pinned --ha-ca');
  const statement = await verifySignedHaRecovery(signed, { owners: root.meta?.owners ?? [], caFingerprint });
  if (loaded.seq < statement.minStateSeq) {
    throw new CdbpError('STATE_ROLLED_BACK', `etcd holds state version ${loaded.seq}, below version ${statement.minStateSeq} the owner's recovery statement requires`);
  }
  log.warn({ stateSeq: loaded.seq, services: loaded.services.size, owner: signed.owner.slice(0, 16) }, 'reopening the deployment by owner-signed recovery (counters start empty)');
  return { sync, loaded, details: { owner: signed.owner, notAfter: statement.notAfter, stateSeq: loaded.seq, services: loaded.services.size } };
}

/** Joiner side: attest to every peer, collect what catchUpQuorum(n) of them hand over. */
async function joinMembers(cfg: HaConfig, instanceId: string, log: Logger):
  Promise<{ masterKey: Buffer; counters: CounterSnapshotEntry[]; stateSeq: number; from: string[]; known: string[]; membership: Map<number, number>; gen: number }> {
  const sealing = await generateSealingKeyPair();
  // First every peer's nonce and slot view: the generation this incarnation claims must be above every
  // generation of its slot that its admitters know (they refuse anything else).
  type Offer = { url: string; nonce: string; membership: Map<number, number> } | { url: string; error: string };
  const offers = await Promise.all(cfg.peers.map(async (url): Promise<Offer> => {
    try {
      const o = await casRequest<{ nonce: string; membership?: string }>(url, 'POST', '/v1/replication/nonce', {}, { caPem: cfg.caPem!, timeoutMs: 3000 });
      if (!isHex(o.nonce, 32) || typeof o.membership !== 'string') throw new CdbpError('PROTOCOL_VIOLATION', 'malformed nonce answer');
      return { url, nonce: o.nonce, membership: parseMembership(o.membership) };
    } catch (e) {
      return { url, error: asCdbpError(e).message };
    }
  }));
  const gen = Math.max(Date.now(), ...offers.map((o) => ('nonce' in o ? (o.membership.get(cfg.slot) ?? 0) + 1 : 0)));
  const answers = await Promise.all(offers.map(async (offer) => {
    const url = offer.url;
    try {
      if (!('nonce' in offer)) throw new CdbpError('CAS_UNREACHABLE', offer.error);
      const nonce = offer.nonce;
      const evidence = await cfg.provider!.collect(joinReportData(Buffer.from(nonce, 'hex'), sealing.publicKey, { instance: instanceId, slot: cfg.slot, gen, members: cfg.members }));
      const r = await casRequest<{ sealed: string }>(url, 'POST', '/v1/replication/join',
        { instance: instanceId, slot: cfg.slot, gen, members: cfg.members, nonce, sealingPublicKey: sealing.publicKey.toString('hex'), evidence }, { caPem: cfg.caPem!, timeoutMs: 5000 });
      const s = JSON.parse((await openSealed(sealing, Buffer.from(r.sealed, 'base64'))).toString('utf8')) as JoinSecrets;
      if (s.format !== JOIN_SECRETS_FORMAT || !isHex(s.masterKey, 32) || typeof s.membership !== 'string') throw new CdbpError('PROTOCOL_VIOLATION', 'malformed join answer');
      if (s.members !== cfg.members) throw new CdbpError('STATE_STORE_CONFLICT', `member runs a ${s.members}-member deployment, this instance ${cfg.members}`);
      return { url, s };
    } catch (e) {
      log.warn({ peer: url, err: asCdbpError(e).message }, 'member did not admit us');
      return { url, error: asCdbpError(e).message };
    }
  }));
  const ok = answers.filter((a): a is { url: string; s: JoinSecrets } => 's' in a);
  // Only the newest incarnation of each slot counts, once (as for a proxy): a member that another
  // incarnation replaced in its slot may not know it, but the admitters of that replacement do.
  const current = currentIncarnations(ok.map((a) => ({ ...a, incarnation: { slot: a.s.slot, gen: a.s.gen, members: cfg.members }, membership: parseMembership(a.s.membership) })));
  const distinct = new Map(current.map((a) => [a.s.instance, a]));
  // Once any member knows a majority of incarnations, acknowledged counters may exist that only some
  // of the others hold: hear from enough of them. Before that, one member holds everything there is.
  const formed = [...distinct.values()].some((a) => a.s.known.filter((k) => k !== instanceId).length >= majority(cfg.members));
  const needed = formed || distinct.size === 0 ? catchUpQuorum(cfg.members) : 1;
  if (distinct.size < needed) {
    throw new CdbpError('CAS_QUORUM_UNAVAILABLE', `cannot join: ${distinct.size} of the ${cfg.peers.length} other members admitted this instance, ${needed} are needed to catch up safely `
      + `(${[...answers.filter((a) => 'error' in a).map((a) => `${a.url}: ${(a as { error: string }).error}`),
        ...ok.filter((a) => !current.some((c) => c.url === a.url)).map((a) => `${a.url}: replaced in slot ${a.s.slot} by a newer incarnation`)].join('; ') || 'duplicates'}). `
      + 'If a majority of members lost their memory at once (every member stopped, or two of three killed), the owner reopens the deployment: `cdbp recover deployment` signs a statement one member is started with (--ha-recover FILE), then `cdbp recover --cas URL,URL,URL` re-anchors each service (docs/CAS.md "Losing a majority").');
  }
  const keys = new Set([...distinct.values()].map((a) => a.s.masterKey));
  if (keys.size !== 1) throw new CdbpError('TAMPER_DETECTED', 'members hold different state keys: refusing to join');
  const all = [...distinct.values()];
  return {
    masterKey: Buffer.from(all[0]!.s.masterKey, 'hex'),
    counters: all.flatMap((a) => a.s.counters),
    stateSeq: Math.max(...all.map((a) => a.s.stateSeq)),
    from: all.map((a) => a.s.instance).sort(),
    known: [...new Set(all.flatMap((a) => a.s.known))],
    membership: all.map((a) => parseMembership(a.s.membership)).reduce((acc, m) => {
      for (const [slot, g] of m) if (g > (acc.get(slot) ?? 0)) acc.set(slot, g);
      return acc;
    }, new Map<number, number>()),
    gen,
  };
}

interface JoinRouteDeps {
  instanceId: string;
  known: Set<string>;
  /** This member's slot view (raised when it admits a joiner). */
  membership: Map<number, number>;
  slot: number;
  gen: () => number;
  closeChannels: () => void;
  members: number;
  counters: MemoryCounters;
  sync: StateSync;
  verifiers: Map<TeeMode, EvidenceVerifier>;
  masterKey: Buffer;
  allowSimulated: boolean;
  measurement: string;
  audit: AuditLog;
  log: Logger;
}

/** Member side of a join: attest the joiner like a proxy, then hand over the state key and counters. */
function registerJoinRoutes(app: FastifyInstance, d: JoinRouteDeps): void {
  const nonces = new NonceStore(60_000);
  app.post('/v1/replication/nonce', async () => ({ nonce: nonces.issue('attest').nonce, membership: formatMembership(d.membership) }));
  app.get('/v1/replication/status', async () => ({ instance: d.instanceId, stateSeq: d.sync.headSeq, services: d.counters.counters.size, rollback: d.sync.rollback ?? null }));
  app.post<{ Body: { instance: string; slot: number; gen: number; members: number; nonce: string; sealingPublicKey: string; evidence: Evidence } }>('/v1/replication/join', {
    schema: { body: { type: 'object', additionalProperties: false, required: ['instance', 'slot', 'gen', 'members', 'nonce', 'sealingPublicKey', 'evidence'], properties: {
      instance: { type: 'string', pattern: '^[0-9a-f]{16}$' }, slot: { type: 'integer', minimum: 1, maximum: 15 }, gen: { type: 'integer', minimum: 1 },
      members: { type: 'integer', minimum: 1, maximum: 15 },
      nonce: { type: 'string', pattern: '^[0-9a-f]{64}$' }, sealingPublicKey: { type: 'string', pattern: '^[0-9a-f]{64}$' },
      evidence: { type: 'object' } } } },
  }, async (req) => {
    const b = req.body;
    try {
      nonces.consume(b.nonce, 'attest');
      if (d.sync.rollback) throw new CdbpError('STATE_ROLLED_BACK', `not admitting members while etcd is rolled back: ${d.sync.rollback}`);
      const ev = b.evidence;
      if (ev.mode === 'simulated' && !d.allowSimulated) throw new CdbpError('SIMULATION_NOT_ALLOWED', 'this CAS does not accept simulated attestation');
      const verifier = d.verifiers.get(ev.mode);
      if (!verifier) throw new CdbpError('ATTESTATION_UNAVAILABLE', `no verifier for TEE mode ${String(ev.mode)}`);
      const sealingKey = Buffer.from(b.sealingPublicKey, 'hex');
      const { measurement } = await verifier.verify(ev, joinReportData(Buffer.from(b.nonce, 'hex'), sealingKey, { instance: b.instance, slot: b.slot, gen: b.gen, members: b.members }));
      // A member admits only its own code: the state key goes to nothing else.
      if (measurement !== d.measurement) throw new CdbpError('MEASUREMENT_MISMATCH', `joiner runs measurement ${measurement}, this member runs ${d.measurement}`);
      // Fencing: the joiner takes a slot over from whatever incarnation held it. Never this member's own slot
      // (it is alive and answering), never a slot outside the deployment, never at a generation it already knows.
      // The deployment's size is not the joiner's to choose: a member started with another --ha-members
      // would count majorities (and certify them to proxies) of a deployment that does not exist.
      if (b.members !== d.members) throw new CdbpError('STATE_STORE_CONFLICT', `joiner claims a ${b.members}-member deployment, this one has ${d.members}`);
      if (b.slot > d.members || b.slot === d.slot) throw new CdbpError('STATE_STORE_CONFLICT', `slot ${b.slot} is ${b.slot === d.slot ? 'held by this running member' : `outside this ${d.members}-member deployment`}`);
      const held = d.membership.get(b.slot) ?? 0;
      if (b.gen <= held) throw new CdbpError('STATE_STORE_CONFLICT', `slot ${b.slot} is at generation ${held} already (another incarnation joined for it): retry`);
      // Known before the answer is sealed: from now on this member counts the joiner (stricter joins, never
      // looser) and signs, in every answer, that the slot's earlier incarnations are retired.
      d.known.add(b.instance);
      d.membership.set(b.slot, b.gen);
      // Counter channels carry the view signed at their opening: none may outlive it.
      d.closeChannels();
      const secrets: JoinSecrets = { format: JOIN_SECRETS_FORMAT, instance: d.instanceId, masterKey: d.masterKey.toString('hex'), stateSeq: d.sync.headSeq,
        counters: d.counters.snapshot(), known: [...d.known], membership: formatMembership(d.membership), slot: d.slot, gen: d.gen(), members: d.members };
      const plain = Buffer.from(JSON.stringify(secrets));
      const sealed = await sealToPublicKey(sealingKey, plain);
      plain.fill(0);
      await d.audit.append({ event: 'ha.join', outcome: 'ok', details: { admitted: b.instance, slot: b.slot, gen: b.gen, by: d.instanceId, measurement, remote: req.ip } });
      d.log.info({ joiner: b.instance }, 'admitted a member: handed over the state key and counters');
      return { sealed: sealed.toString('base64') };
    } catch (e) {
      const err = asCdbpError(e);
      await d.audit.append({ event: 'ha.join', outcome: 'refused', code: err.code, details: { joiner: b.instance, by: d.instanceId, remote: req.ip } }).catch(() => {});
      throw err;
    }
  });
}

function headMac(key: Buffer, seq: number): string {
  return createHmac('sha256', key).update(`cdbp-ha-head/1\0${seq}`).digest('hex');
}
