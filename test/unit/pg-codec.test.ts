import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Parser } from 'pg-protocol/dist/parser.js';
import { serialize } from 'pg-protocol';
import {
  backendKeyDataOf, decodeStartupPacket, encodeAuthenticationSasl, encodeBackendKeyData, encodeCancelRequest,
  encodeErrorResponse, encodeGssEncRequest, encodeSslRequest, encodeStartupMessage, saslMechanismsOf,
} from '../../proxy/pg/codec.ts';

/** Decodes backend messages with node-postgres' own parser: our encoders must satisfy a real client. */
function parseBackend(buf: Buffer): any[] {
  const out: any[] = [];
  new Parser().parse(buf, (m) => out.push(m));
  return out;
}

test('startup packets decode to their kind: SSLRequest, GSSENCRequest, CancelRequest, StartupMessage', () => {
  assert.deepEqual(decodeStartupPacket(encodeSslRequest()), { kind: 'ssl-request' });
  assert.deepEqual(decodeStartupPacket(encodeGssEncRequest()), { kind: 'gssenc-request' });
  assert.deepEqual(decodeStartupPacket(encodeCancelRequest(0xdeadbeef, 42)), { kind: 'cancel', processId: 0xdeadbeef, secretKey: 42 });
  // node-postgres' serializer builds the StartupMessage a real client sends
  const startup = decodeStartupPacket(serialize.startup({ user: 'alice', database: 'db1', application_name: 'x' }));
  assert.equal(startup.kind, 'startup');
  if (startup.kind !== 'startup') return;
  assert.equal(startup.protocolMajor, 3);
  assert.deepEqual([...startup.params], [['user', 'alice'], ['database', 'db1'], ['application_name', 'x'], ['client_encoding', 'UTF8']]);
  assert.deepEqual(decodeStartupPacket(encodeStartupMessage([['user', 'u']])), { kind: 'startup', protocolMajor: 3, protocolMinor: 0, params: new Map([['user', 'u']]) });
});

test('malformed startup packets are protocol violations with a SQLSTATE for the client', () => {
  const unterminated = encodeStartupMessage([['user', 'u']]).subarray(0, -1);
  unterminated.writeUInt32BE(unterminated.length, 0);
  assert.throws(() => decodeStartupPacket(unterminated), (e: any) => e.code === 'PROTOCOL_VIOLATION' && e.details.sqlState === '08P01');
  const v2 = Buffer.alloc(8);
  v2.writeUInt32BE(8, 0);
  v2.writeUInt32BE(2 << 16, 4);
  assert.throws(() => decodeStartupPacket(v2), (e: any) => e.details.sqlState === '0A000' && /unsupported frontend protocol 2\.0/.test(e.message));
  const longSsl = Buffer.alloc(12);
  longSsl.writeUInt32BE(12, 0);
  longSsl.writeUInt32BE(80877103, 4);
  assert.throws(() => decodeStartupPacket(longSsl), /invalid length of SSLRequest/);
  const dup = encodeStartupMessage([['user', 'a'], ['user', 'b']]);
  assert.throws(() => decodeStartupPacket(dup), /duplicate startup parameter/);
  const shortCancel = encodeCancelRequest(1, 2).subarray(0, 12);
  shortCancel.writeUInt32BE(12, 0);
  assert.throws(() => decodeStartupPacket(shortCancel), /invalid length of CancelRequest/);
});

test('ErrorResponse carries S, V, C, M (and D/H) fields a real client parses', () => {
  const [msg] = parseBackend(encodeErrorResponse({ severity: 'FATAL', sqlState: '28000', message: 'TLS is required', hint: 'use sslmode=require' }));
  assert.equal(msg.name, 'error');
  assert.equal(msg.severity, 'FATAL');
  assert.equal(msg.code, '28000');
  assert.equal(msg.message, 'TLS is required');
  assert.equal(msg.hint, 'use sslmode=require');
  const raw = encodeErrorResponse({ severity: 'ERROR', sqlState: '53300', message: 'm' });
  assert.equal(raw.toString('latin1', 5), 'SERROR\0VERROR\0C53300\0Mm\0\0');
});

test('BackendKeyData and AuthenticationSASL round-trip through the pg-protocol parser', () => {
  const [k] = parseBackend(encodeBackendKeyData(0x7fff0001, 0xfffffffe));
  assert.equal(k.name, 'backendKeyData');
  assert.equal(k.processID, 0x7fff0001);
  assert.deepEqual(backendKeyDataOf(encodeBackendKeyData(5, 0xfffffffe)), { processId: 5, secretKey: 0xfffffffe });
  const sasl = encodeAuthenticationSasl(['SCRAM-SHA-256', 'SCRAM-SHA-256-PLUS']);
  assert.deepEqual(saslMechanismsOf(sasl), ['SCRAM-SHA-256', 'SCRAM-SHA-256-PLUS']);
  const [m] = parseBackend(encodeAuthenticationSasl(['SCRAM-SHA-256']));
  assert.equal(m.name, 'authenticationSASL');
  assert.deepEqual(m.mechanisms, ['SCRAM-SHA-256']);
});
