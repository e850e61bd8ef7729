import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PacketFramer } from '../../proxy/mysql/framer.ts';
import {
  clearClientCapabilities, decodeClientHello, decodeErr, decodeInitialHandshake, encodeErrPacket, encodePacket,
  okStatusFlags, patchHandshakeCapabilities, readLenEnc, sslRequestFrom,
} from '../../proxy/mysql/codec.ts';
import { Cap } from '../../proxy/mysql/constants.ts';
import { isCdbpError } from '../../src/kernel/errors.ts';

/** Builds a MariaDB-style initial handshake (CLIENT_MYSQL clear, extended caps in the reserved bytes). */
function greeting(caps: bigint, plugin = 'mysql_native_password'): Buffer {
  const parts = [
    Buffer.from([10]), Buffer.from('10.11.19-MariaDB\0'), Buffer.from([7, 0, 0, 0]), Buffer.from('abcdefgh'), Buffer.from([0]),
  ];
  const lowCaps = Buffer.alloc(2); lowCaps.writeUInt16LE(Number(caps & 0xffffn));
  const rest = Buffer.alloc(1 + 2 + 2 + 1 + 10);
  rest[0] = 45; rest.writeUInt16LE(2, 1); rest.writeUInt16LE(Number((caps >> 16n) & 0xffffn), 3); rest[5] = 21;
  rest.writeUInt32LE(Number((caps >> 32n) & 0xffffffffn), 12);
  return Buffer.concat([...parts, lowCaps, rest, Buffer.from('ijklmnopqrst\0'), Buffer.from(plugin + '\0')]);
}

const SERVER_CAPS = Cap.CLIENT_PROTOCOL_41 | Cap.CLIENT_SECURE_CONNECTION | Cap.CLIENT_PLUGIN_AUTH | Cap.CLIENT_COMPRESS |
  Cap.CLIENT_DEPRECATE_EOF | Cap.MARIADB_CLIENT_PROGRESS | Cap.MARIADB_CLIENT_CACHE_METADATA;

test('initial handshake: decodes MariaDB extended capabilities and patches SSL on / compression off without touching the rest', () => {
  const payload = greeting(SERVER_CAPS);
  const hs = decodeInitialHandshake(payload);
  assert.equal(hs.serverVersion, '10.11.19-MariaDB');
  assert.equal(hs.connectionId, 7);
  assert.equal(hs.capabilities, SERVER_CAPS);
  assert.equal(hs.authPluginName, 'mysql_native_password');
  const patched = patchHandshakeCapabilities(payload, hs, Cap.CLIENT_SSL, Cap.CLIENT_COMPRESS);
  const again = decodeInitialHandshake(patched);
  assert.equal(again.capabilities, (SERVER_CAPS | Cap.CLIENT_SSL) & ~Cap.CLIENT_COMPRESS);
  assert.equal(patched.length, payload.length);
  assert.equal(patched.toString('latin1').includes('abcdefgh'), true, 'scramble untouched');
  assert.equal(payload.readUInt16LE(hs.offsets.capsLow) & Number(Cap.CLIENT_SSL), 0, 'input not mutated');
});

test('initial handshake: malformed input is a PROTOCOL_VIOLATION', () => {
  assert.throws(() => decodeInitialHandshake(Buffer.from([9])), (e) => isCdbpError(e, 'PROTOCOL_VIOLATION'));
  assert.throws(() => decodeInitialHandshake(Buffer.from([10, 0x41, 0x42])), (e) => isCdbpError(e, 'PROTOCOL_VIOLATION'));
  assert.throws(() => decodeInitialHandshake(greeting(SERVER_CAPS).subarray(0, 30)), (e) => isCdbpError(e, 'PROTOCOL_VIOLATION'));
});

function clientHello(caps: bigint, user?: string): Buffer {
  const head = Buffer.alloc(32);
  head.writeUInt32LE(Number(caps & 0xffffffffn), 0);
  head.writeUInt32LE(16 << 20, 4);
  head[8] = 45;
  if ((caps & Cap.CLIENT_MYSQL) === 0n) head.writeUInt32LE(Number(caps >> 32n), 28);
  return user === undefined ? head : Buffer.concat([head, Buffer.from(user + '\0'), Buffer.from([0])]);
}

test('SSLRequest vs HandshakeResponse: capabilities (incl. MariaDB extended) and user; capability clearing', () => {
  const caps = Cap.CLIENT_PROTOCOL_41 | Cap.CLIENT_SSL | Cap.CLIENT_PLUGIN_AUTH | Cap.MARIADB_CLIENT_STMT_BULK_OPERATIONS;
  const ssl = decodeClientHello(clientHello(caps));
  assert.equal(ssl.isSslRequest, true);
  assert.equal(ssl.capabilities, caps);
  const resp = decodeClientHello(clientHello(caps, 'alice'));
  assert.equal(resp.isSslRequest, false);
  assert.equal(resp.user, 'alice');
  const cleared = decodeClientHello(clearClientCapabilities(clientHello(caps, 'alice'), Cap.CLIENT_SSL));
  assert.equal(cleared.capabilities, caps & ~Cap.CLIENT_SSL);
  assert.equal(decodeClientHello(sslRequestFrom(clearClientCapabilities(clientHello(caps, 'bob'), Cap.CLIENT_SSL))).isSslRequest, true);
  assert.throws(() => decodeClientHello(Buffer.alloc(10)), (e) => isCdbpError(e, 'PROTOCOL_VIOLATION'));
  assert.throws(() => decodeClientHello(clientHello(Cap.CLIENT_SSL)), /4\.1/);
});

test('ERR packets round-trip; OK status flags are read after two length-encoded integers', () => {
  const pkt = encodeErrPacket(2, { errno: 3159, sqlState: 'HY000', message: 'TLS required' });
  assert.equal(pkt.readUIntLE(0, 3), pkt.length - 4);
  assert.equal(pkt[3], 2);
  assert.deepEqual(decodeErr(pkt.subarray(4)), { errno: 3159, sqlState: 'HY000', message: 'TLS required' });
  const ok = Buffer.from([0x00, 0xfc, 0x10, 0x27, 0x05, 0x03, 0x00, 0x00, 0x00]);
  assert.equal(okStatusFlags(ok, 0, ok.length), 0x0003);
  assert.equal(okStatusFlags(ok, 0, 5), undefined, 'truncated → undefined, not a wrong value');
  assert.deepEqual(readLenEnc(Buffer.from([0xfd, 1, 2, 3]), 0), { value: 0x030201, next: 4 });
  assert.throws(() => readLenEnc(Buffer.from([0xff]), 0), (e) => isCdbpError(e, 'PROTOCOL_VIOLATION'));
});

test('framer: every split point of a multi-packet stream yields the same packets', () => {
  const stream = Buffer.concat([
    encodePacket(0, greeting(SERVER_CAPS)), encodePacket(1, Buffer.alloc(0)), encodePacket(2, Buffer.from('x'.repeat(300))),
    encodePacket(3, clientHello(Cap.CLIENT_PROTOCOL_41, 'u')),
  ]);
  const expected = new PacketFramer(1 << 20).pushAll(stream).map((p) => [p.seq, p.payload.toString('hex')]);
  assert.equal(expected.length, 4);
  for (let i = 0; i <= stream.length; i++) {
    for (const j of [i, Math.min(stream.length, i + 1), Math.min(stream.length, i + 5)]) {
      const f = new PacketFramer(1 << 20);
      const got = [...f.pushAll(stream.subarray(0, i)), ...f.pushAll(stream.subarray(i, j)), ...f.pushAll(stream.subarray(j))];
      assert.deepEqual(got.map((p) => [p.seq, p.payload.toString('hex')]), expected, `split at ${i}/${j}`);
      assert.equal(f.buffered, 0);
    }
  }
});

test('framer: an oversized length is refused at the header, before the payload arrives; takeRest keeps what follows', () => {
  const f = new PacketFramer(1024);
  f.push(Buffer.from([0x01, 0x04, 0x00]));
  assert.equal(f.next(), undefined);
  f.push(Buffer.from([0x01]));
  assert.throws(() => f.next(), (e) => isCdbpError(e, 'FRAME_TOO_LARGE'));
  const g = new PacketFramer(1024);
  g.push(Buffer.concat([encodePacket(1, Buffer.from('ssl')), Buffer.from([0x16, 0x03, 0x01])]));
  assert.equal(g.next()?.payload.toString(), 'ssl');
  assert.deepEqual([...g.takeRest()], [0x16, 0x03, 0x01], 'TLS bytes after an SSLRequest are handed over untouched');
});
