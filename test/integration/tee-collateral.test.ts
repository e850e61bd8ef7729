/**
 * `cdbp collateral fetch/check` against a local server that serves the fixture collateral the way Intel PCS
 * and AMD KDS do (bodies as served, issuer chains URL-encoded in response headers); then the CAS verifier
 * uses the fetched directory.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import type { AddressInfo } from 'node:net';
import { checkCollateralDir, fetchCollateral } from '../../cli/commands/collateral.ts';
import { TeeEvidenceVerifier } from '../../src/attestation/tee-verifier.ts';
import { parseTdxQuote } from '../../src/attestation/tdx/quote.ts';
import { isCdbpError } from '../../src/kernel/errors.ts';
import { fixture, SPR_V4_AT, tdxQuote } from '../support/tee-vectors.ts';
import { runCdbp } from '../support/cas.ts';
import { tempDir } from '../support/tmp.ts';

function fixtureServer(o: { tamper?: boolean } = {}): Promise<{ url: string; requests: string[]; close(): Promise<void> }> {
  const f = (p: string) => readFileSync(fixture('tdx', 'spr-v4', p));
  const requests: string[] = [];
  const server = http.createServer((req, res) => {
    requests.push(req.url ?? '');
    const u = new URL(req.url ?? '/', 'http://x');
    const send = (body: Buffer, headers: Record<string, string> = {}) => { res.writeHead(200, headers); res.end(body); };
    const chain = (p: string) => encodeURIComponent(f(p).toString('latin1'));
    if (u.pathname === '/tdx/certification/v4/tcb' && u.searchParams.get('fmspc') === '50806f000000') {
      const body = o.tamper ? Buffer.from(f('tcb-info.json').toString().replace('"tcbDate":"2023', '"tcbDate":"2024')) : f('tcb-info.json');
      return send(body, { 'TCB-Info-Issuer-Chain': chain('tcb-info-issuer-chain.pem') });
    }
    if (u.pathname === '/tdx/certification/v4/qe/identity') return send(f('qe-identity.json'), { 'SGX-Enclave-Identity-Issuer-Chain': chain('qe-identity-issuer-chain.pem') });
    if (u.pathname === '/sgx/certification/v4/pckcrl') return send(f('pck-crl.der'), { 'SGX-PCK-CRL-Issuer-Chain': chain('pck-crl-issuer-chain.pem') });
    if (u.pathname === '/IntelSGXRootCA.der') return send(f('root-crl.der'));
    if (u.pathname === '/vcek/v1/Milan/cert_chain') return send(readFileSync(fixture('snp', 'milan-vcek', 'ask-ark.pem')));
    res.writeHead(404);
    res.end();
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => {
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    resolve({ url, requests, close: () => new Promise((r) => server.close(() => r())) });
  }));
}

test('cdbp collateral: fetch (checked before written), check, and the CAS verifier uses the fetched directory', async (t) => {
  const srv = await fixtureServer();
  const d = tempDir('collateral');
  t.after(async () => { await srv.close(); d.remove(); });
  const written = await fetchCollateral({ out: d.path, fmspcs: ['50806f000000'], pcs: srv.url, rootCrlUrl: `${srv.url}/IntelSGXRootCA.der`,
    kds: srv.url, amdProducts: ['Milan'], now: SPR_V4_AT });
  assert.ok(written.includes('tdx/50806f000000/tcb-info.json') && written.includes('snp/milan-cert-chain.pem'));
  assert.ok(srv.requests.some((r) => r.includes('fmspc=50806f000000')));

  const rows = checkCollateralDir(d.path, SPR_V4_AT);
  assert.ok(rows.length >= 4 && rows.every((r) => r.ok), JSON.stringify(rows));
  // Today everything fetched is past its nextUpdate: check says so per file.
  assert.ok(checkCollateralDir(d.path, new Date('2026-12-01T00:00:00Z')).some((r) => !r.ok && /EXPIRED/.test(r.detail)));

  const quote = tdxQuote('quote-4');
  const body = parseTdxQuote(quote).body;
  const ev = { mode: 'tdx' as const, measurement: body.mrTd.toString('hex'), reportData: body.reportData.toString('hex'), report: quote.toString('base64') };
  const r = await new TeeEvidenceVerifier('tdx', d.path, () => SPR_V4_AT).verify(ev, body.reportData, { tdx: { mrtd: [ev.measurement], allowDebug: true } });
  assert.equal(r.tee.tcbStatus, 'UpToDate');

  const cli = await runCdbp(['collateral', 'check', '--dir', d.path, '--at', SPR_V4_AT.toISOString()]);
  assert.equal(cli.code, 0, cli.output);
  assert.match(cli.output, /OK +tdx\/50806f000000\/tcb-info.json/);
});

test('cdbp collateral fetch refuses tampered collateral and writes nothing for it', async (t) => {
  const srv = await fixtureServer({ tamper: true });
  const d = tempDir('collateral');
  t.after(async () => { await srv.close(); d.remove(); });
  await assert.rejects(fetchCollateral({ out: d.path, fmspcs: ['50806f000000'], pcs: srv.url, rootCrlUrl: `${srv.url}/IntelSGXRootCA.der`, now: SPR_V4_AT }),
    (e: unknown) => isCdbpError(e, 'TEE_COLLATERAL_INVALID'));
  assert.equal(existsSync(path.join(d.path, 'tdx', '50806f000000', 'tcb-info.json')), false);
  await assert.rejects(fetchCollateral({ out: d.path, fmspcs: ['ffffffffffff'], pcs: srv.url, rootCrlUrl: `${srv.url}/IntelSGXRootCA.der`, now: SPR_V4_AT }),
    (e: unknown) => isCdbpError(e, 'BACKEND_UNAVAILABLE'));
});
