/**
 * Pure encoders/decoders for the few MySQL/MariaDB packets the proxy must understand. No sockets, no
 * timers, no logging: Buffers in, values (or Buffers) out. Decoders throw CdbpError('PROTOCOL_VIOLATION')
 * on malformed input; callers map that to an ERR packet at the edge.
 *
 * Packet layout (https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_basic_packets.html):
 * int<3> payload_length, int<1> sequence_id, payload.
 */
import { CdbpError } from '../../src/kernel/errors.ts';
import { Cap, PACKET_HEADER_SIZE } from './constants.ts';

export interface Packet {
  seq: number;
  payload: Buffer;
}

function violation(message: string): CdbpError {
  return new CdbpError('PROTOCOL_VIOLATION', message);
}

// ---------------------------------------------------------------------------------------------
// Header

export function readPayloadLength(buf: Buffer, offset: number): number {
  return buf[offset]! | (buf[offset + 1]! << 8) | (buf[offset + 2]! << 16);
}

/** One physical packet: header + payload (payload must be < 16 MiB). */
export function encodePacket(seq: number, payload: Buffer): Buffer {
  if (payload.length >= 0xffffff) throw violation('payload too large for a single packet');
  const out = Buffer.allocUnsafe(PACKET_HEADER_SIZE + payload.length);
  out.writeUIntLE(payload.length, 0, 3);
  out[3] = seq & 0xff;
  payload.copy(out, PACKET_HEADER_SIZE);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Length-encoded integers (https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_basic_dt_integers.html)

/** Reads a length-encoded integer; returns undefined when `buf` ends before it does. */
export function readLenEnc(buf: Buffer, offset: number, end = buf.length): { value: number; next: number } | undefined {
  if (offset >= end) return undefined;
  const first = buf[offset]!;
  if (first < 0xfb) return { value: first, next: offset + 1 };
  if (first === 0xfc) return offset + 3 <= end ? { value: buf.readUInt16LE(offset + 1), next: offset + 3 } : undefined;
  if (first === 0xfd) return offset + 4 <= end ? { value: buf.readUIntLE(offset + 1, 3), next: offset + 4 } : undefined;
  if (first === 0xfe) {
    if (offset + 9 > end) return undefined;
    // Values above 2^53 do not occur in the fields we read (affected rows, column counts).
    return { value: Number(buf.readBigUInt64LE(offset + 1)), next: offset + 9 };
  }
  throw violation(`invalid length-encoded integer prefix 0x${first.toString(16)}`);
}

function cString(buf: Buffer, offset: number, what: string): { value: string; next: number } {
  const end = buf.indexOf(0, offset);
  if (end < 0) throw violation(`${what}: missing NUL terminator`);
  return { value: buf.toString('utf8', offset, end), next: end + 1 };
}

// ---------------------------------------------------------------------------------------------
// Initial handshake (server → client), protocol version 10
// https://mariadb.com/kb/en/connection/#initial-handshake-packet

export interface InitialHandshake {
  protocolVersion: number;
  serverVersion: string;
  connectionId: number;
  /** Lower 32 bits from the two capability words; MariaDB extended caps in bits 32..63. */
  capabilities: bigint;
  characterSet: number;
  statusFlags: number;
  authPluginName: string | undefined;
  /** Byte offsets inside the payload, used to patch the capability fields. */
  offsets: { capsLow: number; capsHigh: number | undefined; extendedCaps: number | undefined };
}

export function decodeInitialHandshake(payload: Buffer): InitialHandshake {
  if (payload.length < 1) throw violation('empty handshake');
  const protocolVersion = payload[0]!;
  if (protocolVersion !== 10) throw violation(`unsupported handshake protocol version ${protocolVersion}`);
  const version = cString(payload, 1, 'server version');
  let p = version.next;
  if (p + 4 + 8 + 1 + 2 > payload.length) throw violation('handshake truncated');
  const connectionId = payload.readUInt32LE(p);
  p += 4 + 8 + 1; // connection id, auth-plugin-data-part-1, filler
  const capsLow = p;
  let capabilities = BigInt(payload.readUInt16LE(p));
  p += 2;
  let characterSet = 0;
  let statusFlags = 0;
  let capsHigh: number | undefined;
  let extendedCaps: number | undefined;
  let authPluginName: string | undefined;
  if (p < payload.length) {
    if (p + 1 + 2 + 2 + 1 + 10 > payload.length) throw violation('handshake truncated after capabilities');
    characterSet = payload[p]!;
    statusFlags = payload.readUInt16LE(p + 1);
    capsHigh = p + 3;
    capabilities |= BigInt(payload.readUInt16LE(p + 3)) << 16n;
    const authDataLength = payload[p + 5]!;
    p += 6;
    // 6 bytes filler, then 4 bytes: MariaDB extended capabilities when CLIENT_MYSQL is clear.
    if ((capabilities & Cap.CLIENT_MYSQL) === 0n) {
      extendedCaps = p + 6;
      capabilities |= BigInt(payload.readUInt32LE(p + 6)) << 32n;
    }
    p += 10;
    if (capabilities & Cap.CLIENT_SECURE_CONNECTION) p += Math.max(13, authDataLength - 8);
    if (capabilities & Cap.CLIENT_PLUGIN_AUTH && p < payload.length) {
      const end = payload.indexOf(0, p);
      authPluginName = payload.toString('latin1', p, end < 0 ? payload.length : end);
    }
  }
  return {
    protocolVersion, serverVersion: version.value, connectionId, capabilities, characterSet, statusFlags,
    authPluginName, offsets: { capsLow, capsHigh, extendedCaps },
  };
}

/** A copy of a handshake payload with capability bits set and cleared (both MySQL and MariaDB words). */
export function patchHandshakeCapabilities(payload: Buffer, hs: InitialHandshake, set: bigint, clear: bigint): Buffer {
  const caps = (hs.capabilities | set) & ~clear;
  const out = Buffer.from(payload);
  out.writeUInt16LE(Number(caps & 0xffffn), hs.offsets.capsLow);
  if (hs.offsets.capsHigh !== undefined) out.writeUInt16LE(Number((caps >> 16n) & 0xffffn), hs.offsets.capsHigh);
  else if (caps >> 16n !== 0n) throw violation('cannot set upper capability bits in a short handshake');
  if (hs.offsets.extendedCaps !== undefined) out.writeUInt32LE(Number((caps >> 32n) & 0xffffffffn), hs.offsets.extendedCaps);
  return out;
}

// ---------------------------------------------------------------------------------------------
// SSLRequest and HandshakeResponse41 (client → server)
// https://mariadb.com/kb/en/connection/#sslrequest-packet, #handshake-response-packet

export const SSL_REQUEST_LENGTH = 32;

export interface ClientHello {
  /** True for the 32-byte SSLRequest, false for a full HandshakeResponse. */
  isSslRequest: boolean;
  capabilities: bigint;
  maxPacketSize: number;
  characterSet: number;
  /** User name (HandshakeResponse only). Never a password: auth data is not decoded. */
  user: string | undefined;
}

export function decodeClientHello(payload: Buffer): ClientHello {
  if (payload.length < SSL_REQUEST_LENGTH) {
    // Pre-4.1 clients (HandshakeResponse320) are not supported by MariaDB 10.x either.
    throw violation('handshake response too short (pre-4.1 protocol is not supported)');
  }
  let capabilities = BigInt(payload.readUInt32LE(0));
  if ((capabilities & Cap.CLIENT_PROTOCOL_41) === 0n) throw violation('client does not speak protocol 4.1');
  if ((capabilities & Cap.CLIENT_MYSQL) === 0n) capabilities |= BigInt(payload.readUInt32LE(28)) << 32n;
  const maxPacketSize = payload.readUInt32LE(4);
  const characterSet = payload[8]!;
  if (payload.length === SSL_REQUEST_LENGTH) {
    return { isSslRequest: true, capabilities, maxPacketSize, characterSet, user: undefined };
  }
  const user = cString(payload, SSL_REQUEST_LENGTH, 'user name').value;
  return { isSslRequest: false, capabilities, maxPacketSize, characterSet, user };
}

/** A copy of a client hello (SSLRequest or HandshakeResponse) with capability bits cleared. */
export function clearClientCapabilities(payload: Buffer, clear: bigint): Buffer {
  const out = Buffer.from(payload);
  const low = BigInt(out.readUInt32LE(0)) & ~clear & 0xffffffffn;
  out.writeUInt32LE(Number(low), 0);
  if ((low & Cap.CLIENT_MYSQL) === 0n && out.length >= SSL_REQUEST_LENGTH) {
    const ext = BigInt(out.readUInt32LE(28)) & ~(clear >> 32n) & 0xffffffffn;
    out.writeUInt32LE(Number(ext), 28);
  }
  return out;
}

/** The SSLRequest the proxy sends itself on a TLS backend leg: the first 32 bytes of the client's response. */
export function sslRequestFrom(handshakeResponse: Buffer): Buffer {
  const out = Buffer.from(handshakeResponse.subarray(0, SSL_REQUEST_LENGTH));
  out.writeUInt32LE((out.readUInt32LE(0) | Number(Cap.CLIENT_SSL)) >>> 0, 0);
  return out;
}

// ---------------------------------------------------------------------------------------------
// ERR and OK packets

export interface ErrPacket {
  errno: number;
  sqlState: string;
  message: string;
}

/** ERR payload with SQLSTATE marker (CLIENT_PROTOCOL_41), https://mariadb.com/kb/en/err_packet/ */
export function encodeErrPayload(err: ErrPacket): Buffer {
  const message = Buffer.from(err.message, 'utf8');
  const out = Buffer.allocUnsafe(1 + 2 + 1 + 5 + message.length);
  out[0] = 0xff;
  out.writeUInt16LE(err.errno, 1);
  out[3] = 0x23; // '#'
  out.write(err.sqlState.padEnd(5, '0').slice(0, 5), 4, 'latin1');
  message.copy(out, 9);
  return out;
}

export function encodeErrPacket(seq: number, err: ErrPacket): Buffer {
  return encodePacket(seq, encodeErrPayload(err));
}

/**
 * ERR sent instead of the greeting (e.g. "Too many connections" at accept). No capabilities are
 * negotiated yet, so MariaDB sends it without the SQL-state marker (net_send_error_packet writes
 * '#'+SQLSTATE only for a CLIENT_PROTOCOL_41 peer), and clients report SQLSTATE HY000. Sequence id 0.
 */
export function encodePreGreetingErrPacket(err: Pick<ErrPacket, 'errno' | 'message'>): Buffer {
  const message = Buffer.from(err.message, 'utf8');
  const payload = Buffer.allocUnsafe(3 + message.length);
  payload[0] = 0xff;
  payload.writeUInt16LE(err.errno, 1);
  message.copy(payload, 3);
  return encodePacket(0, payload);
}

export function decodeErr(payload: Buffer): ErrPacket {
  if (payload[0] !== 0xff || payload.length < 3) throw violation('not an ERR packet');
  const errno = payload.readUInt16LE(1);
  if (payload[3] === 0x23 && payload.length >= 9) {
    return { errno, sqlState: payload.toString('latin1', 4, 9), message: payload.toString('utf8', 9) };
  }
  return { errno, sqlState: 'HY000', message: payload.toString('utf8', 3) };
}

/**
 * Status flags of an OK packet (header 0x00, or 0xFE ending a result set under CLIENT_DEPRECATE_EOF):
 * header, lenenc affected rows, lenenc last insert id, int<2> status. Returns undefined if `end` comes first.
 */
export function okStatusFlags(buf: Buffer, payloadStart: number, end: number): number | undefined {
  // A malformed length (0xFB/0xFF) reads as "no status" instead of throwing: this runs inside the
  // relay's data handlers, where an exception would end more than this session (tracker.c does the same).
  const lenencStart = (at: number) => at < end && buf[at] !== 0xfb && buf[at] !== 0xff;
  if (!lenencStart(payloadStart + 1)) return undefined;
  const affected = readLenEnc(buf, payloadStart + 1, end);
  if (!affected) return undefined;
  if (!lenencStart(affected.next)) return undefined;
  const insertId = readLenEnc(buf, affected.next, end);
  if (!insertId || insertId.next + 2 > end) return undefined;
  return buf.readUInt16LE(insertId.next);
}

/** Status flags of a classic EOF packet (0xFE, int<2> warnings, int<2> status; payload length 5). */
export function eofStatusFlags(buf: Buffer, payloadStart: number, end: number): number | undefined {
  return payloadStart + 5 <= end ? buf.readUInt16LE(payloadStart + 3) : undefined;
}
