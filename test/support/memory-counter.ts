import { CdbpError } from '../../src/kernel/errors.ts';
import type { CounterClient, CounterState } from '../../src/provisioning/types.ts';

/**
 * An in-memory stand-in for the CAS counter, for unit tests of the freshness guard's logic only.
 * Integration tests use the real CAS process. `down` simulates an unreachable CAS.
 */
export class MemoryCounter implements CounterClient {
  state: CounterState = { value: 0, digest: '' };
  down = false;
  advances = 0;
  /** The next advance lands, but its answer is lost (a timeout or reset after the CAS committed it). */
  loseNextAnswer = false;
  /** Delay before each advance is applied (to make seals overlap). */
  delayMs = 0;
  /** Keep the sealed record with the counter, as the CAS does since issue 17 (false: an older CAS). */
  keepRecords = true;
  async read(): Promise<CounterState> {
    if (this.down) throw new CdbpError('CAS_UNREACHABLE', 'CAS unreachable (test)');
    return { ...this.state };
  }
  async advance(expected: number, next: number, digest: string, record?: Buffer): Promise<CounterState> {
    if (this.delayMs) await new Promise((r) => setTimeout(r, this.delayMs));
    if (this.down) throw new CdbpError('CAS_UNREACHABLE', 'CAS unreachable (test)');
    if (this.state.value !== expected || next !== expected + 1) {
      throw new CdbpError('COUNTER_CONFLICT', `counter is at ${this.state.value}`);
    }
    this.state = { value: next, digest, ...(record && this.keepRecords ? { record } : {}) };
    this.advances++;
    if (this.loseNextAnswer) {
      this.loseNextAnswer = false;
      throw new CdbpError('CAS_UNREACHABLE', 'answer lost (test)');
    }
    return { ...this.state };
  }
}
