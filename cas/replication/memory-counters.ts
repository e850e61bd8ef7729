/**
 * A replicated CAS instance's counters: in TEE memory only, never on disk (Nimble's endorser state).
 * Durability comes from the majority holding the same value, not from fsync, so an accepted advance is
 * answered at once. It has the surface of the single-instance CounterLog that CasCore uses (counters,
 * append, idle, stats, close), so the core's compare-and-advance rules apply unchanged.
 *
 * Invariant: a counter never moves backwards here, except by an owner-signed recovery.
 *
 * Unanchored: after the owner reopens a deployment that lost its majority (docs/CAS.md "Losing a
 * majority"), the counters of every service that existed are gone, and "no counter" would read as "never
 * advanced" — a first start, which accepts any data directory. So those services are unanchored: reads and
 * advances are refused (COUNTER_UNANCHORED) until the owner re-anchors each (an owner-signed recovery, over
 * a nonce of each member). A joiner's catch-up carries the mark; any anchored value beats it.
 */
import type { CounterValue } from '../counter-log.ts';

export interface CounterSnapshotEntry {
  service: string;
  value: number;
  digest: string;
  record?: string;
  /** Reopened and not re-anchored yet (value 0, digest ''): never "never advanced". */
  unanchored?: true;
}

export class MemoryCounters {
  readonly counters = new Map<string, CounterValue>();
  /** Services whose counter a reopen lost and the owner has not re-anchored (see above). */
  readonly unanchored = new Set<string>();
  readonly stats = { batches: 0, entries: 0 };
  /** Same epoch, different digests, met while catching up: reported by the caller as a fork alarm. */
  readonly conflicts: Array<{ service: string; value: number; digests: string[] }> = [];

  append(service: string, op: 'advance' | 'recover', value: number, digest: string, record?: string): Promise<void> {
    if (op === 'advance' && this.unanchored.has(service)) return Promise.reject(new Error(`counter ${service} is unanchored`));
    if (op === 'recover') this.unanchored.delete(service);
    const cur = this.counters.get(service);
    // CasCore compares before it appends; this is the last line: memory never goes back on an advance.
    if (op === 'advance' && cur && value <= cur.value) return Promise.reject(new Error(`counter ${service} would move back from ${cur.value} to ${value}`));
    this.counters.set(service, { value, digest, ...(record ? { record } : {}), updatedAt: new Date().toISOString() });
    this.stats.batches++;
    this.stats.entries++;
    return Promise.resolve();
  }

  idle(): Promise<void> {
    return Promise.resolve();
  }

  async close(): Promise<void> {}

  /** A reopen: every service that existed loses its counter until re-anchored. */
  unanchor(services: Iterable<string>): void {
    for (const s of services) {
      this.counters.delete(s);
      this.unanchored.add(s);
    }
  }

  isUnanchored(service: string): boolean {
    return this.unanchored.has(service);
  }

  snapshot(): CounterSnapshotEntry[] {
    return [
      ...[...this.counters.entries()].map(([service, c]): CounterSnapshotEntry => ({ service, value: c.value, digest: c.digest, ...(c.record ? { record: c.record } : {}) })),
      ...[...this.unanchored].map((service): CounterSnapshotEntry => ({ service, value: 0, digest: '', unanchored: true })),
    ].sort((a, b) => (a.service < b.service ? -1 : 1));
  }

  /**
   * Catch-up: takes, per service, the highest epoch any member reported. Never lowers a counter. Two
   * members with different digests for that highest epoch are kept out (the lower-sorting digest is not
   * picked silently) and listed in `conflicts`; a disagreement below it is a race the winner has moved
   * past (the loser's digest stays on the member that took it until the next advance).
   */
  merge(all: CounterSnapshotEntry[]): void {
    // Unanchored only where no member reported an anchored value (a re-anchoring took a majority, so any
    // majority a joiner catches up from has it) and this member holds none.
    const entries = all.filter((e) => !e.unanchored);
    const anchored = new Set(entries.map((e) => e.service));
    for (const e of all) {
      if (e.unanchored && !this.counters.has(e.service) && !anchored.has(e.service)) this.unanchored.add(e.service);
    }
    const top = new Map<string, number>();
    for (const e of entries) top.set(e.service, Math.max(top.get(e.service) ?? -Infinity, e.value));
    const digestsAtTop = new Map<string, Set<string>>();
    for (const e of entries) {
      if (e.value !== top.get(e.service)) continue;
      digestsAtTop.set(e.service, (digestsAtTop.get(e.service) ?? new Set<string>()).add(e.digest));
    }
    for (const e of entries) {
      if (e.value !== top.get(e.service)) continue;
      const digests = digestsAtTop.get(e.service)!;
      if (digests.size > 1) {
        if (!this.conflicts.some((c) => c.service === e.service && c.value === e.value)) this.conflicts.push({ service: e.service, value: e.value, digests: [...digests].sort() });
        continue;
      }
      const cur = this.counters.get(e.service);
      this.unanchored.delete(e.service);
      if (!cur || e.value > cur.value) {
        this.counters.set(e.service, { value: e.value, digest: e.digest, ...(e.record ? { record: e.record } : {}), updatedAt: new Date().toISOString() });
      }
    }
  }
}
