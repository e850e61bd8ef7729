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
   * members with different digests for one epoch are kept out (the lower-sorting digest is not picked
   * silently) and listed in `conflicts`.
   */
  merge(entries: CounterSnapshotEntry[]): void {
    const seen = new Map<string, Map<number, Set<string>>>();
    for (const e of entries) {
      const byValue = seen.get(e.service) ?? new Map<number, Set<string>>();
      const s = byValue.get(e.value) ?? new Set<string>();
      s.add(e.digest);
      byValue.set(e.value, s);
      seen.set(e.service, byValue);
    }
    for (const e of entries) {
      const digests = seen.get(e.service)!.get(e.value)!;
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
