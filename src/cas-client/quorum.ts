/**
 * The quorum rules of the replicated counter, as pure functions (no I/O): how many instances make a
 * majority, how a reader combines the answers of several instances, how a writer decides an advance.
 * Shared by the proxy side (quorum-counter.ts) and the CAS members (cas/replication/).
 *
 * This follows Nimble (Angel et al., "Nimble: Rollback Protection for Confidential Cloud Services",
 * OSDI 2023, https://www.usenix.org/conference/osdi23/presentation/angel): every instance ("endorser")
 * holds the counter tail in TEE memory only; a change is acknowledged once a majority of endorsers
 * signed a receipt for it; a read collects receipts from a majority and takes the highest one. Any two
 * majorities intersect, so a read always meets at least one endorser that holds the last acknowledged
 * write, and an endorser accepts at most one digest for a given epoch, so two different digests can
 * never both gather a majority for one epoch (that is how a fork is caught).
 */

/** URI SAN naming one member incarnation of a replicated CAS in its answer-signing certificate. */
export const CAS_INSTANCE_URN = 'urn:cdbp:cas-instance:';
/** URI SAN naming the incarnation's place: `urn:cdbp:cas-slot:<slot>.<generation>/<members>`. */
export const CAS_SLOT_URN = 'urn:cdbp:cas-slot:';

/** Which of the deployment's `members` places an incarnation fills, and its generation there. */
export interface Incarnation {
  slot: number;
  gen: number;
  members: number;
}

export function slotUrn(i: Incarnation): string {
  return `${CAS_SLOT_URN}${i.slot}.${i.gen}/${i.members}`;
}

export function parseSlotUrn(uri: string): Incarnation | undefined {
  const m = /^urn:cdbp:cas-slot:(\d{1,2})\.(\d{1,16})\/(\d{1,2})$/.exec(uri);
  if (!m) return undefined;
  const i = { slot: Number(m[1]), gen: Number(m[2]), members: Number(m[3]) };
  return i.slot >= 1 && i.slot <= i.members && Number.isSafeInteger(i.gen) && i.gen >= 1 ? i : undefined;
}

/** A member's view of which generation holds each slot, as it signs it into its answers: "1.5,2.3,3.9". */
export function formatMembership(m: ReadonlyMap<number, number>): string {
  return [...m.entries()].sort((a, b) => a[0] - b[0]).map(([slot, gen]) => `${slot}.${gen}`).join(',');
}

export function parseMembership(text: string): Map<number, number> {
  const out = new Map<number, number>();
  if (text === '') return out;
  for (const part of text.split(',')) {
    const m = /^(\d{1,2})\.(\d{1,16})$/.exec(part);
    if (!m) throw new Error(`malformed membership entry '${part.slice(0, 40)}'`);
    out.set(Number(m[1]), Math.max(out.get(Number(m[1])) ?? 0, Number(m[2])));
  }
  return out;
}

/**
 * Fencing (Nimble's reconfiguration finalizes the endorsers it replaces): a restarted member is a new
 * incarnation in the same slot with a higher generation, admitted by catchUpQuorum(n) members of the
 * other slots, who record that generation and sign it into every answer. Of the answers to one request,
 * only those of the newest generation any of them names for their slot count, one per slot. An old
 * incarnation that still runs (or extra genuine members started to take slots over) therefore cannot be
 * counted next to the one that replaced it: any majority of slots meets a member that admitted the
 * replacement (catchUpQuorum(n) + majority(n) - 1 > n - 1), and that member's answer retires it.
 */
export function currentIncarnations<T extends { incarnation: Incarnation; membership: ReadonlyMap<number, number> }>(answers: T[]): T[] {
  const newest = new Map<number, number>();
  const raise = (slot: number, gen: number) => { if (gen > (newest.get(slot) ?? 0)) newest.set(slot, gen); };
  for (const a of answers) {
    raise(a.incarnation.slot, a.incarnation.gen);
    for (const [slot, gen] of a.membership) raise(slot, gen);
  }
  const bySlot = new Map<number, T>();
  for (const a of answers) {
    if (a.incarnation.gen === newest.get(a.incarnation.slot) && !bySlot.has(a.incarnation.slot)) bySlot.set(a.incarnation.slot, a);
  }
  return [...bySlot.values()];
}

/** Smallest number of instances out of `n` that any two such sets share at least one of. */
export function majority(n: number): number {
  return Math.floor(n / 2) + 1;
}

/**
 * How many OTHER live members a (re)starting instance must catch up from before it counts. Its own old
 * memory is gone, so an acknowledged write may live on only `majority - 1` of the others: the joiner
 * has to meet every such set, i.e. hear from `n - majority + 1` of the other `n - 1` members
 * (2 of 2 others with n = 3; 3 of 4 others with n = 5).
 */
export function catchUpQuorum(n: number): number {
  return n - majority(n) + 1;
}

/** One instance's signed counter state, as a reader saw it. */
export interface InstanceView {
  /** The instance id its answer key certifies (urn:cdbp:cas-instance:<id>). */
  instance: string;
  value: number;
  digest: string;
  record?: Buffer;
}

export type ReadOutcome =
  | { kind: 'ok'; value: number; digest: string; record?: Buffer; instances: string[] }
  | { kind: 'no-quorum'; answered: number; needed: number }
  /** Instances disagree on the top epoch's digest and the members not heard from yet could settle it. */
  | { kind: 'undecided'; value: number }
  | { kind: 'fork'; value: number; digests: string[] };

/**
 * Combines read answers (at most one per instance is counted; `complete`: every instance answered or
 * failed). The highest epoch wins. Two digests for the highest epoch happen when two writers raced for it
 * (two proxies on a forked volume): an instance accepts only the first it receives, so the loser may sit
 * on a minority. Since an instance holds one digest per epoch, at most one digest can have a majority of
 * all `n` instances, and only it can have been acknowledged (the loser's writer was answered with a
 * conflict and raised the fork itself): that one is the answer. Without such a majority the read waits
 * for more answers (`undecided`) and, once every instance answered, is a `fork` — never resolved by
 * picking one. Disagreement below the top epoch is a race the winner has already moved past.
 */
export function combineReads(views: InstanceView[], n: number, complete = true): ReadOutcome {
  const byInstance = new Map<string, InstanceView>();
  for (const v of views) if (!byInstance.has(v.instance)) byInstance.set(v.instance, v);
  const distinct = [...byInstance.values()];
  const needed = majority(n);
  if (distinct.length < needed) return { kind: 'no-quorum', answered: distinct.length, needed };
  const topValue = Math.max(...distinct.map((v) => v.value));
  const atTop = distinct.filter((v) => v.value === topValue);
  const support = new Map<string, InstanceView[]>();
  for (const v of atTop) support.set(v.digest, [...(support.get(v.digest) ?? []), v]);
  let chosen = atTop;
  if (support.size > 1) {
    const winner = [...support.values()].find((vs) => vs.length >= needed);
    if (!winner) return complete ? { kind: 'fork', value: topValue, digests: [...support.keys()].sort() } : { kind: 'undecided', value: topValue };
    chosen = winner;
  }
  const top = chosen.find((v) => v.record) ?? chosen[0]!;
  return {
    kind: 'ok', value: top.value, digest: top.digest, ...(top.record ? { record: top.record } : {}),
    instances: chosen.map((v) => v.instance).sort(),
  };
}

/** What one instance answered to an advance. */
export type AdvanceAnswer =
  | { instance: string; kind: 'ok' }
  | { instance: string; kind: 'conflict'; value: number; digest: string }
  | { kind: 'failed'; reason: string };

export type AdvanceOutcome =
  | { kind: 'ok'; instances: string[] }
  /** A majority can no longer accept: some instance holds a newer counter (value, digest: the highest seen). */
  | { kind: 'conflict'; value: number; digest: string }
  | { kind: 'pending' }
  | { kind: 'no-quorum'; accepted: number; needed: number; reasons: string[] };

/**
 * Decides an advance from the answers so far (`outstanding` = instances not answered yet). Ok once a
 * majority of distinct instances accepted; conflict once a majority is out of reach and some instance
 * reported a newer counter; otherwise pending, or no-quorum when everyone answered.
 */
export function decideAdvance(answers: AdvanceAnswer[], outstanding: number, n: number): AdvanceOutcome {
  const needed = majority(n);
  const ok = new Set<string>();
  const seen = new Set<string>();
  let best: { value: number; digest: string } | undefined;
  const reasons: string[] = [];
  for (const a of answers) {
    if (a.kind === 'failed') { reasons.push(a.reason); continue; }
    if (seen.has(a.instance)) continue;
    seen.add(a.instance);
    if (a.kind === 'ok') ok.add(a.instance);
    else if (!best || a.value > best.value) best = { value: a.value, digest: a.digest };
  }
  if (ok.size >= needed) return { kind: 'ok', instances: [...ok].sort() };
  if (ok.size + outstanding >= needed) return { kind: 'pending' };
  if (best) return { kind: 'conflict', ...best };
  return { kind: 'no-quorum', accepted: ok.size, needed, reasons };
}
