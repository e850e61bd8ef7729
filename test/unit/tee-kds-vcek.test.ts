/**
 * Per-chip VCEKs from AMD KDS: the URL built from CHIP_ID and REPORTED_TCB (Milan/Genoa: 64-byte hwid;
 * Turin: 8 bytes and fmcSPL), `cdbp collateral fetch --vcek-for` against a local server laid out like KDS
 * (no network here), the cache format, and the CAS verifier finding the VCEK there — or refusing with the
 * URL to fetch it from.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { copyFileSync, existsSync, mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import type { AddressInfo } from 'node:net';
import { checkCollateralDir, fetchVceks } from '../../cli/commands/collateral.ts';
import { findCachedVcek, kdsHwid, vcekCachePath, vcekUrl } from '../../src/attestation/snp/kds.ts';
import { decodeSnpTcb, parseSnpReport } from '../../src/attestation/snp/report.ts';
import { TeeEvidenceVerifier } from '../../src/attestation/tee-verifier.ts';
import { verifySnpReport } from '../../src/attestation/snp/verify.ts';
import { loadCertificates } from '../../src/attestation/evidence-file.ts';
import { isCdbpError } from '../../src/kernel/errors.ts';
import type { Evidence } from '../../src/attestation/types.ts';
import { fixture, snpVector } from '../support/tee-vectors.ts';
import { tempDir } from '../support/tmp.ts';

const AT = new Date('2026-01-01T00:00:00Z');
const r2 = parseSnpReport(snpVector('milan-vcek-2').evidence.bytes);
const r3 = parseSnpReport(snpVector('milan-vcek-3').evidence.bytes);

/** A KDS double: serves `vceks[pathname?query]` and the Milan cert_chain; records every request. */
function kds(vceks: Record<string, string>): Promise<{ url: string; requests: string[]; close(): Promise<void> }> {
  const requests: string[] = [];
  const server = http.createServer((req, res) => {
    requests.push(req.url ?? '');
    if (req.url === '/vcek/v1/Milan/cert_chain') { res.writeHead(200); res.end(readFileSync(fixture('snp/milan-vcek-2/ask-ark.pem'))); return; }
    const file = vceks[req.url ?? ''];
    if (file) { res.writeHead(200, { 'content-type': 'application/octet-stream' }); res.end(readFileSync(file)); return; }
    res.writeHead(404);
    res.end();
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => {
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    resolve({ url, requests, close: () => new Promise((r) => server.close(() => r())) });
  }));
}

function envelope(name: string): { ev: Evidence; rd: Buffer; m: string } {
  const b = snpVector(name).evidence.bytes;
  const rd = b.subarray(0x50, 0x90);
  const m = b.subarray(0x90, 0xc0).toString('hex');
  return { rd, m, ev: { mode: 'sev-snp', measurement: m, reportData: rd.toString('hex'), report: b.toString('base64') } };
}

test('KDS URL: Milan/Genoa use the 64-byte CHIP_ID and two-digit decimal SPLs; Turin the first 8 bytes and fmcSPL first', () => {
  const hw2 = r2.chipId.toString('hex');
  assert.equal(hw2.length, 128);
  // milan-vcek-2 reports TCB 0300000000000873: bootloader 3, tee 0, snp 8, microcode 115.
  assert.equal(vcekUrl('Milan', r2.chipId, decodeSnpTcb(r2.reportedTcbRaw, 'Milan')),
    `https://kdsintf.amd.com/vcek/v1/Milan/${hw2}?blSPL=03&teeSPL=00&snpSPL=08&ucodeSPL=115`);
  // genoa-azure (a v3 report: CPUID says Genoa) reports 0a00000000001754: bootloader 10, snp 23, microcode 84.
  const g = parseSnpReport(snpVector('genoa-azure').evidence.bytes);
  assert.equal(vcekUrl('Genoa', g.chipId, decodeSnpTcb(g.reportedTcbRaw, 'Genoa'), 'http://kds.test/'),
    `http://kds.test/vcek/v1/Genoa/${g.chipId.toString('hex')}?blSPL=10&teeSPL=00&snpSPL=23&ucodeSPL=84`);
  const turinChip = Buffer.concat([Buffer.from('0123456789abcdef', 'hex'), Buffer.alloc(56)]);
  const turinTcb = decodeSnpTcb(Buffer.from('0102030400000005', 'hex'), 'Turin');
  assert.equal(vcekUrl('Turin', turinChip, turinTcb), 'https://kdsintf.amd.com/vcek/v1/Turin/0123456789abcdef?fmcSPL=01&blSPL=02&teeSPL=03&snpSPL=04&ucodeSPL=05');
  assert.equal(vcekCachePath('Turin', turinChip, Buffer.from('0102030400000005', 'hex')), path.join('snp', 'vcek', 'turin', '0123456789abcdef-0102030400000005.der'));
  assert.equal(vcekCachePath('Milan', r2.chipId, r2.reportedTcbRaw), path.join('snp', 'vcek', 'milan', `${hw2}-0300000000000873.der`));
  // A masked CHIP_ID (milan-vlek: zeros) names no chip.
  assert.throws(() => kdsHwid('Milan', parseSnpReport(snpVector('milan-vlek').evidence.bytes).chipId), (e: unknown) => isCdbpError(e, 'TEE_COLLATERAL_MISSING'));
  assert.throws(() => kdsHwid('Milan', Buffer.alloc(8, 1)), (e: unknown) => isCdbpError(e, 'TEE_EVIDENCE_MALFORMED'));
});

test('cdbp collateral fetch --vcek-for: the VCEK for this chip and TCB, checked against the report, cached by hwid and TCB', async (t) => {
  const hw2 = r2.chipId.toString('hex');
  const srv = await kds({ [`/vcek/v1/Milan/${hw2}?blSPL=03&teeSPL=00&snpSPL=08&ucodeSPL=115`]: fixture('snp/milan-vcek-2/vcek.der') });
  const d = tempDir('kds');
  t.after(async () => { await srv.close(); d.remove(); });
  const report = fixture('snp/milan-vcek-2/report.hex');
  // A v2 report does not name its product.
  await assert.rejects(fetchVceks({ out: d.path, reports: [report], kds: srv.url, now: AT }), (e: unknown) => isCdbpError(e, 'CONFIG_INVALID') && /--product/.test(e.message));
  const written = await fetchVceks({ out: d.path, reports: [report], product: 'Milan', kds: srv.url, now: AT });
  assert.deepEqual(written, [vcekCachePath('Milan', r2.chipId, r2.reportedTcbRaw)]);
  assert.ok(srv.requests.includes(`/vcek/v1/Milan/${hw2}?blSPL=03&teeSPL=00&snpSPL=08&ucodeSPL=115`), srv.requests.join('\n'));
  assert.deepEqual(readFileSync(path.join(d.path, written[0]!)), readFileSync(fixture('snp/milan-vcek-2/vcek.der')));
  assert.ok(existsSync(path.join(d.path, 'snp', 'milan-cert-chain.pem')));
  assert.equal(findCachedVcek(d.path, r2.chipId, r2.reportedTcbRaw), path.join(d.path, written[0]!));
  // cdbp collateral check: the cert_chain and the VCEK, chained to the pinned ARK, with their expiry.
  const rows = checkCollateralDir(d.path, AT);
  assert.deepEqual(rows.map((r) => r.ok), [true, true], JSON.stringify(rows));
  assert.match(rows[0]!.detail, /valid, SEV-Milan until 20\d\d/);
  assert.match(rows[1]!.detail, /valid, VCEK until 20\d\d/);
  assert.ok(checkCollateralDir(d.path, new Date('2060-01-01T00:00:00Z')).every((r) => !r.ok && /EXPIRED/.test(r.detail)));
  // The same report at another TCB is not in the cache: refused with the URL that would serve it.
  const newer = Buffer.from('0300000000000874', 'hex');
  assert.throws(() => findCachedVcek(d.path, r2.chipId, newer, 'Milan'), (e: unknown) =>
    isCdbpError(e, 'TEE_COLLATERAL_MISSING') && e.message.includes(`https://kdsintf.amd.com/vcek/v1/Milan/${hw2}?blSPL=03&teeSPL=00&snpSPL=08&ucodeSPL=116`));
});

test('a KDS answer that is not this chip\'s VCEK is refused and nothing is cached', async (t) => {
  const hw2 = r2.chipId.toString('hex');
  // The server answers milan-vcek-2's URL with milan-vcek-3's VCEK (another chip, same TCB).
  const srv = await kds({ [`/vcek/v1/Milan/${hw2}?blSPL=03&teeSPL=00&snpSPL=08&ucodeSPL=115`]: fixture('snp/milan-vcek-3/vcek.der') });
  const d = tempDir('kds');
  t.after(async () => { await srv.close(); d.remove(); });
  await assert.rejects(fetchVceks({ out: d.path, reports: [fixture('snp/milan-vcek-2/report.hex')], product: 'Milan', kds: srv.url, now: AT }),
    (e: unknown) => isCdbpError(e) && ['TEE_TCB_MISMATCH', 'TEE_SIGNATURE_INVALID'].includes(e.code));
  assert.equal(existsSync(path.join(d.path, vcekCachePath('Milan', r2.chipId, r2.reportedTcbRaw))), false);
  // 404 from KDS: the operator is told which URL failed.
  await assert.rejects(fetchVceks({ out: d.path, reports: [fixture('snp/milan-vcek-3/report.bin')], product: 'Milan', kds: srv.url, now: AT }),
    (e: unknown) => isCdbpError(e, 'BACKEND_UNAVAILABLE') && e.message.includes(r3.chipId.toString('hex')));
});

test('the CAS verifier takes the VCEK from the cache; a cache without it is refused with the KDS URL', async (t) => {
  const d = tempDir('kds');
  t.after(() => d.remove());
  mkdirSync(path.join(d.path, 'snp', 'vcek', 'milan'), { recursive: true });
  copyFileSync(fixture('snp/milan-vcek-2/ask-ark.pem'), path.join(d.path, 'snp', 'milan-cert-chain.pem'));
  const { ev, rd, m } = envelope('milan-vcek-2');
  const v = new TeeEvidenceVerifier('sev-snp', d.path, () => AT);
  await assert.rejects(v.verify(ev, rd, { snp: { measurements: [m] } }), (e: unknown) =>
    isCdbpError(e, 'TEE_COLLATERAL_MISSING') && e.message.includes(`/vcek/v1/Milan/${r2.chipId.toString('hex')}?blSPL=03&teeSPL=00&snpSPL=08&ucodeSPL=115`)
    && /cdbp collateral fetch --vcek-for/.test(e.message));
  // Another chip's VCEK in the cache does not help.
  copyFileSync(fixture('snp/milan-vcek-3/vcek.der'), path.join(d.path, vcekCachePath('Milan', r3.chipId, r3.reportedTcbRaw)));
  await assert.rejects(v.verify(ev, rd, { snp: { measurements: [m] } }), (e: unknown) => isCdbpError(e, 'TEE_COLLATERAL_MISSING'));
  copyFileSync(fixture('snp/milan-vcek-2/vcek.der'), path.join(d.path, vcekCachePath('Milan', r2.chipId, r2.reportedTcbRaw)));
  assert.equal((await v.verify(ev, rd, { snp: { measurements: [m] } })).measurement, m);
  // Both chips served from one cache.
  const e3 = envelope('milan-vcek-3');
  assert.equal((await v.verify(e3.ev, e3.rd, { snp: { measurements: [e3.m] } })).measurement, e3.m);
});

test('several VCEKs supplied at once: the verifier uses the one for the report\'s chip and TCB', () => {
  const chain = loadCertificates(fixture('snp/milan-vcek-2/ask-ark.pem'));
  const vceks = [...loadCertificates(fixture('snp/milan-vcek-3/vcek.der')), ...loadCertificates(fixture('snp/milan-vcek-2/vcek.der'))];
  const v = snpVector('milan-vcek-2');
  assert.equal(verifySnpReport({ report: v.evidence.bytes, certs: [...vceks, ...chain], now: AT }).chipId, r2.chipId.toString('hex'));
  // Only the wrong one: the refusal names the mismatch.
  assert.throws(() => verifySnpReport({ report: v.evidence.bytes, certs: [vceks[0]!, ...chain], now: AT }),
    (e: unknown) => isCdbpError(e) && ['TEE_TCB_MISMATCH', 'TEE_SIGNATURE_INVALID'].includes(e.code));
});
