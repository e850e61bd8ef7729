/**
 * Certificate renewal's schedule, apart from what a renewal does (the proxy re-attests and swaps its TLS
 * identity and counter client: cli/proxy-role.ts). Two pure rules and one small driver:
 *
 *   - renew at notAfter − renewBefore (default: when a third of the lifetime is left; renewBefore is
 *     capped at half the lifetime, so a too-large setting cannot renew in a tight loop), never sooner
 *     than 1 s from now;
 *   - after a failure, retry with backoff: 5 s doubling to 60 s;
 *   - concurrent requests (timer + admin) share one attempt; a failure keeps the current certificate,
 *     is counted and shown, and is rethrown to whoever asked.
 */
import type { Logger } from '../kernel/log.ts';
import { asCdbpError, CdbpError } from '../kernel/errors.ts';

/** Longest delay setTimeout takes (about 24.8 days). */
const MAX_TIMER_MS = 2 ** 31 - 1;

export function renewalDelayMs(o: { now: number; notAfter: number; renewBeforeSeconds: number }): number {
  const life = o.notAfter - o.now;
  const before = o.renewBeforeSeconds > 0 ? Math.min(o.renewBeforeSeconds * 1000, life / 2) : life / 3;
  return Math.min(MAX_TIMER_MS, Math.max(1000, life - before));
}

export function retryDelayMs(consecutiveFailures: number): number {
  return Math.min(60_000, 5000 * 2 ** Math.max(0, consecutiveFailures - 1));
}

export interface RenewalOutcome {
  notAfter: Date;
  /** Public facts about the new certificate (serial, notAfter, ...), returned to the caller. */
  facts: Record<string, unknown>;
}

export interface RenewalStatus {
  renewals: number;
  lastRenewalAt: Date | undefined;
  nextRenewalAt: Date | undefined;
  /** `CODE: message` of the last failure while failing, else undefined. */
  error: string | undefined;
  consecutiveFailures: number;
}

export class RenewalDriver {
  private timer: NodeJS.Timeout | undefined;
  private inFlight: Promise<Record<string, unknown>> | undefined;
  private stopped = false;
  private readonly state: RenewalStatus = { renewals: 0, lastRenewalAt: undefined, nextRenewalAt: undefined, error: undefined, consecutiveFailures: 0 };

  constructor(private readonly o: {
    /** One renewal: re-attest and swap; resolves with the new certificate's expiry and facts. */
    attempt: () => Promise<RenewalOutcome>;
    renewBeforeSeconds: number;
    log?: Logger;
  }) {}

  status(): Readonly<RenewalStatus> {
    return this.state;
  }

  /** Plans the next renewal for a certificate expiring at notAfter. */
  scheduleFor(notAfter: Date): void {
    this.schedule(renewalDelayMs({ now: Date.now(), notAfter: notAfter.getTime(), renewBeforeSeconds: this.o.renewBeforeSeconds }));
  }

  /** Renews now (or joins the attempt in flight). */
  renew(): Promise<Record<string, unknown>> {
    if (this.inFlight) return this.inFlight;
    if (this.stopped) return Promise.reject(new CdbpError('LIFECYCLE_INVALID_TRANSITION', 'shutting down'));
    this.inFlight = this.once().finally(() => { this.inFlight = undefined; });
    return this.inFlight;
  }

  /** No more renewals; resolves once an attempt in flight has settled. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.state.nextRenewalAt = undefined;
    await this.inFlight?.catch(() => undefined);
  }

  private schedule(delayMs: number): void {
    if (this.stopped) return;
    if (this.timer) clearTimeout(this.timer);
    const delay = Math.min(MAX_TIMER_MS, Math.max(0, delayMs));
    this.state.nextRenewalAt = new Date(Date.now() + delay);
    this.timer = setTimeout(() => void this.renew().catch(() => undefined), delay);
    this.timer.unref();
  }

  private async once(): Promise<Record<string, unknown>> {
    try {
      const out = await this.o.attempt();
      this.state.error = undefined;
      this.state.consecutiveFailures = 0;
      this.state.renewals++;
      this.state.lastRenewalAt = new Date();
      this.scheduleFor(out.notAfter);
      return out.facts;
    } catch (e) {
      const err = asCdbpError(e);
      if (this.stopped) throw err;
      this.state.error = `${err.code}: ${err.message}`;
      this.state.consecutiveFailures++;
      this.o.log?.error({ err: { code: err.code, message: err.message }, failures: this.state.consecutiveFailures },
        'certificate renewal failed; keeping the current one');
      this.schedule(retryDelayMs(this.state.consecutiveFailures));
      throw err;
    }
  }
}
