import https from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import net from 'node:net';
import tls from 'node:tls';
import { once } from 'node:events';
import type { Duplex } from 'node:stream';
import { CdbpError, asCdbpError } from '../src/kernel/errors.ts';
import type { Logger } from '../src/kernel/log.ts';
import type { Counter, MetricsRegistry } from '../src/kernel/metrics.ts';
import type { DbKey } from '../src/provisioning/types.ts';
import { KeyStore } from './key-store.ts';
import { TokenGate } from './token.ts';
import { identityHolder, TLS_SERVER_DEFAULTS, type TlsIdentitySource } from '../src/crypto/tls-identity.ts';
import { MOUNT_PATTERN, keyBody, notFoundBody, parseVaultRequest, tuneBody, type VaultRequest } from './vault-api.ts';

export type KeyringOutcome = 'served' | 'not_found' | 'refused';

export interface KeyringAuditEvent {
  /** Key id asked for; 0 when the request named no key (mount check, garbage). */
  id: number;
  version: number | 'latest';
  outcome: KeyringOutcome;
  /** Why it was refused / not found: token, not_ready, body, method, path, unknown_version, ... */
  reason?: string;
}

export interface KeyringOptions {
  keys: DbKey[];
  /** The process's identity holder (renewal swaps it there), or a fixed pair. */
  tls: TlsIdentitySource;
  /** Loopback only; default 127.0.0.1. */
  host?: string;
  /** 0 (default) = any free port. */
  port?: number;
  /** Vault mount name in the URL; default 'cdbp'. */
  mount?: string;
  log: Logger;
  metrics?: MetricsRegistry;
  /** Called once per request that names a key, and for every refusal. Never receives key bytes. */
  audit?: (e: KeyringAuditEvent) => void;
  /** Limits; defaults suit one mariadbd on loopback. */
  limits?: Partial<KeyringLimits>;
}

export interface KeyringLimits {
  maxConnections: number;
  maxHeaderBytes: number;
  handshakeTimeoutMs: number;
  headersTimeoutMs: number;
  requestTimeoutMs: number;
  idleTimeoutMs: number;
}

export const DEFAULT_LIMITS: KeyringLimits = {
  maxConnections: 32,
  // The plugin sends host, accept and x-vault-token only: a few hundred bytes.
  maxHeaderBytes: 2048,
  handshakeTimeoutMs: 3000,
  headersTimeoutMs: 3000,
  requestTimeoutMs: 5000,
  idleTimeoutMs: 10_000,
};

export interface Keyring {
  /** Binds the TLS listener. `url` is the vault URL for MariaDB: https://HOST:PORT/v1/<mount>. */
  listen(): Promise<{ url: string; port: number }>;
  /** A fresh random token for the next mariadbd start; the previous one stops working at once. */
  issueToken(): string;
  /**
   * Key requests served (200 with key bytes) since the last issueToken(): proof that the server holding
   * the current token takes its keys from here (mariadb-encryption-check.ts). Mount checks do not count.
   */
  keysServedSinceToken(): number;
  /** Adds key versions (e.g. a rotation). Refuses to change bytes of an existing (id, version). */
  addKeys(keys: DbKey[]): void;
  close(): Promise<void>;
}

/**
 * The keyring endpoint for MariaDB's hashicorp_key_management plugin, on loopback TLS.
 *
 * Refusal policy (the plugin crashes mariadbd on an HTTP error for a key in use, see docs/KEYRING.md):
 * - a provisioned key id is never answered with an HTTP error;
 * - anything that must be refused (no/ wrong token, not ready, garbage, a body, oversized or slow
 *   headers, unknown version of a known id) is refused below HTTP: the socket is reset at once;
 * - only an unknown key id, asked with the valid token, gets the `404 {"errors":[]}` the plugin expects.
 */
export function createKeyring(opts: KeyringOptions): Keyring {
  const mount = opts.mount ?? 'cdbp';
  if (!MOUNT_PATTERN.test(mount)) throw new CdbpError('CONFIG_INVALID', `keyring mount must match ${MOUNT_PATTERN}`);
  const host = opts.host ?? '127.0.0.1';
  if (net.isIP(host) === 0 || !(host === '::1' || /^127\./.test(host))) {
    throw new CdbpError('CONFIG_INVALID', 'keyring host must be a loopback IP address (127.0.0.0/8 or ::1)', { details: { host } });
  }
  const limits = { ...DEFAULT_LIMITS, ...opts.limits };
  const log = opts.log.child({ component: 'keyring' });
  const store = new KeyStore(opts.keys);
  const tokens = new TokenGate();
  const requests: Counter | undefined = opts.metrics?.counter('cdbp_keyring_requests_total',
    'Keyring requests by outcome (served, not_found, refused)');
  const tlsFailures = opts.metrics?.counter('cdbp_keyring_tls_failures_total',
    'Connections to the keyring that failed or timed out in the TLS handshake');
  opts.metrics?.gauge('cdbp_keyring_key_versions', 'DB key versions the keyring holds', (g) => g.set(store.size));
  const refusalLog = rateLimited(1000);
  const identity = identityHolder(opts.tls);

  const server = https.createServer({
    key: identity.pem.keyPem,
    cert: identity.pem.certPem,
    ...TLS_SERVER_DEFAULTS,
    handshakeTimeout: limits.handshakeTimeoutMs,
    maxHeaderSize: limits.maxHeaderBytes,
    headersTimeout: limits.headersTimeoutMs,
    requestTimeout: limits.requestTimeoutMs,
    keepAliveTimeout: limits.idleTimeoutMs,
    // How often Node enforces headersTimeout/requestTimeout (default 30 s is far too lax here).
    connectionsCheckingInterval: 250,
  });
  server.maxConnections = limits.maxConnections;
  // Idle sockets (any state) are destroyed by Node when no 'timeout' listener is attached.
  server.setTimeout(limits.idleTimeoutMs);

  const sockets = new Set<net.Socket>();
  server.on('connection', (s: net.Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });

  let servedSinceToken = 0;
  const record = (e: KeyringAuditEvent) => {
    requests?.inc({ outcome: e.outcome });
    if (e.outcome === 'served') servedSinceToken++;
    try {
      opts.audit?.(e);
    } catch (err) {
      log.error({ err: asCdbpError(err).message }, 'keyring audit callback failed');
    }
  };

  const refuse = (socket: Duplex, e: { id: number; version: number | 'latest'; reason: string }) => {
    record({ ...e, outcome: 'refused' });
    refusalLog(() => log.warn({ id: e.id, version: e.version, reason: e.reason }, 'keyring request refused (connection reset)'));
    reset(socket);
  };

  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    const parsed: VaultRequest = parseVaultRequest(req.method, req.url, mount);
    const named = parsed.kind === 'key' ? { id: parsed.id, version: parsed.version } : { id: 0, version: 'latest' as const };
    // Order matters only for the reason recorded: the caller sees the same reset for all of them.
    if (!tokens.ready) return refuse(req.socket, { ...named, reason: 'not_ready' });
    if (!tokens.check(req.headers['x-vault-token'])) return refuse(req.socket, { ...named, reason: 'token' });
    if (hasBody(req)) return refuse(req.socket, { ...named, reason: 'body' });
    switch (parsed.kind) {
      case 'malformed':
        return refuse(req.socket, { ...named, reason: parsed.reason });
      case 'tune':
        log.debug('keyring mount check served');
        return send(res, 200, tuneBody());
      case 'key': {
        const found = store.get(parsed.id, parsed.version);
        if (found.found) {
          record({ id: parsed.id, version: parsed.version, outcome: 'served' });
          log.debug({ id: parsed.id, version: found.version, asked: parsed.version }, 'keyring key served');
          return send(res, 200, keyBody(found.key, found.version));
        }
        if (found.reason === 'unknown_id') {
          record({ id: parsed.id, version: parsed.version, outcome: 'not_found', reason: 'unknown_id' });
          log.info({ id: parsed.id, version: parsed.version }, 'keyring key id not provisioned (404)');
          return send(res, 404, notFoundBody());
        }
        // A version of a provisioned id we do not hold: a 404 here could crash mariadbd mid-flight.
        return refuse(req.socket, { id: parsed.id, version: parsed.version, reason: found.reason });
      }
      default: {
        const never: never = parsed;
        return never;
      }
    }
  });

  // Malformed HTTP, oversized headers, header/request timeouts: Node would answer 400/431/408. We don't.
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
    refuse(socket, { id: 0, version: 'latest', reason: `http_${(err.code ?? 'error').toLowerCase()}` });
  });
  // Renewal: new connections get the new pair (validated by the holder first); open ones keep theirs.
  const unsubscribeIdentity = identity.onChange((pem) => {
    server.setSecureContext({ key: pem.keyPem, cert: pem.certPem, ...TLS_SERVER_DEFAULTS });
    log.info({ event: 'tls_identity_swapped', generation: identity.generation }, 'keyring TLS identity replaced');
  });

  server.on('tlsClientError', (err: NodeJS.ErrnoException, socket: tls.TLSSocket) => {
    tlsFailures?.inc();
    refusalLog(() => log.warn({ code: err.code }, 'keyring TLS handshake failed'));
    socket.destroy();
  });
  // Methods and headers the plugin never uses get no HTTP answer either.
  server.on('checkContinue', (req: IncomingMessage) => refuse(req.socket, { id: 0, version: 'latest', reason: 'expect_continue' }));
  server.on('checkExpectation', (req: IncomingMessage) => refuse(req.socket, { id: 0, version: 'latest', reason: 'expect' }));
  server.on('connect', (_req: IncomingMessage, socket: Duplex) => refuse(socket, { id: 0, version: 'latest', reason: 'method' }));
  server.on('upgrade', (_req: IncomingMessage, socket: Duplex) => refuse(socket, { id: 0, version: 'latest', reason: 'upgrade' }));

  let listening: { url: string; port: number } | undefined;
  let closed = false;

  return {
    async listen() {
      if (closed) throw new CdbpError('KEYRING_UNAVAILABLE', 'keyring is closed');
      if (listening) return listening;
      server.listen(opts.port ?? 0, host);
      await Promise.race([
        once(server, 'listening'),
        once(server, 'error').then(([err]) => {
          throw new CdbpError('KEYRING_UNAVAILABLE', `keyring cannot listen on ${host}:${opts.port ?? 0}: ${(err as Error).message}`, { cause: err });
        }),
      ]);
      const addr = server.address() as net.AddressInfo;
      const hostPart = net.isIPv6(host) ? `[${host}]` : host;
      listening = { url: `https://${hostPart}:${addr.port}/v1/${mount}`, port: addr.port };
      log.info({ port: addr.port, mount, keys: store.summary() }, 'keyring listening');
      return listening;
    },

    issueToken() {
      if (closed) throw new CdbpError('KEYRING_UNAVAILABLE', 'keyring is closed');
      const token = tokens.issue();
      servedSinceToken = 0;
      log.info('keyring token issued (previous token revoked)');
      return token;
    },

    keysServedSinceToken() {
      return servedSinceToken;
    },

    addKeys(keys: DbKey[]) {
      const { added } = store.add(keys);
      if (added > 0) log.info({ added, keys: store.summary() }, 'keyring key versions added');
    },

    async close() {
      if (closed) return;
      closed = true;
      unsubscribeIdentity();
      tokens.revoke();
      if (!server.listening) return;
      const done = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const s of sockets) s.destroy();
      server.closeAllConnections();
      await done;
      log.info('keyring closed');
    },
  };
}

function hasBody(req: IncomingMessage): boolean {
  const cl = req.headers['content-length'];
  return req.headers['transfer-encoding'] !== undefined || (cl !== undefined && cl !== '0');
}

function send(res: ServerResponse, status: number, body: string): void {
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-store',
  });
  res.end(body);
}

/**
 * Refuses below HTTP: a TCP RST when we can reach the TCP handle (the client sees ECONNRESET at once),
 * otherwise a plain destroy. Either way no HTTP status line is ever written.
 * Order matters: the TLS socket is destroyed first so Node's HTTP connection tracking lets go of it;
 * resetting the TCP socket first leaves a dangling entry that crashes `server.close()` (Node 20).
 */
function reset(socket: Duplex): void {
  const raw = tcpOf(socket);
  socket.destroy();
  if (raw && raw !== socket && typeof raw.resetAndDestroy === 'function' && !raw.destroyed) {
    try {
      raw.resetAndDestroy();
    } catch {
      raw.destroy();
    }
  }
}

/** The TCP socket under a TLS socket (server side keeps it as `_parent`), or the socket itself. */
function tcpOf(socket: Duplex): net.Socket | undefined {
  const parent = (socket as unknown as { _parent?: unknown })._parent;
  if (parent instanceof net.Socket) return parent;
  if (socket instanceof net.Socket && !(socket instanceof tls.TLSSocket)) return socket;
  return undefined;
}

/** At most one log line per interval for the same kind of event: a flood must not become a log flood. */
function rateLimited(intervalMs: number): (emit: () => void) => void {
  let last = 0;
  return (emit) => {
    const now = Date.now();
    if (now - last < intervalMs) return;
    last = now;
    emit();
  };
}
