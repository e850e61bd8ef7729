/**
 * Hand-written MySQL protocol pieces for tests that must send what no stock client sends: a raw client
 * that frames packets with the project's framer, the SSLRequest / HandshakeResponse a test controls, and
 * a TLS upgrade after the greeting. Shared by the mysql-robustness and mysql-native suites.
 */
import net from 'node:net';
import tls from 'node:tls';
import { once } from 'node:events';
import { createHash } from 'node:crypto';
import { Cap } from '../../proxy/mysql/constants.ts';
import { encodePacket } from '../../proxy/mysql/codec.ts';
import { PacketFramer } from '../../proxy/mysql/framer.ts';

export interface RawPacket { seq: number; payload: Buffer }

/** Reads packets (no cap that matters here) and remembers when the socket closed. */
export class RawClient {
  private framer = new PacketFramer(1 << 30);
  private queue: RawPacket[] = [];
  private waiters: (() => void)[] = [];
  closed = false;
  closedAt = 0;
  constructor(public sock: net.Socket | tls.TLSSocket) { this.attach(sock); }
  attach(sock: net.Socket | tls.TLSSocket): void {
    this.sock = sock;
    sock.on('data', (c: Buffer) => { for (const p of this.framer.pushAll(c)) this.queue.push(p); this.wake(); });
    sock.on('close', () => { this.closed = true; this.closedAt = Date.now(); this.wake(); });
    sock.on('error', () => {});
  }
  private wake(): void { for (const w of this.waiters.splice(0)) w(); }
  async next(timeoutMs = 5000): Promise<RawPacket | undefined> {
    const deadline = Date.now() + timeoutMs;
    while (this.queue.length === 0 && !this.closed && Date.now() < deadline) {
      await new Promise<void>((r) => { this.waiters.push(r); setTimeout(r, 50); });
    }
    return this.queue.shift();
  }
  async untilClosed(timeoutMs = 5000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    return this.closed;
  }
}

export const CLIENT_CAPS = Cap.CLIENT_MYSQL | Cap.CLIENT_PROTOCOL_41 | Cap.CLIENT_SECURE_CONNECTION | Cap.CLIENT_PLUGIN_AUTH |
  Cap.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA | Cap.CLIENT_TRANSACTIONS | Cap.CLIENT_MULTI_RESULTS | Cap.CLIENT_SSL;

export function sslRequest(caps = CLIENT_CAPS): Buffer {
  const p = Buffer.alloc(32);
  p.writeUInt32LE(Number(caps & 0xffffffffn), 0);
  p.writeUInt32LE(1 << 24, 4);
  p[8] = 45;
  // MariaDB clients (CLIENT_MYSQL clear) send their extended capabilities in the last 4 filler bytes.
  if ((caps & Cap.CLIENT_MYSQL) === 0n) p.writeUInt32LE(Number((caps >> 32n) & 0xffffffffn), 28);
  return p;
}

/** mysql_native_password: SHA1(password) XOR SHA1(scramble ‖ SHA1(SHA1(password))). */
export function nativeToken(password: string, scramble: Buffer): Buffer {
  const sha1 = (b: Buffer) => createHash('sha1').update(b).digest();
  const s1 = sha1(Buffer.from(password));
  const h = sha1(Buffer.concat([scramble, sha1(s1)]));
  return Buffer.from(h.map((b, i) => b ^ s1[i]!));
}

/** The 20-byte scramble of an initial handshake payload (both parts). */
export function scrambleOf(greeting: Buffer): Buffer {
  const afterVersion = greeting.indexOf(0, 1) + 1;
  const part1 = greeting.subarray(afterVersion + 4, afterVersion + 12);
  const p2start = afterVersion + 4 + 8 + 1 + 2 + 1 + 2 + 2 + 1 + 10;
  return Buffer.concat([part1, greeting.subarray(p2start, p2start + 12)]);
}

export function handshakeResponse(user: string, password: string, scramble: Buffer, caps = CLIENT_CAPS): Buffer {
  const token = nativeToken(password, scramble);
  return Buffer.concat([sslRequest(caps), Buffer.from(user + '\0'), Buffer.from([token.length]), token, Buffer.from('mysql_native_password\0')]);
}

export function comQuery(sql: string): Buffer {
  return encodePacket(0, Buffer.concat([Buffer.from([0x03]), Buffer.from(sql)]));
}

/** COM_CHANGE_USER with user NUL, empty auth, empty schema: enough for the scanner and the server to read the name. */
export function comChangeUser(user: string, seq = 0): Buffer {
  return encodePacket(seq, Buffer.concat([Buffer.from([0x11]), Buffer.from(`${user}\0`), Buffer.from([0]), Buffer.from('\0')]));
}

/** TCP connect, read the greeting, send the SSLRequest, finish the TLS handshake (`ca` null: no verification). */
export async function rawTls(port: number, ca: string | null): Promise<{ tcp: net.Socket; t: tls.TLSSocket; greeting: Buffer }> {
  const tcp = net.connect(port, '127.0.0.1');
  tcp.on('error', () => {});
  await once(tcp, 'connect');
  const framer = new PacketFramer(1 << 20);
  const [greeting] = await new Promise<RawPacket[]>((resolve) => {
    const onData = (c: Buffer) => {
      const ps = framer.pushAll(c);
      if (ps.length > 0) { tcp.removeListener('data', onData); resolve(ps); }
    };
    tcp.on('data', onData);
  });
  tcp.write(encodePacket(1, sslRequest()));
  const t = tls.connect({ socket: tcp, servername: 'localhost', ...(ca ? { ca } : { rejectUnauthorized: false }) });
  t.on('error', () => {});
  await once(t, 'secureConnect');
  return { tcp, t, greeting: greeting!.payload };
}

/** Polls until `cond` holds; fails the test with `what` after `timeoutMs`. */
export async function until(cond: () => boolean, timeoutMs = 5000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
