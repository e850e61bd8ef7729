import { EventEmitter } from 'node:events';
import { CdbpError } from './errors.ts';

/**
 * Forward-only lifecycle of a long-running role. Health endpoints read it; nothing moves it back.
 * `failed` is terminal and carries a reason (e.g. rollback detected); `stopped` is the clean end.
 *
 *   starting → attesting → provisioned → verifying → starting_backend → ready → draining → stopped
 *         (any non-terminal state) → failed
 */
export const LIFECYCLE_STATES = [
  'starting', 'attesting', 'provisioned', 'verifying', 'starting_backend', 'ready', 'draining', 'stopped',
] as const;
export type LifecycleState = (typeof LIFECYCLE_STATES)[number] | 'failed';

export interface LifecycleSnapshot {
  state: LifecycleState;
  since: string;
  reason?: { code: string; message: string; details?: Record<string, unknown> };
  history: Array<{ state: LifecycleState; at: string }>;
}

export class Lifecycle extends EventEmitter {
  private current: LifecycleState = 'starting';
  private sinceMs = Date.now();
  private failure: LifecycleSnapshot['reason'];
  private readonly history: Array<{ state: LifecycleState; at: string }> = [
    { state: 'starting', at: new Date(this.sinceMs).toISOString() },
  ];

  get state(): LifecycleState {
    return this.current;
  }

  /** Moves forward; skipping states is fine, going back or leaving a terminal state is not. */
  advance(to: Exclude<LifecycleState, 'failed'>): void {
    if (this.isTerminal()) {
      throw new CdbpError('LIFECYCLE_INVALID_TRANSITION', `cannot move from ${this.current} to ${to}`);
    }
    const from = LIFECYCLE_STATES.indexOf(this.current as (typeof LIFECYCLE_STATES)[number]);
    const next = LIFECYCLE_STATES.indexOf(to);
    if (next <= from) {
      throw new CdbpError('LIFECYCLE_INVALID_TRANSITION', `cannot move from ${this.current} back to ${to}`);
    }
    this.set(to);
  }

  /** Terminal failure; the first reason wins (later ones are usually consequences). */
  fail(reason: { code: string; message: string; details?: Record<string, unknown> }): void {
    if (this.isTerminal()) return;
    this.failure = reason;
    this.set('failed');
  }

  isTerminal(): boolean {
    return this.current === 'failed' || this.current === 'stopped';
  }

  snapshot(): LifecycleSnapshot {
    return {
      state: this.current,
      since: new Date(this.sinceMs).toISOString(),
      ...(this.failure ? { reason: this.failure } : {}),
      history: [...this.history],
    };
  }

  private set(state: LifecycleState): void {
    this.current = state;
    this.sinceMs = Date.now();
    this.history.push({ state, at: new Date(this.sinceMs).toISOString() });
    this.emit('change', state);
  }
}
