/**
 * The start-up rules of the freshness guard, as one pure function over what was found on the
 * untrusted volume and what the CAS counter says. Every outcome names what was expected and seen.
 *
 *   no record, counter 0                      → first start (initialise)
 *   record epoch == counter, digest matches    → fresh
 *   record epoch == counter + 1                → crashed between record write and counter advance:
 *                                                finish the advance (the CAS arbitrates forks)
 *   record epoch <  counter                    → rollback
 *   anything else (missing record with a counter > 0, forged, other database, same epoch with another
 *   digest, ahead by more than one)           → tamper
 */
import type { CounterState } from '../../src/provisioning/types.ts';
import type { FreshnessRecord } from './record.ts';

export type StartupVerdict =
  | { kind: 'first-start' }
  | { kind: 'fresh'; record: FreshnessRecord }
  | { kind: 'finish-advance'; record: FreshnessRecord; digest: string }
  | { kind: 'rollback'; expected: { epoch: number }; seen: { epoch: number; sealedAt: string }; message: string }
  | { kind: 'tamper'; message: string; expected?: Record<string, unknown>; seen?: Record<string, unknown> };

export type FoundRecord =
  | { kind: 'missing' }
  | { kind: 'invalid'; message: string }
  | { kind: 'ok'; record: FreshnessRecord; digest: string };

export function decideStartup(found: FoundRecord, counter: CounterState, databaseId: string): StartupVerdict {
  if (found.kind === 'missing') {
    if (counter.value === 0) return { kind: 'first-start' };
    return {
      kind: 'tamper',
      message: `sealed freshness record is missing but the CAS counter is at epoch ${counter.value}`,
      expected: { epoch: counter.value }, seen: { record: 'missing' },
    };
  }
  if (found.kind === 'invalid') {
    return { kind: 'tamper', message: `sealed freshness record rejected: ${found.message}` };
  }
  const { record, digest } = found;
  if (record.databaseId !== databaseId) {
    return {
      kind: 'tamper', message: 'sealed freshness record belongs to another database',
      expected: { databaseId }, seen: { databaseId: record.databaseId },
    };
  }
  if (record.epoch === counter.value) {
    if (digest === counter.digest) return { kind: 'fresh', record };
    return {
      kind: 'tamper',
      message: `sealed freshness record for epoch ${record.epoch} is not the one the CAS counter anchors (fork or forgery)`,
      expected: { epoch: counter.value, digest: counter.digest }, seen: { epoch: record.epoch, digest },
    };
  }
  if (record.epoch === counter.value + 1) return { kind: 'finish-advance', record, digest };
  if (record.epoch < counter.value) {
    return {
      kind: 'rollback',
      message: `data volume rolled back: sealed record is at epoch ${record.epoch} (sealed ${record.sealedAt}) but the CAS counter is at ${counter.value}`,
      expected: { epoch: counter.value }, seen: { epoch: record.epoch, sealedAt: record.sealedAt },
    };
  }
  return {
    kind: 'tamper',
    message: `sealed freshness record is ahead of the CAS counter by ${record.epoch - counter.value} epochs`,
    expected: { epoch: counter.value }, seen: { epoch: record.epoch },
  };
}

/**
 * Start-up when the CAS keeps the sealed record with its counter (issue 17): that record is the
 * anchored state, and the copy on the untrusted volume is only a cache, written off the hot path, so
 * it may lag the counter after a crash. A cache that does not open, belongs to another database, runs
 * ahead of the counter, or differs from the anchored record at the same epoch is still evidence of
 * tampering (or a fork) and refused.
 */
export function decideWithAnchoredRecord(cache: FoundRecord, counter: CounterState, anchored: FoundRecord, databaseId: string): StartupVerdict {
  if (anchored.kind !== 'ok') {
    return {
      kind: 'tamper',
      message: `the sealed record the CAS counter anchors does not open with this service's key: ${anchored.kind === 'invalid' ? anchored.message : 'missing'}`,
    };
  }
  if (anchored.record.databaseId !== databaseId || anchored.record.epoch !== counter.value || anchored.digest !== counter.digest) {
    return {
      kind: 'tamper', message: 'the sealed record the CAS counter anchors is for another database or epoch',
      expected: { databaseId, epoch: counter.value }, seen: { databaseId: anchored.record.databaseId, epoch: anchored.record.epoch },
    };
  }
  if (cache.kind === 'invalid') return { kind: 'tamper', message: `sealed freshness record rejected: ${cache.message}` };
  if (cache.kind === 'ok') {
    const { record, digest } = cache;
    if (record.databaseId !== databaseId) {
      return {
        kind: 'tamper', message: 'sealed freshness record belongs to another database',
        expected: { databaseId }, seen: { databaseId: record.databaseId },
      };
    }
    if (record.epoch > counter.value) {
      return {
        kind: 'tamper', message: `sealed freshness record is ahead of the CAS counter by ${record.epoch - counter.value} epochs`,
        expected: { epoch: counter.value }, seen: { epoch: record.epoch },
      };
    }
    if (record.epoch === counter.value && digest !== counter.digest) {
      return {
        kind: 'tamper',
        message: `sealed freshness record for epoch ${record.epoch} is not the one the CAS counter anchors (fork or forgery)`,
        expected: { epoch: counter.value, digest: counter.digest }, seen: { epoch: record.epoch, digest },
      };
    }
  }
  return { kind: 'fresh', record: anchored.record };
}
