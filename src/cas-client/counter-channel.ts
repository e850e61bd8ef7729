/**
 * The proxy end of the counter channel (issue 17): one long-lived mutual-TLS 1.3 connection to the CAS,
 * with the certificate the CAS issued on attestation and the pinned CA plus the CAS role required of the
 * server (as every CAS request: http.ts). Requests are binary frames answered in order, so the freshness
 * guard may pipeline advances: n+1→n+2 is sent while n→n+1 is still being made durable, and both share
 * the CAS's fdatasync. Wire format and why one signature at open plus a MAC per frame is as strong as a
 * signature per answer: counter-channel-wire.ts, docs/FRESHNESS.md "Counter channel".
 *
 * The channel is opened lazily and reopened after a failure; requests in flight on a broken channel fail
 * with CAS_UNREACHABLE (the guard retries them with the same record bytes). A CAS without the channel
 * (404 on the upgrade) is spoken to over HTTPS instead (HttpCounterClient), one request at a time so the
 * order still holds. Alarms always go over HTTPS (rare, and audited with their text).
 */
import https from 'node:https';
import { randomBytes, createHash, type KeyObject } from 'node:crypto';
import type { TLSSocket } from 'node:tls';
import type { IncomingMessage } from 'node:http';
import { CdbpError, type ErrorCode } from '../kernel/errors.ts';
import type { CounterClient, CounterState, FreshnessAlarm } from '../provisioning/types.ts';
import { verifyAnswer } from '../provisioning/answers.ts';
import { checkCasServerIdentity } from '../crypto/x509.ts';
import { casConnectionError } from './http.ts';
import {
  CHANNEL_MEMBERSHIP_HEADER, CHANNEL_PATH_SUFFIX, CHANNEL_PROTOCOL, CHANNEL_SIGNATURE_HEADER, Dir, EXPORTER_BINDING_LABEL, EXPORTER_MAC_LABEL, FrameReader, Kind,
  decodeAnswer, encodeRequest, openMessage, sealFrame, type Answer, type Request,
} from './counter-channel-wire.ts';

export type RequestBody = Request extends infer R ? R extends { id: number } ? Omit<R, 'id'> : never : never;

export interface ChannelCounterOptions {
  casUrl: string;
  service: string;
  caPem: string;
  keyPem: string;
  certPem: string;
  /** The CAS answer key (certified by the pinned CA): signs the channel's opening. */
  signingKey: KeyObject;
  /** Used for alarms, and for everything when the CAS has no channel (absent: a replicated member's channel, sendViewed only). */
  http?: CounterClient & { reportAlarm(a: FreshnessAlarm): Promise<void>; close(): void };
  /**
   * A replicated CAS member (quorum-counter.ts): its opening must carry the signed membership view, and
   * an opening not signed by `signingKey` is an answer key that changed (the member restarted: the caller
   * refetches it), not an impostor alarm.
   */
  member?: boolean;
  /** A request unanswered this long breaks the channel (CAS_UNREACHABLE). */
  timeoutMs?: number;
}

export class ChannelCounterClient implements CounterClient {
  /**
   * Answers come back in request order over the channel. Not claimed for the HTTPS fallback: a CAS
   * without the channel may not know `expectedDigest` either, so the guard seals one at a time there.
   */
  get ordered(): boolean {
    return !this.httpOnly;
  }
  private session: Session | undefined;
  private opening: Promise<Session | undefined> | undefined;
  /** Set when the CAS answered the upgrade with 404: it predates the channel. */
  private httpOnly = false;
  private httpTail: Promise<unknown> = Promise.resolve();
  private closed = false;

  constructor(private readonly o: ChannelCounterOptions) {}

  /** 'channel' or 'https' (what the last request used). */
  get transport(): 'channel' | 'https' {
    return this.httpOnly ? 'https' : 'channel';
  }

  async read(): Promise<CounterState> {
    const a = await this.call({ kind: Kind.Read }, () => this.http().read());
    if ('state' in a) return a.state;
    const ans = fail(a.answer);
    if (ans.record && createHash(ans.digest.length === 128 ? 'sha512' : 'sha256').update(ans.record).digest('hex') !== ans.digest) {
      throw new CdbpError('CAS_IDENTITY_INVALID', 'counter read answer carries a record that is not the one its digest names');
    }
    return { value: ans.value, digest: ans.digest, ...(ans.record ? { record: ans.record } : {}) };
  }

  async advance(expected: number, next: number, digest: string, record?: Buffer, expectedDigest?: string): Promise<CounterState> {
    const a = await this.call(
      { kind: Kind.Advance, expected, next, digest, ...(record ? { record } : {}), ...(expectedDigest !== undefined ? { expectedDigest } : {}) },
      () => this.http().advance(expected, next, digest, record, expectedDigest));
    if ('state' in a) return a.state;
    const ans = fail(a.answer);
    if (ans.value !== next || ans.digest !== digest) {
      throw new CdbpError('CAS_IDENTITY_INVALID', `counter advance answer names ${ans.value}/${ans.digest.slice(0, 12)}, not the requested ${next}`);
    }
    return { value: ans.value, digest: ans.digest };
  }

  reportAlarm(alarm: FreshnessAlarm): Promise<void> {
    return this.http().reportAlarm(alarm);
  }

  close(): void {
    this.closed = true;
    this.session?.destroy(new CdbpError('CAS_UNREACHABLE', 'counter channel closed'));
    this.o.http?.close();
  }

  private http(): NonNullable<ChannelCounterOptions['http']> {
    if (!this.o.http) throw new CdbpError('INTERNAL', 'this counter channel has no HTTPS client');
    return this.o.http;
  }

  /**
   * For a replicated CAS member (quorum-counter.ts): one request over the channel, with the membership view
   * signed at the channel's opening. NOT_FOUND when the member has no channel (the caller uses HTTPS).
   */
  async sendViewed(body: RequestBody): Promise<{ answer: Answer; membership: string }> {
    if (this.closed) throw new CdbpError('CAS_UNREACHABLE', 'counter client closed');
    let s = this.session?.alive ? this.session : undefined;
    if (!s) {
      this.opening ??= this.open().finally(() => { this.opening = undefined; });
      s = await this.opening;
    }
    if (!s) throw new CdbpError('NOT_FOUND', `${this.o.casUrl} has no counter channel`);
    const answer = await s.send(body);
    return { answer, membership: s.membership ?? '' };
  }

  /** Sends over the channel (opening it first if needed), or over HTTPS for a CAS without one. */
  private call(body: RequestBody, viaHttp: () => Promise<CounterState>): Promise<{ answer: Answer } | { state: CounterState }> {
    if (this.closed) return Promise.reject(new CdbpError('CAS_UNREACHABLE', 'counter client closed'));
    if (this.session?.alive) return this.session.send(body).then((answer) => ({ answer }));
    if (this.httpOnly) return this.serialHttp(viaHttp);
    // Callers waiting for the same opening resume in the order they called: the order holds.
    this.opening ??= this.open().finally(() => { this.opening = undefined; });
    return this.opening.then((s) => (s ? s.send(body).then((answer) => ({ answer })) : this.serialHttp(viaHttp)));
  }

  private serialHttp(viaHttp: () => Promise<CounterState>): Promise<{ state: CounterState }> {
    const run = this.httpTail.then(viaHttp, viaHttp);
    this.httpTail = run.catch(() => undefined);
    return run.then((state) => ({ state }));
  }

  /** Opens the channel; undefined if the CAS has none (HTTP fallback from now on). */
  private open(): Promise<Session | undefined> {
    const url = new URL(`/v1/services/${encodeURIComponent(this.o.service)}${CHANNEL_PATH_SUFFIX}`, this.o.casUrl);
    const nonce = randomBytes(32);
    url.searchParams.set('nonce', nonce.toString('hex'));
    return new Promise((resolve, reject) => {
      const req = https.request(url, {
        method: 'GET', agent: false, ca: this.o.caPem, key: this.o.keyPem, cert: this.o.certPem,
        checkServerIdentity: checkCasServerIdentity, minVersion: 'TLSv1.3',
        headers: { connection: 'Upgrade', upgrade: CHANNEL_PROTOCOL },
        timeout: this.o.timeoutMs ?? 10_000,
      });
      req.on('upgrade', (res: IncomingMessage, socket, head: Buffer) => {
        const tls = socket as TLSSocket;
        const binding = tls.exportKeyingMaterial(32, EXPORTER_BINDING_LABEL, nonce);
        const view = res.headers[CHANNEL_MEMBERSHIP_HEADER];
        const membership = this.o.member ? (typeof view === 'string' && view.length <= 1024 ? view : '') : undefined;
        if (!verifyAnswer(this.o.signingKey, openMessage(this.o.service, nonce.toString('hex'), binding, membership), res.headers[CHANNEL_SIGNATURE_HEADER])) {
          tls.destroy();
          const err = new CdbpError('CAS_IDENTITY_INVALID',
            `counter channel opening is not signed by ${this.o.member ? 'that member\'s current answer key' : 'the CAS'} for this TLS session (a man in the middle, or another server)`);
          reject(this.o.member ? err : casConnectionError(err, this.o.casUrl, true));
          return;
        }
        const s = new Session(tls, tls.exportKeyingMaterial(32, EXPORTER_MAC_LABEL, nonce), this.o.timeoutMs ?? 10_000, membership);
        this.session = s;
        if (head.length > 0) s.feed(head);
        resolve(s);
      });
      req.on('response', (res: IncomingMessage) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => { if (chunks.length < 64) chunks.push(c); });
        res.on('end', () => {
          let err: { code?: string; message?: string } | undefined;
          try {
            err = (JSON.parse(Buffer.concat(chunks).toString('utf8')) as { error?: typeof err }).error;
          } catch { /* not JSON */ }
          if (res.statusCode === 404 && (err?.code ?? 'NOT_FOUND') === 'NOT_FOUND') {
            this.httpOnly = true;
            resolve(undefined);
            return;
          }
          reject(new CdbpError((err?.code ?? 'CAS_UNREACHABLE') as ErrorCode, `CAS: ${err?.message ?? `counter channel refused with HTTP ${res.statusCode}`}`,
            { details: { status: res.statusCode } }));
        });
      });
      req.on('timeout', () => req.destroy(new CdbpError('CAS_UNREACHABLE', `CAS ${this.o.casUrl} did not open the counter channel in time`)));
      req.on('error', (e) => reject(casConnectionError(e, this.o.casUrl, true)));
      req.end();
    });
  }
}

/** A State answer, or the CdbpError an Error answer stands for (COUNTER_CONFLICT carries the CAS's value). */
function fail(a: Answer): Extract<Answer, { kind: Kind.State }> {
  if (a.kind === Kind.State) return a;
  throw new CdbpError(a.code as ErrorCode, `CAS: ${a.message}`,
    a.code === 'COUNTER_CONFLICT' ? { details: { value: a.value, digest: a.digest } } : {});
}

interface Outstanding {
  id: number;
  at: number;
  resolve: (a: Answer) => void;
  reject: (e: Error) => void;
}

/** One open channel: sends frames, matches answers to requests in order, fails everything on a break. */
class Session {
  alive = true;
  private sendSeq = 0;
  private nextId = 1;
  private readonly reader: FrameReader;
  private readonly waiting: Outstanding[] = [];
  private readonly watchdog: NodeJS.Timeout;

  constructor(private readonly tls: TLSSocket, private readonly macKey: Buffer, timeoutMs: number, readonly membership?: string) {
    this.reader = new FrameReader(macKey, Dir.ToClient);
    tls.setNoDelay(true);
    tls.on('data', (c: Buffer) => this.feed(c));
    tls.on('error', (e) => this.destroy(casConnectionError(e, 'counter channel', true)));
    tls.on('close', () => this.destroy(new CdbpError('CAS_UNREACHABLE', 'the counter channel to the CAS closed')));
    // One timer per channel, not per request: the oldest request bounds them all (answers are in order).
    this.watchdog = setInterval(() => {
      const head = this.waiting[0];
      if (head && Date.now() - head.at > timeoutMs) this.destroy(new CdbpError('CAS_UNREACHABLE', `the CAS did not answer on the counter channel within ${timeoutMs} ms`));
    }, Math.min(1000, timeoutMs));
    this.watchdog.unref();
  }

  send(body: RequestBody): Promise<Answer> {
    if (!this.alive) return Promise.reject(new CdbpError('CAS_UNREACHABLE', 'the counter channel to the CAS closed'));
    const id = this.nextId;
    this.nextId = (this.nextId % 0xffff_ffff) + 1;
    return new Promise<Answer>((resolve, reject) => {
      this.waiting.push({ id, at: Date.now(), resolve, reject });
      this.tls.write(sealFrame(this.macKey, Dir.ToCas, this.sendSeq++, encodeRequest({ ...body, id } as Request)));
    });
  }

  feed(chunk: Buffer): void {
    try {
      for (const body of this.reader.push(chunk)) {
        const a = decodeAnswer(body);
        const head = this.waiting.shift();
        if (!head || head.id !== a.id) throw new CdbpError('PROTOCOL_VIOLATION', `counter channel: answer ${a.id} where ${head?.id ?? 'none'} was due`);
        head.resolve(a);
      }
    } catch (e) {
      this.destroy(e instanceof CdbpError ? new CdbpError('CAS_IDENTITY_INVALID', `${e.message} (answers on this channel cannot be trusted)`) : (e as Error));
    }
  }

  destroy(e: Error): void {
    if (!this.alive) return;
    this.alive = false;
    clearInterval(this.watchdog);
    this.tls.destroy();
    for (const w of this.waiting.splice(0)) w.reject(e);
  }
}
