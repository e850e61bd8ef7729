/**
 * The counter client the freshness guard holds for the life of the process: a stable facade over the
 * current mTLS counter client, which certificate renewal replaces (the old certificate expires, the
 * counter must keep counting). Moved out of the composition root (issue 15 item 3).
 */
import { CdbpError } from '../kernel/errors.ts';
import type { CounterClient, CounterState, FreshnessAlarm } from '../provisioning/types.ts';

/** How long a replaced client stays open, so a seal mid-request on its connection can finish. */
const RETIRE_AFTER_MS = 10_000;

export class CurrentCounter implements CounterClient {
  private current: CounterClient | undefined;

  /** Makes `next` the client every later call uses; the previous one is closed after a grace period. */
  set(next: CounterClient): void {
    const old = this.current;
    this.current = next;
    if (old && old !== next) setTimeout(() => closeClient(old), RETIRE_AFTER_MS).unref();
  }

  private active(): CounterClient {
    if (!this.current) throw new CdbpError('ATTESTATION_UNAVAILABLE', 'no CAS counter client: not attested');
    return this.current;
  }

  read(): Promise<CounterState> {
    return this.active().read();
  }

  advance(expected: number, next: number, digest: string, record?: Buffer): Promise<CounterState> {
    return this.active().advance(expected, next, digest, record);
  }

  async reportAlarm(alarm: FreshnessAlarm): Promise<void> {
    await this.active().reportAlarm?.(alarm);
  }

  close(): void {
    if (this.current) closeClient(this.current);
  }
}

/** Closes a client's connections if it has any (HttpCounterClient does). */
export function closeClient(c: CounterClient): void {
  (c as { close?: () => void }).close?.();
}
