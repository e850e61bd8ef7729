/**
 * The Intel TDX DCAP quote, versions 4 and 5 (Intel "TDX DCAP Quote Generation Library and Quote
 * Verification Library" data structures, Appendix A: Quote Format): header, TD report body (TDX 1.0, 584
 * bytes; v5 also TDX 1.5, 648 bytes), then the ECDSA signature data with the QE report certification data
 * (type 6) that carries the QE report, its signature by the PCK key, the QE authentication data and the
 * PCK certificate chain (type 5, PEM). Pure parse; every length is checked against the bytes that are
 * there; the certification data must end exactly where the signature data ends.
 */
import { CdbpError } from '../../kernel/errors.ts';

export const TDX_HEADER_SIZE = 48;
export const TDX_BODY_10_SIZE = 584;
export const TDX_BODY_15_SIZE = 648;
export const TDX_TEE_TYPE = 0x81;
export const ATT_KEY_ECDSA_P256 = 2;
export const CERT_DATA_PCK_CHAIN = 5;
export const CERT_DATA_QE_REPORT = 6;
export const SGX_REPORT_BODY_SIZE = 384;
/** A quote is a few KB; anything far beyond that is not a quote (and is refused before parsing). */
export const TDX_QUOTE_MAX_SIZE = 64 * 1024;

export interface TdReportBody {
  teeTcbSvn: Buffer;
  mrSeam: Buffer;
  mrSignerSeam: Buffer;
  seamAttributes: Buffer;
  tdAttributes: Buffer;
  xfam: Buffer;
  mrTd: Buffer;
  mrConfigId: Buffer;
  mrOwner: Buffer;
  mrOwnerConfig: Buffer;
  rtmr: [Buffer, Buffer, Buffer, Buffer];
  reportData: Buffer;
  /** TDX 1.5 body only. */
  teeTcbSvn2?: Buffer;
  mrServiceTd?: Buffer;
}

/** The SGX REPORT body of the Quoting Enclave (SGX developer reference, sgx_report_body_t). */
export interface QeReport {
  raw: Buffer;
  cpuSvn: Buffer;
  miscSelect: number;
  attributes: Buffer;
  mrEnclave: Buffer;
  mrSigner: Buffer;
  isvProdId: number;
  isvSvn: number;
  reportData: Buffer;
}

export interface TdxQuote {
  version: 4 | 5;
  /** v5 body type: 2 = TDX 1.0, 3 = TDX 1.5 (v4 is always TDX 1.0). */
  bodyType: 2 | 3;
  qeVendorId: Buffer;
  body: TdReportBody;
  /** Header ‖ (v5: body type ‖ size ‖) body: what the attestation key signs. */
  signedBytes: Buffer;
  signature: Buffer;
  attestationKey: Buffer;
  qeReport: QeReport;
  qeReportSignature: Buffer;
  qeAuthData: Buffer;
  /** The PCK chain as the quote carries it (PEM: leaf, intermediate CA, root). */
  pckChainPem: string;
  /** Bytes after the signature data (padding): not signed, not used. */
  unsignedTrailingBytes: number;
}

function malformed(why: string): never {
  throw new CdbpError('TEE_EVIDENCE_MALFORMED', `TDX quote: ${why}`);
}

class Reader {
  constructor(private buf: Buffer, public pos = 0) {}
  limit(end: number): void { this.buf = this.buf.subarray(0, end); }
  take(n: number, what: string): Buffer {
    if (n < 0 || this.pos + n > this.buf.length) malformed(`truncated in ${what} (needs ${n} bytes at ${this.pos}, has ${this.buf.length - this.pos})`);
    const out = Buffer.from(this.buf.subarray(this.pos, this.pos + n));
    this.pos += n;
    return out;
  }
  u16(what: string): number { return this.take(2, what).readUInt16LE(0); }
  u32(what: string): number { return this.take(4, what).readUInt32LE(0); }
}

export function parseTdReportBody(b: Buffer): TdReportBody {
  const s = (o: number, n: number) => Buffer.from(b.subarray(o, o + n));
  return {
    teeTcbSvn: s(0, 16), mrSeam: s(16, 48), mrSignerSeam: s(64, 48), seamAttributes: s(112, 8), tdAttributes: s(120, 8),
    xfam: s(128, 8), mrTd: s(136, 48), mrConfigId: s(184, 48), mrOwner: s(232, 48), mrOwnerConfig: s(280, 48),
    rtmr: [s(328, 48), s(376, 48), s(424, 48), s(472, 48)], reportData: s(520, 64),
    ...(b.length === TDX_BODY_15_SIZE ? { teeTcbSvn2: s(584, 16), mrServiceTd: s(600, 48) } : {}),
  };
}

export function parseQeReport(raw: Buffer): QeReport {
  return {
    raw, cpuSvn: raw.subarray(0, 16), miscSelect: raw.readUInt32LE(16), attributes: raw.subarray(48, 64),
    mrEnclave: raw.subarray(64, 96), mrSigner: raw.subarray(128, 160), isvProdId: raw.readUInt16LE(256),
    isvSvn: raw.readUInt16LE(258), reportData: raw.subarray(320, 384),
  };
}

export function parseTdxQuote(input: Buffer): TdxQuote {
  let buf = input;
  if (buf.length > TDX_QUOTE_MAX_SIZE) malformed(`${buf.length} bytes is larger than any quote (${TDX_QUOTE_MAX_SIZE})`);
  const r = new Reader(buf);
  const header = r.take(TDX_HEADER_SIZE, 'header');
  const version = header.readUInt16LE(0);
  if (version !== 4 && version !== 5) malformed(`version ${version} is not supported (4 or 5)`);
  if (header.readUInt16LE(2) !== ATT_KEY_ECDSA_P256) malformed(`attestation key type ${header.readUInt16LE(2)} is not ECDSA P-256`);
  if (header.readUInt32LE(4) !== TDX_TEE_TYPE) malformed(`TEE type 0x${header.readUInt32LE(4).toString(16)} is not TDX (0x81)`);
  let bodyType: 2 | 3 = 2;
  let bodySize = TDX_BODY_10_SIZE;
  if (version === 5) {
    const type = r.u16('body type');
    const size = r.u32('body size');
    if (type === 2 && size === TDX_BODY_10_SIZE) bodyType = 2;
    else if (type === 3 && size === TDX_BODY_15_SIZE) { bodyType = 3; bodySize = TDX_BODY_15_SIZE; }
    else malformed(`v5 body type ${type} of ${size} bytes is not a TD report (2/584 or 3/648)`);
  }
  const body = r.take(bodySize, 'TD report body');
  const signedBytes = Buffer.from(buf.subarray(0, r.pos));
  const sigDataLen = r.u32('signature data length');
  if (r.pos + sigDataLen > buf.length) malformed(`signature data is ${sigDataLen} bytes, only ${buf.length - r.pos} follow (truncated)`);
  // Bytes after the signature data are covered by nothing and never read; quote generators pad to a
  // buffer size (zeros) and some test vectors append text. They are counted, bounded by the size cap.
  const end = r.pos + sigDataLen;
  const unsignedTrailingBytes = buf.length - end;
  buf = buf.subarray(0, end);
  r.limit(end);
  const signature = r.take(64, 'quote signature');
  const attestationKey = r.take(64, 'attestation key');
  const certType = r.u16('certification data type');
  if (certType !== CERT_DATA_QE_REPORT) malformed(`certification data type ${certType} is not the QE report certification data (6)`);
  const certSize = r.u32('certification data size');
  if (r.pos + certSize !== buf.length) malformed('certification data size does not match the quote');
  const qeReportRaw = r.take(SGX_REPORT_BODY_SIZE, 'QE report');
  const qeReportSignature = r.take(64, 'QE report signature');
  const authLen = r.u16('QE authentication data size');
  const qeAuthData = r.take(authLen, 'QE authentication data');
  const innerType = r.u16('inner certification data type');
  if (innerType !== CERT_DATA_PCK_CHAIN) malformed(`inner certification data type ${innerType} is not the PCK chain (5)`);
  const innerSize = r.u32('PCK chain size');
  const chain = r.take(innerSize, 'PCK chain');
  if (r.pos !== buf.length) malformed('bytes after the PCK chain');
  return {
    version, bodyType, qeVendorId: header.subarray(12, 28), body: parseTdReportBody(body), signedBytes, signature, attestationKey,
    qeReport: parseQeReport(qeReportRaw), qeReportSignature, qeAuthData,
    // Some quote generators pad the PEM with NULs.
    pckChainPem: chain.toString('latin1').replace(/\0+$/, ''),
    unsignedTrailingBytes,
  };
}
