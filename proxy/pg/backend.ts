/**
 * The backend leg: dialing PostgreSQL over its unix socket, plain loopback TCP, or TCP with TLS
 * (SSLRequest then TLS, verified against the given CA), and sending a CancelRequest.
 */
import net from 'node:net';
import tls from 'node:tls';
import path from 'node:path';
import { CdbpError } from '../../src/kernel/errors.ts';
import { isLoopbackHost } from '../../src/kernel/net.ts';
import { encodeCancelRequest, encodeSslRequest } from './codec.ts';
import { SSL_ACCEPT } from './constants.ts';

export type PgBackend =
  | { socketDir: string; port: number }
  | { host: string; port: number; tls?: { caPem: string; servername?: string }; allowInsecure?: boolean };

/** Refuses a plaintext backend off loopback unless explicitly allowed (it would carry passwords). */
export function validateBackend(b: PgBackend): void {
  if ('socketDir' in b) return;
  if (!b.tls && !isLoopbackHost(b.host) && !b.allowInsecure) {
    throw new CdbpError('CONFIG_INVALID',
      `plaintext PostgreSQL backend ${b.host}:${b.port} is not on loopback: configure backend.tls or set allowInsecure`);
  }
}

export function describeBackend(b: PgBackend): string {
  return 'socketDir' in b ? path.join(b.socketDir, `.s.PGSQL.${b.port}`) : `${b.host}:${b.port}${b.tls ? ' (tls)' : ''}`;
}

/** Connected socket to the backend, ready for a startup packet. */
export async function dialBackend(b: PgBackend, timeoutMs: number): Promise<net.Socket | tls.TLSSocket> {
  const sock = 'socketDir' in b ? net.connect(path.join(b.socketDir, `.s.PGSQL.${b.port}`)) : net.connect(b.port, b.host);
  const timer = setTimeout(() => sock.destroy(new CdbpError('BACKEND_UNAVAILABLE', `connecting to ${describeBackend(b)} timed out`)), timeoutMs);
  try {
    await new Promise<void>((resolve, reject) => {
      sock.once('connect', resolve);
      sock.once('error', reject);
    });
    sock.setNoDelay(true);
    if ('socketDir' in b || !b.tls) return sock;
    return await upgradeBackendTls(sock, b.host, b.tls);
  } catch (e) {
    sock.destroy();
    throw new CdbpError('BACKEND_UNAVAILABLE', `cannot reach PostgreSQL at ${describeBackend(b)}: ${(e as Error).message}`, { cause: e });
  } finally {
    clearTimeout(timer);
  }
}

async function upgradeBackendTls(sock: net.Socket, host: string, t: { caPem: string; servername?: string }): Promise<tls.TLSSocket> {
  sock.write(encodeSslRequest());
  const answer = await new Promise<Buffer>((resolve, reject) => {
    sock.once('data', (d: Buffer) => {
      sock.pause();
      resolve(d);
    });
    sock.once('error', reject);
    sock.once('end', () => reject(new Error('closed during SSLRequest')));
  });
  // Exactly one byte: anything more would be unencrypted data injected before TLS (CVE-2021-23222).
  if (answer.length !== 1 || answer[0] !== SSL_ACCEPT) throw new Error('backend refused TLS (SSLRequest not answered with S)');
  const servername = t.servername ?? (net.isIP(host) ? undefined : host);
  const secure = tls.connect({ socket: sock, ca: t.caPem, ...(servername ? { servername } : {}), host });
  await new Promise<void>((resolve, reject) => {
    secure.once('secureConnect', resolve);
    secure.once('error', reject);
  });
  return secure;
}

/** Sends a CancelRequest carrying the backend's own key data. Resolves when the backend closed it. */
export async function sendBackendCancel(b: PgBackend, processId: number, secretKey: number, timeoutMs: number): Promise<void> {
  const sock = await dialBackend(b, timeoutMs);
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      sock.destroy();
      resolve(); // the server acts on the request before closing; a slow close is not a failure
    }, timeoutMs);
    sock.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    sock.on('close', () => {
      clearTimeout(timer);
      resolve();
    });
    sock.resume();
    sock.end(encodeCancelRequest(processId, secretKey));
  });
}
