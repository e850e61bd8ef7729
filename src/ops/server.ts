/**
 * The ops API every long-running role serves on its own port (loopback by default): health, metrics,
 * status and attestation evidence. It reads the role's own state and never dials the database on the
 * request path (cloud-sql-proxy learned that readiness probes that dial cause outages). Nothing secret
 * is ever returned: status providers hand out only public facts.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import Fastify, { type FastifyInstance, type FastifyReply } from 'fastify';
import type { Logger } from '../kernel/log.ts';
import type { Lifecycle } from '../kernel/lifecycle.ts';
import type { MetricsRegistry } from '../kernel/metrics.ts';
import { CdbpError, httpStatusFor } from '../kernel/errors.ts';
import { toHttpError, frameworkClientError } from './http-errors.ts';

const OPS_BODY_LIMIT = 1024;
const ADMIN_BODY_LIMIT = 1024;

export interface Readiness {
  ready: boolean;
  /** Why not ready, in words an operator can act on. */
  reasons: string[];
}

export interface OpsServerOptions {
  role: 'proxy' | 'cas';
  version: string;
  lifecycle: Lifecycle;
  /** Rendered on /metrics (a registry, or several joined: families must not repeat). */
  metrics: Pick<MetricsRegistry, 'render'>;
  /** Extra readiness conditions beyond lifecycle === 'ready' (cert valid, freshness verified, ...). */
  readiness?: () => Readiness;
  /** Public status facts (mode, measurement, cert subject/expiry, freshness, connections). */
  status: () => Record<string, unknown>;
  /** Evidence binding a client nonce and the serving certificate's public key. */
  attestation?: (nonce: Buffer) => Promise<Record<string, unknown>>;
  log: Logger;
}

export function buildOpsServer(opts: OpsServerOptions): FastifyInstance {
  const app = Fastify({ logger: false, bodyLimit: OPS_BODY_LIMIT, connectionTimeout: 10_000, requestTimeout: 10_000, frameworkErrors: frameworkClientError });
  // JSON only: Fastify's built-in text/plain parser would let a non-JSON body reach a route.
  app.removeContentTypeParser('text/plain');

  app.setErrorHandler((error, _req, reply) => {
    const err = toHttpError(error, { bodyLimit: OPS_BODY_LIMIT });
    const status = httpStatusFor(err.code);
    if (status >= 500) opts.log.error({ err: { code: err.code, message: err.message } }, 'ops request failed');
    // 500s may carry anything (a stack's worth of internals): hidden. Other codes are our own words.
    void reply.code(status).send({ error: { code: err.code, message: status === 500 ? 'internal error' : err.message } });
  });
  app.setNotFoundHandler((_req, reply) => {
    void reply.code(404).send({ error: { code: 'NOT_FOUND', message: 'no such endpoint' } });
  });

  const readiness = (): Readiness => {
    const reasons: string[] = [];
    const snap = opts.lifecycle.snapshot();
    if (snap.state !== 'ready') {
      reasons.push(snap.reason ? `${snap.state}: ${snap.reason.code}: ${snap.reason.message}` : `lifecycle is ${snap.state}`);
    }
    const extra = opts.readiness?.();
    if (extra && !extra.ready) reasons.push(...extra.reasons);
    return { ready: reasons.length === 0, reasons };
  };

  app.get('/livez', async () => ({ status: 'alive' }));

  app.get('/startupz', async (_req, reply) => {
    const started = opts.lifecycle.snapshot().history.some((h) => h.state === 'ready');
    return reply.code(started ? 200 : 503).send({ started, state: opts.lifecycle.state });
  });

  app.get('/readyz', async (_req, reply) => {
    const r = readiness();
    return reply.code(r.ready ? 200 : 503).send({ ready: r.ready, state: opts.lifecycle.state, reasons: r.reasons });
  });

  app.get('/metrics', async (_req, reply) => {
    return reply.type('text/plain; version=0.0.4; charset=utf-8').send(opts.metrics.render());
  });

  app.get('/v1/status', async () => {
    const snap = opts.lifecycle.snapshot();
    const r = readiness();
    return {
      role: opts.role,
      version: opts.version,
      lifecycle: { state: snap.state, since: snap.since, ...(snap.reason ? { reason: snap.reason } : {}), history: snap.history },
      ready: r.ready,
      reasons: r.reasons,
      ...opts.status(),
    };
  });

  app.get<{ Querystring: { nonce?: string } }>('/v1/attestation', {
    schema: { querystring: { type: 'object', properties: { nonce: { type: 'string', maxLength: 128 } } } },
  }, async (req) => {
    if (!opts.attestation) throw new CdbpError('NOT_FOUND', 'this role serves no attestation evidence');
    const nonce = req.query.nonce;
    if (!nonce || !/^[0-9a-fA-F]{16,128}$/.test(nonce) || nonce.length % 2 !== 0) {
      throw new CdbpError('BAD_REQUEST', 'nonce must be 8 to 64 bytes, hex-encoded');
    }
    return opts.attestation(Buffer.from(nonce, 'hex'));
  });

  return app;
}

export interface AdminActions {
  /** Graceful stop, as on SIGTERM: readiness flips, listeners close after the drain delay, sessions drain. */
  drain: () => void;
  /** Prompt stop: no drain delay, open sessions are closed, then the process exits. */
  quit: () => void;
  /** Re-attest now for a fresh certificate; resolves with public facts about it, rejects on failure. */
  renew?: () => Promise<Record<string, unknown>>;
}

export interface AdminServerOptions {
  /**
   * The per-start secret every admin request must carry as `Authorization: Bearer <token>` (the role
   * writes it to a 0600 file for `cdbp admin`; see newAdminToken). Loopback alone is not enough: a web
   * page in a local browser reaches loopback too.
   */
  token: string;
}

/** An unguessable per-start admin token (256 bits). */
export function newAdminToken(): string {
  return randomBytes(32).toString('base64url');
}

/** 127.0.0.0/8 and ::1, also as IPv4-mapped IPv6. */
export function isLoopbackAddress(addr: string): boolean {
  return addr === '::1' || /^(::ffff:)?127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(addr);
}

/**
 * Admin actions live on a separate port bound to loopback only, so exposing the ops port to a
 * cluster's probes never exposes the power to stop the proxy. Every request must pass, in this order:
 *
 *   1. from loopback (403 FORBIDDEN), even if the port was bound more widely by mistake;
 *   2. no `Origin` header (403 ORIGIN_REFUSED): browsers send one on every cross-site POST, `cdbp` and
 *      curl never do, so a web page cannot drive this port (issue 16, item 3);
 *   3. `Authorization: Bearer <per-start token>` (401 UNAUTHORIZED);
 *   4. POST with `Content-Type: application/json` (415 UNSUPPORTED_MEDIA_TYPE): the only types a page
 *      may send without a CORS preflight (text/plain, forms) are refused, and no preflight is answered;
 *   5. a body of at most 1 KiB (413 BODY_TOO_LARGE) that parses as JSON (400 BAD_REQUEST).
 * GET does nothing (404), so an <img> tag cannot fire an action either.
 */
export function buildAdminServer(actions: AdminActions, log: Logger, options: AdminServerOptions): FastifyInstance {
  if (!options?.token || options.token.length < 16) throw new CdbpError('CONFIG_INVALID', 'the admin API needs a token of at least 16 characters');
  const app = Fastify({ logger: false, bodyLimit: ADMIN_BODY_LIMIT, connectionTimeout: 10_000, requestTimeout: 60_000, frameworkErrors: frameworkClientError });
  app.removeContentTypeParser('text/plain');
  const expected = createHash('sha256').update(`Bearer ${options.token}`).digest();
  const refuse = (reply: FastifyReply, code: 'FORBIDDEN' | 'ORIGIN_REFUSED' | 'UNAUTHORIZED' | 'UNSUPPORTED_MEDIA_TYPE', message: string) =>
    reply.code(httpStatusFor(code)).send({ error: { code, message } });
  app.addHook('onRequest', async (req, reply) => {
    const addr = req.socket.remoteAddress ?? '';
    if (!isLoopbackAddress(addr)) {
      log.warn({ peer: addr, url: req.url }, 'admin: refused a request from a non-loopback address');
      return refuse(reply, 'FORBIDDEN', 'admin actions are loopback-only');
    }
    if (req.headers.origin !== undefined) {
      log.warn({ origin: String(req.headers.origin).slice(0, 100), url: req.url }, 'admin: refused a request carrying an Origin (cross-site)');
      return refuse(reply, 'ORIGIN_REFUSED', 'admin requests must not carry an Origin header (browsers are refused)');
    }
    // Compare digests so the comparison is constant-time regardless of the header's length.
    const got = createHash('sha256').update(String(req.headers.authorization ?? '')).digest();
    if (!timingSafeEqual(got, expected)) {
      return refuse(reply, 'UNAUTHORIZED', 'admin token missing or wrong (Authorization: Bearer <token from the admin token file>)');
    }
    if (req.method === 'POST' && !isJsonContentType(req.headers['content-type'])) {
      return refuse(reply, 'UNSUPPORTED_MEDIA_TYPE', 'admin requests must be Content-Type: application/json');
    }
  });
  app.setErrorHandler((error, _req, reply) => {
    const err = toHttpError(error, { bodyLimit: ADMIN_BODY_LIMIT });
    const status = httpStatusFor(err.code);
    if (status >= 500 && err.code === 'INTERNAL') log.error({ err: { message: err.message } }, 'admin request failed');
    void reply.code(status).send({ error: { code: err.code, message: status >= 500 && err.code === 'INTERNAL' ? 'internal error' : err.message } });
  });
  app.post('/v1/admin/drain', async () => {
    log.warn('admin: drain requested');
    actions.drain();
    return { ok: true, action: 'drain' };
  });
  app.post('/v1/admin/quit', async () => {
    log.warn('admin: quit requested');
    // After the reply is flushed: the caller learns the request was accepted.
    setImmediate(actions.quit);
    return { ok: true, action: 'quit' };
  });
  app.post('/v1/admin/renew', async () => {
    if (!actions.renew) throw new CdbpError('NOT_FOUND', 'this role has no certificate to renew');
    log.warn('admin: certificate renewal requested');
    return { ok: true, action: 'renew', ...(await actions.renew()) };
  });
  app.setNotFoundHandler((_req, reply) => {
    void reply.code(404).send({ error: { code: 'NOT_FOUND', message: 'no such endpoint' } });
  });
  return app;
}

/** `application/json`, optionally with parameters (`; charset=utf-8`). */
function isJsonContentType(value: string | undefined): boolean {
  return typeof value === 'string' && /^application\/json\s*(;|$)/i.test(value.trim());
}
