/**
 * The freshness hook both protocol endpoints call (MySQL: proxy/mysql/pump.ts and the native relay's
 * gate; PostgreSQL: proxy/pg/ack-gate.ts). Strict freshness implements it (proxy/freshness/guard.ts):
 * the acknowledgment of a write is held until a counted epoch covers it. Each endpoint decides *which*
 * server message is such an acknowledgment from its own protocol; what holding means is the same:
 *
 * - `holdAck()` returns undefined: release now; a promise: hold the acknowledgment (and everything the
 *   server sent after it) until the promise resolves;
 * - a rejection (or a gate that throws, see askGate) means the write could not be confirmed durable: the
 *   client never receives the held acknowledgment, gets its protocol's error instead, and the session
 *   ends (the client must not believe the write is durable);
 * - the hold waits only for the seal, never for the client (so it cannot deadlock a conversation).
 */
export interface AckGate {
  holdAck(): Promise<void> | undefined;
}

/** Asks the gate; a gate that throws is a refusal (an unconfirmed acknowledgment must not go out, and the exception must not escape into a socket handler). */
export function askGate(gate: AckGate): Promise<void> | undefined {
  try {
    return gate.holdAck();
  } catch (e) {
    return Promise.reject(e);
  }
}

/** A held acknowledgment the gate refused; `reason` is the gate's error. */
export class AckGateError extends Error {
  constructor(readonly reason: unknown) {
    super('acknowledgment held by the freshness gate was refused');
    this.name = 'AckGateError';
  }
}
