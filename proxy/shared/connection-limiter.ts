/**
 * Connection limiter shared by the protocol endpoints (MySQL, PostgreSQL).
 *
 * Stable API:
 *   const limiter = new ConnectionLimiter(max);
 *   const slot = limiter.tryAcquire();      // undefined when full: refuse BEFORE dialing the backend
 *   slot?.release();                         // idempotent; call from the connection's single cleanup
 *   limiter.open; limiter.max;
 *
 * Why a slot object with an idempotent release: a connection has exactly one cleanup, but error paths
 * sometimes race (socket error + timeout); releasing twice must never free someone else's slot.
 */
export interface ConnectionSlot {
  release(): void;
}

export class ConnectionLimiter {
  private openCount = 0;

  constructor(readonly max: number) {
    if (!Number.isInteger(max) || max < 1) throw new RangeError(`maxConnections must be a positive integer, got ${max}`);
  }

  get open(): number {
    return this.openCount;
  }

  tryAcquire(): ConnectionSlot | undefined {
    if (this.openCount >= this.max) return undefined;
    this.openCount++;
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        this.openCount--;
      },
    };
  }
}
