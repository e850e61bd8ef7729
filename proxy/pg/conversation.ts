/**
 * A mirror of one PostgreSQL session's request/response conversation, for the ack gate (strict
 * freshness). The backend answers client messages strictly in order (protocol chapter 55.2), so the
 * proxy keeps a queue of the requests it forwarded and pops them as the answers come back. From
 * that it knows two things the byte stream alone cannot tell:
 *
 * 1. Whether the message after a CommandComplete will come from the backend on its own, or only
 *    after the client sends more (Execute with a row limit + Flush, no Sync: the successor waits for
 *    the client's next Execute or Sync). The gate only ever waits for a successor of the first kind;
 *    waiting for the second kind deadlocks client and proxy (issue 21, item 1).
 * 2. Whether the transaction that just ended may have changed durable data, from the statements'
 *    classes (statement-class.ts: text of Query and Parse, carried through Bind to Execute), COPY FROM
 *    (CopyInResponse), FunctionCall, and the command tags that end transactions. A transaction that
 *    wrote nothing is answered at once; a write's acknowledgment is held until it is sealed.
 *
 * Hold points (verdict `hold`): ReadyForQuery 'I' ending a transaction that may have written (with the
 * CommandComplete right before it when that one's successor was known to come from the backend), and
 * a CommandComplete `COMMIT` / `PREPARE TRANSACTION` of such a transaction, and `COMMIT PREPARED`
 * always. A hold waits only for the seal, never for the client.
 *
 * When the mirror meets an answer it cannot place (an unknown message, a reply that does not fit the
 * queue), it gives up being clever for the rest of the session (`lost`): every ReadyForQuery 'I' is
 * held, every CommandComplete released at once (except commits, held). That is always safe and live.
 *
 * Pure state: no sockets, no timers. The ack gate feeds it backend messages, the client scanner feeds
 * it client messages (both in stream order, on one thread).
 */
import { BackendType, FrontendType, TxStatus } from './constants.ts';

/** What the gate does with a complete backend message. */
export type Verdict =
  /** Pass it (and anything kept before it) to the client. */
  | 'release'
  /** A CommandComplete whose successor comes from the backend unasked: keep it until that successor is seen. */
  | 'await'
  /** Ask the freshness gate; hold this message (and anything kept before it) until the answer. */
  | 'hold';

/** Does a statement change durable data? `unknown` is treated as `write`. */
export type WriteClass = 'read' | 'write';
export type Classifier = (text: string, complete: boolean) => WriteClass;

/** Every statement may write (the conservative classifier). */
export const everyStatementWrites: Classifier = () => 'write';

type RequestKind = 'query' | 'parse' | 'bind' | 'describe' | 'execute' | 'close' | 'sync' | 'fcall' | 'copy-end' | 'other';

interface Request {
  kind: RequestKind;
  /** query / execute / fcall: may change durable data. */
  writes: boolean;
  /** A Flush followed it (the backend delivers its answer without waiting for more input). */
  flushAfter: boolean;
  /** Its class was applied to the transaction (at its first answer). */
  applied: boolean;
  /** A Query whose text may hold more than one statement. */
  multi: boolean;
}

/** Names remembered per session; past this, new names are not remembered (their Executes count as writes). */
const MAX_NAMES = 10_000;
/** Requests in flight beyond which the client is paused until the backend catches up (memory bound). */
const BACKLOG_HIGH = 50_000;
const BACKLOG_LOW = 10_000;

/** A `;` followed by anything but blanks: the Query text may hold another statement. */
const MORE_STATEMENTS = /;[\s;]*[^\s;]/;

/** Messages the backend may send at any time, outside the request/response order. */
export function isAsyncBackendMessage(type: number): boolean {
  return type === BackendType.NoticeResponse || type === BackendType.NotificationResponse || type === BackendType.ParameterStatus;
}

export class Conversation {
  private readonly queue: Request[] = [];
  private qHead = 0;
  /** Prepared statement name → class; portal name → class (from its statement at Bind). */
  private readonly statements = new Map<string, WriteClass>();
  private readonly portals = new Map<string, WriteClass>();
  /** After an error in an extended-query message the backend skips everything until Sync. */
  private discarding = false;
  /** The backend is in COPY FROM STDIN and the client has not yet sent CopyDone/CopyFail. */
  private clientCopyIn = false;
  /** The current transaction may have changed durable data. */
  private dirty = false;
  /** The last CommandComplete of the current transaction was ROLLBACK. */
  private rolledBack = false;
  /** The mirror could not place an answer: from now on, conservative verdicts. */
  lost: string | undefined;
  private backlogged = false;

  /**
   * `onBacklog(true)`: the client pipelined more requests than the proxy keeps track of; pause it until
   * `onBacklog(false)`. `onLost`: the mirror gave up (logged once by the session).
   */
  constructor(
    private readonly classify: Classifier = everyStatementWrites,
    private readonly hooks: { onBacklog?(paused: boolean): void; onLost?(why: string): void } = {},
  ) {}

  /** Requests forwarded and not yet fully answered. */
  get pending(): number {
    return this.queue.length - this.qHead;
  }

  // ---- client → backend ----------------------------------------------------------------------

  /**
   * One complete client message. `body` is its body (after the 5-byte header), possibly cut short
   * at the scanner's cap (`complete` false): names and text are then not trusted.
   */
  onClientMessage(type: number, body: Buffer, complete: boolean): void {
    if (this.lost) return;
    if (this.clientCopyIn) {
      // In COPY FROM STDIN the backend ignores Sync and Flush (55.2.6); CopyDone / CopyFail end it.
      if (type === FrontendType.CopyData || type === FrontendType.Sync || type === FrontendType.Flush) return;
      this.clientCopyIn = false;
      if (type === FrontendType.CopyDone || type === FrontendType.CopyFail) return;
      // Anything else aborts the copy with an error; it is then handled like any message below.
    }
    if (this.discarding && type !== FrontendType.Sync) return; // the backend will skip it
    switch (type) {
      case FrontendType.Query: {
        const text = cString(body, 0);
        this.push('query', text === undefined || this.classify(text.value, complete) !== 'read', text === undefined || MORE_STATEMENTS.test(text.value));
        return;
      }
      case FrontendType.Parse: {
        const name = cString(body, 0);
        const text = name && cString(body, name.end);
        if (!name) {
          this.statements.clear(); // we cannot tell which name it redefined
        } else {
          remember(this.statements, name.value, text && complete ? this.classify(text.value, true) : 'write');
        }
        this.push('parse', false);
        return;
      }
      case FrontendType.Bind: {
        const portal = cString(body, 0);
        const statement = portal && cString(body, portal.end);
        if (!portal) this.portals.clear();
        else remember(this.portals, portal.value, (statement && this.statements.get(statement.value)) ?? 'write');
        this.push('bind', false);
        return;
      }
      case FrontendType.Execute: {
        const portal = cString(body, 0);
        this.push('execute', !portal || this.portals.get(portal.value) !== 'read');
        return;
      }
      case FrontendType.Close: {
        const name = cString(body, 1);
        if (!name) {
          this.statements.clear();
          this.portals.clear();
        } else if (body[0] === 0x53 /* 'S' */) {
          this.statements.delete(name.value);
        } else {
          this.portals.delete(name.value);
        }
        this.push('close', false);
        return;
      }
      case FrontendType.Describe:
        this.push('describe', false);
        return;
      case FrontendType.Sync:
        this.discarding = false;
        this.push('sync', false);
        return;
      case FrontendType.Flush: {
        const last = this.queue[this.queue.length - 1];
        if (last && this.pending > 0) last.flushAfter = true;
        return;
      }
      case FrontendType.FunctionCall:
        this.push('fcall', true);
        return;
      case FrontendType.CopyData:
        return; // outside COPY the backend drops it; inside, it belongs to the COPY request
      case FrontendType.CopyDone:
      case FrontendType.CopyFail:
        // Marks where the client's copy data ended, for a COPY the backend has not started yet.
        this.push('copy-end', false);
        return;
      case FrontendType.Terminate:
        return;
      default:
        this.push('other', true);
    }
  }

  private push(kind: RequestKind, writes: boolean, multi = false): void {
    this.queue.push({ kind, writes, flushAfter: false, applied: false, multi });
    if (!this.backlogged && this.pending > BACKLOG_HIGH) {
      this.backlogged = true;
      this.hooks.onBacklog?.(true);
    }
  }

  // ---- backend → client ----------------------------------------------------------------------

  /**
   * One backend message (type; for CommandComplete its tag, for ReadyForQuery its status byte).
   * Returns what the gate does with it; async messages are always `release` (the gate keeps them
   * behind an awaited CommandComplete itself).
   */
  onBackendMessage(type: number, body?: Buffer): Verdict {
    if (isAsyncBackendMessage(type)) return 'release';
    if (this.lost) return this.lostVerdict(type, body);
    const head = this.head();
    if (!head) return this.lose(`backend message 0x${type.toString(16)} with no request outstanding`, type, body);
    if (!head.applied) {
      head.applied = true;
      if (head.writes) this.dirty = true;
    }
    const k = head.kind;
    switch (type) {
      case BackendType.ParseComplete:
        return this.popIf(k === 'parse', type, body);
      case BackendType.BindComplete:
        return this.popIf(k === 'bind', type, body);
      case BackendType.CloseComplete:
        return this.popIf(k === 'close', type, body);
      case BackendType.ParameterDescription:
        return k === 'describe' ? 'release' : this.lose('ParameterDescription out of place', type, body);
      case BackendType.NoData:
        return this.popIf(k === 'describe', type, body);
      case BackendType.RowDescription:
        if (k === 'describe') return this.popIf(true, type, body);
        return k === 'query' ? 'release' : this.lose('RowDescription out of place', type, body);
      case BackendType.DataRow:
      case BackendType.CopyOutResponse:
      case BackendType.CopyData:
      case BackendType.CopyDone:
        return k === 'query' || k === 'execute' ? 'release' : this.lose('row data out of place', type, body);
      case BackendType.PortalSuspended:
        return this.popIf(k === 'execute', type, body);
      case BackendType.EmptyQueryResponse:
        if (k === 'execute') return this.popIf(true, type, body);
        return k === 'query' ? 'release' : this.lose('EmptyQueryResponse out of place', type, body);
      case BackendType.FunctionCallResponse:
        return k === 'fcall' ? 'release' : this.lose('FunctionCallResponse out of place', type, body);
      case BackendType.CopyInResponse:
      case BackendType.CopyBothResponse:
        if (k !== 'query' && k !== 'execute') return this.lose('CopyInResponse out of place', type, body);
        this.dirty = true; // COPY FROM writes, whatever its text looked like
        this.enterCopyIn();
        return 'release';
      case BackendType.ErrorResponse:
        return this.onError(k);
      case BackendType.CommandComplete:
        return this.onCommandComplete(head, body);
      case BackendType.ReadyForQuery:
        if (k !== 'query' && k !== 'sync' && k !== 'fcall') return this.lose('ReadyForQuery out of place', type, body);
        this.qHead++;
        this.compact();
        return this.onReady(body?.[0]);
      default:
        return this.lose(`unexpected backend message 0x${type.toString(16)}`, type, body);
    }
  }

  private onCommandComplete(head: Request, body: Buffer | undefined): Verdict {
    const tag = commandTag(body);
    let successorFromBackend: boolean;
    if (head.kind === 'query') {
      successorFromBackend = true; // the next statement's answer or ReadyForQuery follows unasked
    } else if (head.kind === 'execute') {
      this.qHead++;
      this.compact();
      successorFromBackend = this.answerDeliveredUnasked();
    } else {
      return this.lose('CommandComplete out of place', BackendType.CommandComplete, body);
    }
    this.rolledBack = tag === 'ROLLBACK';
    if (tag === 'COMMIT PREPARED' || ((tag === 'COMMIT' || tag === 'PREPARE TRANSACTION') && this.dirty)) {
      // The transaction is durable now, whatever follows: hold this acknowledgment itself. What a
      // multi-statement Query runs after it starts clean unless the Query may write.
      this.dirty = head.kind === 'query' && head.writes && head.multi;
      return 'hold';
    }
    return this.dirty && successorFromBackend ? 'await' : 'release';
  }

  private onReady(status: number | undefined): Verdict {
    if (status === TxStatus.Idle) {
      const hold = this.dirty && !this.rolledBack;
      this.dirty = false;
      this.rolledBack = false;
      return hold ? 'hold' : 'release';
    }
    if (status === TxStatus.Failed) this.dirty = false; // nothing of a failed transaction can commit
    return 'release';
  }

  private onError(k: RequestKind): Verdict {
    // An ERROR aborts the transaction (an explicit block goes to 'E', an implicit one rolls back).
    this.dirty = false;
    this.clientCopyIn = false;
    if (k === 'query' || k === 'fcall' || k === 'sync') return 'release'; // ReadyForQuery follows
    // Extended query: the backend skips every message up to the next Sync.
    while (this.pending > 0 && this.queue[this.qHead]!.kind !== 'sync') this.qHead++;
    if (this.pending === 0) this.discarding = true;
    this.compact();
    return 'release';
  }

  /** COPY FROM STDIN started for the head request: the Syncs the client sent before its CopyDone are ignored. */
  private enterCopyIn(): void {
    for (let i = this.qHead + 1; i < this.queue.length; i++) {
      const r = this.queue[i]!;
      if (r.kind === 'copy-end') {
        this.queue.splice(i, 1);
        return;
      }
      if (r.kind === 'sync') {
        this.queue.splice(i, 1);
        i--;
        continue;
      }
      // Another message inside the copy aborts it with an error (handled when that error comes).
      return;
    }
    this.clientCopyIn = true;
  }

  /**
   * After an Execute completed: will the backend send its next answer without further input? Only
   * if a request that produces an answer is queued and something flushes it: a Sync / Query /
   * FunctionCall (each ends with ReadyForQuery, which flushes), or a Flush after a request.
   */
  private answerDeliveredUnasked(): boolean {
    for (let i = this.qHead; i < this.queue.length; i++) {
      const r = this.queue[i]!;
      if (r.kind === 'copy-end') continue;
      if (r.kind === 'sync' || r.kind === 'query' || r.kind === 'fcall') return true;
      if (r.flushAfter) return true;
    }
    return false;
  }

  private head(): Request | undefined {
    while (this.pending > 0 && this.queue[this.qHead]!.kind === 'copy-end') this.qHead++; // copy data the backend drops
    return this.pending > 0 ? this.queue[this.qHead] : undefined;
  }

  private popIf(ok: boolean, type: number, body: Buffer | undefined): Verdict {
    if (!ok) return this.lose(`backend message 0x${type.toString(16)} does not answer the pending request`, type, body);
    this.qHead++;
    this.compact();
    return 'release';
  }

  private compact(): void {
    if (this.backlogged && this.pending < BACKLOG_LOW) {
      this.backlogged = false;
      this.hooks.onBacklog?.(false);
    }
    if (this.qHead > 1024 && this.qHead * 2 > this.queue.length) {
      this.queue.splice(0, this.qHead);
      this.qHead = 0;
    } else if (this.qHead === this.queue.length) {
      this.queue.length = 0;
      this.qHead = 0;
    }
  }

  /** Stops mirroring (the stream can no longer be followed); verdicts turn conservative. */
  giveUp(why: string): void {
    if (this.lost) return;
    this.lost = why;
    this.queue.length = 0;
    this.qHead = 0;
    this.statements.clear();
    this.portals.clear();
    this.compact();
    this.hooks.onLost?.(why);
  }

  private lose(why: string, type: number, body: Buffer | undefined): Verdict {
    this.giveUp(why);
    return this.lostVerdict(type, body);
  }

  /** Without the mirror: hold every idle ReadyForQuery and every commit, never wait for a successor. */
  private lostVerdict(type: number, body: Buffer | undefined): Verdict {
    if (type === BackendType.ReadyForQuery) return body?.[0] === TxStatus.Idle ? 'hold' : 'release';
    if (type === BackendType.CommandComplete) {
      const tag = commandTag(body);
      return tag === 'COMMIT' || tag === 'PREPARE TRANSACTION' || tag === 'COMMIT PREPARED' ? 'hold' : 'release';
    }
    return 'release';
  }
}

/** The command tag's words without the row counts ("INSERT 0 1" → "INSERT", "COMMIT PREPARED"). */
export function commandTag(body: Buffer | undefined): string {
  if (!body) return '';
  const nul = body.indexOf(0);
  const text = body.toString('latin1', 0, nul < 0 ? body.length : nul);
  return text.replace(/( \d+)+$/, '');
}

/** A NUL-terminated string at `from`, or undefined when the body (perhaps cut short) has no NUL. */
function cString(body: Buffer, from: number): { value: string; end: number } | undefined {
  const nul = body.indexOf(0, from);
  if (nul < 0) return undefined;
  return { value: body.toString('utf8', from, nul), end: nul + 1 };
}

function remember(map: Map<string, WriteClass>, name: string, cls: WriteClass): void {
  if (map.has(name) || map.size < MAX_NAMES) map.set(name, cls);
}
