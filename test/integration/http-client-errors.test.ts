/**
 * Issue 16, item 6: every HTTP edge answers a client's mistake with 4xx JSON and a stable code, never a
 * 500. Real processes on real sockets: a `cdbp cas` (HTTPS) and the ops API of a `cdbp cas --ops-port`
 * (the same src/ops/server.ts the proxy serves); the admin API's refusals are in test/unit/ops-server.test.ts.
 *
 * For every route of each server: a 1 MiB body, a body that is not JSON (text/plain, a form, XML), malformed
 * JSON, an empty JSON body, and a wrong method.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import https from 'node:https';
import http from 'node:http';
import { tempDir } from '../support/tmp.ts';
import { startTestCas, type TestCas } from '../support/cas.ts';
import { freePort } from '../../src/kernel/net.ts';

const tmp = tempDir('http-client-errors');
let cas: TestCas;
let opsUrl: string;

before(async () => {
  const port = await freePort();
  cas = await startTestCas({ root: tmp.path, extraArgs: ['--ops-port', String(port)] });
  opsUrl = `http://127.0.0.1:${port}`;
});
after(async () => {
  await cas?.stop();
  tmp.remove();
});

interface Answer { status: number; contentType: string; body: any; text: string }

/**
 * A server that refuses a large body closes while the client still writes: TCP may then reset the
 * connection before the client reads the answer (EPIPE, no response). Retried: the answer must come.
 */
async function send(base: string, method: string, p: string, o: { contentType?: string; body?: Buffer | string } = {}): Promise<Answer> {
  let a = await sendOnce(base, method, p, o);
  for (let i = 0; i < 4 && a.status === 0; i++) a = await sendOnce(base, method, p, o);
  return a;
}

function sendOnce(base: string, method: string, p: string, o: { contentType?: string; body?: Buffer | string } = {}): Promise<Answer> {
  const url = new URL(p, base);
  const payload = o.body === undefined ? undefined : Buffer.from(o.body);
  const lib = url.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const req = lib.request(url, {
      method, ...(url.protocol === 'https:' ? { ca: cas.caPem } : {}),
      headers: { ...(o.contentType ? { 'content-type': o.contentType } : {}), ...(payload ? { 'content-length': payload.length } : {}) },
    }, (res) => {
      let text = '';
      res.on('data', (d: Buffer) => { text += d.toString(); });
      res.on('end', () => {
        let body: any;
        try { body = JSON.parse(text); } catch { body = undefined; }
        resolve({ status: res.statusCode ?? 0, contentType: String(res.headers['content-type'] ?? ''), body, text });
      });
    });
    // The server may answer 413 and close before reading the whole body: the answer still counts; a
    // connection dropped without one is reported as status 0.
    req.on('error', (e) => {
      const code = (e as { code?: string }).code;
      if (code === 'EPIPE' || code === 'ECONNRESET') setTimeout(() => resolve({ status: 0, contentType: '', body: undefined, text: `dropped: ${code}` }), 500);
      else reject(e);
    });
    req.setTimeout(20_000, () => req.destroy(new Error(`${method} ${p}: no answer in 20 s`)));
    req.end(payload);
  });
}

const MIB = 'x'.repeat(1024 * 1024);

const MISTAKES: Array<{ what: string; contentType?: string; body?: string; want: Array<[number, string]> }> = [
  { what: '1 MiB JSON body', contentType: 'application/json', body: JSON.stringify({ pad: MIB }), want: [[413, 'BODY_TOO_LARGE']] },
  { what: '1 MiB text body', contentType: 'text/plain', body: MIB, want: [[413, 'BODY_TOO_LARGE'], [415, 'UNSUPPORTED_MEDIA_TYPE']] },
  { what: 'text/plain', contentType: 'text/plain', body: '{}', want: [[415, 'UNSUPPORTED_MEDIA_TYPE']] },
  { what: 'a form', contentType: 'application/x-www-form-urlencoded', body: 'a=1', want: [[415, 'UNSUPPORTED_MEDIA_TYPE']] },
  { what: 'XML', contentType: 'application/xml', body: '<a/>', want: [[415, 'UNSUPPORTED_MEDIA_TYPE']] },
  { what: 'malformed JSON', contentType: 'application/json', body: '{"a": ', want: [[400, 'BAD_REQUEST']] },
  { what: 'empty JSON body', contentType: 'application/json', body: '', want: [[400, 'BAD_REQUEST']] },
  { what: 'JSON null', contentType: 'application/json', body: 'null', want: [[400, 'BAD_REQUEST']] },
];

function assertClientError(a: Answer, want: Array<[number, string]>, what: string): void {
  assert.ok(a.status >= 400 && a.status < 500, `${what}: ${a.status} ${a.text.slice(0, 200)}`);
  assert.match(a.contentType, /application\/json/, what);
  assert.ok(want.some(([s, c]) => s === a.status && a.body?.error?.code === c),
    `${what}: got ${a.status} ${a.body?.error?.code}, want one of ${JSON.stringify(want)}`);
  assert.equal(typeof a.body.error.message, 'string');
}

test('CAS: every POST route answers each client mistake with its 4xx and code', async () => {
  const routes = ['/v1/nonce', '/v1/attest', '/v1/policies', '/v1/services/svc/counter', '/v1/services/svc/alarm', '/v1/services/svc/recover'];
  for (const r of routes) {
    for (const m of MISTAKES) {
      // Counter and alarm routes want a client certificate first: without one, 403 is the right answer too.
      const a = await send(cas.url, 'POST', r, m);
      const want: Array<[number, string]> = /\/(counter|alarm)$/.test(r) ? [...m.want, [403, 'FORBIDDEN']] : m.want;
      assertClientError(a, want, `POST ${r} ${m.what}`);
    }
  }
});

test('CAS: GET routes with a body, wrong methods and unknown paths are 4xx JSON', async () => {
  for (const r of ['/livez', '/readyz', '/v1/ca', '/v1/services/svc/policy', '/v1/services/svc/counter?nonce=00']) {
    const withBody = await send(cas.url, 'GET', r, { contentType: 'application/json', body: JSON.stringify({ pad: MIB }) });
    assert.ok(withBody.status < 500, `GET ${r} with a 1 MiB body: ${withBody.status} ${withBody.text.slice(0, 200)}`);
    const del = await send(cas.url, 'DELETE', r);
    assertClientError(del, [[404, 'NOT_FOUND'], [405, 'BAD_REQUEST']], `DELETE ${r}`);
  }
  assertClientError(await send(cas.url, 'GET', '/nope'), [[404, 'NOT_FOUND']], 'unknown path');
  assertClientError(await send(cas.url, 'GET', '/v1/services/%ZZ/policy'), [[400, 'BAD_REQUEST'], [404, 'NOT_FOUND'], [404, 'SERVICE_UNKNOWN']], 'bad escape');
});

test('ops API: a 1 MiB body is 413, not 500 (the reported case), on every route and method', async () => {
  for (const r of ['/livez', '/readyz', '/startupz', '/metrics', '/v1/status', '/v1/attestation?nonce=00', '/nope']) {
    for (const method of ['POST', 'PUT', 'PATCH']) {
      for (const m of MISTAKES) {
        const a = await send(opsUrl, method, r, m);
        // No route takes a body: the size limit, the media type or "no such endpoint" — never a 500.
        assertClientError(a, [...m.want, [404, 'NOT_FOUND']], `${method} ${r} ${m.what}`);
      }
    }
    const get = await send(opsUrl, 'GET', r, { contentType: 'application/json', body: JSON.stringify({ pad: MIB }) });
    assert.ok(get.status < 500 || r === '/readyz' || r === '/startupz', `GET ${r} with a body: ${get.status}`);
  }
});
