/**
 * One mapping from what Fastify throws for a client's mistake to our stable error codes, for every HTTP
 * edge (ops API, admin API, the CAS): a too-large body is 413 BODY_TOO_LARGE, a body that is not JSON
 * where JSON is required is 415 UNSUPPORTED_MEDIA_TYPE, malformed JSON or a schema miss is 400
 * BAD_REQUEST. A client's mistake is never a 500 (issue 16, item 6).
 */
import { CdbpError, asCdbpError } from '../kernel/errors.ts';

interface FastifyishError {
  code?: string;
  statusCode?: number;
  validation?: unknown;
  message?: string;
}

export function toHttpError(e: unknown, o: { bodyLimit: number }): CdbpError {
  if (e instanceof CdbpError) return e;
  const fe = (e ?? {}) as FastifyishError;
  if (fe.code === 'FST_ERR_CTP_BODY_TOO_LARGE' || fe.statusCode === 413) {
    return new CdbpError('BODY_TOO_LARGE', `request body exceeds ${o.bodyLimit} bytes`);
  }
  if (fe.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE' || fe.statusCode === 415) {
    return new CdbpError('UNSUPPORTED_MEDIA_TYPE', 'unsupported content type: send application/json');
  }
  if (fe.validation) return new CdbpError('BAD_REQUEST', `invalid request: ${fe.message ?? 'schema validation failed'}`);
  if (fe.code === 'FST_ERR_CTP_INVALID_JSON_BODY' || e instanceof SyntaxError) {
    return new CdbpError('BAD_REQUEST', 'request body is not valid JSON');
  }
  if (fe.code === 'FST_ERR_CTP_EMPTY_JSON_BODY') return new CdbpError('BAD_REQUEST', 'empty body with content-type application/json: send {}');
  if (fe.statusCode !== undefined && fe.statusCode >= 400 && fe.statusCode < 500) {
    return new CdbpError('BAD_REQUEST', `bad request: ${fe.message ?? ''}`);
  }
  return asCdbpError(e);
}

/**
 * For Fastify's `frameworkErrors` option: errors raised before routing (a malformed URL escape, an
 * over-long parameter) get the same JSON shape and code as every other client mistake.
 */
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- any server flavour's reply (http or https)
export function frameworkClientError(error: Error, _req: unknown, reply: any): void {
  const status = (error as { statusCode?: number }).statusCode ?? 400;
  void reply.code(status >= 400 && status < 500 ? status : 400).send({
    error: { code: status === 404 ? 'NOT_FOUND' : 'BAD_REQUEST', message: `bad request: ${error.message}` },
  });
}
