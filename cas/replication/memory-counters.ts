/**
 * A replicated CAS instance's counters: in TEE memory only, never on disk (Nimble's endorser state).
 * Durability comes from the majority holding the same value, not from fsync, so an accepted advance is
 * answered at once. It has the surface of the single-instance CounterLog that CasCore uses (counters,
 * append, idle, stats, close), so the core's compare-and-advance rules apply unchanged.
 *
 * Invariant: a counter never moves backwards here, except by an owner-signed recovery.
 */
import type { CounterValue } from '../counter-log.ts';

export interface CounterSnapshotEntry {
  service: string;
  value: number;
  digest: string;
  record?: string;
}

export class MemoryCounters {
  readonly counters = new Map<string, CounterValue>();
  readonly stats = { batches: 0, entries: 0 };
  /** Same epoch, different digests, met while catching up: reported by the caller as a fork alarm. */
  readonly conflicts: Array<{ service: string; value: number; digests: string[] }> = [];

  append(service: string, op: 'advance' | 'recover', value: number, digest: string, record?: string): Promise<void> {
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

  snapshot(): CounterSnapshotEntry[] {
    return [...this.counters.entries()].map(([service, c]) => ({ service, value: c.value, digest: c.digest, ...(c.record ? { record: c.record } : {}) }))
      .sort((a, b) => (a.service < b.service ? -1 : 1));
  }

  /**
   * Catch-up: takes, per service, the highest epoch any member reported. Never lowers a counter. Two
   * members with different digests for that highest epoch are kept out (the lower-sorting digest is not
   * picked silently) and listed in `conflicts`; a disagreement below it is a race the winner has moved
   * past (the loser's digest stays on the member that took it until the next advance).
   */
  merge(entries: CounterSnapshotEntry[]): void {
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
      if (!cur || e.value > cur.value) {
        this.counters.set(e.service, { value: e.value, digest: e.digest, ...(e.record ? { record: e.record } : {}), updatedAt: new Date().toISOString() });
      }
    }
  }
}
