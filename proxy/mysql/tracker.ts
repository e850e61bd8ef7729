/**
 * Command/response boundary tracking for the command phase, used only when an AckGate is configured.
 *
 * The pump frames bytes cheaply (4-byte headers, remaining lengths, no payload copies) and calls:
 * - `CommandTracker.onClientPacket(prefix, length, seq)` for every logical client packet: a packet with
 *   sequence id 0 starts a command (https://mariadb.com/kb/en/0-packet/#sequence-id);
 * - `ResponseTracker.onServerPacket(prefix, length)` for every logical server packet; it returns true
 *   when that packet ENDS the response to a write-capable command outside a transaction, i.e. the
 *   acknowledgment the gate may hold.
 * `prefix` holds the first min(length, INSPECT_BYTES) payload bytes, contiguous.
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
import { isReadOnlyStatement } from './statement-class.ts';

/** Payload bytes the trackers need to see contiguously at the start of a packet. */
export const INSPECT_BYTES = 32;

const enum Kind { Simple, Gated, Prepare, ChangeUser, FieldList, Statistics }

const enum State { First, ColumnDefs, EofAfterColumns, Rows, PrepareDefs, AuthExchange, Untracked }

interface PendingCommand {
  kind: Kind;
  /** COM_QUERY whose text starts with a statement that changes no durable data (statement-class.ts). */
  readOnly: boolean;
}

function kindOf(command: number): Kind | 'none' | 'untracked' {
  switch (command) {
    case Command.COM_QUERY:
    case Command.COM_STMT_EXECUTE:
    case Command.COM_STMT_BULK_EXECUTE:
      return Kind.Gated;
    case Command.COM_STMT_PREPARE: return Kind.Prepare;
    case Command.COM_CHANGE_USER: return Kind.ChangeUser;
    case Command.COM_FIELD_LIST: return Kind.FieldList;
    case Command.COM_STATISTICS: return Kind.Statistics;
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
  /** The current response contained an OK for a statement (a write, DDL, COMMIT, SET ...). */
  private sawOk = false;
  private lastStatus = 0;
  /** The current response has more than one result (multi-statement or stored procedure). */
  private multiResult = false;
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

  /** Called when a client command starts; `text` is the start of a COM_QUERY's statement text. */
  commandStarted(command: number, text?: Buffer): void {
    const kind = kindOf(command);
    if (kind === 'none') return;
    if (kind === 'untracked') {
      this.untracked = true;
      return;
    }
    const readOnly = command === Command.COM_QUERY && text !== undefined && isReadOnlyStatement(text);
    this.queue.push({ kind, readOnly });
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
        if (first === Header.ERR && !this.isProgress(prefix, length)) return this.end(current, this.lastStatus);
        return false;
      case State.PrepareDefs:
        return --this.remainingDefs === 0 ? this.end(current, 0) : false;
      case State.AuthExchange:
        if (first === Header.OK || (first === Header.ERR && !this.isProgress(prefix, length))) return this.end(current, 0);
        return false;
      case State.Untracked:
        return false;
    }
  }

  private onFirst(current: PendingCommand, prefix: Buffer, length: number, first: number): boolean {
    if (current.kind === Kind.Statistics) return this.end(current, 0); // a bare string packet
    if (current.kind === Kind.ChangeUser) {
      this.state = State.AuthExchange;
      return this.onServerPacket(prefix, length);
    }
    if (first === Header.OK) {
      if (current.kind === Kind.Prepare) {
        // prepare_ok: 0x00, int<4> stmt id, int<2> columns, int<2> params
        // Each non-empty definition list is followed by an EOF unless CLIENT_DEPRECATE_EOF.
        const columns = prefix.length >= 7 ? prefix.readUInt16LE(5) : 0;
        const params = prefix.length >= 9 ? prefix.readUInt16LE(7) : 0;
        const eofs = this.deprecateEof ? 0 : (params > 0 ? 1 : 0) + (columns > 0 ? 1 : 0);
        this.remainingDefs = params + columns + eofs;
        if (this.remainingDefs === 0) return this.end(current, 0);
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
      return this.end(current, this.lastStatus);
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

  private end(current: PendingCommand, status: number): boolean {
    // A multi-statement text may hide a write after a read-only first statement: hold it then.
    const readOnly = current.readOnly && !this.multiResult;
    const gate = current.kind === Kind.Gated && this.sawOk && !readOnly && (status & ServerStatus.IN_TRANS) === 0;
    this.queue.shift();
    this.state = State.First;
    this.sawOk = false;
    this.multiResult = false;
    this.lastStatus = 0;
    this.remainingDefs = 0;
    return gate;
  }
}
