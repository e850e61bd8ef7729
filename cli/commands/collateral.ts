/**
 * `cdbp collateral`: fills and checks the CAS's collateral directory (docs/ATTESTATION.md "Collateral
 * directory") from the vendors' services.
 *
 *   fetch --fmspc HEX[,HEX] [--out DIR] [--pcs URL] [--root-crl-url URL] [--kds URL] [--amd Milan,Genoa,Turin]
 *       Intel PCS v4 (https://api.portal.trustedservices.intel.com/content/documentation.html): TDX TCB info per
 *       FMSPC, TD QE identity, PCK CRL (platform CA), each with its issuer chain from the response header;
 *       the root CRL; AMD KDS cert_chain (ASK/ASVK + ARK) per product. Everything fetched is checked
 *       (signatures to the pinned roots) before it is written.
 *   fetch --vcek-for REPORT[,REPORT] [--product Milan|Genoa|Turin] [--out DIR] [--kds URL]
 *       the per-chip VCEK of each SEV-SNP report (KDS URL from its CHIP_ID and REPORTED_TCB, src/attestation/
 *       snp/kds.ts), and its product's cert_chain; the VCEK is kept only if the report verifies with it
 *       (chain to the pinned ARK, signature, TCB and hwID extensions), in snp/vcek/<product>/<hwid>-<tcb>.der.
 *   check [--dir DIR] [--at ISO-TIME]
 *       every file's signature and window; exit 0 only if all are valid at that time.
 */
import type { X509Certificate } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, writeFileSync, existsSync, renameSync } from 'node:fs';
import path from 'node:path';
import { parseFlags } from '../../src/kernel/args.ts';
import { CdbpError, asCdbpError } from '../../src/kernel/errors.ts';
import { parsePemBundle, verifyChainToPinnedRoot, cn } from '../../src/attestation/chain.ts';
import { checkCrl, parseCrl } from '../../src/attestation/crl.ts';
import { checkCollateralWindow, parseQeIdentity, parseTcbInfo, verifyCollateralSignature } from '../../src/attestation/tdx/collateral.ts';
import { loadEvidenceFile, loadTdxCollateral } from '../../src/attestation/evidence-file.ts';
import { pinnedIntelRoot } from '../../src/attestation/tdx/roots.ts';
import { pinnedArks } from '../../src/attestation/snp/roots.ts';
import { vcekCachePath, vcekUrl, SNP_PRODUCTS } from '../../src/attestation/snp/kds.ts';
import { decodeSnpTcb, parseSnpReport, productFromCpuid, type SnpProduct } from '../../src/attestation/snp/report.ts';
import { verifySnpReport } from '../../src/attestation/snp/verify.ts';
import { parseCertificate } from '../../src/attestation/chain.ts';

export const DEFAULT_PCS = 'https://api.trustedservices.intel.com';
export const DEFAULT_ROOT_CRL = 'https://certificates.trustedservices.intel.com/IntelSGXRootCA.der';
export const DEFAULT_KDS = 'https://kdsintf.amd.com';

const USAGE = `usage: cdbp collateral fetch --fmspc HEX[,HEX] [--out DIR] [--pcs URL] [--root-crl-url URL] [--kds URL] [--amd Milan,Genoa,Turin]
       cdbp collateral fetch --vcek-for REPORT[,REPORT] [--product Milan|Genoa|Turin] [--out DIR] [--kds URL]
       cdbp collateral check [--dir DIR] [--at ISO-TIME]

DIR defaults to $CDBP_TEE_COLLATERAL_DIR. Layout: snp/, tdx/, tdx/<fmspc>/ (docs/ATTESTATION.md).`;

async function get(url: string, timeoutMs = 30_000): Promise<{ body: Buffer; headers: Headers }> {
  let res: Response;
  try {
    res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
  } catch (e) {
    throw new CdbpError('BACKEND_UNAVAILABLE', `cannot fetch ${url}: ${(e as Error).message}`);
  }
  if (!res.ok) throw new CdbpError('BACKEND_UNAVAILABLE', `${url} answered ${res.status}`);
  const body = Buffer.from(await res.arrayBuffer());
  if (body.length > 1024 * 1024) throw new CdbpError('TEE_COLLATERAL_INVALID', `${url}: ${body.length} bytes is too large`);
  return { body, headers: res.headers };
}

function issuerChain(headers: Headers, name: string, url: string): string {
  const v = headers.get(name);
  if (!v) throw new CdbpError('TEE_COLLATERAL_INVALID', `${url}: no ${name} header`);
  return decodeURIComponent(v);
}

/** Writes atomically (temp + rename), so a CAS reading the directory never sees half a file. */
function put(file: string, data: Buffer | string): void {
  mkdirSync(path.dirname(file), { recursive: true });
  writeFileSync(`${file}.tmp`, data);
  renameSync(`${file}.tmp`, file);
}

/** Fetching stores what the vendor serves now; its window is `check`'s and the verifier's business. */
const SIGNATURE_ONLY = 100 * 365 * 86_400;

export interface FetchOptions { out: string; fmspcs: string[]; pcs?: string; rootCrlUrl?: string; kds?: string; amdProducts?: string[]; now?: Date }

export async function fetchCollateral(o: FetchOptions): Promise<string[]> {
  const pcs = (o.pcs ?? DEFAULT_PCS).replace(/\/$/, '');
  const now = o.now ?? new Date();
  const root = pinnedIntelRoot();
  const written: string[] = [];
  const tdx = path.join(o.out, 'tdx');
  // Shared: QE identity and the root CRL.
  const qeUrl = `${pcs}/tdx/certification/v4/qe/identity`;
  const qe = await get(qeUrl);
  const qeChainPem = issuerChain(qe.headers, 'SGX-Enclave-Identity-Issuer-Chain', qeUrl);
  verifyCollateralSignature(parseQeIdentity(qe.body), parsePemBundle(qeChainPem, 'QE identity issuer chain'), root, now, 'QE identity');
  const rootCrl = await get(o.rootCrlUrl ?? DEFAULT_ROOT_CRL);
  checkCrl(parseCrl(rootCrl.body, 'root CRL'), root, now, SIGNATURE_ONLY, 'root CRL');
  put(path.join(tdx, 'qe-identity.json'), qe.body);
  put(path.join(tdx, 'qe-identity-issuer-chain.pem'), qeChainPem);
  put(path.join(tdx, 'root-crl.der'), rootCrl.body);
  written.push('tdx/qe-identity.json', 'tdx/qe-identity-issuer-chain.pem', 'tdx/root-crl.der');
  const crlUrl = `${pcs}/sgx/certification/v4/pckcrl?ca=platform&encoding=der`;
  const crl = await get(crlUrl);
  const crlChainPem = issuerChain(crl.headers, 'SGX-PCK-CRL-Issuer-Chain', crlUrl);
  const crlChain = parsePemBundle(crlChainPem, 'PCK CRL issuer chain');
  verifyChainToPinnedRoot(crlChain.map((c) => ({ cert: c, name: cn(c) })), [root], now);
  checkCrl(parseCrl(crl.body, 'PCK CRL'), crlChain[0]!, now, SIGNATURE_ONLY, 'PCK CRL');
  for (const fmspc of o.fmspcs) {
    if (!/^[0-9a-fA-F]{12}$/.test(fmspc)) throw new CdbpError('CONFIG_INVALID', `--fmspc ${fmspc} is not 6 bytes of hex`);
    const url = `${pcs}/tdx/certification/v4/tcb?fmspc=${fmspc.toLowerCase()}`;
    const tcb = await get(url);
    const chainPem = issuerChain(tcb.headers, 'TCB-Info-Issuer-Chain', url);
    const info = parseTcbInfo(tcb.body);
    verifyCollateralSignature(info, parsePemBundle(chainPem, 'TCB info issuer chain'), root, now, 'TCB info');
    if (info.body.fmspc.toLowerCase() !== fmspc.toLowerCase()) throw new CdbpError('TEE_FMSPC_MISMATCH', `${url} returned TCB info for ${info.body.fmspc}`);
    const dir = path.join(tdx, fmspc.toLowerCase());
    put(path.join(dir, 'tcb-info.json'), tcb.body);
    put(path.join(dir, 'tcb-info-issuer-chain.pem'), chainPem);
    put(path.join(dir, 'pck-crl.der'), crl.body);
    put(path.join(dir, 'pck-crl-issuer-chain.pem'), crlChainPem);
    written.push(`tdx/${fmspc.toLowerCase()}/tcb-info.json`, `tdx/${fmspc.toLowerCase()}/pck-crl.der`);
  }
  for (const product of o.amdProducts ?? []) {
    const ark = pinnedArks().get(product as never);
    if (!ark) throw new CdbpError('CONFIG_INVALID', `--amd ${product}: known products are ${[...pinnedArks().keys()].join(', ')}`);
    const url = `${(o.kds ?? DEFAULT_KDS).replace(/\/$/, '')}/vcek/v1/${product}/cert_chain`;
    const chain = await get(url);
    const certs = parsePemBundle(chain.body.toString('latin1'), `${product} cert_chain`);
    const ask = certs.find((c) => c.subject !== c.issuer);
    if (!ask) throw new CdbpError('TEE_CERT_CHAIN_INVALID', `${url}: no ASK in the chain`);
    verifyChainToPinnedRoot([{ cert: ask, name: cn(ask) }], [ark], now);
    put(path.join(o.out, 'snp', `${product.toLowerCase()}-cert-chain.pem`), chain.body);
    written.push(`snp/${product.toLowerCase()}-cert-chain.pem`);
  }
  return written;
}

export interface VcekFetchOptions { out: string; reports: string[]; product?: string; kds?: string; now?: Date }

/**
 * Fetches the VCEK of each report from KDS into the cache. Nothing is written unless the report verifies
 * with what was fetched (debug and the owner's policy are not this command's business, only that the
 * certificate is AMD's and is the one for this chip and TCB).
 */
export async function fetchVceks(o: VcekFetchOptions): Promise<string[]> {
  const kds = (o.kds ?? DEFAULT_KDS).replace(/\/$/, '');
  const now = o.now ?? new Date();
  if (o.product !== undefined && !SNP_PRODUCTS.includes(o.product as SnpProduct)) {
    throw new CdbpError('CONFIG_INVALID', `--product ${o.product}: known products are ${SNP_PRODUCTS.join(', ')}`);
  }
  const written: string[] = [];
  const chains = new Map<SnpProduct, X509Certificate[]>();
  for (const file of o.reports) {
    const ev = loadEvidenceFile(file);
    if (ev.format !== 'snp-report' && ev.format !== 'azure-snp-hcl') throw new CdbpError('CONFIG_INVALID', `--vcek-for ${file}: a ${ev.format} has no per-chip VCEK to fetch`);
    const report = parseSnpReport(ev.bytes);
    if (report.signingKey !== 0) throw new CdbpError('CONFIG_INVALID', `--vcek-for ${file}: the report is signed by a VLEK, which KDS does not serve per chip`);
    const product = productFromCpuid(report.cpuid) ?? (o.product as SnpProduct | undefined)
      ?? fail(`--vcek-for ${file}: a v${report.version} report does not name its product; pass --product Milan|Genoa|Turin`);
    const url = vcekUrl(product, report.chipId, decodeSnpTcb(report.reportedTcbRaw, product), kds);
    let chain = chains.get(product);
    if (!chain) {
      const cc = await get(`${kds}/vcek/v1/${product}/cert_chain`);
      chain = parsePemBundle(cc.body.toString('latin1'), `${product} cert_chain`);
      chains.set(product, chain);
      put(path.join(o.out, 'snp', `${product.toLowerCase()}-cert-chain.pem`), cc.body);
    }
    const der = (await get(url)).body;
    const vcek = parseCertificate(der, `VCEK from ${url}`);
    // Chain to the pinned ARK, report signature, TCB and hwID: the same checks the CAS will make.
    verifySnpReport({ report: ev.bytes, certs: [vcek, ...chain], now, policy: { allowDebug: true, allowMigrationAgent: true } });
    const rel = vcekCachePath(product, report.chipId, report.reportedTcbRaw);
    put(path.join(o.out, rel), vcek.raw);
    written.push(rel);
  }
  return written;
}

function fail(message: string): never {
  throw new CdbpError('CONFIG_INVALID', message);
}

export interface CheckRow { file: string; ok: boolean; detail: string }

/** Every TDX collateral set in DIR (tdx/ plus each tdx/<fmspc>/): signatures and windows at `now`. */
export function checkCollateralDir(dir: string, now: Date): CheckRow[] {
  const rows: CheckRow[] = [];
  const tdx = path.join(dir, 'tdx');
  const row = (file: string, f: () => string) => {
    try {
      rows.push({ file, ok: true, detail: f() });
    } catch (e) {
      const err = asCdbpError(e);
      rows.push({ file, ok: false, detail: `${err.code}: ${err.message}` });
    }
  };
  const hasSnp = existsSync(path.join(dir, 'snp'));
  if (hasSnp) checkSnpCache(dir, now, row);
  if (!existsSync(tdx)) return hasSnp ? rows : [{ file: 'tdx/', ok: false, detail: 'missing' }];
  const base = loadTdxCollateral(tdx);
  const root = pinnedIntelRoot();
  row('tdx/root-crl.der', () => {
    const c = parseCrl(base.rootCrl ?? Buffer.alloc(0), 'root CRL');
    checkCrl(c, root, now, 0, 'root CRL');
    return `valid, next update ${c.nextUpdate?.toISOString() ?? 'none'}`;
  });
  row('tdx/qe-identity.json', () => {
    const q = parseQeIdentity(base.qeIdentity ?? Buffer.from(''));
    verifyCollateralSignature(q, base.qeIdentityIssuerChain ?? [], root, now, 'QE identity');
    const w = checkCollateralWindow(q.body.issueDate, q.body.nextUpdate, now, 0, 'QE identity');
    return `valid, issued ${w.issued.toISOString()}, next update ${w.nextUpdate.toISOString()}`;
  });
  for (const fmspc of readdirSync(tdx).filter((f) => /^[0-9a-f]{12}$/.test(f)).sort()) {
    const own = { ...base, ...loadTdxCollateral(path.join(tdx, fmspc)) };
    row(`tdx/${fmspc}/tcb-info.json`, () => {
      const t = parseTcbInfo(own.tcbInfo ?? Buffer.from(''));
      verifyCollateralSignature(t, own.tcbInfoIssuerChain ?? [], root, now, 'TCB info');
      if (t.body.fmspc.toLowerCase() !== fmspc) throw new CdbpError('TEE_FMSPC_MISMATCH', `TCB info is for ${t.body.fmspc}`);
      const w = checkCollateralWindow(t.body.issueDate, t.body.nextUpdate, now, 0, 'TCB info');
      return `valid, issued ${w.issued.toISOString()}, next update ${w.nextUpdate.toISOString()}`;
    });
    row(`tdx/${fmspc}/pck-crl.der`, () => {
      const chainFile = path.join(tdx, fmspc, 'pck-crl-issuer-chain.pem');
      const chain = existsSync(chainFile) ? parsePemBundle(readFileSync(chainFile, 'latin1'), 'PCK CRL issuer chain') : [];
      if (!chain.length) throw new CdbpError('TEE_COLLATERAL_MISSING', 'no pck-crl-issuer-chain.pem');
      verifyChainToPinnedRoot(chain.map((c) => ({ cert: c, name: cn(c) })), [root], now);
      const c = parseCrl(own.pckCrl ?? Buffer.alloc(0), 'PCK CRL');
      checkCrl(c, chain[0]!, now, 0, 'PCK CRL');
      return `valid, next update ${c.nextUpdate?.toISOString() ?? 'none'}`;
    });
  }
  return rows;
}

/**
 * AMD certificates: each product's cert_chain (ASK/ASVK under the pinned ARK) and each cached VCEK under
 * its product's ASK, valid at `now` (VCEKs are long-lived; the row shows until when).
 */
function checkSnpCache(dir: string, now: Date, row: (file: string, f: () => string) => void): void {
  const asks = new Map<string, X509Certificate>();
  for (const f of readdirSync(path.join(dir, 'snp')).filter((x) => /^(milan|genoa|turin)-cert-chain\.pem$/.test(x)).sort()) {
    row(`snp/${f}`, () => {
      const product = SNP_PRODUCTS.find((p) => f.startsWith(p.toLowerCase()))!;
      const certs = parsePemBundle(readFileSync(path.join(dir, 'snp', f), 'latin1'), f);
      const ask = certs.find((c) => c.subject !== c.issuer) ?? (() => { throw new CdbpError('TEE_COLLATERAL_INVALID', `${f}: no ASK in it`); })();
      asks.set(product, ask); // its VCEKs get their own rows even when the ASK fails here
      verifyChainToPinnedRoot([{ cert: ask, name: cn(ask) }], [pinnedArks().get(product)!], now);
      return `valid, ${cn(ask)} until ${new Date(ask.validTo).toISOString()}`;
    });
  }
  for (const product of SNP_PRODUCTS) {
    const vdir = path.join(dir, 'snp', 'vcek', product.toLowerCase());
    if (!existsSync(vdir)) continue;
    for (const f of readdirSync(vdir).filter((x) => x.endsWith('.der')).sort()) {
      row(`snp/vcek/${product.toLowerCase()}/${f.length > 40 ? `${f.slice(0, 12)}…${f.slice(-21)}` : f}`, () => {
        const vcek = parseCertificate(readFileSync(path.join(vdir, f)), f);
        const ask = asks.get(product);
        if (!ask) throw new CdbpError('TEE_COLLATERAL_MISSING', `no snp/${product.toLowerCase()}-cert-chain.pem to check it against`);
        verifyChainToPinnedRoot([{ cert: vcek, name: 'VCEK' }, { cert: ask, name: cn(ask) }], [pinnedArks().get(product)!], now);
        return `valid, VCEK until ${new Date(vcek.validTo).toISOString()}`;
      });
    }
  }
}

export async function run(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === '--help' || sub === '-h' || sub === 'help') {
    console.log(USAGE);
    return 0;
  }
  // An option where the subcommand belongs is checked as an option (a typo is a usage error).
  const { flags } = parseFlags(sub?.startsWith('-') ? argv : rest, [], ['fmspc', 'out', 'pcs', 'root-crl-url', 'kds', 'amd', 'dir', 'at', 'vcek-for', 'product']);
  if (!sub || sub.startsWith('-') || flags.help) {
    console.log(USAGE);
    return sub && flags.help ? 0 : 2;
  }
  const dirOf = (v: unknown) => {
    const d = typeof v === 'string' ? v : process.env.CDBP_TEE_COLLATERAL_DIR;
    if (!d) throw new CdbpError('CONFIG_INVALID', `no collateral directory (--out/--dir or CDBP_TEE_COLLATERAL_DIR)\n${USAGE}`);
    return d;
  };
  const at = typeof flags.at === 'string' ? new Date(flags.at) : new Date();
  if (Number.isNaN(at.getTime())) throw new CdbpError('CONFIG_INVALID', `--at ${String(flags.at)} is not an ISO time`);
  if (sub === 'fetch') {
    const list = (v: unknown) => (typeof v === 'string' ? v.split(',').map((s) => s.trim()).filter(Boolean) : []);
    const vcekFor = list(flags['vcek-for']);
    if (vcekFor.length > 0) {
      const written = await fetchVceks({ out: dirOf(flags.out), reports: vcekFor, now: at,
        ...(typeof flags.product === 'string' ? { product: flags.product } : {}), ...(typeof flags.kds === 'string' ? { kds: flags.kds } : {}) });
      for (const w of written) console.log(`wrote ${w}`);
      if (list(flags.fmspc).length === 0 && list(flags.amd).length === 0) return 0;
    }
    const written = await fetchCollateral({
      out: dirOf(flags.out), fmspcs: list(flags.fmspc), amdProducts: list(flags.amd), now: at,
      ...(typeof flags.pcs === 'string' ? { pcs: flags.pcs } : {}), ...(typeof flags['root-crl-url'] === 'string' ? { rootCrlUrl: flags['root-crl-url'] } : {}),
      ...(typeof flags.kds === 'string' ? { kds: flags.kds } : {}),
    });
    for (const w of written) console.log(`wrote ${w}`);
    return 0;
  }
  if (sub === 'check') {
    const rows = checkCollateralDir(dirOf(flags.dir), at);
    for (const r of rows) console.log(`  ${r.ok ? 'OK  ' : 'FAIL'}  ${r.file.padEnd(34)} ${r.detail}`);
    return rows.every((r) => r.ok) ? 0 : 1;
  }
  console.error(`unknown collateral command ${sub}\n${USAGE}`);
  return 2;
}
