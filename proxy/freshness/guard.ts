/**
 * The freshness guard: verifies at start-up that the untrusted volume is the latest one the CAS
 * counter anchors, then seals the database's advancing durable position into new epochs at run time.
 *
 * Strict mode implements the proxies' AckGate: the OK of a write is held until an epoch sealed
 * *after* the OK arrived is written and counted, so every acknowledged write is covered by a counted
 * record. Epochs are group-committed: all acks waiting when a seal starts share it. Seals are
 * pipelined over an ordered counter client (the counter channel): the next seal reads the position and
 * sends its advance while the previous advance is still in flight, so an ack that arrives meanwhile is
 * covered by the very next seal (docs/FRESHNESS.md "Seal write order").
 */
import { EventEmitter } from 'node:events';
import type { Logger } from '../../src/kernel/log.ts';
import { CdbpError, asCdbpError, isCdbpError } from '../../src/kernel/errors.ts';
import { LATENCY_BUCKETS, type MetricsRegistry, type Histogram, type Counter } from '../../src/kernel/metrics.ts';
import type { CounterClient, CounterState } from '../../src/provisioning/types.ts';
import { openRecord, recordDigest, sealRecord, type DurablePosition, type FreshnessRecord } from './record.ts';
import { decideStartup, decideWithAnchoredRecord, type FoundRecord, type StartupVerdict } from './decide.ts';
import { positionAdvanced, positionBehind } from './position.ts';
import type { RecordStore } from './store.ts';
import type { PositionSource } from './mariadb-position.ts';
import type { InventoryRef } from './inventory/types.ts';

/**
 * strict: a write's OK waits for a counted epoch. bounded (alias: relaxed): OKs go at once and the
 * position is sealed at most every sealIntervalMs, so a rollback can lose at most that window (plus one
 * seal); the window is reported live. off: start-up checks only.
 */
export type FreshnessMode = 'strict' | 'bounded' | 'relaxed' | 'off';

const isBounded = (m: FreshnessMode): boolean => m === 'bounded' || m === 'relaxed';

/** The record cache on the untrusted volume is rewritten at most this often. */
const CACHE_INTERVAL_MS = 1000;
/**
 * Advances in flight at once over an ordered counter client (1 over one that may reorder answers).
 * Each seal reads the position once, so this also bounds the position reads queued behind the CAS.
 */
const PIPELINE_DEPTH = 4;
/** Retry period after a failed advance (CAS unreachable) while acks wait. */
const RETRY_MS = 250;
/** How long a stopping guard waits for its alarm report to reach the CAS. */
const ALARM_REPORT_GRACE_MS = 3000;

export interface FreshnessGuardOptions {
  store: RecordStore;
  key: Buffer;
  databaseId: string;
  counter: CounterClient;
  mode: FreshnessMode;
  /** Which database's positions the records hold. */
  engine?: 'mariadb' | 'postgres';
  log: Logger;
  metrics?: MetricsRegistry;
  /** Strict mode: how long a write's ack may wait for a counted epoch before the client gets an error. */
  holdTimeoutMs?: number;
  /** Relaxed mode: seal period (the bounded window); strict mode seals idle progress this often too. */
  sealIntervalMs?: number;
  now?: () => Date;
}

export interface FreshnessViolation {
  kind: 'rollback' | 'tamper' | 'fork';
  message: string;
  expected?: Record<string, unknown>;
  seen?: Record<string, unknown>;
}

/** A sealed record whose counter advance has not been confirmed yet, and the acks it covers. */
interface Unconfirmed {
  record: FreshnessRecord;
  bytes: Buffer;
  digest: string;
  from: number;
  /** Digest of the record at `from` (the advance lands only on it when the client is ordered). */
  fromDigest: string;
  waiters: Waiter[];
  /** Run-time seals: the advance failed (answer lost, CAS unreachable, conflict) and awaits recovery. */
  failed?: boolean;
}

interface Waiter {
  /** Set once resolved, rejected or timed out, so a retried batch skips it. */
  settled: boolean;
  resolve: () => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
  startedAt: number;
}

export class FreshnessGuard extends EventEmitter {
  private epoch = 0;
  /** The CAS counter value as last read or advanced by this guard (undefined before the first read). */
  private counterSeen: number | undefined;
  private lastPosition: DurablePosition | undefined;
  private lastSealAt: number | undefined;
  private violation: FreshnessViolation | undefined;
  private verified = false;
  private source: PositionSource | undefined;
  /** Digest of the counted record at `epoch`. */
  private epochDigest = '';
  /** Acks not yet in any seal. */
  private pending: Waiter[] = [];
  /** Acks whose seal is reading the position (one read at a time, so epochs go out in order). */
  private reading: Waiter[] | undefined;
  /** Run-time seals sent to the CAS and not yet confirmed, oldest first (the pipeline). */
  private sent: Unconfirmed[] = [];
  /** Position of the newest sealed record (sent or counted), for the idle seal's "moved?" test. */
  private sentPosition: DurablePosition | undefined;
  /** A failed advance is being recovered: nothing new is sent until the pipeline is known again. */
  private recovering = false;
  /** A recover() is reading the counter (one at a time). */
  private recoverRunning = false;
  /** When the pipeline was last re-sent: re-sends are at least RETRY_MS apart (a CAS refusing them). */
  private lastResendAt = 0;
  private readonly retryTimers = new Set<NodeJS.Timeout>();
  private interval: NodeJS.Timeout | undefined;
  private lastError: string | undefined;
  private stopped = false;
  /** The record cache on the untrusted volume (see cacheLater). */
  private cacheNext: Buffer | undefined;
  private cacheTimer: NodeJS.Timeout | undefined;
  private cacheWriting: Promise<void> | undefined;
  private cacheWrittenAt: number | undefined;
  /** The data-file inventory the next epoch vouches for (issue 22); `inventoryNew` until one carries it. */
  private inventoryRef: InventoryRef | undefined;
  /** The alarm report to the CAS in flight, if a violation was raised (stop() lets it land). */
  private alarmReport: Promise<void> | undefined;
  private inventoryNew = false;
  /** The inventory the last counted epoch vouches for (what a crash now would be judged against). */
  private countedInventory: InventoryRef | undefined;
  private finalInventory = false;
  private readonly holdHist: Histogram | undefined;
  private readonly seals: Counter | undefined;
  private readonly violations: Counter | undefined;
  private readonly holdFailures: Counter | undefined;

  constructor(private readonly opts: FreshnessGuardOptions) {
    super();
    const m = opts.metrics;
    this.holdHist = m?.histogram('cdbp_freshness_hold_seconds', 'Time a write acknowledgment was held for a counted epoch', LATENCY_BUCKETS);
    this.seals = m?.counter('cdbp_freshness_seals_total', 'Epochs sealed and counted');
    this.violations = m?.counter('cdbp_freshness_violations_total', 'Rollback, tamper or fork detections');
    this.holdFailures = m?.counter('cdbp_freshness_hold_failures_total', 'Write acknowledgments failed because no epoch could be counted in time');
    m?.gauge('cdbp_freshness_advances_in_flight', 'Counter advances sent and not yet answered (the seal pipeline)', (g) => g.set(this.sent.length));
    m?.gauge('cdbp_freshness_epoch', 'Epoch of the latest sealed record', (g) => g.set(this.epoch));
    m?.gauge('cdbp_freshness_counter', 'CAS freshness counter value as last seen by this proxy', (g) => {
      if (this.counterSeen !== undefined) g.set(this.counterSeen);
    });
    m?.gauge('cdbp_freshness_writes_held', 'Write acknowledgments currently held', (g) => g.set(this.heldCount()));
    m?.gauge('cdbp_freshness_last_seal_age_seconds', 'Seconds since the last counted epoch', (g) => {
      if (this.lastSealAt !== undefined) g.set((Date.now() - this.lastSealAt) / 1000);
    });
    m?.gauge('cdbp_freshness_verified', '1 when start-up freshness was verified and no violation since', (g) =>
      g.set(this.verified && !this.violation ? 1 : 0));
    m?.gauge('cdbp_freshness_mode', 'Freshness mode', (g) => g.set(1, { mode: opts.mode }));
    m?.gauge('cdbp_freshness_window_seconds', 'Bounded mode: writes a rollback could lose right now (age of the last counted epoch while the position moved); configured bound W in label', (g) => {
      if (isBounded(opts.mode)) g.set(this.windowMs() / 1000, { bound_ms: String(this.sealEveryMs) });
    });
  }

  /** Period of the background seal: the bounded mode's window W, strict mode's idle seal. */
  private get sealEveryMs(): number {
    return this.opts.sealIntervalMs ?? (isBounded(this.opts.mode) ? 1000 : 5000);
  }

  get mode(): FreshnessMode {
    return this.opts.mode;
  }

  /**
   * Start-up check before any key is released or the database is started. Throws ROLLBACK_DETECTED or
   * TAMPER_DETECTED (and emits 'violation'); otherwise leaves the record and counter in agreement.
   * `offlineCheckpoint` is the redo log's checkpoint LSN read from the datadir, if any.
   */
  async verifyAtStartup(offlineCheckpoint?: bigint): Promise<StartupVerdict> {
    this.opts.store.cleanup();
    const counter = await this.opts.counter.read();
    this.counterSeen = counter.value;
    const found = await this.readRecord();
    // The CAS keeps the record with the counter (the volume's copy is a cache); a counter without one
    // (older CAS state, or re-anchored by `cdbp recover` to a restored record) is checked as before.
    const verdict = counter.record
      ? decideWithAnchoredRecord(found, counter, await this.openBytes(counter.record), this.opts.databaseId)
      : decideStartup(found, counter, this.opts.databaseId);
    switch (verdict.kind) {
      case 'first-start':
        this.opts.log.info('freshness: first start of this database, sealing epoch 1');
        await this.sealEpoch({ engine: this.opts.engine ?? 'mariadb' }, counter);
        break;
      case 'fresh':
        this.adopt(verdict.record, counter.value);
        this.epochDigest = counter.digest;
        this.inventoryRef = verdict.record.inventory;
        break;
      case 'finish-advance':
        this.opts.log.warn({ epoch: verdict.record.epoch }, 'freshness: finishing an interrupted counter advance');
        await this.advanceCounter(counter.value, verdict.record.epoch, verdict.digest);
        this.adopt(verdict.record, verdict.record.epoch);
        this.epochDigest = verdict.digest;
        this.inventoryRef = verdict.record.inventory;
        break;
      case 'rollback':
        this.raise({ kind: 'rollback', message: verdict.message, expected: verdict.expected, seen: verdict.seen });
        break;
      case 'tamper':
        this.raise({ kind: 'tamper', message: verdict.message, expected: verdict.expected, seen: verdict.seen });
        break;
      default: {
        const never: never = verdict;
        throw new Error(`unhandled verdict ${JSON.stringify(never)}`);
      }
    }
    const sealedCheckpoint = this.lastPosition?.lsnCheckpoint;
    if (offlineCheckpoint !== undefined && sealedCheckpoint !== undefined && offlineCheckpoint < BigInt(sealedCheckpoint)) {
      this.raise({
        kind: 'rollback',
        message: `data directory rolled back under a fresh record: redo log checkpoint ${offlineCheckpoint} is behind the sealed ${sealedCheckpoint}`,
        expected: { lsnCheckpoint: sealedCheckpoint }, seen: { lsnCheckpoint: offlineCheckpoint.toString() },
      });
    }
    this.verified = true;
    return verdict;
  }

  /** After the database is up: its live position must not be behind the sealed one. */
  async verifyOnline(source: PositionSource): Promise<DurablePosition> {
    this.source = source;
    const now = await source.read();
    if (this.lastPosition) {
      const why = positionBehind(now, this.lastPosition);
      if (why) {
        this.raise({
          kind: 'rollback', message: `data directory rolled back under a fresh record: ${why}`,
          expected: { ...this.lastPosition }, seen: { ...now },
        });
      }
    }
    return now;
  }

  /** Starts run-time sealing (periodic in both modes; on demand in strict mode). */
  startRuntime(source: PositionSource): void {
    this.source = source;
    if (this.opts.mode === 'off') return;
    const every = this.sealEveryMs;
    this.interval = setInterval(() => void this.sealIfAdvanced(), every);
    this.interval.unref();
  }

  /** AckGate: in strict mode, hold a write's acknowledgment until a counted epoch covers it. */
  holdAck(): Promise<void> | undefined {
    if (this.opts.mode !== 'strict' || !this.source) return undefined;
    return this.waitForSeal(true);
  }

  /** Resolves once an epoch sealed after this call is counted (strict acks; the final seal). */
  private waitForSeal(observe: boolean): Promise<void> {
    if (this.violation) return Promise.reject(new CdbpError('ROLLBACK_DETECTED', `freshness violated: ${this.violation.message}`));
    return new Promise<void>((resolve, reject) => {
      const startedAt = Date.now();
      const waiter: Waiter = {
        settled: false,
        startedAt,
        resolve: () => {
          if (waiter.settled) return;
          waiter.settled = true;
          clearTimeout(waiter.timer);
          if (observe) this.holdHist?.observe((Date.now() - startedAt) / 1000);
          resolve();
        },
        reject: (e) => {
          if (waiter.settled) return;
          waiter.settled = true;
          clearTimeout(waiter.timer);
          reject(e);
        },
        timer: setTimeout(() => {
          waiter.settled = true;
          const i = this.pending.indexOf(waiter);
          if (i >= 0) this.pending.splice(i, 1);
          if (observe) this.holdFailures?.inc();
          reject(new CdbpError('CAS_UNREACHABLE',
            `write not acknowledged: it may have been applied but could not be made rollback-proof within ${this.opts.holdTimeoutMs ?? 10_000} ms (${this.lastError ?? 'freshness counter busy'})`));
        }, this.opts.holdTimeoutMs ?? 10_000),
      };
      this.pending.push(waiter);
      this.pump();
    });
  }

  /**
   * The final seal before a clean shutdown: stops the periodic seal, then (behind any seal in flight,
   * never beside it) seals the current position.
   */
  async sealNow(): Promise<void> {
    if (this.interval) clearInterval(this.interval);
    this.interval = undefined;
    if (!this.source || this.violation || this.opts.mode === 'off') return;
    // A waiter like any held ack: its seal reads the position after every seal before it was sent.
    await this.waitForSeal(false);
    await this.writeCacheNow();
  }

  /** Writes the latest counted record to the cache now (clean shutdown), after any write in progress. */
  async writeCacheNow(): Promise<void> {
    if (this.cacheTimer) clearTimeout(this.cacheTimer);
    this.cacheTimer = undefined;
    await this.cacheWriting;
    await this.flushCache();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.interval) clearInterval(this.interval);
    for (const t of this.retryTimers) clearTimeout(t);
    if (this.cacheTimer) clearTimeout(this.cacheTimer);
    await this.cacheWriting;
    const err = new CdbpError('BACKEND_UNAVAILABLE', 'proxy shutting down before the write could be counted');
    for (const w of this.allWaiters()) w.reject(err);
    if (this.alarmReport) await Promise.race([this.alarmReport, new Promise((r) => setTimeout(r, ALARM_REPORT_GRACE_MS).unref())]);
  }

  /** The data-file inventory the anchored record vouches for (after verifyAtStartup). */
  get inventory(): InventoryRef | undefined {
    return this.inventoryRef;
  }

  /**
   * A newer sealed inventory (background sweep): the next epoch carries it. Nothing is sealed for it
   * alone on an ack's path; the periodic seal picks it up when no write did.
   */
  setInventory(ref: InventoryRef): void {
    this.inventoryRef = ref;
    this.inventoryNew = true;
  }

  /**
   * After the database shut down (and after sealNow): seals one last epoch carrying the exact inventory
   * of the stopped data directory, once the pipeline has settled (never beside an advance in flight).
   */
  async sealFinal(ref: InventoryRef): Promise<void> {
    if (this.violation || this.opts.mode === 'off') return;
    const deadline = Date.now() + (this.opts.holdTimeoutMs ?? 10_000);
    while ((this.sent.length > 0 || this.reading || this.recovering) && !this.violation) {
      if (Date.now() > deadline) throw new CdbpError('CAS_UNREACHABLE', 'final inventory not sealed: earlier seals did not settle');
      await new Promise((r) => setTimeout(r, 20));
    }
    if (this.violation) return;
    this.inventoryRef = ref;
    this.finalInventory = ref.exact;
    await this.sealEpoch(this.lastPosition ?? { engine: this.opts.engine ?? 'mariadb' });
    await this.writeCacheNow();
  }

  /** A violation found outside the guard (the data-file inventory): reported like its own. Throws. */
  report(v: FreshnessViolation): never {
    return this.raise(v);
  }

  status(): Record<string, unknown> {
    return {
      mode: this.opts.mode,
      verified: this.verified && !this.violation,
      epoch: this.epoch,
      lastSealAt: this.lastSealAt ? new Date(this.lastSealAt).toISOString() : null,
      lastSealAgeSeconds: this.lastSealAt ? (Date.now() - this.lastSealAt) / 1000 : null,
      writesHeld: this.heldCount(),
      holdP50Seconds: this.holdHist?.quantile(0.5) ?? null,
      holdP99Seconds: this.holdHist?.quantile(0.99) ?? null,
      seals: this.seals?.get() ?? null,
      ...(isBounded(this.opts.mode) ? { window: { boundMs: this.sealEveryMs, currentMs: Math.round(this.windowMs()) } } : {}),
      position: this.lastPosition ?? null,
      ...(this.countedInventory ? { inventory: inventorySummary(this.countedInventory) } : {}),
      ...(this.lastError ? { lastError: this.lastError } : {}),
      ...(this.violation ? { violation: this.violation } : {}),
    };
  }

  /** Bounded mode: how long acknowledged writes may have gone uncounted (time since the last counted epoch). */
  private windowMs(): number {
    return this.lastSealAt === undefined ? 0 : Date.now() - this.lastSealAt;
  }

  private heldCount(): number {
    return this.allWaiters().filter((w) => !w.settled).length;
  }

  /** Every ack still held: not yet in a seal, in the seal reading the position, in the pipeline. */
  private allWaiters(): Waiter[] {
    return [...this.pending, ...(this.reading ?? []), ...this.sent.flatMap((u) => u.waiters)];
  }

  get violated(): FreshnessViolation | undefined {
    return this.violation;
  }

  // --- internals ---------------------------------------------------------------------------------

  /**
   * Starts the next run-time seal if acks wait and the pipeline has room. One seal reads the position at
   * a time, and sends its advance right after, so records go to the CAS in epoch order; over an ordered
   * client several advances may be in flight, each naming the digest of the record before it.
   */
  private pump(): void {
    if (this.stopped || this.violation || !this.source || this.recovering || this.reading) return;
    if (this.pending.length === 0) return;
    if (this.sent.length >= this.depth()) return;
    const batch = this.pending;
    this.pending = [];
    void this.startSeal(batch, false);
  }

  private depth(): number {
    return this.opts.counter.ordered ? PIPELINE_DEPTH : 1;
  }

  /** The periodic seal: only when idle, and only if the position moved since the last seal. */
  private async sealIfAdvanced(): Promise<void> {
    if (this.stopped || this.violation || !this.source || this.recovering || this.reading || this.sent.length > 0 || this.pending.length > 0) return;
    await this.startSeal([], true);
  }

  private async startSeal(batch: Waiter[], onlyIfMoved: boolean): Promise<void> {
    const source = this.source!;
    this.reading = batch;
    let u: Unconfirmed | undefined;
    try {
      // The position is read after every waiter in the batch registered, i.e. after their OKs arrived,
      // and the server only sends an OK once the commit is durable (innodb_flush_log_at_trx_commit=1).
      const position = await source.read();
      if (onlyIfMoved && !positionAdvanced(position, this.sentPosition ?? this.lastPosition) && !this.inventoryNew) return;
      const tip = this.sent.at(-1);
      const from = tip ? tip.record.epoch : this.epoch;
      const record: FreshnessRecord = {
        databaseId: this.opts.databaseId, epoch: from + 1, position,
        sealedAt: (this.opts.now?.() ?? new Date()).toISOString(),
        ...(this.inventoryRef ? { inventory: { ...this.inventoryRef, exact: false } } : {}),
      };
      const bytes = await sealRecord(record, this.opts.key);
      u = { record, bytes, digest: recordDigest(bytes), from, fromDigest: tip ? tip.digest : this.epochDigest, waiters: batch };
    } catch (e) {
      const err = asCdbpError(e);
      this.lastError = `${err.code}: ${err.message}`;
      this.opts.log.warn({ err: { code: err.code, message: err.message } }, 'freshness: reading the position failed, retrying');
      this.pending = [...batch.filter((w) => !w.settled), ...this.pending];
      this.retryLater();
      return;
    } finally {
      this.reading = undefined;
    }
    if (this.stopped || this.violation) {
      for (const w of batch) w.reject(new CdbpError('BACKEND_UNAVAILABLE', 'proxy shutting down before the write could be counted'));
      return;
    }
    this.sent.push(u);
    this.sentPosition = u.record.position;
    // Read while an earlier advance failed: it goes out with the recovery's re-send, after that one.
    if (this.recovering) u.failed = true;
    else this.send(u);
    this.pump();
  }

  /** Sends (or re-sends, with the same bytes) one advance of the pipeline. */
  private send(u: Unconfirmed): void {
    u.failed = false;
    const ordered = this.opts.counter.ordered === true;
    this.opts.counter.advance(u.from, u.record.epoch, u.digest, u.bytes, ordered ? u.fromDigest : undefined).then(
      () => this.confirmed(u),
      (e: unknown) => this.advanceFailed(u, e));
  }

  /** Answers arrive in order: everything before `u` is counted too. */
  private confirmed(u: Unconfirmed): void {
    const i = this.sent.indexOf(u);
    if (i < 0) return;
    for (const done of this.sent.splice(0, i + 1)) this.count(done);
    if (this.recovering && this.sent.every((x) => x.failed)) void this.recover();
    this.pump();
  }

  private count(u: Unconfirmed): void {
    this.adopt(u.record, u.record.epoch);
    this.epochDigest = u.digest;
    this.counterSeen = u.record.epoch;
    this.lastSealAt = Date.now();
    this.lastError = undefined;
    this.seals?.inc();
    for (const w of u.waiters) w.resolve();
    if (u.record.inventory?.digest === this.inventoryRef?.digest) this.inventoryNew = false;
    this.emit('counted', u.record);
    this.cacheLater(u.bytes);
  }

  /**
   * A failed advance (answer lost, channel broken, CAS unreachable or refusing, conflict): stop sending,
   * let every advance in flight settle, then find out from the counter which of ours landed.
   */
  private advanceFailed(u: Unconfirmed, e: unknown): void {
    if (!this.sent.includes(u)) return;
    const err = asCdbpError(e);
    u.failed = true;
    this.lastError = `${err.code}: ${err.message}`;
    if (!this.recovering) this.opts.log.warn({ err: { code: err.code, message: err.message }, epoch: u.record.epoch }, 'freshness: counter advance failed, recovering');
    this.recovering = true;
    if (this.sent.every((x) => x.failed)) void this.recover();
  }

  /**
   * Every advance in flight has failed or been answered. The counter tells which of ours landed: at our
   * last counted record → none; at one of the records in flight (its digest) → it and all before it
   * (each could only land on the one before it); anything else → another instance advanced: a fork.
   * The rest are re-sent with the same bytes, in order.
   */
  private async recover(): Promise<void> {
    if (this.violation || this.stopped || this.recoverRunning) return;
    this.recoverRunning = true;
    let now: CounterState;
    try {
      now = await this.opts.counter.read();
    } catch (e) {
      const err = asCdbpError(e);
      this.lastError = `${err.code}: ${err.message}`;
      this.retryLater(() => void this.recover());
      return;
    } finally {
      this.recoverRunning = false;
    }
    this.counterSeen = now.value;
    const landed = this.sent.findIndex((x) => x.record.epoch === now.value && x.digest === now.digest);
    if (landed >= 0) {
      for (const done of this.sent.splice(0, landed + 1)) this.count(done);
    } else if (now.value !== this.epoch || now.digest !== this.epochDigest) {
      try {
        this.raise({
          kind: 'fork',
          message: `another instance advanced the CAS counter (fork of this database): counter is at ${now.value}, this instance expected ${this.epoch}`,
          expected: { epoch: this.epoch }, seen: { epoch: now.value, digest: now.digest },
        });
      } catch { /* raised: waiters rejected, the guard is violated */ }
      return;
    }
    if (this.sent.length === 0) {
      this.recovering = false;
      this.pump();
      return;
    }
    this.retryLater(() => {
      if (this.stopped || this.violation) return;
      this.recovering = false;
      // Re-sent in order; a new failure starts another recovery.
      for (const x of this.sent) this.send(x);
      this.pump();
    }, Math.max(0, this.lastResendAt + RETRY_MS - Date.now()));
    this.lastResendAt = Math.max(Date.now(), this.lastResendAt + RETRY_MS);
  }

  private retryLater(fn: () => void = () => this.pump(), ms = RETRY_MS): void {
    const t = setTimeout(() => {
      this.retryTimers.delete(t);
      fn();
    }, ms);
    t.unref();
    this.retryTimers.add(t);
  }

  /**
   * Start-up only (first start): seals record epoch+1 in memory and advances the counter to it, handing
   * the CAS the record itself: the one durable step of a seal is the CAS's counter-log append.
   */
  private async sealEpoch(position: DurablePosition, counterNow?: CounterState): Promise<void> {
    const from = counterNow?.value ?? this.epoch;
    const record: FreshnessRecord = {
      databaseId: this.opts.databaseId, epoch: from + 1, position,
      sealedAt: (this.opts.now?.() ?? new Date()).toISOString(),
      // Exact only in the final epoch after the database stopped: once it runs again, DDL may follow.
      ...(this.inventoryRef ? { inventory: { ...this.inventoryRef, exact: this.finalInventory } } : {}),
    };
    const bytes = await sealRecord(record, this.opts.key);
    const digest = recordDigest(bytes);
    await this.advanceCounter(from, record.epoch, digest, bytes);
    this.count({ record, bytes, digest, from, fromDigest: this.epochDigest, waiters: [] });
    this.sentPosition = position;
  }

  /**
   * The copy on the untrusted volume is a cache (what `cdbp recover` re-anchors a restored backup to,
   * and what an operator inspects offline): written in the background at most once a second, never
   * on an ack's path. It may lag the counter; start-up accepts that and refuses only a forged copy.
   */
  private cacheLater(bytes: Buffer): void {
    this.cacheNext = bytes;
    if (this.cacheTimer || this.cacheWriting) return;
    const wait = Math.max(0, (this.cacheWrittenAt ?? 0) + CACHE_INTERVAL_MS - Date.now());
    this.cacheTimer = setTimeout(() => {
      this.cacheTimer = undefined;
      void this.flushCache();
    }, wait);
    this.cacheTimer.unref();
  }

  private flushCache(): Promise<void> {
    if (this.cacheWriting) return this.cacheWriting;
    const bytes = this.cacheNext;
    if (!bytes) return Promise.resolve();
    this.cacheNext = undefined;
    this.cacheWriting = this.opts.store.write(bytes).then(() => {
      this.cacheWrittenAt = Date.now();
    }, (e: unknown) => {
      this.opts.log.warn({ err: asCdbpError(e).message }, 'freshness: could not write the record cache (the CAS holds the record)');
    }).finally(() => {
      this.cacheWriting = undefined;
      if (this.cacheNext && !this.stopped) this.cacheLater(this.cacheNext);
    });
    return this.cacheWriting;
  }

  private async advanceCounter(expected: number, next: number, digest: string, record?: Buffer): Promise<void> {
    try {
      await this.opts.counter.advance(expected, next, digest, record);
      this.counterSeen = next;
    } catch (e) {
      if (!isCdbpError(e, 'COUNTER_CONFLICT')) throw e;
      // The advance may have landed with its answer lost; only our own digest at `next` is success.
      const now = await this.opts.counter.read();
      this.counterSeen = now.value;
      if (now.value === next && now.digest === digest) return;
      this.raise({
        kind: 'fork',
        message: `another instance advanced the CAS counter (fork of this database): counter is at ${now.value}, this instance expected ${expected}`,
        expected: { epoch: expected }, seen: { epoch: now.value, digest: now.digest },
      });
    }
  }

  private adopt(record: FreshnessRecord, epoch: number): void {
    this.epoch = epoch;
    this.countedInventory = record.inventory ?? this.countedInventory;
    if (record.position.lsnFlushed !== undefined || record.position.walLsn !== undefined || record.position.gtid) {
      this.lastPosition = record.position;
    }
  }

  private async readRecord(): Promise<FoundRecord> {
    const bytes = this.opts.store.read();
    if (!bytes) return { kind: 'missing' };
    return this.openBytes(bytes);
  }

  private async openBytes(bytes: Buffer): Promise<FoundRecord> {
    try {
      return { kind: 'ok', record: await openRecord(bytes, this.opts.key), digest: recordDigest(bytes) };
    } catch (e) {
      return { kind: 'invalid', message: asCdbpError(e).message };
    }
  }

  private raise(v: FreshnessViolation): never {
    if (!this.violation) {
      this.violation = v;
      this.violations?.inc({ kind: v.kind });
      this.opts.log.error({ violation: v }, `freshness violation: ${v.message}`);
      const epochOf = (o?: Record<string, unknown>) => (typeof o?.epoch === 'number' ? o.epoch : undefined);
      // Not awaited here (the refusal must not wait for the CAS), but stop() waits for it a bounded time:
      // a proxy that fails closed and exits must still leave the alarm in the CAS's audit log.
      this.alarmReport = this.opts.counter.reportAlarm?.({ kind: v.kind, message: v.message, expectedEpoch: epochOf(v.expected), seenEpoch: epochOf(v.seen) })
        .catch((e: unknown) => this.opts.log.warn({ err: asCdbpError(e).message }, 'could not report the freshness alarm to the CAS'));
      const err = new CdbpError(v.kind === 'rollback' ? 'ROLLBACK_DETECTED' : 'TAMPER_DETECTED', v.message);
      for (const w of this.allWaiters()) w.reject(err);
      this.pending = [];
      this.emit('violation', v);
    }
    throw new CdbpError(v.kind === 'rollback' ? 'ROLLBACK_DETECTED' : 'TAMPER_DETECTED', v.message, {
      details: { kind: v.kind, expected: v.expected, seen: v.seen },
    });
  }
}

/** What an operator (and a test) needs of the counted inventory: how far its witnesses reach. */
function inventorySummary(ref: InventoryRef): Record<string, unknown> {
  return { takenAt: ref.takenAt, startLsn: ref.startLsn, durableLsn: ref.durableLsn, exact: ref.exact, files: ref.files };
}
