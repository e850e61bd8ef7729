/**
 * The SEV-SNP ATTESTATION_REPORT structure (AMD SEV Secure Nested Paging Firmware ABI Specification,
 * pub. 56860, Table 22 "ATTESTATION_REPORT Structure"): 1184 bytes, little-endian. Pure parse: no
 * signature or policy checks here (snp/verify.ts does those). Exactly 1184 bytes or it is refused:
 * a truncated report cannot be signed, and trailing bytes would be unsigned data riding along.
 */
import { CdbpError } from '../../kernel/errors.ts';

export const SNP_REPORT_SIZE = 0x4a0;
/** Bytes 0x000..0x29F are signed; the signature starts at 0x2A0. */
export const SNP_SIGNED_LENGTH = 0x2a0;
export const SNP_SIG_ALGO_ECDSA_P384_SHA384 = 1;
/** Versions whose layout this parser knows (2: ABI ≤ 1.55, 3: adds CPUID and the launch mitigation vector at reserved offsets). */
export const SNP_SUPPORTED_VERSIONS = [2, 3] as const;

/** Guest policy bits (ABI spec, Table 9 "Guest Policy Structure"). */
export const SNP_POLICY = {
  SMT: 1n << 16n,
  /** Bit 18: a migration agent may be associated with the guest. */
  MIGRATE_MA: 1n << 18n,
  /** Bit 19: debugging is allowed (the hypervisor can read and write guest memory). */
  DEBUG: 1n << 19n,
  SINGLE_SOCKET: 1n << 20n,
} as const;

/** A TCB_VERSION (8 bytes). Milan/Genoa: bootloader, tee, 4 reserved, snp, microcode; Turin adds fmc first. */
export interface SnpTcb {
  fmc?: number;
  bootloader: number;
  tee: number;
  snp: number;
  microcode: number;
  raw: string;
}

export type SnpProduct = 'Milan' | 'Genoa' | 'Turin';

export interface SnpReport {
  version: number;
  guestSvn: number;
  policy: bigint;
  familyId: Buffer;
  imageId: Buffer;
  vmpl: number;
  signatureAlgo: number;
  currentTcbRaw: Buffer;
  platformInfo: bigint;
  /** Bits 2-4 of the word at 0x48: 0 = VCEK, 1 = VLEK, 7 = none. */
  signingKey: number;
  /** Bit 0 of the word at 0x48: the report's author key digest is valid. */
  authorKeyEn: boolean;
  maskChipKey: boolean;
  reportData: Buffer;
  measurement: Buffer;
  hostData: Buffer;
  idKeyDigest: Buffer;
  authorKeyDigest: Buffer;
  reportId: Buffer;
  reportIdMa: Buffer;
  reportedTcbRaw: Buffer;
  /** v3+: CPUID family/model/stepping (0 in v2). */
  cpuid?: { family: number; model: number; stepping: number };
  chipId: Buffer;
  committedTcbRaw: Buffer;
  currentBuild: number; currentMinor: number; currentMajor: number;
  launchTcbRaw: Buffer;
  signedBytes: Buffer;
  /** The 144-byte signature field (r, s, each 72 bytes little-endian). */
  signature: Buffer;
}

export function parseSnpReport(buf: Buffer): SnpReport {
  if (buf.length !== SNP_REPORT_SIZE) {
    throw new CdbpError('TEE_EVIDENCE_MALFORMED', `an SEV-SNP report is ${SNP_REPORT_SIZE} bytes, this one is ${buf.length}`);
  }
  const version = buf.readUInt32LE(0x00);
  if (!(SNP_SUPPORTED_VERSIONS as readonly number[]).includes(version)) {
    throw new CdbpError('TEE_EVIDENCE_MALFORMED', `SEV-SNP report version ${version} is not supported (known: ${SNP_SUPPORTED_VERSIONS.join(', ')})`);
  }
  const keyInfo = buf.readUInt32LE(0x48);
  const r = (o: number, n: number) => Buffer.from(buf.subarray(o, o + n));
  const cpuidFam = buf[0x188]!;
  return {
    version,
    guestSvn: buf.readUInt32LE(0x04),
    policy: buf.readBigUInt64LE(0x08),
    familyId: r(0x10, 16),
    imageId: r(0x20, 16),
    vmpl: buf.readUInt32LE(0x30),
    signatureAlgo: buf.readUInt32LE(0x34),
    currentTcbRaw: r(0x38, 8),
    platformInfo: buf.readBigUInt64LE(0x40),
    signingKey: (keyInfo >> 2) & 0x7,
    authorKeyEn: (keyInfo & 1) === 1,
    maskChipKey: (keyInfo & 2) === 2,
    reportData: r(0x50, 64),
    measurement: r(0x90, 48),
    hostData: r(0xc0, 32),
    idKeyDigest: r(0xe0, 48),
    authorKeyDigest: r(0x110, 48),
    reportId: r(0x140, 32),
    reportIdMa: r(0x160, 32),
    reportedTcbRaw: r(0x180, 8),
    ...(version >= 3 && cpuidFam !== 0 ? { cpuid: { family: cpuidFam, model: buf[0x189]!, stepping: buf[0x18a]! } } : {}),
    chipId: r(0x1a0, 64),
    committedTcbRaw: r(0x1e0, 8),
    currentBuild: buf[0x1e8]!, currentMinor: buf[0x1e9]!, currentMajor: buf[0x1ea]!,
    launchTcbRaw: r(0x1f0, 8),
    signedBytes: r(0, SNP_SIGNED_LENGTH),
    signature: r(SNP_SIGNED_LENGTH, 144),
  };
}

/** Decodes a TCB_VERSION for the product's layout (Turin moved the fields: fmc, bootloader, tee, snp, ..., microcode). */
export function decodeSnpTcb(raw: Buffer, product: SnpProduct): SnpTcb {
  if (product === 'Turin') {
    return { fmc: raw[0]!, bootloader: raw[1]!, tee: raw[2]!, snp: raw[3]!, microcode: raw[7]!, raw: raw.toString('hex') };
  }
  return { bootloader: raw[0]!, tee: raw[1]!, snp: raw[6]!, microcode: raw[7]!, raw: raw.toString('hex') };
}

/** Product from a v3 report's CPUID (family 0x19: Milan model 0x01, Genoa 0x11; family 0x1A: Turin). */
export function productFromCpuid(c: SnpReport['cpuid']): SnpProduct | undefined {
  if (!c) return undefined;
  if (c.family === 0x19 && c.model <= 0x0f) return 'Milan';
  if (c.family === 0x19 && c.model >= 0x10 && c.model <= 0x1f) return 'Genoa';
  if (c.family === 0x1a) return 'Turin';
  return undefined;
}
