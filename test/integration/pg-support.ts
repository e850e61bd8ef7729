/**
 * Shared helpers for the PG endpoint's integration tests: a private PostgreSQL + the proxy in front
 * of it with a throwaway PKI, captured logs, and a raw protocol client for what real clients never
 * send (garbage, huge lengths, direct TLS without ALPN).
 */
import net from 'node:net';
import tls from 'node:tls';
import { Writable } from 'node:stream';
import { execFile, spawn } from 'node:child_process';
import { Parser } from 'pg-protocol/dist/parser.js';
import { createLogger } from '../../src/kernel/log.ts';
import { MetricsRegistry } from '../../src/kernel/metrics.ts';
import { createPgProxy, type PgProxy, type PgProxyOptions } from '../../proxy/pg/index.ts';
import { startPrivatePostgres, type PrivatePostgres } from '../support/postgres.ts';
import { makeTestPki, type TestPki } from '../support/test-pki.ts';
import { tempDir } from '../support/tmp.ts';
import { encodeSslRequest } from '../../proxy/pg/codec.ts';

export interface ProxyUnderTest {
  db: PrivatePostgres;
  pki: TestPki;
  files: { caFile: string; certFile: string; keyFile: string };
  proxy: PgProxy;
  port: number;
  metrics: MetricsRegistry;
  logs: string[];
  /** A second proxy on the same database with other options. */
  extraProxy(o: Partial<PgProxyOptions>): Promise<{ proxy: PgProxy; port: number; metrics: MetricsRegistry }>;
  stop(): Promise<void>;
}

export async function startProxyUnderTest(o: Partial<PgProxyOptions> = {}, dbOpts: Parameters<typeof startPrivatePostgres>[0] = {}): Promise<ProxyUnderTest> {
  const db = await startPrivatePostgres(dbOpts);
  const pki = makeTestPki();
  const dir = tempDir('pg-pki');
  const files = pki.writeTo(dir.path);
  const logs: string[] = [];
  const log = createLogger({
    name: 'pg-test', level: 'debug',
    destination: new Writable({ write(chunk, _e, cb) { logs.push(String(chunk)); cb(); } }) as any,
  });
  const proxies: PgProxy[] = [];
  const make = async (extra: Partial<PgProxyOptions>) => {
    const metrics = new MetricsRegistry();
    const proxy = createPgProxy({
      listen: { host: '127.0.0.1', port: 0 },
      backend: { socketDir: db.server.socketDir, port: db.server.port },
      tls: { keyPem: pki.keyPem, certPem: pki.certPem },
      log, metrics, ...o, ...extra,
    });
    proxies.push(proxy);
    const { port } = await proxy.listen();
    return { proxy, port, metrics };
  };
  const main = await make({});
  return {
    db, pki, files, logs, ...main,
    extraProxy: make,
    async stop() {
      for (const p of proxies) await p.close();
      await db.stop();
      dir.remove();
    },
  };
}

/** Runs psql with a libpq connection string; never throws, returns exit code and output. */
export function psql(conninfo: string, args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile('psql', [conninfo, '-X', '-v', 'ON_ERROR_STOP=1', ...args], { env: { ...process.env, PGCONNECT_TIMEOUT: '10', ...env }, timeout: 60_000 },
      (err, stdout, stderr) => resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr }));
  });
}

export function spawnPsql(conninfo: string, args: string[], env: Record<string, string> = {}) {
  return spawn('psql', [conninfo, '-X', ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
}

/** A raw protocol connection collecting backend messages decoded by pg-protocol. */
export class RawPg {
  readonly messages: any[] = [];
  private readonly parser = new Parser();
  private waiters: Array<() => void> = [];
  closed = false;
  bytes: Buffer[] = [];

  constructor(readonly socket: net.Socket | tls.TLSSocket, parse = true) {
    socket.on('data', (d: Buffer) => {
      this.bytes.push(d);
      if (parse) this.parser.parse(d, (m) => this.messages.push(m));
      this.wake();
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  /** Waits until `pred` holds (or the socket closed), at most timeoutMs. */
  async until(pred: () => boolean, timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!pred()) {
      if (this.closed && !pred()) return;
      if (Date.now() > deadline) throw new Error('timed out waiting for the server');
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 100);
      });
    }
  }

  write(b: Buffer): void {
    this.socket.write(b);
  }

  end(): void {
    this.socket.destroy();
  }

  static async plain(port: number, parse = true): Promise<RawPg> {
    const s = net.connect(port, '127.0.0.1');
    await new Promise((r, j) => { s.once('connect', r); s.once('error', j); });
    return new RawPg(s, parse);
  }

  /** SSLRequest → 'S' → TLS (verified against the CA). */
  static async overTls(port: number, caPem: string): Promise<RawPg> {
    const s = net.connect(port, '127.0.0.1');
    await new Promise((r, j) => { s.once('connect', r); s.once('error', j); });
    s.write(encodeSslRequest());
    const answer = await new Promise<Buffer>((r) => s.once('data', r));
    if (answer.toString() !== 'S') throw new Error(`SSLRequest answered ${answer.toString('hex')}`);
    const t = tls.connect({ socket: s, ca: caPem, servername: 'localhost' });
    await new Promise((r, j) => { t.once('secureConnect', r); t.once('error', j); });
    return new RawPg(t);
  }

  /** Direct TLS (first byte is the ClientHello), with the given ALPN list. */
  static async direct(port: number, caPem: string, alpn: string[] | undefined): Promise<{ raw?: RawPg; error?: Error; alpn?: string | false | null }> {
    const t = tls.connect({ port, host: '127.0.0.1', ca: caPem, servername: 'localhost', ...(alpn ? { ALPNProtocols: alpn } : {}) });
    try {
      await new Promise((r, j) => { t.once('secureConnect', r); t.once('error', j); });
    } catch (e) {
      return { error: e as Error };
    }
    return { raw: new RawPg(t), alpn: t.alpnProtocol };
  }
}

export function hasMessage(raw: RawPg, name: string): boolean {
  return raw.messages.some((m) => m.name === name);
}
