/**
 * Evidence from the Linux configfs-tsm interface (kernel ≥ 6.7, Documentation/ABI/testing/configfs-tsm):
 * one provider for both `sev_guest` (SEV-SNP) and `tdx_guest` (TDX).
 *
 *   mkdir <root>/<name>            a report object (root: /sys/kernel/config/tsm/report, a setting)
 *   read  provider                 sev_guest | tdx_guest
 *   read  generation               G
 *   write privlevel (SNP, opt.)    VMPL to request the report at          → generation G+1
 *   write inblob                   the 64 report-data bytes               → generation G+n
 *   read  outblob                  the SNP report or TDX quote
 *   read  auxblob (SNP)            the certificate table (VCEK/VLEK, ASK, ARK) if the host supplied one
 *   read  generation               must be exactly G+n: any other value means another writer raced us
 *                                  between our write and our read, and the blob may carry its report data
 *   rmdir <root>/<name>
 *
 * A race is retried a few times with a fresh object, then refused (ATTESTATION_UNAVAILABLE). The blob's
 * own report data is also compared with what we wrote. File access goes through `TsmFs`, so tests run the
 * flow against a directory double with a concurrent writer; production uses node:fs.
 */
import { mkdirSync, readFileSync, rmdirSync, writeFileSync, existsSync } from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { CdbpError } from '../kernel/errors.ts';
import type { AttestationProvider, Evidence, TeeMode } from './types.ts';
import { SNP_REPORT_SIZE } from './snp/report.ts';
import { parseTdxQuote } from './tdx/quote.ts';

export const DEFAULT_TSM_ROOT = '/sys/kernel/config/tsm/report';

/** The few file operations the flow needs (node:fs in production, a double in tests). */
export interface TsmFs {
  mkdir(p: string): void;
  rmdir(p: string): void;
  read(p: string): Buffer;
  write(p: string, data: Buffer | string): void;
  exists(p: string): boolean;
}

export const nodeTsmFs: TsmFs = {
  mkdir: (p) => mkdirSync(p),
  rmdir: (p) => rmdirSync(p),
  read: (p) => readFileSync(p),
  write: (p, d) => writeFileSync(p, d),
  exists: (p) => existsSync(p),
};

/** GUIDs of the SNP certificate table (GHCB spec, "SNP Extended Guest Request", certificate table). */
export const SNP_CERT_GUIDS: Record<string, string> = {
  '63da758d-e664-4564-adc5-f4b93be8accd': 'VCEK',
  'a8074bc2-a25a-483e-aae6-39c045a0b8a1': 'VLEK',
  '4ab7b379-bbac-4fe4-a02f-05aef327c782': 'ASK',
  'c0b406a4-a803-4952-9743-3fb6014cd0ae': 'ARK',
};

/** GUIDs in the table are in RFC 4122 byte order (as go-sev-guest's and virtee's parsers read them). */
function guidString(b: Buffer): string {
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
}

/** The certificates in an SNP certificate table: entries {GUID, offset u32, length u32}, ended by an all-zero entry. */
export function parseSnpCertTable(aux: Buffer): Array<{ kind: string; der: Buffer }> {
  const out: Array<{ kind: string; der: Buffer }> = [];
  for (let off = 0; off + 24 <= aux.length; off += 24) {
    const entry = aux.subarray(off, off + 24);
    if (entry.every((b) => b === 0)) return out;
    const kind = SNP_CERT_GUIDS[guidString(entry.subarray(0, 16))] ?? 'other';
    const o = entry.readUInt32LE(16);
    const len = entry.readUInt32LE(20);
    if (o + len > aux.length || len === 0) throw new CdbpError('TEE_EVIDENCE_MALFORMED', 'SNP certificate table entry runs past the end');
    if (kind !== 'other') out.push({ kind, der: Buffer.from(aux.subarray(o, o + len)) });
  }
  throw new CdbpError('TEE_EVIDENCE_MALFORMED', 'SNP certificate table has no terminating entry');
}

export interface ConfigfsTsmOptions {
  root?: string;
  fs?: TsmFs;
  /** SNP only: the VMPL to request the report at. */
  privlevel?: number;
  /** Attempts when another writer races us (default 3). */
  attempts?: number;
}

export class ConfigfsTsmProvider implements AttestationProvider {
  readonly mode: TeeMode;
  private readonly root: string;
  private readonly fs: TsmFs;
  private last: string | undefined;

  /** `mode`: what the platform offers (detectTsmProvider); a mismatch with the kernel's provider fails closed. */
  constructor(mode: 'sev-snp' | 'tdx', private readonly o: ConfigfsTsmOptions = {}) {
    this.mode = mode;
    this.root = o.root ?? DEFAULT_TSM_ROOT;
    this.fs = o.fs ?? nodeTsmFs;
  }

  measurement(): string {
    // Known only from a report; status shows it after the first attestation.
    return this.last ?? 'unknown until the first report';
  }

  async collect(reportData: Buffer): Promise<Evidence> {
    if (reportData.length !== 64) throw new CdbpError('INTERNAL', 'report data must be 64 bytes');
    const attempts = this.o.attempts ?? 3;
    let lastRace = '';
    for (let i = 1; i <= attempts; i++) {
      const r = this.once(reportData);
      if ('race' in r) { lastRace = r.race; continue; }
      return r.evidence;
    }
    throw new CdbpError('ATTESTATION_UNAVAILABLE', `configfs-tsm: another writer changed the report object during each of ${attempts} attempts (${lastRace})`);
  }

  private once(reportData: Buffer): { evidence: Evidence } | { race: string } {
    const dir = path.join(this.root, `cdbp-${process.pid}-${randomBytes(6).toString('hex')}`);
    const f = (name: string) => path.join(dir, name);
    try {
      this.fs.mkdir(dir);
    } catch (e) {
      throw new CdbpError('ATTESTATION_UNAVAILABLE', `configfs-tsm: cannot create a report under ${this.root}: ${(e as Error).message}`);
    }
    try {
      const provider = this.fs.read(f('provider')).toString('latin1').trim();
      const expected = this.mode === 'sev-snp' ? 'sev_guest' : 'tdx_guest';
      if (provider !== expected) throw new CdbpError('ATTESTATION_UNAVAILABLE', `configfs-tsm provider is ${provider}, configured mode ${this.mode} needs ${expected}`);
      const gen0 = readGeneration(this.fs, f('generation'));
      let writes = 0;
      if (this.o.privlevel !== undefined && this.mode === 'sev-snp') { this.fs.write(f('privlevel'), String(this.o.privlevel)); writes++; }
      this.fs.write(f('inblob'), reportData);
      writes++;
      const out = this.fs.read(f('outblob'));
      const aux = this.mode === 'sev-snp' && this.fs.exists(f('auxblob')) ? this.fs.read(f('auxblob')) : Buffer.alloc(0);
      const gen1 = readGeneration(this.fs, f('generation'));
      if (gen1 !== gen0 + writes) return { race: `generation ${gen0} → ${gen1}, expected ${gen0 + writes}` };
      const { measurement, boundData } = this.facts(out);
      if (!boundData.equals(reportData)) return { race: 'the blob carries other report data' };
      this.last = measurement;
      const certs = aux.length ? parseSnpCertTable(aux).map((c) => c.der.toString('base64')) : [];
      return { evidence: { mode: this.mode, measurement, reportData: reportData.toString('hex'), report: out.toString('base64'), ...(certs.length ? { certs } : {}) } };
    } finally {
      try {
        this.fs.rmdir(dir);
      } catch {
        // configfs removes the object's attributes with it; nothing else to clean up
      }
    }
  }

  private facts(out: Buffer): { measurement: string; boundData: Buffer } {
    if (this.mode === 'sev-snp') {
      if (out.length !== SNP_REPORT_SIZE) throw new CdbpError('TEE_EVIDENCE_MALFORMED', `configfs-tsm outblob is ${out.length} bytes, not an SNP report`);
      return { measurement: out.subarray(0x90, 0xc0).toString('hex'), boundData: out.subarray(0x50, 0x90) };
    }
    const q = parseTdxQuote(out);
    return { measurement: q.body.mrTd.toString('hex'), boundData: q.body.reportData };
  }
}

function readGeneration(fs: TsmFs, p: string): number {
  const n = Number(fs.read(p).toString('latin1').trim());
  if (!Number.isSafeInteger(n) || n < 0) throw new CdbpError('ATTESTATION_UNAVAILABLE', `configfs-tsm generation is not a counter: ${p}`);
  return n;
}

/**
 * What this machine offers, for CDBP_TEE_MODE=auto: a configfs-tsm provider (by probing a report
 * object), else nothing. Simulation is never detected: it is opt-in only. Returns what was found, so
 * the log can say it.
 */
export function detectTee(o: { root?: string; fs?: TsmFs; devices?: (p: string) => boolean } = {}): { mode: 'sev-snp' | 'tdx' | 'none'; found: string } {
  const fs = o.fs ?? nodeTsmFs;
  const root = o.root ?? DEFAULT_TSM_ROOT;
  const dev = o.devices ?? existsSync;
  if (fs.exists(root)) {
    const dir = path.join(root, `cdbp-probe-${process.pid}-${randomBytes(4).toString('hex')}`);
    try {
      fs.mkdir(dir);
      try {
        const provider = fs.read(path.join(dir, 'provider')).toString('latin1').trim();
        if (provider === 'sev_guest') return { mode: 'sev-snp', found: `configfs-tsm at ${root}, provider sev_guest` };
        if (provider === 'tdx_guest') return { mode: 'tdx', found: `configfs-tsm at ${root}, provider tdx_guest` };
        return { mode: 'none', found: `configfs-tsm at ${root} with unknown provider ${provider}` };
      } finally {
        try { fs.rmdir(dir); } catch { /* gone with the object */ }
      }
    } catch (e) {
      return { mode: 'none', found: `configfs-tsm at ${root} but no report object could be created (${(e as Error).message})` };
    }
  }
  const legacy = ['/dev/sev-guest', '/dev/tdx_guest', '/dev/tpmrm0'].filter((p) => dev(p));
  return { mode: 'none', found: legacy.length ? `no configfs-tsm; found ${legacy.join(', ')} (not supported by this build: needs Linux ≥ 6.7 configfs-tsm)` : 'no TEE interface (no configfs-tsm, no /dev/sev-guest, /dev/tdx_guest or vTPM)' };
}
