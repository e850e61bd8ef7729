/**
 * Pure codecs for the client-facing leg (the leg pg-protocol does not cover: it parses only
 * server → client and serializes only client → server), plus the two backend messages the proxy
 * rewrites. No sockets, timers or logging here: Buffers in, values (or CdbpErrors) out.
 */
import { CdbpError } from '../../src/kernel/errors.ts';
import {
  AuthCode, BackendType, CANCEL_REQUEST_LENGTH, PROTOCOL_MAJOR_3, StartupCode, type SqlStateCode,
} from './constants.ts';

// ---- startup packets (client → proxy, before any typed message) --------------------------------

export type StartupPacket =
  | { kind: 'ssl-request' }
  | { kind: 'gssenc-request' }
  | { kind: 'cancel'; processId: number; secretKey: number }
  | { kind: 'startup'; protocolMajor: number; protocolMinor: number; params: Map<string, string> };

/** A protocol error with the SQLSTATE the client should see. */
export function protocolError(message: string, sqlState: SqlStateCode = '08P01'): CdbpError {
  return new CdbpError('PROTOCOL_VIOLATION', message, { details: { sqlState } });
}

/** Decodes one complete startup packet (length prefix included), as framed by StartupFramer. */
export function decodeStartupPacket(packet: Buffer): StartupPacket {
  if (packet.length < 8) throw protocolError('invalid length of startup packet');
  const length = packet.readUInt32BE(0);
  if (length !== packet.length) throw protocolError('startup packet length does not match its frame');
  const code = packet.readUInt32BE(4);
  switch (code) {
    case StartupCode.SslRequest:
      if (length !== 8) throw protocolError('invalid length of SSLRequest');
      return { kind: 'ssl-request' };
    case StartupCode.GssEncRequest:
      if (length !== 8) throw protocolError('invalid length of GSSENCRequest');
      return { kind: 'gssenc-request' };
    case StartupCode.CancelRequest:
      if (length !== CANCEL_REQUEST_LENGTH) throw protocolError('invalid length of CancelRequest');
      return { kind: 'cancel', processId: packet.readUInt32BE(8), secretKey: packet.readUInt32BE(12) };
    default:
      break;
  }
  const major = code >>> 16;
  const minor = code & 0xffff;
  if (major !== PROTOCOL_MAJOR_3) {
    throw protocolError(`unsupported frontend protocol ${major}.${minor}: server supports 3.0 to 3.x`, '0A000');
  }
  return { kind: 'startup', protocolMajor: major, protocolMinor: minor, params: decodeStartupParams(packet.subarray(8)) };
}

/** name\0value\0 ... \0 — every string must be terminated, names unique and non-empty. */
function decodeStartupParams(body: Buffer): Map<string, string> {
  const params = new Map<string, string>();
  let pos = 0;
  for (;;) {
    if (pos >= body.length) throw protocolError('startup packet is missing its final terminator');
    if (body[pos] === 0) {
      if (pos !== body.length - 1) throw protocolError('bytes after the startup packet terminator');
      return params;
    }
    const nameEnd = body.indexOf(0, pos);
    if (nameEnd < 0) throw protocolError('unterminated parameter name in startup packet');
    const valueEnd = body.indexOf(0, nameEnd + 1);
    if (valueEnd < 0) throw protocolError('unterminated parameter value in startup packet');
    const name = body.toString('utf8', pos, nameEnd);
    if (params.has(name)) throw protocolError(`duplicate startup parameter ${JSON.stringify(name.slice(0, 64))}`);
    params.set(name, body.toString('utf8', nameEnd + 1, valueEnd));
    pos = valueEnd + 1;
  }
}

export function encodeStartupMessage(params: Iterable<[string, string]>, protocolMinor = 0): Buffer {
  const parts: Buffer[] = [];
  for (const [k, v] of params) parts.push(Buffer.from(`${k}\0${v}\0`, 'utf8'));
  parts.push(Buffer.from([0]));
  const body = Buffer.concat(parts);
  const out = Buffer.alloc(8 + body.length);
  out.writeUInt32BE(out.length, 0);
  out.writeUInt32BE((PROTOCOL_MAJOR_3 << 16) | protocolMinor, 4);
  body.copy(out, 8);
  return out;
}

export function encodeSslRequest(): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt32BE(8, 0);
  b.writeUInt32BE(StartupCode.SslRequest, 4);
  return b;
}

export function encodeGssEncRequest(): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt32BE(8, 0);
  b.writeUInt32BE(StartupCode.GssEncRequest, 4);
  return b;
}

export function encodeCancelRequest(processId: number, secretKey: number): Buffer {
  const b = Buffer.alloc(CANCEL_REQUEST_LENGTH);
  b.writeUInt32BE(CANCEL_REQUEST_LENGTH, 0);
  b.writeUInt32BE(StartupCode.CancelRequest, 4);
  b.writeUInt32BE(processId >>> 0, 8);
  b.writeUInt32BE(secretKey >>> 0, 12);
  return b;
}

// ---- messages the proxy writes to clients ------------------------------------------------------

export interface ErrorFields {
  severity: 'ERROR' | 'FATAL';
  sqlState: string;
  message: string;
  detail?: string;
  hint?: string;
}

/** ErrorResponse with S (localized severity), V (severity), C (SQLSTATE), M and optional D/H fields. */
export function encodeErrorResponse(e: ErrorFields): Buffer {
  const fields: Array<[string, string]> = [['S', e.severity], ['V', e.severity], ['C', e.sqlState], ['M', e.message]];
  if (e.detail !== undefined) fields.push(['D', e.detail]);
  if (e.hint !== undefined) fields.push(['H', e.hint]);
  const body = Buffer.concat([...fields.map(([t, v]) => Buffer.from(`${t}${v.replace(/\0/g, '')}\0`, 'utf8')), Buffer.from([0])]);
  const out = Buffer.alloc(5 + body.length);
  out[0] = BackendType.ErrorResponse;
  out.writeUInt32BE(4 + body.length, 1);
  body.copy(out, 5);
  return out;
}

export function encodeBackendKeyData(processId: number, secretKey: number): Buffer {
  const b = Buffer.alloc(13);
  b[0] = BackendType.BackendKeyData;
  b.writeUInt32BE(12, 1);
  b.writeUInt32BE(processId >>> 0, 5);
  b.writeUInt32BE(secretKey >>> 0, 9);
  return b;
}

/** Minimal typed message builder (tests and the proxy's own replies). */
export function encodeMessage(type: number, body: Buffer): Buffer {
  const out = Buffer.alloc(5 + body.length);
  out[0] = type;
  out.writeUInt32BE(4 + body.length, 1);
  body.copy(out, 5);
  return out;
}

// ---- backend messages the proxy inspects or rewrites -------------------------------------------

/** Authentication sub-code of a complete 'R' frame. */
export function authCodeOf(frame: Buffer): number {
  if (frame[0] !== BackendType.Authentication || frame.length < 9) throw protocolError('not an Authentication message');
  return frame.readUInt32BE(5);
}

/** Mechanism names of a complete AuthenticationSASL frame. */
export function saslMechanismsOf(frame: Buffer): string[] {
  if (authCodeOf(frame) !== AuthCode.Sasl) throw protocolError('not an AuthenticationSASL message');
  const out: string[] = [];
  let pos = 9;
  for (;;) {
    const end = frame.indexOf(0, pos);
    if (end < 0) throw protocolError('unterminated SASL mechanism list');
    if (end === pos) return out;
    out.push(frame.toString('utf8', pos, end));
    pos = end + 1;
  }
}

/** AuthenticationSASL frame offering exactly `mechanisms`. */
export function encodeAuthenticationSasl(mechanisms: string[]): Buffer {
  const code = Buffer.alloc(4);
  code.writeUInt32BE(AuthCode.Sasl, 0);
  const names = Buffer.from(mechanisms.map((m) => `${m}\0`).join('') + '\0', 'utf8');
  return encodeMessage(BackendType.Authentication, Buffer.concat([code, names]));
}

/** BackendKeyData (process id, secret) of a complete 'K' frame (protocol 3.0: 4-byte secret). */
export function backendKeyDataOf(frame: Buffer): { processId: number; secretKey: number } {
  if (frame[0] !== BackendType.BackendKeyData || frame.length !== 13) throw protocolError('unsupported BackendKeyData');
  return { processId: frame.readUInt32BE(5), secretKey: frame.readUInt32BE(9) };
}
