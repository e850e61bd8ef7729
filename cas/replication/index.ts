/**
 * The replicated CAS (issue 20, docs/CAS.md "Replicated CAS"). The folder as a map:
 *
 *   (src/cas-client/quorum.ts: the quorum rules, pure, shared with the proxy side)
 *   memory-counters.ts  a member's counters, in memory only (Nimble's endorser state)
 *   state-sync.ts       durable state on etcd, revision-checked, checked against memory for rollback
 *   instance.ts         a member's life: bootstrap or join (attest to a majority, catch up), join routes
 *
 * The proxy side is src/cas-client/quorum-counter.ts; etcd's client is cas/store/etcd.ts.
 */
export { prepareHa, type HaConfig, type HaRuntime } from './instance.ts';
export { majority, catchUpQuorum, combineReads, decideAdvance } from '../../src/cas-client/quorum.ts';
