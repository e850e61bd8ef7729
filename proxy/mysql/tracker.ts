/**
 * Command/response boundary tracking for the command phase, used only when an AckGate is configured.
 *
 * The pump frames bytes cheaply (4-byte headers, remaining lengths, no payload copies) and calls:
 * - `commandStarted(command, rest, complete)` for every client command (found by client-scanner.ts,
 *   which also keeps LOCAL INFILE data from being read as commands);
 * - `onServerPacket(prefix, length)` for every logical server packet; it returns true when that packet
 *   ENDS the acknowledgment of a possible write outside a transaction: the packet the gate may hold.
 * `prefix` holds the first min(length, INSPECT_BYTES) payload bytes, contiguous.
 *
 * Hold rule (for COM_QUERY, COM_STMT_EXECUTE, COM_STMT_BULK_EXECUTE), by statement class
 * (statement-class.ts; prepared statements keep the class of their text, by statement id):
 * - `read` (and not a multi-result response): never held;
 * - otherwise held when the response ends outside a transaction (OK, result set, or ERR after earlier
 *   results), whether it ends with an OK or a result set (INSERT ... RETURNING);
 * - and also when a transaction was open before the command and the statement is not plain DML: BEGIN,
 *   START TRANSACTION, COMMIT AND CHAIN, a failing DDL commit the open transaction implicitly even though
 *   the response may carry IN_TRANS. "Open before" is the status of the previous response, in order.
 * - an ERR that is the whole response of a DML statement is not held (the statement failed atomically).
 *
 * Responses are matched to commands first-in first-out (clients may pipeline). The response grammar
 * (https://mariadb.com/kb/en/result-set-packets/, https://mariadb.com/kb/en/com_stmt_prepare/):
 *   OK | ERR | LOCAL_INFILE → (client data) → OK|ERR
 *   | column_count [metadata_follows] column_def* [EOF] row* (EOF|OK(0xFE)|ERR)   — repeated while MORE_RESULTS
 *   COM_STMT_PREPARE: prepare_ok param_def* [EOF] column_def* [EOF]
 *   COM_CHANGE_USER: (auth switch | more data)* (OK | ERR)
 * MariaDB progress reports (ERR with errno 0xFFFF) precede the real response and are skipped.
 */
import { Cap, Command, Header, ServerStatus } from './constants.ts';
import { readLenEnc, okStatusFlags, eofStatusFlags } from './codec.ts';
import { classifyStatement, type StatementClass } from './statement-class.ts';

/** Payload bytes the trackers need to see contiguously at the start of a packet. */
export const INSPECT_BYTES = 32;

/** COM_STMT_EXECUTE statement id meaning "the statement prepared last" (MariaDB, used for pipelining). */
const LAST_PREPARED_ID = 0xffffffff;

const enum Kind { Simple, Gated, Prepare, ChangeUser, FieldList, Statistics, Fetch }

const enum State { First, ColumnDefs, EofAfterColumns, Rows, PrepareDefs, AuthExchange }

interface PendingCommand {
  kind: Kind;
  /** Class of the statement; undefined for an execute whose statement id is resolved when it ends. */
  cls: StatementClass | undefined;
  /** COM_STMT_EXECUTE/BULK_EXECUTE statement id (resolved at the end when `cls` is undefined). */
  stmtId: number;
  /** One statement execution (not a bulk over many parameter sets): an ERR alone means nothing changed. */
  atomic: boolean;
}

function kindOf(command: number): Kind | 'none' | 'untracked' {
  switch (command) {
    case Command.COM_QUERY:
    case Command.COM_STMT_EXECUTE:
    case Command.COM_STMT_BULK_EXECUTE:
    case Command.COM_CREATE_DB:
    case Command.COM_DROP_DB:
      return Kind.Gated;
    case Command.COM_STMT_PREPARE: return Kind.Prepare;
    case Command.COM_CHANGE_USER: return Kind.ChangeUser;
    case Command.COM_FIELD_LIST: return Kind.FieldList;
    case Command.COM_STATISTICS: return Kind.Statistics;
    case Command.COM_STMT_FETCH: return Kind.Fetch;
    case Command.COM_QUIT:
    case Command.COM_STMT_CLOSE:
    case Command.COM_STMT_SEND_LONG_DATA:
      return 'none';
    case Command.COM_BINLOG_DUMP:
    case Command.COM_BINLOG_DUMP_GTID:
    case Command.COM_REGISTER_SLAVE:
    case Command.COM_MULTI:
      return 'untracked';
    default:
      return Kind.Simple;
  }
}

export class ResponseTracker {
  private readonly queue: PendingCommand[] = [];
  private state: State = State.First;
  private remainingDefs = 0;
  /** The current response contained an OK for a statement. */
  private sawOk = false;
  private lastStatus = 0;
  /** The current response has more than one result (multi-statement or stored procedure). */
  private multiResult = false;
  /** Status of the last response that carried one, in order (IN_TRANS: a transaction is open). */
  private sessionStatus = 0;
  /** Prepared statement id → class of its text (prepare_ok seen, not closed). */
  private readonly statements = new Map<number, StatementClass>();
  private lastPrepared: number | undefined;
  private readonly deprecateEof: boolean;
  private readonly cacheMetadata: boolean;
  /** Responses stopped being parseable (replication stream): the gate is no longer consulted. */
  untracked = false;

  constructor(capabilities: bigint) {
    this.deprecateEof = (capabilities & Cap.CLIENT_DEPRECATE_EOF) !== 0n;
    this.cacheMetadata = (capabilities & Cap.MARIADB_CLIENT_CACHE_METADATA) !== 0n;
  }

  /** Number of commands whose response has not ended. */
  get pending(): number {
    return this.queue.length;
  }

  /** Prepared statements currently known (for tests). */
  get preparedCount(): number {
    return this.statements.size;
  }

  /**
   * Called when a client command starts. `rest` holds the payload bytes after the command byte (at
   * least the statement text prefix, or the statement id); `complete` says whether it is all of them.
   */
  commandStarted(command: number, rest: Buffer = Buffer.alloc(0), complete = rest.length === 0): void {
    if (this.untracked) return; // final: nothing reads the queue or the statements again
    const kind = kindOf(command);
    if (kind === 'none') {
      if (command === Command.COM_STMT_CLOSE && rest.length >= 4) this.closeStatement(rest.readUInt32LE(0));
      return;
    }
    if (kind === 'untracked') {
      this.untracked = true;
      return;
    }
    if (command === Command.COM_RESET_CONNECTION || command === Command.COM_CHANGE_USER) {
      // The server closes every prepared statement of the session.
      this.statements.clear();
      this.lastPrepared = undefined;
    }
    let cls: StatementClass | undefined = 'write';
    let stmtId = -1;
    if (command === Command.COM_QUERY || command === Command.COM_STMT_PREPARE) {
      cls = classifyStatement(rest, complete);
    } else if (command === Command.COM_STMT_EXECUTE || command === Command.COM_STMT_BULK_EXECUTE) {
      if (rest.length >= 4) {
        stmtId = rest.readUInt32LE(0);
        // Known now (prepared earlier, not closed since): decide now, a pipelined CLOSE cannot change it.
        // Otherwise (the prepare is pipelined just before, or id -1) resolve when the response ends.
        cls = stmtId === LAST_PREPARED_ID ? undefined : this.statements.get(stmtId);
      }
    }
    this.queue.push({ kind, cls, stmtId, atomic: command !== Command.COM_STMT_BULK_EXECUTE });
  }

  /**
   * COM_STMT_CLOSE. -1 closes the statement prepared last (the server's LAST_STMT_ID); either way
   * "last" no longer names a live statement when it is the one closed.
   */
  private closeStatement(id: number): void {
    const target = id === LAST_PREPARED_ID ? this.lastPrepared : id;
    if (target !== undefined) this.statements.delete(target);
    if (target === this.lastPrepared) this.lastPrepared = undefined;
  }

  /** Returns true when this packet ends a gated response (hold it until the gate opens). */
  onServerPacket(prefix: Buffer, length: number): boolean {
    if (this.untracked) return false;
    const current = this.queue[0];
    if (!current) return false; // unsolicited (e.g. ERR before a server-side disconnect)
    const first = length > 0 ? prefix[0]! : -1;
    switch (this.state) {
      case State.First:
        return this.onFirst(current, prefix, length, first);
      case State.ColumnDefs:
        if (--this.remainingDefs === 0) this.state = this.deprecateEof ? State.Rows : State.EofAfterColumns;
        return false;
      case State.EofAfterColumns: {
        const status = eofStatusFlags(prefix, 0, prefix.length) ?? 0;
        // A cursor was opened: rows come later through COM_STMT_FETCH.
        if (status & ServerStatus.CURSOR_EXISTS) return this.end(current, status);
        this.state = State.Rows;
        return false;
      }
      case State.Rows:
        return this.onRow(current, prefix, length, first);
      case State.PrepareDefs:
        return --this.remainingDefs === 0 ? this.end(current, undefined) : false;
      case State.AuthExchange:
        if (first === Header.OK) return this.end(current, okStatusFlags(prefix, 0, prefix.length) ?? 0);
        if (first === Header.ERR && !this.isProgress(prefix, length)) return this.end(current, undefined);
        return false;
    }
  }

  /** Rows (text or binary) until EOF / OK(0xFE) or ERR. Binary rows start with 0x00, never 0xFE. */
  private onRow(current: PendingCommand, prefix: Buffer, length: number, first: number): boolean {
    if (first === Header.EOF && length < 0xffffff) {
      const status = (this.deprecateEof ? okStatusFlags(prefix, 0, prefix.length) : eofStatusFlags(prefix, 0, prefix.length)) ?? 0;
      if (status & ServerStatus.MORE_RESULTS_EXISTS) {
        this.lastStatus = status;
        this.multiResult = true;
        this.state = State.First;
        return false;
      }
      return this.end(current, status);
    }
    if (first === Header.ERR && !this.isProgress(prefix, length)) return this.end(current, undefined);
    return false;
  }

  private onFirst(current: PendingCommand, prefix: Buffer, length: number, first: number): boolean {
    if (current.kind === Kind.Statistics) return this.end(current, undefined); // a bare string packet
    if (current.kind === Kind.ChangeUser) {
      this.state = State.AuthExchange;
      return this.onServerPacket(prefix, length);
    }
    if (current.kind === Kind.Fetch) {
      // COM_STMT_FETCH: binary rows (first byte 0x00, not an OK) until EOF/OK(0xFE) or ERR.
      this.state = State.Rows;
      return this.onRow(current, prefix, length, first);
    }
    if (first === Header.OK) {
      if (current.kind === Kind.Prepare) {
        // prepare_ok: 0x00, int<4> stmt id, int<2> columns, int<2> params
        // Each non-empty definition list is followed by an EOF unless CLIENT_DEPRECATE_EOF.
        if (prefix.length >= 5) {
          const id = prefix.readUInt32LE(1);
          this.statements.set(id, current.cls ?? 'write');
          this.lastPrepared = id;
        } else {
          this.lastPrepared = undefined; // no id: an execute of -1 must not reach an older statement
        }
        const columns = prefix.length >= 7 ? prefix.readUInt16LE(5) : 0;
        const params = prefix.length >= 9 ? prefix.readUInt16LE(7) : 0;
        const eofs = this.deprecateEof ? 0 : (params > 0 ? 1 : 0) + (columns > 0 ? 1 : 0);
        this.remainingDefs = params + columns + eofs;
        if (this.remainingDefs === 0) return this.end(current, undefined);
        this.state = State.PrepareDefs;
        return false;
      }
      const status = okStatusFlags(prefix, 0, prefix.length) ?? 0;
      this.sawOk = true;
      this.lastStatus = status;
      if (status & ServerStatus.MORE_RESULTS_EXISTS) {
        this.multiResult = true;
        return false;
      }
      return this.end(current, status);
    }
    if (first === Header.ERR) {
      if (this.isProgress(prefix, length)) return false;
      if (current.kind === Kind.Prepare) this.lastPrepared = undefined; // "-1" no longer names a known statement
      return this.end(current, undefined);
    }
    if (first === Header.EOF && length < 0xffffff) {
      // COM_SET_OPTION/COM_DEBUG answer with EOF (or OK(0xFE) under DEPRECATE_EOF).
      const status = (this.deprecateEof ? okStatusFlags(prefix, 0, prefix.length) : eofStatusFlags(prefix, 0, prefix.length)) ?? 0;
      return this.end(current, status);
    }
    if (first === Header.LOCAL_INFILE) return false; // the client streams the file; OK/ERR follows
    if (current.kind === Kind.FieldList) {
      // COM_FIELD_LIST: column definitions until EOF, no column count
      this.state = State.Rows;
      return false;
    }
    // Result set: lenenc column count, then (CACHE_METADATA) a metadata-follows byte.
    const count = readLenEnc(prefix, 0, prefix.length);
    const columns = count?.value ?? 0;
    const metadataFollows = !this.cacheMetadata || (count !== undefined && prefix[count.next] === 1);
    if (columns > 0 && metadataFollows) {
      this.remainingDefs = columns;
      this.state = State.ColumnDefs;
    } else {
      this.state = this.deprecateEof || !metadataFollows ? State.Rows : State.EofAfterColumns;
    }
    return false;
  }

  private isProgress(prefix: Buffer, length: number): boolean {
    return length >= 3 && prefix.length >= 3 && prefix.readUInt16LE(1) === 0xffff;
  }

  /** `status` of the packet ending the response; undefined when it carries none (ERR, prepare, statistics). */
  private end(current: PendingCommand, status: number | undefined): boolean {
    const wasInTrans = (this.sessionStatus & ServerStatus.IN_TRANS) !== 0;
    let gate = false;
    if (current.kind === Kind.Gated) gate = this.holds(current, status, wasInTrans);
    if (status !== undefined) this.sessionStatus = status;
    else if (this.sawOk || this.multiResult) this.sessionStatus = this.lastStatus;
    this.queue.shift();
    this.state = State.First;
    this.sawOk = false;
    this.multiResult = false;
    this.lastStatus = 0;
    this.remainingDefs = 0;
    return gate;
  }

  private holds(current: PendingCommand, status: number | undefined, wasInTrans: boolean): boolean {
    let cls = current.cls ?? this.resolvePrepared(current.stmtId);
    // A multi-statement text may hide a write after a read-only first statement.
    if (this.multiResult && (cls === 'read' || cls === 'begin')) cls = 'write';
    if (cls === 'read') return false;
    const failedAlone = status === undefined && !this.sawOk && !this.multiResult;
    if (failedAlone && cls === 'dml' && current.atomic) return false; // an atomic statement that failed changed nothing
    const endsInTrans = status !== undefined
      ? (status & ServerStatus.IN_TRANS) !== 0
      : (this.sawOk || this.multiResult ? (this.lastStatus & ServerStatus.IN_TRANS) !== 0 : wasInTrans);
    return !endsInTrans || (wasInTrans && cls !== 'dml');
  }

  private resolvePrepared(stmtId: number): StatementClass {
    const id = stmtId === LAST_PREPARED_ID ? this.lastPrepared : stmtId;
    return (id !== undefined ? this.statements.get(id) : undefined) ?? 'write';
  }
}
