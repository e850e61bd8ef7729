/**
 * AMD Key Distribution Service (KDS) addressing for per-chip VCEKs, and the collateral directory's VCEK
 * cache. Pure (the cache lookup only reads files).
 *
 * A VCEK is derived from the chip's unique secret and its TCB: one certificate per (chip, reported TCB).
 * KDS serves it at (AMD "VCEK Certificate and KDS Interface Specification", pub. 57230, section "VCEK
 * Certificate"):
 *
 *   {kds}/vcek/v1/{Milan|Genoa}/{hwid}?blSPL=BB&teeSPL=TT&snpSPL=SS&ucodeSPL=UU           hwid = CHIP_ID, 64 bytes hex
 *   {kds}/vcek/v1/Turin/{hwid}?fmcSPL=FF&blSPL=BB&teeSPL=TT&snpSPL=SS&ucodeSPL=UU          hwid = first 8 bytes of CHIP_ID
 *
 * SPL values are decimal, at least two digits (what AMD's and virtee's tools send). The answer is the
 * VCEK in DER. The cache keeps it as
 *
 *   snp/vcek/<product>/<hwid>-<reported TCB, 8 bytes hex>.der
 *
 * so the CAS finds exactly the certificate for the report in front of it, and a missing one is refused
 * with the URL that would provide it.
 */
import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { CdbpError } from '../../kernel/errors.ts';
import { decodeSnpTcb, type SnpProduct, type SnpTcb } from './report.ts';

export const DEFAULT_KDS = 'https://kdsintf.amd.com';
export const SNP_PRODUCTS: SnpProduct[] = ['Milan', 'Genoa', 'Turin'];

/** The KDS hwid of a chip: Turin uses the first 8 bytes of CHIP_ID, earlier products all 64. */
export function kdsHwid(product: SnpProduct, chipId: Buffer): string {
  if (chipId.length !== 64) throw new CdbpError('TEE_EVIDENCE_MALFORMED', `CHIP_ID must be 64 bytes, not ${chipId.length}`);
  const hw = product === 'Turin' ? chipId.subarray(0, 8) : chipId;
  if (hw.every((b) => b === 0)) {
    // MASK_CHIP_ID=1 (or a VLEK-signed report): there is no chip to ask KDS about.
    throw new CdbpError('TEE_COLLATERAL_MISSING', 'the report masks its CHIP_ID: its VCEK cannot be looked up (supply it with the evidence, or use a VLEK)');
  }
  return hw.toString('hex');
}

const spl = (n: number) => String(n).padStart(2, '0');

/** The KDS URL of the VCEK for this chip at this reported TCB. */
export function vcekUrl(product: SnpProduct, chipId: Buffer, tcb: SnpTcb, kds = DEFAULT_KDS): string {
  const base = `${kds.replace(/\/$/, '')}/vcek/v1/${product}/${kdsHwid(product, chipId)}`;
  const common = `blSPL=${spl(tcb.bootloader)}&teeSPL=${spl(tcb.tee)}&snpSPL=${spl(tcb.snp)}&ucodeSPL=${spl(tcb.microcode)}`;
  if (product === 'Turin') {
    if (tcb.fmc === undefined) throw new CdbpError('TEE_EVIDENCE_MALFORMED', 'a Turin TCB has an FMC SPL');
    return `${base}?fmcSPL=${spl(tcb.fmc)}&${common}`;
  }
  return `${base}?${common}`;
}

/** Where the cache keeps that VCEK, relative to the collateral directory. */
export function vcekCachePath(product: SnpProduct, chipId: Buffer, reportedTcbRaw: Buffer): string {
  return path.join('snp', 'vcek', product.toLowerCase(), `${kdsHwid(product, chipId)}-${reportedTcbRaw.toString('hex')}.der`);
}

/**
 * The cached VCEK file for a report, or a TEE_COLLATERAL_MISSING naming the KDS URL. `product` is the
 * report's (v3 CPUID) when known; otherwise every product's cache is looked at (a chip id is unique).
 */
export function findCachedVcek(dir: string, chipId: Buffer, reportedTcbRaw: Buffer, product?: SnpProduct): string {
  const products = product ? [product] : SNP_PRODUCTS;
  for (const p of products) {
    const file = path.join(dir, vcekCachePath(p, chipId, reportedTcbRaw));
    if (existsSync(file)) return file;
  }
  const cached = products.flatMap((p) => {
    const d = path.join(dir, 'snp', 'vcek', p.toLowerCase());
    return existsSync(d) ? readdirSync(d).filter((f) => f.endsWith('.der')) : [];
  }).length;
  const urls = products.map((p) => vcekUrl(p, chipId, decodeSnpTcb(reportedTcbRaw, p)));
  throw new CdbpError('TEE_COLLATERAL_MISSING',
    `no VCEK for this chip at reported TCB ${reportedTcbRaw.toString('hex')} in ${path.join(dir, 'snp', 'vcek')} (${cached} cached for other chips or TCBs); `
    + `fetch it with \`cdbp collateral fetch --vcek-for REPORT\` from ${urls.join(' or ')}`,
    { details: { urls, reportedTcb: reportedTcbRaw.toString('hex') } });
}
