/**
 * The counter client the freshness guard holds for the life of the process: a stable facade over the
 * current mTLS counter client, which certificate renewal replaces (the old certificate expires, the
 * counter must keep counting). Moved out of the composition root (issue 15 item 3).
 */
import { CdbpError } from '../kernel/errors.ts';
import type { CasMemberStatus, CounterClient, CounterState, FreshnessAlarm } from '../provisioning/types.ts';

/** How long a replaced client stays open, so a seal mid-request on its connection can finish. */
const RETIRE_AFTER_MS = 10_000;

export class CurrentCounter implements CounterClient {
  private current: CounterClient | undefined;
  /** Calls made on the current client and not yet settled. */
  private outstanding = new Set<Promise<unknown>>();
  /**
   * Set on a switch while the old client still has calls in flight: new calls wait for them, so the
   * order the guard pipelines advances in holds across the two connections (an advance n+1→n+2 on the
   * new channel must not overtake n→n+1 on the old one: it would look like a fork).
   */
  private barrier: Promise<unknown> | undefined;

  /** Makes `next` the client every later call uses; the previous one is closed after a grace period. */
  set(next: CounterClient): void {
    const old = this.current;
    this.current = next;
    if (old && old !== next) {
      if (this.outstanding.size > 0) {
        const barrier = Promise.allSettled([...this.outstanding]);
        this.barrier = barrier;
        void barrier.then(() => { if (this.barrier === barrier) this.barrier = undefined; });
      }
      this.outstanding = new Set();
      setTimeout(() => closeClient(old), RETIRE_AFTER_MS).unref();
    }
  }

  /** Both transports keep order; during a switch the barrier keeps it across them. */
  get ordered(): boolean {
    return this.current?.ordered === true;
  }

  private track<T>(call: (c: CounterClient) => Promise<T>): Promise<T> {
    const run = this.barrier ? this.barrier.then(() => call(this.active())) : call(this.active());
    const set = this.outstanding;
    set.add(run);
    const done = () => { set.delete(run); };
    run.then(done, done);
    return run;
  }

  private active(): CounterClient {
    if (!this.current) throw new CdbpError('ATTESTATION_UNAVAILABLE', 'no CAS counter client: not attested');
    return this.current;
  }

  read(): Promise<CounterState> {
    return this.track((c) => c.read());
  }

  advance(expected: number, next: number, digest: string, record?: Buffer, expectedDigest?: string): Promise<CounterState> {
    return this.track((c) => c.advance(expected, next, digest, record, expectedDigest));
  }

  async reportAlarm(alarm: FreshnessAlarm): Promise<void> {
    await this.active().reportAlarm?.(alarm);
  }

  memberStatus(): CasMemberStatus[] | undefined {
    return this.current?.memberStatus?.();
  }

  close(): void {
    if (this.current) closeClient(this.current);
  }
}

/** Closes a client's connections if it has any (HttpCounterClient does). */
export function closeClient(c: CounterClient): void {
  (c as { close?: () => void }).close?.();
}
