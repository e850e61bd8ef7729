/**
 * The proxy's side of the replicated CAS (docs/CAS.md "Replicated CAS"): one CounterClient over N CAS
 * instances, following Nimble (Angel et al., OSDI 2023): an advance counts once a majority of distinct
 * instances signed a receipt for it, a read takes a majority's receipts and the highest epoch, and two
 * digests for one epoch are a fork, never resolved by picking one.
 *
 * Authentication: every receipt is the existing signed counter answer (src/provisioning/answers.ts) over
 * a fresh nonce per request and per instance, signed by THAT instance's own answer key, whose
 * certificate chains to the pinned CA and names the instance (urn:cdbp:cas-instance:<id>). Signed
 * receipts rather than MACs: a proxy then needs no secret shared with the instances, only the pinned
 * CA; and one instance answering in the name of two (traffic redirected to it) is counted once.
 *
 * Failover is transparent: a dead or frozen instance only costs its timeout in the background; when no
 * majority answers, the caller gets CAS_QUORUM_UNAVAILABLE, which the freshness guard treats like an
 * unreachable CAS (held writes time out with their usual error: fail closed).
 */
import { randomBytes, createHash, type KeyObject } from 'node:crypto';
import type https from 'node:https';
import { CdbpError, asCdbpError, isCdbpError } from '../kernel/errors.ts';
import type { Logger } from '../kernel/log.ts';
import type { CasMemberStatus, CounterClient, CounterState, FreshnessAlarm, Provision } from '../provisioning/types.ts';
import { counterAnswerMessage, verifyAnswer, type CounterAnswer } from '../provisioning/answers.ts';
import { sha512 } from '../crypto/hash.ts';
import { casAgent, casRequest } from './http.ts';
import { fetchMemberKey, type MemberKey } from './member-key.ts';
import { ChannelCounterClient, type RequestBody } from './counter-channel.ts';
import { Kind, type Answer } from './counter-channel-wire.ts';
import { attestAndProvision, type AttestOptions } from './index.ts';
import { combineReads, currentIncarnations, decideAdvance, majority, parseMembership,
  type AdvanceAnswer, type Incarnation, type InstanceView } from './quorum.ts';

export { CAS_INSTANCE_URN } from './quorum.ts';

/** What a joining member claims: its incarnation, the slot and generation it takes, the deployment's size. */
export interface JoinClaim { instance: string; slot: number; gen: number; members: number }

/**
 * Report data of a member joining: SHA-512(nonce ‖ "cdbp-cas-join/2" ‖ X25519 key the state key is sealed
 * to ‖ its claim), so the slot, generation and size an admitter fences by are the TEE's own words, not
 * fields beside the evidence.
 */
export function joinReportData(nonce: Buffer, sealingPublicKey: Buffer, claim: JoinClaim): Buffer {
  const c = `${claim.instance}\0${claim.slot}\0${claim.gen}\0${claim.members}`;
  return sha512(nonce, Buffer.from('cdbp-cas-join/2'), sealingPublicKey, Buffer.from(c));
}

/** A CAS URL list: "https://a,https://b,https://c" (one URL = the single-instance CAS). */
export function parseCasUrls(value: string): string[] {
  return value.split(',').map((s) => s.trim()).filter(Boolean);
}

interface Member {
  url: string;
  agent: https.Agent;
  key?: MemberKey;
  /** Requests sent and not answered yet: a frozen member must not collect an unbounded queue. */
  inFlight: number;
  /** Requests waiting for one of those slots, each bounded by the request time-out. */
  slotWaiters: Array<() => void>;
  /** The member's counter channel, opened with its current answer key (undefined: not yet, or HTTPS only). */
  channel?: { client: ChannelCounterClient; key: KeyObject };
  /** The member answered the channel upgrade with 404: HTTPS from now on. */
  httpsOnly?: boolean;
  /** For the ops status (memberStatus()): when it last answered, and its last failure. */
  lastAnswerAt?: number;
  lastError?: { message: string; at: number };
}

/**
 * Requests one member may have outstanding. Past it a request waits for a slot at most its time-out and
 * then counts as not answered: requests waiting for one of the agent's sockets have no time-out yet, so
 * they would pile up behind a frozen member. (Failing at once instead made a read after a burst of
 * advances miss a merely slow member and find no majority.)
 */
const MAX_IN_FLIGHT = 4;

/** A verified answer: the signer's incarnation (from its certificate) and its signed membership view. */
type Receipt = InstanceView & { incarnation: Incarnation; membership: Map<number, number> };

/** Only the newest incarnation of each slot counts, once: `instance` becomes the slot for counting. */
function countable<T extends Receipt>(receipts: T[]): T[] {
  return currentIncarnations(receipts).map((r) => ({ ...r, instance: `slot ${r.incarnation.slot}` }));
}

export interface QuorumCounterOptions {
  urls: string[];
  service: string;
  caPem: string;
  /** The proxy's CAS-issued TLS identity (mutual TLS on counter routes, as with one CAS). */
  keyPem: string;
  certPem: string;
  /** Per-instance request timeout: a frozen instance costs at most this, and only in the background. */
  timeoutMs?: number;
  log?: Logger;
}

export class QuorumCounterClient implements CounterClient {
  private readonly members: Member[];
  private readonly path: string;
  private deploymentSize: number | undefined;

  constructor(private readonly o: QuorumCounterOptions) {
    this.members = o.urls.map((url) => ({ url, agent: casAgent({ caPem: o.caPem, keyPem: o.keyPem, certPem: o.certPem }), inFlight: 0, slotWaiters: [] }));
    this.path = `/v1/services/${encodeURIComponent(o.service)}/counter`;
  }

  /** The member's answer key, instance id and slot, from its signing certificate (refetched after a restart). */
  private async keyOf(m: Member, refresh = false): Promise<MemberKey> {
    if (m.key && !refresh) return m.key;
    const k = await fetchMemberKey(m.url, { caPem: this.o.caPem, agent: m.agent, timeoutMs: this.o.timeoutMs ?? 2000 });
    // The deployment's size comes from its members' certificates, not from the (host-controlled) URL list.
    this.deploymentSize ??= k.incarnation.members;
    if (k.incarnation.members !== this.deploymentSize) {
      throw new CdbpError('CAS_IDENTITY_INVALID', `${m.url} is a member of a ${k.incarnation.members}-member deployment, the others of a ${this.deploymentSize}-member one`);
    }
    m.key = k;
    return m.key;
  }

  /** Majorities are of the deployment's slots (named in the members' certificates), never of the URLs given. */
  private get n(): number {
    return this.deploymentSize ?? this.members.length;
  }

  /** Checks a signed answer against the member's key; a changed key (restarted member) is refetched once. */
  private async verified(m: Member, op: CounterAnswer['op'], nonce: string, answer: unknown): Promise<Receipt> {
    const a = answer as { value?: unknown; digest?: unknown; signature?: unknown; record?: unknown; membership?: unknown } | undefined;
    if (!a || !Number.isSafeInteger(a.value) || typeof a.digest !== 'string' || typeof a.membership !== 'string' || a.membership.length > 1024) {
      throw new CdbpError('PROTOCOL_VIOLATION', `${m.url}: malformed counter answer (a member's answer carries its membership view)`);
    }
    const msg = counterAnswerMessage({ service: this.o.service, op, nonce, value: a.value as number, digest: a.digest, membership: a.membership });
    let k = await this.keyOf(m);
    if (!verifyAnswer(k.key, msg, a.signature)) {
      k = await this.keyOf(m, true);
      if (!verifyAnswer(k.key, msg, a.signature)) throw new CdbpError('CAS_IDENTITY_INVALID', `counter ${op} answer from ${m.url} is not signed by that instance for this request`);
    }
    const record = typeof a.record === 'string' ? Buffer.from(a.record, 'base64') : undefined;
    if (record && createHash(a.digest.length === 128 ? 'sha512' : 'sha256').update(record).digest('hex') !== a.digest) {
      throw new CdbpError('CAS_IDENTITY_INVALID', `counter ${op} answer from ${m.url} carries a record its signed digest does not name`);
    }
    let membership: Map<number, number>;
    try {
      membership = parseMembership(a.membership);
    } catch (e) {
      throw new CdbpError('PROTOCOL_VIOLATION', `${m.url}: ${(e as Error).message}`);
    }
    return { instance: k.instance, incarnation: k.incarnation, membership, value: a.value as number, digest: a.digest, ...(record ? { record } : {}) };
  }

  /**
   * One request to one member over its counter channel (binary frames, one MAC each, the membership view
   * signed at the opening: docs/FRESHNESS.md "Counter channel"), or over HTTPS (a signed answer each)
   * when it has none. A changed answer key (the member restarted) is refetched once.
   */
  private async viaChannel(m: Member, body: RequestBody): Promise<{ key: MemberKey; answer: Answer; membership: string } | undefined> {
    if (m.httpsOnly) return undefined;
    for (let attempt = 0; ; attempt++) {
      const k = await this.keyOf(m, attempt > 0);
      if (m.channel?.key !== k.key) {
        m.channel?.client.close();
        m.channel = { key: k.key, client: new ChannelCounterClient({ casUrl: m.url, service: this.o.service, caPem: this.o.caPem, keyPem: this.o.keyPem, certPem: this.o.certPem,
          signingKey: k.key, member: true, timeoutMs: this.o.timeoutMs ?? 2000 }) };
      }
      try {
        const r = await m.channel.client.sendViewed(body);
        return { key: k, ...r };
      } catch (e) {
        if (isCdbpError(e, 'NOT_FOUND')) {
          m.httpsOnly = true;
          return undefined;
        }
        if (attempt === 0 && isCdbpError(e, 'CAS_IDENTITY_INVALID')) continue;
        throw e;
      }
    }
  }

  /** A channel answer as a receipt (an Error answer other than a conflict is thrown as what it stands for). */
  private channelReceipt(m: Member, r: { key: MemberKey; answer: Answer; membership: string }): Receipt & { conflict: boolean } {
    const a = r.answer;
    if (a.kind === Kind.Error && a.code !== 'COUNTER_CONFLICT') throw new CdbpError(a.code as never, `${m.url}: ${a.message}`);
    if (a.kind === Kind.State && a.record && createHash(a.digest.length === 128 ? 'sha512' : 'sha256').update(a.record).digest('hex') !== a.digest) {
      throw new CdbpError('CAS_IDENTITY_INVALID', `counter answer from ${m.url} carries a record its digest does not name`);
    }
    let membership: Map<number, number>;
    try {
      membership = parseMembership(r.membership);
    } catch (e) {
      throw new CdbpError('PROTOCOL_VIOLATION', `${m.url}: ${(e as Error).message}`);
    }
    return { instance: r.key.instance, incarnation: r.key.incarnation, membership, value: a.value, digest: a.digest,
      ...(a.kind === Kind.State && a.record ? { record: a.record } : {}), conflict: a.kind === Kind.Error };
  }

  private async readOne(m: Member): Promise<Receipt> {
    const viaChannel = await this.bounded(m, () => this.viaChannel(m, { kind: Kind.Read }));
    if (viaChannel) return this.channelReceipt(m, viaChannel);
    const nonce = randomBytes(32).toString('hex');
    return this.verified(m, 'read', nonce, await this.request<unknown>(m, 'GET', `${this.path}?nonce=${nonce}`, undefined));
  }

  /** The member's receipt for an advance: its answer ('ok': it holds next/digest now), or a signed conflict. */
  private async advanceOne(m: Member, expected: number, next: number, digest: string, record?: Buffer): Promise<Receipt & { conflict: boolean }> {
    const viaChannel = await this.bounded(m, () => this.viaChannel(m, { kind: Kind.Advance, expected, next, digest, ...(record ? { record } : {}) }));
    if (viaChannel) return this.channelReceipt(m, viaChannel);
    const nonce = randomBytes(32).toString('hex');
    try {
      const answer = await this.request<unknown>(m, 'POST', this.path, { expected, next, digest, nonce, ...(record ? { record: record.toString('base64') } : {}) });
      return { ...await this.verified(m, 'advance', nonce, answer), conflict: false };
    } catch (e) {
      if (isCdbpError(e, 'COUNTER_CONFLICT') && e.details) return { ...await this.verified(m, 'conflict', nonce, e.details), conflict: true };
      throw e;
    }
  }

  /** Notes for memberStatus() whether `m` answered (a signed conflict is an answer). */
  private async tracked<T>(m: Member, op: () => Promise<T>): Promise<T> {
    try {
      const r = await op();
      m.lastAnswerAt = Date.now();
      return r;
    } catch (e) {
      m.lastError = { message: asCdbpError(e).message, at: Date.now() };
      throw e;
    }
  }

  /** Runs `op` holding one of the member's request slots (a frozen member must not collect an unbounded queue). */
  private async bounded<T>(m: Member, op: () => Promise<T>): Promise<T> {
    const timeoutMs = this.opts(m).timeoutMs;
    if (m.inFlight >= MAX_IN_FLIGHT) await waitForSlot(m, timeoutMs);
    else m.inFlight++;
    try {
      return await op();
    } finally {
      const next = m.slotWaiters.shift();
      if (next) next();
      else m.inFlight--;
    }
  }

  private opts(m: Member): { agent: https.Agent; timeoutMs: number } {
    return { agent: m.agent, timeoutMs: this.o.timeoutMs ?? 2000 };
  }

  /** One HTTPS request to one member, bounded in number and in time. */
  private request<T>(m: Member, method: 'GET' | 'POST', path: string, body: unknown): Promise<T> {
    return this.bounded(m, () => casRequest<T>(m.url, method, path, body, this.opts(m)));
  }

  /**
   * Resolves as soon as a majority of distinct members answered (any majority meets the last
   * acknowledged advance), or when every member answered or failed.
   */
  read(): Promise<CounterState> {
    return new Promise<CounterState>((resolve, reject) => {
      const receipts: Receipt[] = [];
      const reasons: string[] = [];
      let unanchored = '';
      let outstanding = this.members.length;
      let done = false;
      const decide = (): void => {
        if (done) return;
        const current = countable(receipts);
        if (current.length < majority(this.n) && outstanding > 0) return;
        const out = combineReads(current, this.n, outstanding === 0);
        if (out.kind === 'undecided') return;
        done = true;
        switch (out.kind) {
          case 'ok':
            resolve({ value: out.value, digest: out.digest, ...(out.record ? { record: out.record } : {}) });
            return;
          case 'fork':
            reject(new CdbpError('TAMPER_DETECTED', `CAS instances hold different digests for epoch ${out.value}: a fork`, { details: { value: out.value } }));
            return;
          case 'no-quorum':
            // Members that refuse because a reopen lost this counter: fail closed with what the owner must do.
            if (unanchored) {
              reject(new CdbpError('COUNTER_UNANCHORED', `counter read: ${out.answered} of ${this.n} CAS instances answered, a majority (${out.needed}) is needed; ${unanchored}`));
              return;
            }
            reject(new CdbpError('CAS_QUORUM_UNAVAILABLE', `counter read: ${out.answered} of ${this.n} CAS instances answered, a majority (${out.needed}) is needed (${reasons.join('; ')})`,
              { details: { answered: out.answered, needed: out.needed } }));
            return;
          default: {
            const never: never = out;
            reject(new CdbpError('INTERNAL', `unexpected read outcome ${String(never)}`));
          }
        }
      };
      for (const m of this.members) {
        void (async () => {
          try {
            receipts.push(await this.tracked(m, () => this.readOne(m)));
          } catch (e) {
            const err = asCdbpError(e);
            if (err.code === 'COUNTER_UNANCHORED') unanchored ||= err.message;
            reasons.push(`${m.url}: ${err.message}`);
          } finally {
            outstanding--;
            decide();
          }
        })();
      }
    });
  }

  advance(expected: number, next: number, digest: string, record?: Buffer): Promise<CounterState> {
    return new Promise<CounterState>((resolve, reject) => {
      const receipts: Array<Receipt & { kind: 'ok' | 'conflict' }> = [];
      const failed: AdvanceAnswer[] = [];
      let outstanding = this.members.length;
      let done = false;
      const decide = (): void => {
        if (done) return;
        // One receipt per slot, of its newest incarnation; the others count as failed answers.
        const kept = new Set(currentIncarnations(receipts));
        const answers: AdvanceAnswer[] = [...failed, ...receipts.map((r): AdvanceAnswer => {
          const slot = `slot ${r.incarnation.slot}`;
          if (!kept.has(r)) return { kind: 'failed', reason: `instance ${r.instance} (${slot}) was replaced by a newer incarnation, or answered twice` };
          return r.kind === 'ok' ? { instance: slot, kind: 'ok' } : { instance: slot, kind: 'conflict', value: r.value, digest: r.digest };
        })];
        const out = decideAdvance(answers, outstanding, this.n);
        if (out.kind === 'pending') return;
        done = true;
        if (out.kind === 'ok') resolve({ value: next, digest });
        // A majority can no longer accept: someone holds a newer counter. Same shape as one CAS's conflict.
        else if (out.kind === 'conflict') reject(new CdbpError('COUNTER_CONFLICT', `counter is at ${out.value}, not ${expected}`, { details: { value: out.value, digest: out.digest } }));
        else {
          reject(new CdbpError('CAS_QUORUM_UNAVAILABLE', `counter advance ${expected}→${next}: ${out.accepted} of ${this.n} CAS instances accepted, a majority (${out.needed}) is needed (${out.reasons.join('; ')})`,
            { details: { accepted: out.accepted, needed: out.needed } }));
        }
      };
      for (const m of this.members) {
        void (async () => {
          try {
            const r = await this.tracked(m, () => this.advanceOne(m, expected, next, digest, record));
            // A conflict that names our own advance (an earlier answer was lost) counts as accepted by that instance.
            if (r.value === next && r.digest === digest) receipts.push({ ...r, kind: 'ok' });
            else if (r.conflict) receipts.push({ ...r, kind: 'conflict' });
            else failed.push({ kind: 'failed', reason: `${m.url}: answered another value` });
          } catch (e) {
            failed.push({ kind: 'failed', reason: `${m.url}: ${asCdbpError(e).message}` });
          } finally {
            outstanding--;
            decide();
          }
        })();
      }
    });
  }

  async reportAlarm(alarm: FreshnessAlarm): Promise<void> {
    const r = await Promise.allSettled(this.members.map((m) => this.request<void>(m, 'POST', this.path.replace(/\/counter$/, '/alarm'), alarm)));
    if (r.every((x) => x.status === 'rejected')) throw asCdbpError((r[0] as PromiseRejectedResult).reason);
  }

  /** Per member URL: 'channel' once its counter channel was used, 'https' for a member without one. */
  transports(): Record<string, CasMemberStatus['transport']> {
    return Object.fromEntries(this.memberStatus().map((s) => [s.url, s.transport]));
  }

  /** The proxy's /v1/status `casMembers`: how each member is reached and whether it answers. */
  memberStatus(): CasMemberStatus[] {
    const iso = (t: number | undefined) => (t === undefined ? null : new Date(t).toISOString());
    return this.members.map((m) => {
      const failing = m.lastError && (m.lastAnswerAt === undefined || m.lastError.at > m.lastAnswerAt) ? m.lastError : undefined;
      return {
        url: m.url,
        transport: m.httpsOnly ? 'https' : m.channel ? 'channel' : 'none yet',
        slot: m.key?.incarnation.slot ?? null,
        instance: m.key?.instance ?? null,
        lastAnswerAt: iso(m.lastAnswerAt),
        lastError: failing?.message ?? null,
        lastErrorAt: iso(failing?.at),
      };
    });
  }

  close(): void {
    for (const m of this.members) {
      m.channel?.client.close();
      m.agent.destroy();
    }
  }
}

/**
 * Attests to the first instance that answers (they share the deployment CA and the policies) and
 * returns a provision whose counter is a QuorumCounterClient over all of them.
 */
export async function attestAndProvisionAny(o: Omit<AttestOptions, 'casUrl'> & { casUrls: string[]; timeoutMs?: number }): Promise<Provision & { counter: CounterClient }> {
  const errors: string[] = [];
  for (const casUrl of o.casUrls) {
    let p: Provision & { counter: CounterClient };
    try {
      p = await attestAndProvision({ ...o, casUrl, replicated: true });
    } catch (e) {
      const err = asCdbpError(e);
      // Only an unreachable instance is skipped; a refusal (policy, evidence, identity) is the answer.
      if (err.code !== 'CAS_UNREACHABLE') throw err;
      errors.push(`${casUrl}: ${err.message}`);
      continue;
    }
    (p.counter as { close?: () => void }).close?.();
    return { ...p, counter: new QuorumCounterClient({ urls: o.casUrls, service: o.service, caPem: o.caPem, keyPem: p.identity.keyPem, certPem: p.identity.certPem, timeoutMs: o.timeoutMs, log: o.log }) };
  }
  throw new CdbpError('CAS_QUORUM_UNAVAILABLE', `no CAS instance answered attestation (${errors.join('; ')})`);
}

/** Resolves once a finishing request hands `m` a slot; refuses after `timeoutMs` (the member counts as not answering). */
function waitForSlot(m: Member, timeoutMs: number): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const take = (): void => {
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(() => {
      const i = m.slotWaiters.indexOf(take);
      if (i >= 0) m.slotWaiters.splice(i, 1);
      reject(new CdbpError('CAS_UNREACHABLE', `${m.url} has ${m.inFlight} requests unanswered after ${timeoutMs} ms`));
    }, timeoutMs);
    timer.unref?.();
    m.slotWaiters.push(take);
  });
}
