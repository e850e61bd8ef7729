/**
 * The CAS over HTTPS (Fastify). Routes only validate shapes (JSON schemas, 64 KB body limit) and call
 * CasCore; one error handler maps every failure to {"error":{"code","message"}} with the status from
 * httpStatusFor, hiding 5xx details. Requests that fail before reaching the core (malformed JSON,
 * oversized or schema-invalid bodies) on an audited route still leave an audit entry.
 *
 * Counter routes need mutual TLS with a certificate this CAS issued on attestation, naming the service
 * in its URI SAN (urn:cdbp:service:<name>) and a measurement the current policy still allows.
 */
import { toHttpError, frameworkClientError } from '../src/ops/http-errors.ts';
import Fastify, { type FastifyInstance, type FastifyRequest } from 'fastify';
import type { TLSSocket } from 'node:tls';
import { CdbpError, httpStatusFor, type ErrorCode } from '../src/kernel/errors.ts';
import type { Logger } from '../src/kernel/log.ts';
import type { MetricsRegistry } from '../src/kernel/metrics.ts';
import type { AuditEventType, AuditLog } from './audit.ts';
import type { AttestRequest, CasCore } from './core.ts';
import { isAudited } from './core.ts';
import { counterChannelEndpoint } from './counter-channel.ts';
import type { SignedRecovery } from '../src/provisioning/policy.ts';

export const BODY_LIMIT = 64 * 1024;

const hex = (bytes: number) => ({ type: 'string', pattern: `^[0-9a-f]{${bytes * 2}}$` });
const serviceParam = { type: 'object', required: ['service'], properties: { service: { type: 'string', pattern: '^[a-z0-9][a-z0-9._-]{0,62}$' } } };
const digestSchema = { type: 'string', pattern: '^([0-9a-f]{64}|[0-9a-f]{128})$' };

const SCHEMAS = {
  nonce: {
    type: 'object', additionalProperties: false,
    properties: { purpose: { type: 'string', enum: ['attest', 'recover'] } },
  },
  attest: {
    type: 'object', additionalProperties: false,
    required: ['service', 'nonce', 'csr', 'sealingPublicKey', 'evidence'],
    properties: {
      service: { type: 'string', minLength: 1, maxLength: 63 },
      nonce: { type: 'string', maxLength: 64 },
      csr: { type: 'string', maxLength: 8192 },
      sealingPublicKey: { type: 'string', maxLength: 64 },
      evidence: {
        type: 'object', additionalProperties: false, required: ['mode', 'measurement', 'reportData', 'report'],
        properties: {
          mode: { type: 'string', enum: ['simulated', 'sev-snp', 'tdx', 'none'] },
          measurement: { type: 'string', maxLength: 128 },
          reportData: { type: 'string', maxLength: 128 },
          report: { type: 'string', maxLength: 48 * 1024 },
          // Real TEEs: the report's certificates (SEV-SNP's VCEK/VLEK, ASK, ARK), base64 DER.
          certs: { type: 'array', maxItems: 8, items: { type: 'string', maxLength: 8192 } },
        },
      },
    },
  },
  signedPolicy: {
    type: 'object', required: ['format', 'policy', 'policyHash', 'owner', 'signature'],
    properties: {
      format: { type: 'string' }, policy: { type: 'object' }, policyHash: { type: 'string' },
      owner: { type: 'string' }, signature: { type: 'string' },
    },
  },
  advance: {
    type: 'object', additionalProperties: false, required: ['expected', 'next', 'digest'],
    properties: { expected: { type: 'integer', minimum: 0 }, next: { type: 'integer', minimum: 1 }, digest: digestSchema, nonce: hex(32),
      record: { type: 'string', maxLength: 8192 }, expectedDigest: { type: 'string', pattern: '^([0-9a-f]{64}|[0-9a-f]{128})?$' } },
  },
  counterQuery: {
    type: 'object', additionalProperties: false,
    properties: { nonce: hex(32) },
  },
  alarm: {
    type: 'object', additionalProperties: false, required: ['kind', 'message'],
    properties: {
      kind: { type: 'string', enum: ['rollback', 'tamper', 'fork'] }, message: { type: 'string', maxLength: 1000 },
      expectedEpoch: { type: 'integer', minimum: 0 }, seenEpoch: { type: 'integer', minimum: 0 },
    },
  },
  recover: {
    type: 'object', additionalProperties: false, required: ['recovery', 'owner', 'signature'],
    properties: {
      recovery: {
        type: 'object', additionalProperties: false, required: ['format', 'service', 'value', 'digest', 'nonce'],
        properties: {
          format: { type: 'string' }, service: { type: 'string', maxLength: 63 }, value: { type: 'integer', minimum: 0 },
          digest: { type: 'string', pattern: '^([0-9a-f]{64}|[0-9a-f]{128})?$' }, nonce: { type: 'string', maxLength: 64 },
        },
      },
      owner: hex(32), signature: hex(64),
    },
  },
} as const;

/** Which audit event a route's refusals belong to, for errors raised before the core sees the request. */
const AUDITED_ROUTES: Record<string, AuditEventType> = {
  'POST /v1/attest': 'attest',
  'POST /v1/policies': 'policy.apply',
  'GET /v1/services/:service/counter': 'counter.read',
  'POST /v1/services/:service/counter': 'counter.advance',
  'POST /v1/services/:service/recover': 'counter.recover',
  'POST /v1/services/:service/alarm': 'freshness.alarm',
};

export interface CasServerOptions {
  core: CasCore;
  audit: AuditLog;
  metrics: MetricsRegistry;
  log: Logger;
  tls: { keyPem: string; certPem: string; caPem: string };
  /** Reported by /readyz. */
  simulated: boolean;
}

/** Client mistakes (size, media type, JSON, schema) are 4xx with a stable code: src/ops/http-errors.ts. */
function toCdbpError(e: unknown): CdbpError {
  return toHttpError(e, { bodyLimit: BODY_LIMIT });
}

/** The peer certificate's URI SANs, if the client presented a certificate chaining to our CA. */
function peerIdentity(req: FastifyRequest): { service?: string; measurement?: string; mode?: string } | undefined {
  const sock = req.raw.socket as TLSSocket;
  if (!sock.authorized) return undefined;
  const cert = sock.getPeerCertificate();
  if (!cert || !cert.subjectaltname) return undefined;
  const out: { service?: string; measurement?: string; mode?: string } = {};
  for (const part of cert.subjectaltname.split(', ')) {
    if (part.startsWith('URI:urn:cdbp:service:')) out.service = part.slice('URI:urn:cdbp:service:'.length);
    else if (part.startsWith('URI:urn:cdbp:measurement:')) out.measurement = part.slice('URI:urn:cdbp:measurement:'.length);
    else if (part.startsWith('URI:urn:cdbp:tee:')) out.mode = part.slice('URI:urn:cdbp:tee:'.length);
  }
  return out;
}

declare module 'fastify' {
  interface FastifyInstance {
    /** Ends every open counter channel (clients reopen them). */
    closeCounterChannels(): void;
  }
}

export function buildCasServer(o: CasServerOptions): FastifyInstance {
  const app = Fastify({
    bodyLimit: BODY_LIMIT,
    https: {
      key: o.tls.keyPem, cert: o.tls.certPem, ca: [o.tls.caPem],
      // Ask for a client certificate but let the handshake finish without one: only counter routes
      // need it, and they check `authorized` themselves.
      requestCert: true, rejectUnauthorized: false, minVersion: 'TLSv1.2',
    },
    logger: false,
    // Bodies are JSON objects only; protects the schema-less parse paths too.
    ajv: { customOptions: { allErrors: false, coerceTypes: false, removeAdditional: false } },
    connectionTimeout: 30_000,
    requestTimeout: 30_000,
    frameworkErrors: frameworkClientError,
  });
  // JSON only: Fastify's built-in text/plain parser would hand a string to the schema (400, not 415).
  app.removeContentTypeParser('text/plain');
  const { core } = o;

  const requireHolder = (req: FastifyRequest<{ Params: { service: string } }>): void => {
    const id = peerIdentity(req);
    if (!id?.service) {
      throw new CdbpError('FORBIDDEN', 'counter access needs the client certificate this CAS issued on attestation');
    }
    if (id.service !== req.params.service) {
      throw new CdbpError('FORBIDDEN', `the client certificate belongs to ${id.service}, not ${req.params.service}`);
    }
    // A measurement the owner has since removed loses counter access at once, without waiting for
    // the certificate to expire.
    const policy = core.getPolicy(req.params.service).signed.policy;
    if (!id.measurement || !policy.measurements.includes(id.measurement) || !(policy.teeModes as string[]).includes(id.mode ?? '')) {
      throw new CdbpError('FORBIDDEN', 'the client certificate was issued for a measurement or TEE mode the current policy no longer allows');
    }
  };

  app.setErrorHandler(async (e, req, reply) => {
    const err = toCdbpError(e);
    const event = req.routeOptions?.url ? AUDITED_ROUTES[`${req.method} ${req.routeOptions.url}`] : undefined;
    if (event && !isAudited(e)) {
      const service = (req.params as { service?: string } | undefined)?.service;
      await o.audit.append({ event, outcome: 'refused', code: err.code, service: typeof service === 'string' ? service.slice(0, 63) : undefined, details: { remote: req.ip } })
        .catch((ae: unknown) => o.log.error({ err: ae }, 'audit append failed'));
    }
    const status = httpStatusFor(err.code);
    if (status >= 500) o.log.error({ err: e, url: req.url }, 'request failed');
    const body: { error: { code: ErrorCode; message: string; details?: Record<string, unknown> } } = status >= 500
      ? { error: { code: err.code === 'INTERNAL' ? 'INTERNAL' : err.code, message: err.code === 'INTERNAL' ? 'internal error' : err.message } }
      : { error: { code: err.code, message: err.message, ...(err.details && err.code === 'COUNTER_CONFLICT' ? { details: err.details } : {}) } };
    if (status >= 500 && err.code === 'INTERNAL') body.error.message = 'internal error';
    return reply.code(status).type('application/json').send(body);
  });
  app.setNotFoundHandler(async (req, reply) => reply.code(404).send({ error: { code: 'NOT_FOUND', message: `no route ${req.method} ${req.url.split('?')[0]}` } }));

  // The persistent, ordered counter channel (HTTP Upgrade on this port): cas/counter-channel.ts.
  const channel = counterChannelEndpoint({ core, audit: o.audit, log: o.log, metrics: o.metrics });
  app.server.on('upgrade', channel.onUpgrade);
  app.addHook('preClose', async () => channel.closeAll());
  // A replicated member ends its channels when its membership view changes (cas/replication/instance.ts):
  // the view signed at a channel's opening then holds for every answer sent on it.
  app.decorate('closeCounterChannels', channel.closeAll);

  app.get('/livez', async () => ({ status: 'ok' }));
  app.get('/readyz', async () => ({ ready: true, simulated: o.simulated }));
  app.get('/metrics', async (_req, reply) => reply.type('text/plain; version=0.0.4').send(o.metrics.render()));
  app.get('/v1/ca', async () => ({ caPem: core.caPem, signingCertPem: core.signingCertPem }));

  app.post<{ Body: { purpose?: 'attest' | 'recover' } | undefined }>('/v1/nonce', { schema: { body: SCHEMAS.nonce } },
    async (req) => core.issueNonce(req.body?.purpose ?? 'attest'));

  app.post<{ Body: AttestRequest }>('/v1/attest', { schema: { body: SCHEMAS.attest } },
    async (req) => core.attest(req.body, req.ip));

  app.post<{ Body: unknown }>('/v1/policies', { schema: { body: SCHEMAS.signedPolicy } },
    async (req) => core.applyPolicy(req.body, req.ip));

  app.get<{ Params: { service: string } }>('/v1/services/:service/policy', { schema: { params: serviceParam } },
    async (req) => core.getPolicy(req.params.service));

  // Counter answers carry an Ed25519 signature over the client's nonce (src/provisioning/answers.ts), so
  // even a man in the middle holding a valid TLS identity cannot forge a value or a conflict.
  app.get<{ Params: { service: string }; Querystring: { nonce?: string } }>('/v1/services/:service/counter',
    { schema: { params: serviceParam, querystring: SCHEMAS.counterQuery } },
    async (req) => {
      requireHolder(req);
      const view = core.readCounter(req.params.service);
      const nonce = req.query.nonce;
      return nonce ? { ...view, ...core.signCounterAnswer({ service: req.params.service, op: 'read', nonce, ...view }) } : view;
    });

  app.post<{ Params: { service: string }; Body: { expected: number; next: number; digest: string; nonce?: string; record?: string; expectedDigest?: string } }>('/v1/services/:service/counter',
    { schema: { params: serviceParam, body: SCHEMAS.advance } },
    async (req) => {
      requireHolder(req);
      const { service } = req.params;
      const nonce = req.body.nonce;
      try {
        const view = await core.advanceCounter(service, req.body.expected, req.body.next, req.body.digest, req.ip, req.body.record, req.body.expectedDigest);
        return nonce ? { ...view, ...core.signCounterAnswer({ service, op: 'advance', nonce, ...view }) } : view;
      } catch (e) {
        const d = (e as CdbpError).details as { value?: number; digest?: string; signature?: string; membership?: string } | undefined;
        if (nonce && e instanceof CdbpError && e.code === 'COUNTER_CONFLICT' && d && typeof d.value === 'number' && typeof d.digest === 'string') {
          Object.assign(d, core.signCounterAnswer({ service, op: 'conflict', nonce, value: d.value, digest: d.digest }));
        }
        throw e;
      }
    });

  // A proxy that detected a rollback, tamper or fork of its volume reports it here so the CAS audits it.
  app.post<{ Params: { service: string }; Body: { kind: 'rollback' | 'tamper' | 'fork'; message: string; expectedEpoch?: number; seenEpoch?: number } }>(
    '/v1/services/:service/alarm', { schema: { params: serviceParam, body: SCHEMAS.alarm } },
    async (req) => {
      requireHolder(req);
      await core.freshnessAlarm(req.params.service, req.body, req.ip);
      return { recorded: true };
    });

  app.post<{ Params: { service: string }; Body: SignedRecovery }>('/v1/services/:service/recover',
    { schema: { params: serviceParam, body: SCHEMAS.recover } },
    async (req) => {
      if (req.body.recovery.service !== req.params.service) throw new CdbpError('BAD_REQUEST', 'recovery names another service than the URL');
      const view = await core.recover(req.body, req.ip);
      // Signed over the owner's nonce: the owner's tool counts members by their answer keys, not by URLs.
      return { ...view, ...core.signCounterAnswer({ service: req.params.service, op: 'recover', nonce: req.body.recovery.nonce, ...view }) };
    });

  return app;
}
