/**
 * Seeded random MySQL/MariaDB command-phase traffic for the differential tests of the native data plane
 * against its TypeScript references: a command and the server's response to it, packet by packet,
 * through every response shape the response tracker distinguishes (OK/ERR/EOF, result sets with and
 * without metadata, DEPRECATE_EOF, multi-results, prepare/execute/fetch, cursors, LOCAL INFILE, change-user,
 * progress reports, malformed and truncated packets). A seed reproduces a stream exactly.
 *
 * Used by test/unit/native-relay.test.ts (the relay's framing and holds).
 */
import { Command, ServerStatus } from '../../proxy/mysql/constants.ts';
import { STATEMENT_PREFIX_BYTES } from '../../proxy/mysql/statement-class.ts';

export type Rng = ReturnType<typeof rng>;

/** mulberry32: small, seedable, good enough to pick inputs. */
export function rng(seed: number): { next: () => number; int: (n: number) => number; pick: <T>(a: readonly T[]) => T; chance: (p: number) => boolean } {
  let s = seed >>> 0;
  const next = (): number => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number): number => Math.floor(next() * n);
  return { next, int, pick: (a) => a[int(a.length)]!, chance: (p) => next() < p };
}

const latin1 = (s: string): Buffer => Buffer.from(s, 'latin1');

const KEYWORDS = [
  'SELECT', 'select', 'SeLeCt', 'SET', 'set', 'BEGIN', 'begin', 'START', 'start', 'TRANSACTION', 'transaction', 'WORK', 'work',
  'INSERT', 'UPDATE', 'DELETE', 'REPLACE', 'SHOW', 'USE', 'DESC', 'DESCRIBE', 'EXPLAIN', 'HELP', 'ROLLBACK', 'COMMIT', 'CREATE',
  'NAMES', 'utf8mb4', 'password', 'PASSWORD', 'Password', 'statement', 'STATEMENT', 'global', 'GLOBAL', 'autocommit', 'AUTOCOMMIT',
  'next', 'NEXT', 'default', 'DEFAULT', 'role', 'ROLE', 'session', '@a', '@@session.x', '@@global.x', '@@GLOBAL.y', 'NOT', 'ATOMIC',
  'SLAVE', 'x_y', 'passwords', 'nextval', 'global_x', 'ABCDEFGHIJKLM', 'x', 'FOR', 'VALUE', 'READ', 'ONLY',
];
const BLANKS = [' ', ' ', '  ', '\t', '\n', '\r', '\r\n', '\x0b', '\x0c', '\xa0', '\x85', '\x00', '\x1c'];
const COMMENTS = ['/* c */', '/**/', '/*', '*/', '/*!40101 ', '/*M!100101 ', '/*M', '/*!', '# c\n', '#', '#\n', '-- c\n', '--', '-- ', '--\t', '--x', '\n'];
const PUNCT = [';', ',', '(', ')', '.', '=', "'", '"', '`', '*', '/', '-', '0', '9', '_', '$', '@', ':', '1', '=1'];

/** Statement text built from the words, blanks, comments and bytes the statement classifier cares about. */
export function randomStatement(r: Rng): Buffer {
  const parts: Buffer[] = [];
  const n = r.int(12);
  for (let k = 0; k < n; k++) {
    const c = r.next();
    if (c < 0.4) parts.push(latin1(r.pick(KEYWORDS)));
    else if (c < 0.65) parts.push(latin1(r.pick(BLANKS)));
    else if (c < 0.78) parts.push(latin1(r.pick(COMMENTS)));
    else if (c < 0.92) parts.push(latin1(r.pick(PUNCT)));
    else parts.push(Buffer.from([r.pick([0xa0, 0x85, 0xff, 0xe9, 0x80, 0xdf, 0xb5, 0x80 + r.int(128)])]));
  }
  return Buffer.concat(parts);
}

const AUTOCOMMIT = ServerStatus.AUTOCOMMIT;
const MORE = ServerStatus.MORE_RESULTS_EXISTS;
const stmtId = (id: number) => { const b = Buffer.alloc(9); b.writeUInt32LE(id >>> 0, 0); return b; };

/** A server packet: its payload, and the length its header claims (longer than the payload for packets the tracker must only see the start of). */
export interface Pkt { payload: Buffer; length: number }

const QUERIES = [
  'SELECT 1', 'select * from t', 'INSERT INTO t VALUES (1)', 'UPDATE t SET a = 1', 'DELETE FROM t', 'REPLACE INTO t VALUES (1)',
  'BEGIN', 'BEGIN WORK', 'START TRANSACTION', 'START TRANSACTION READ ONLY', 'COMMIT', 'COMMIT AND CHAIN', 'ROLLBACK', 'SET NAMES utf8mb4',
  'SET autocommit = 0', 'SET autocommit = 1', 'SET @x = f()', 'CREATE TABLE t (a INT)', 'CALL p()', 'USE app', 'SHOW TABLES',
  'SELECT 1; INSERT INTO t VALUES (2)', 'INSERT INTO t (v) VALUES (1) RETURNING id', 'LOAD DATA LOCAL INFILE "x" INTO TABLE t',
  `SELECT ${'x, '.repeat(30)}1`, `INSERT INTO t VALUES ${'(1), '.repeat(30)}(2)`, '/*!40101 SET NAMES utf8 */', '-- c\nSELECT 1',
];

function lenenc(r: Rng, v: number): number[] {
  // Minimal or longer (non-minimal) forms: the tracker must read both.
  const form = v < 251 ? r.pick([1, 1, 1, 3, 4, 9]) : v < 0x10000 ? r.pick([3, 4, 9]) : v < 0x1000000 ? r.pick([4, 9]) : 9;
  if (form === 1) return [v];
  const n = form - 1;
  const out = [form === 3 ? 0xfc : form === 4 ? 0xfd : 0xfe];
  for (let k = 0; k < n; k++) out.push(k < 6 ? Math.floor(v / 2 ** (8 * k)) & 0xff : 0);
  return out;
}

function statusFlags(r: Rng, more: number): number {
  let s = r.chance(0.5) ? ServerStatus.IN_TRANS : 0;
  if (r.chance(0.8)) s |= ServerStatus.AUTOCOMMIT;
  if (r.chance(more)) s |= ServerStatus.MORE_RESULTS_EXISTS;
  if (r.chance(0.08)) s |= ServerStatus.CURSOR_EXISTS;
  if (r.chance(0.08)) s |= ServerStatus.LAST_ROW_SENT;
  if (r.chance(0.1)) s |= r.int(0x10000);
  return s;
}

export class StreamGen {
  readonly prepared: number[] = [];
  private nextId = 1;

  constructor(private readonly r: Rng, private readonly deprecate: boolean, private readonly cache: boolean) {}

  private p(bytes: number[] | Buffer, length?: number): Pkt {
    const payload = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes);
    return { payload, length: length ?? payload.length };
  }

  /** OKs generated with a 0xFB/0xFF length field. */
  malformed = 0;

  okPkt(header: number, status: number): Pkt {
    const r = this.r;
    // Rarely a 0xFB/0xFF length prefix (not a valid length: read as an OK without status) or a cut-short OK.
    const bad = () => { this.malformed++; return [r.pick([0xfb, 0xff])]; };
    const affected = r.chance(0.02) ? bad() : lenenc(r, r.chance(0.8) ? r.int(3) : r.int(2 ** 24));
    const insertId = r.chance(0.02) ? bad() : lenenc(r, r.chance(0.8) ? 0 : r.int(2 ** 31));
    const full = [header, ...affected, ...insertId, status & 0xff, status >> 8, r.int(3), 0, ...(r.chance(0.3) ? [...Buffer.from('Rows matched: 1')] : [])];
    return this.p(r.chance(0.05) ? full.slice(0, 1 + r.int(full.length)) : full);
  }

  eofPkt(status: number): Pkt {
    const full = [0xfe, this.r.int(2), 0, status & 0xff, status >> 8];
    return this.p(this.r.chance(0.04) ? full.slice(0, 1 + this.r.int(5)) : full);
  }

  /** The end of a result set (or of a COM_SET_OPTION): EOF, or OK(0xFE) under DEPRECATE_EOF. */
  endPkt(status: number): Pkt {
    return this.deprecate ? this.okPkt(0xfe, status) : this.eofPkt(status);
  }

  errPkt(): Pkt {
    return this.p([0xff, ...(this.r.chance(0.1) ? [0x28] : [0x28, 0x04, 0x23, ...Buffer.from('42000syntax')])]);
  }

  progressPkt(): Pkt {
    return this.p([0xff, 0xff, 0xff, 1, 2, ...(this.r.chance(0.5) ? [0x10, 0x27, 0, 5, ...Buffer.from('stage')] : [])]);
  }

  colDef(): Pkt {
    return this.p([...Buffer.from('\x03def\x00\x00\x00\x01a\x00\x0c\x3f\x00', 'latin1'), ...(this.r.chance(0.2) ? new Array(30).fill(0x41) : [])]);
  }

  rowPkt(): Pkt {
    const r = this.r;
    const c = r.next();
    if (c < 0.4) return this.p([0x00, 0x00, ...Array.from({ length: r.int(40) }, () => r.int(256))]); // binary row
    if (c < 0.8) return this.p([2, 0x61, 0x62, 0xfb, ...Array.from({ length: r.int(10) }, () => 0x31)]); // text row, NULL
    if (c < 0.9) return this.p([0xfb, 1, 0x31]); // text row starting with NULL
    // a row starting with a 0xFE length prefix: only a packet this long can (never an EOF)
    return this.p([0xfe, ...Array.from({ length: 31 }, () => r.int(256))], 0xffffff);
  }

  junk(): Pkt {
    const r = this.r;
    const c = r.next();
    if (c < 0.4) return this.p(Array.from({ length: r.int(40) }, () => r.int(256)));
    if (c < 0.8) {
      const body = [r.pick([0x00, 0xfe, 0xff, 0xfb, 0x01, 0xfc, 0xfd, r.int(256)]), ...Array.from({ length: r.int(12) }, () => r.pick([0, 0xff, 0xfe, 0xfb, 1, 8, 0x40, r.int(256)]))];
      return this.p(body);
    }
    if (c < 0.9) return this.p([], 0);
    const body = Array.from({ length: 32 }, () => r.int(256));
    return this.p(body, r.pick([32, 0xfffffe, 0xffffff, 70000]));
  }

  /** Result set(s) of a statement; MORE_RESULTS chains further results. */
  results(depth = 0): Pkt[] {
    const r = this.r;
    const out: Pkt[] = [];
    const more = depth < 3 ? 0.2 : 0;
    if (r.chance(0.05)) out.push(this.progressPkt());
    const c = r.next();
    if (c < 0.35) {
      const status = statusFlags(r, more);
      out.push(this.okPkt(0x00, status));
      if (status & MORE || r.chance(0.05)) out.push(...this.results(depth + 1));
      return out;
    }
    if (c < 0.45) return [...out, this.errPkt()];
    if (c < 0.5) return [...out, this.p([0xfb, ...Buffer.from('/tmp/x.csv')]), r.chance(0.8) ? this.okPkt(0x00, statusFlags(r, 0)) : this.errPkt()];
    // result set
    const columns = r.chance(0.95) ? 1 + r.int(3) : r.pick([0, 251, 300]);
    const count = lenenc(r, columns);
    const long = count[0] === 0xfe; // an 8-byte count only reads as one in a packet of 0xFFFFFF bytes or more
    let meta = true;
    const countPkt = [...count];
    if (this.cache) {
      const m = r.pick([0, 1, 1, 2]);
      meta = m === 1;
      if (r.chance(0.95)) countPkt.push(m);
    }
    out.push(this.p(countPkt, long && r.chance(0.7) ? 0xffffff : undefined));
    if (meta) {
      // Rarely one definition too few or too many: the trackers then go out of step the same way.
      const defs = Math.max(0, columns + (r.chance(0.02) ? r.pick([-1, 1]) : 0));
      for (let k = 0; k < defs; k++) out.push(this.colDef());
      if (!this.deprecate) out.push(this.eofPkt(statusFlags(r, 0)));
    }
    const rows = r.int(4);
    for (let k = 0; k < rows; k++) out.push(this.rowPkt());
    if (r.chance(0.1)) out.push(this.progressPkt());
    if (r.chance(0.15)) {
      out.push(this.errPkt());
      return out;
    }
    const status = statusFlags(r, more);
    out.push(this.endPkt(status));
    if (status & MORE) out.push(...this.results(depth + 1));
    return out;
  }

  prepareResponse(): Pkt[] {
    const r = this.r;
    if (r.chance(0.15)) return [this.errPkt()];
    const id = r.chance(0.85) ? this.nextId++ : r.pick([0xffffffff, r.int(2 ** 32), 0, ...this.prepared.slice(-2)]);
    this.prepared.push(id);
    const columns = r.pick([0, 0, 1, 2, 3]);
    const params = r.pick([0, 0, 1, 2]);
    const b = Buffer.alloc(12);
    b.writeUInt32LE(id >>> 0, 1); b.writeUInt16LE(columns, 5); b.writeUInt16LE(params, 7);
    const out = [this.p(r.chance(0.05) ? b.subarray(0, 1 + r.int(11)) : b)];
    for (let k = 0; k < params; k++) out.push(this.colDef());
    if (params > 0 && !this.deprecate) out.push(this.eofPkt(AUTOCOMMIT));
    for (let k = 0; k < columns; k++) out.push(this.colDef());
    if (columns > 0 && !this.deprecate) out.push(this.eofPkt(AUTOCOMMIT));
    return out;
  }

  executeResponse(): Pkt[] {
    const r = this.r;
    if (r.chance(0.15) && !this.deprecate) {
      // a cursor: the EOF after the column definitions carries CURSOR_EXISTS and ends the response
      return [this.p([1]), this.colDef(), this.eofPkt(AUTOCOMMIT | ServerStatus.CURSOR_EXISTS | (r.chance(0.5) ? ServerStatus.IN_TRANS : 0))];
    }
    return this.results();
  }

  fetchResponse(): Pkt[] {
    const r = this.r;
    const out: Pkt[] = [];
    for (let k = r.int(4); k > 0; k--) out.push(this.rowPkt());
    out.push(r.chance(0.1) ? this.errPkt() : this.endPkt(ServerStatus.CURSOR_EXISTS | ServerStatus.LAST_ROW_SENT | statusFlags(r, 0.05)));
    return out;
  }

  changeUserResponse(): Pkt[] {
    const r = this.r;
    const out: Pkt[] = [];
    if (r.chance(0.5)) out.push(this.p(Buffer.from('\xfemysql_native_password\x0012345678901234567890\x00', 'latin1')));
    if (r.chance(0.3)) out.push(this.p([0x01, 0x03]));
    if (r.chance(0.2)) out.push(this.progressPkt());
    out.push(r.chance(0.8) ? this.okPkt(0x00, statusFlags(r, 0.05)) : this.errPkt());
    return out;
  }

  /** A client command and the server's response to it. */
  command(): { command: number; rest: Buffer; complete: boolean; response: Pkt[]; what: string } {
    const r = this.r;
    const c = r.next();
    const execId = (): number => (this.prepared.length > 0 && r.chance(0.6) ? r.pick(this.prepared) : r.chance(0.5) ? 0xffffffff : r.int(2 ** 32));
    const idRest = (id: number): Buffer => (r.chance(0.05) ? stmtId(id).subarray(0, r.int(4)) : stmtId(id));
    const text = (): { rest: Buffer; complete: boolean } => {
      const full = r.chance(0.3) ? randomStatement(r) : latin1(r.pick(QUERIES));
      const rest = full.subarray(0, STATEMENT_PREFIX_BYTES);
      return { rest, complete: r.chance(0.05) ? r.chance(0.5) : full.length === rest.length };
    };
    if (c < 0.4) {
      const { rest, complete } = text();
      return { command: Command.COM_QUERY, rest, complete, response: this.results(), what: 'COM_QUERY' };
    }
    if (c < 0.5) {
      const { rest, complete } = text();
      return { command: Command.COM_STMT_PREPARE, rest, complete, response: this.prepareResponse(), what: 'COM_STMT_PREPARE' };
    }
    if (c < 0.65) {
      const bulk = r.chance(0.1);
      return { command: bulk ? Command.COM_STMT_BULK_EXECUTE : Command.COM_STMT_EXECUTE, rest: idRest(execId()), complete: false, response: this.executeResponse(), what: 'EXECUTE' };
    }
    if (c < 0.71) return { command: Command.COM_STMT_CLOSE, rest: idRest(execId()), complete: true, response: [], what: 'COM_STMT_CLOSE' };
    if (c < 0.74) return { command: Command.COM_STMT_FETCH, rest: stmtId(execId()), complete: true, response: this.fetchResponse(), what: 'COM_STMT_FETCH' };
    if (c < 0.77) {
      const response = r.chance(0.85) ? [...Array.from({ length: r.int(3) }, () => this.colDef()), this.endPkt(statusFlags(r, 0))] : [this.errPkt()];
      return { command: Command.COM_FIELD_LIST, rest: latin1('t\0'), complete: true, response, what: 'COM_FIELD_LIST' };
    }
    if (c < 0.8) {
      const first = r.chance(0.8) ? latin1('Uptime: 5  Threads: 1') : Buffer.from([r.pick([0x00, 0xff, 0xfe])]);
      return { command: Command.COM_STATISTICS, rest: Buffer.alloc(0), complete: true, response: [this.p(first)], what: 'COM_STATISTICS' };
    }
    if (c < 0.83) return { command: Command.COM_CHANGE_USER, rest: latin1('u\0'), complete: false, response: this.changeUserResponse(), what: 'COM_CHANGE_USER' };
    if (c < 0.86) {
      return { command: Command.COM_RESET_CONNECTION, rest: Buffer.alloc(0), complete: true, response: [r.chance(0.9) ? this.okPkt(0x00, statusFlags(r, 0)) : this.errPkt()], what: 'COM_RESET_CONNECTION' };
    }
    if (c < 0.89) return { command: Command.COM_SET_OPTION, rest: Buffer.from([r.int(2), 0]), complete: true, response: [r.chance(0.9) ? this.endPkt(statusFlags(r, 0.05)) : this.errPkt()], what: 'COM_SET_OPTION' };
    if (c < 0.9) return { command: Command.COM_STMT_SEND_LONG_DATA, rest: stmtId(execId()), complete: false, response: [], what: 'SEND_LONG_DATA' };
    if (c < 0.902) return { command: r.pick([Command.COM_BINLOG_DUMP, Command.COM_BINLOG_DUMP_GTID, Command.COM_REGISTER_SLAVE, Command.COM_MULTI]), rest: Buffer.alloc(10), complete: true, response: Array.from({ length: 3 }, () => this.p([0x00, 1, 2, 3])), what: 'replication' };
    if (c < 0.93) return { command: r.pick([Command.COM_CREATE_DB, Command.COM_DROP_DB]), rest: latin1('d'), complete: true, response: [r.chance(0.8) ? this.okPkt(0x00, statusFlags(r, 0.05)) : this.errPkt()], what: 'CREATE/DROP_DB' };
    const command = r.pick([Command.COM_PING, Command.COM_INIT_DB, Command.COM_SLEEP, Command.COM_DEBUG, Command.COM_PROCESS_KILL, Command.COM_STMT_RESET, Command.COM_QUIT, r.int(256)]);
    return { command, rest: Buffer.alloc(r.int(3)), complete: true, response: [r.chance(0.8) ? this.okPkt(0x00, statusFlags(r, 0.05)) : r.chance(0.5) ? this.errPkt() : this.endPkt(statusFlags(r, 0))], what: `command 0x${command.toString(16)}` };
  }
}

