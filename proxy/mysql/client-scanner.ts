/**
 * Client→server scanning in the command phase, in every pump mode: finds command starts, refuses a
 * COM_CHANGE_USER to a forbidden user before any of it is forwarded, and reports each command to an
 * optional sink (the ResponseTracker, when an ack gate is configured). Pure: bytes in, bytes to forward out.
 *
 * Framing (https://mariadb.com/kb/en/0-packet/): 4-byte header (int<3> length, int<1> seq), payload.
 * A payload of exactly 0xFFFFFF continues in the next packet. A command starts with sequence id 0 — but
 * not every seq-0 packet is a command: after a COM_QUERY the server may ask for a LOCAL INFILE (0xFB);
 * the client then streams file data in packets numbered on from the request (they wrap through 0) until
 * an empty packet. The scanner decides this from the client's own stream, so it needs no server-side
 * parsing and cannot race it: after a COM_QUERY, a packet with seq != 0 starts file data, and everything
 * up to the next empty packet is data. The server enforces the same numbering (it answers "Got packets
 * out of order" and closes the connection on any other sequence id), so a stream the scanner reads
 * differently from the server never gets a command executed.
 *
 * Bytes are forwarded as they come, except the start of a packet whose inspected bytes (command byte,
 * up to STATEMENT_PREFIX_BYTES of statement text, or up to CHANGE_USER_INSPECT_BYTES of a change-user)
 * are not all here yet: those are held back until they are, so a refused packet never reaches the database.
 */
import { Command, MAX_PACKET_PAYLOAD, PACKET_HEADER_SIZE } from './constants.ts';
import { readPayloadLength } from './codec.ts';
import { STATEMENT_PREFIX_BYTES } from './statement-class.ts';
import { assertForbiddenNamesCheckable, changeUserName, CHANGE_USER_INSPECT_BYTES, isForbiddenUser } from './forbidden-user.ts';

export interface CommandSink {
  /**
   * A command started. `rest` holds the payload bytes after the command byte (up to
   * STATEMENT_PREFIX_BYTES, or more for a change-user), `complete` whether that is all of them. Views
   * into the chunk: use them before returning.
   */
  commandStarted(command: number, rest: Buffer, complete: boolean): void;
}

export interface ScanResult {
  /** Bytes to send to the database now (possibly empty). */
  forward: Buffer;
  /** Set when a COM_CHANGE_USER names a forbidden user: it is not in `forward`, nothing after it is either. */
  forbiddenUser?: string;
}

const EMPTY = Buffer.alloc(0);

export class ClientScanner {
  /** Payload bytes of the current physical packet still to pass. */
  private skip = 0;
  /** The current packet has length 0xFFFFFF: the next one continues the same payload. */
  private continuation = false;
  /** Start of a packet whose inspected bytes have not all arrived (not forwarded yet). */
  private held: Buffer | undefined;
  /** Command byte of the exchange in progress (the last command start). */
  private lastCommand = -1;
  /** Inside a LOCAL INFILE upload: packets are file data until an empty one. */
  private infile = false;
  private refused = false;

  constructor(private readonly forbidden: ReadonlySet<string>, private readonly sink?: CommandSink) {
    assertForbiddenNamesCheckable(forbidden);
  }

  /**
   * The client's last command was COM_QUIT: it has ended its session, so a reset that follows (the
   * mariadb connector's end() sends COM_QUIT, then destroys its socket) is a normal end, not an error.
   */
  get quitSent(): boolean {
    return this.lastCommand === Command.COM_QUIT;
  }

  /** True while the client streams LOCAL INFILE data (exposed for tests). */
  get inInfileUpload(): boolean {
    return this.infile;
  }

  push(chunk: Buffer): ScanResult {
    if (this.refused) return { forward: EMPTY };
    let buf = chunk;
    if (this.held) {
      buf = Buffer.concat([this.held, chunk]);
      this.held = undefined;
    }
    let pos = 0;
    const n = buf.length;
    while (pos < n) {
      if (this.skip > 0) {
        const k = Math.min(this.skip, n - pos);
        pos += k;
        this.skip -= k;
        continue;
      }
      const avail = n - pos;
      if (avail < PACKET_HEADER_SIZE) return this.hold(buf, pos);
      const length = readPayloadLength(buf, pos);
      const seq = buf[pos + 3]!;
      if (this.continuation) {
        this.continuation = length === MAX_PACKET_PAYLOAD;
        pos += PACKET_HEADER_SIZE;
        this.skip = length;
        continue;
      }
      if (this.infile) {
        if (length === 0) this.infile = false;
      } else if (seq !== 0) {
        // Not a command: file data after a COM_QUERY, or a change-user's auth reply.
        if (this.lastCommand === Command.COM_QUERY && length > 0) this.infile = true;
      } else {
        // A command start. MariaDB reads an empty command packet as COM_SLEEP (answered with ERR).
        const command = length > 0 ? (avail > PACKET_HEADER_SIZE ? buf[pos + PACKET_HEADER_SIZE]! : -1) : Command.COM_SLEEP;
        if (command < 0) return this.hold(buf, pos);
        const need = Math.min(length, command === Command.COM_CHANGE_USER ? CHANGE_USER_INSPECT_BYTES : 1 + STATEMENT_PREFIX_BYTES);
        if (avail < PACKET_HEADER_SIZE + need) return this.hold(buf, pos);
        const body = pos + PACKET_HEADER_SIZE;
        const rest = need > 0 ? buf.subarray(body + 1, body + need) : EMPTY;
        // A continued payload (0xFFFFFF) is never complete in its first packet.
        const complete = need === length && length < MAX_PACKET_PAYLOAD;
        if (command === Command.COM_CHANGE_USER) {
          const user = changeUserName(rest, complete);
          if (isForbiddenUser(this.forbidden, user)) {
            this.refused = true;
            return { forward: buf.subarray(0, pos), forbiddenUser: user! };
          }
        }
        this.lastCommand = command;
        this.sink?.commandStarted(command, rest, complete);
      }
      this.continuation = length === MAX_PACKET_PAYLOAD;
      pos += PACKET_HEADER_SIZE;
      this.skip = length;
    }
    return { forward: buf };
  }

  private hold(buf: Buffer, pos: number): ScanResult {
    this.held = Buffer.from(buf.subarray(pos));
    return { forward: buf.subarray(0, pos) };
  }
}
