/**
 * The few ASN.1 reads the TEE verifiers need beyond what node:crypto's X509Certificate exposes: a
 * certificate's extensions by OID (AMD's VCEK TCB values, Intel's SGX extension), OIDs, INTEGERs and
 * X.509 times. Built on the slicing DER reader (src/crypto/der.ts); every malformed input becomes the
 * caller's own error code, so a bad certificate is reported in the terms of what it was for.
 */
import { CdbpError, type ErrorCode } from '../kernel/errors.ts';
import { derChildren, readDer, type DerElement } from '../crypto/der.ts';

export const TAG = {
  BOOLEAN: 0x01, INTEGER: 0x02, BIT_STRING: 0x03, OCTET_STRING: 0x04, NULL: 0x05, OID: 0x06, ENUMERATED: 0x0a,
  UTF8: 0x0c, PRINTABLE: 0x13, IA5: 0x16, UTC_TIME: 0x17, GENERALIZED_TIME: 0x18, SEQUENCE: 0x30, SET: 0x31,
} as const;

/** Runs a DER read, turning any failure into `code` (the DER reader's own errors say BAD_REQUEST). */
export function derRead<T>(code: ErrorCode, what: string, f: () => T): T {
  try {
    return f();
  } catch (e) {
    throw new CdbpError(code, `${what}: ${(e as Error).message}`);
  }
}

export function expectTag(el: DerElement | undefined, tag: number, what: string): DerElement {
  if (!el || el.tag !== tag) throw new Error(`${what}: expected tag 0x${tag.toString(16)}, got ${el ? '0x' + el.tag.toString(16) : 'nothing'}`);
  return el;
}

export function decodeOid(content: Buffer): string {
  if (content.length === 0) throw new Error('empty OID');
  const parts: number[] = [];
  let value = 0;
  for (const b of content) {
    value = value * 128 + (b & 0x7f);
    if (value > Number.MAX_SAFE_INTEGER / 128) throw new Error('OID arc too large');
    if ((b & 0x80) === 0) {
      if (parts.length === 0) parts.push(value < 80 ? Math.floor(value / 40) : 2, value < 80 ? value % 40 : value - 80);
      else parts.push(value);
      value = 0;
    }
  }
  if ((content[content.length - 1]! & 0x80) !== 0) throw new Error('OID ends mid-arc');
  return parts.join('.');
}

/** A small non-negative INTEGER (SVNs, versions): refuses negatives and values above 2^48. */
export function decodeSmallUint(el: DerElement): number {
  if (el.tag !== TAG.INTEGER && el.tag !== TAG.ENUMERATED) throw new Error('expected INTEGER');
  const c = el.content;
  if (c.length === 0 || c.length > 7 || (c[0]! & 0x80) !== 0) throw new Error('INTEGER out of range');
  return c.readUIntBE(0, c.length);
}

/** Big-endian magnitude of an INTEGER (certificate serial numbers), lowercase hex without leading zeros. */
export function integerHex(el: DerElement): string {
  if (el.tag !== TAG.INTEGER) throw new Error('expected INTEGER');
  const hex = el.content.toString('hex').replace(/^(00)+/, '');
  return hex === '' ? '0' : hex;
}

/** UTCTime (YYMMDDHHMMSSZ, years 1950-2049 per RFC 5280) or GeneralizedTime (YYYYMMDDHHMMSSZ). */
export function decodeTime(el: DerElement): Date {
  const s = el.content.toString('latin1');
  let m: RegExpMatchArray | null;
  let year: number;
  if (el.tag === TAG.UTC_TIME && (m = s.match(/^(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/))) {
    const yy = Number(m[1]);
    year = yy >= 50 ? 1900 + yy : 2000 + yy;
  } else if (el.tag === TAG.GENERALIZED_TIME && (m = s.match(/^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/))) {
    year = Number(m[1]);
  } else {
    throw new Error(`bad time ${JSON.stringify(s)}`);
  }
  return new Date(Date.UTC(year, Number(m[2]) - 1, Number(m[3]), Number(m[4]), Number(m[5]), Number(m[6])));
}

/**
 * A certificate's extensions, OID → the extnValue's content (the DER inside the OCTET STRING).
 * Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signature }; extensions are [3] in the TBS.
 */
export function certificateExtensions(der: Buffer): Map<string, Buffer> {
  const cert = readDer(der);
  if (cert.raw.length !== der.length) throw new Error('trailing bytes after the certificate');
  const tbs = expectTag(derChildren(expectTag(cert, TAG.SEQUENCE, 'certificate'))[0], TAG.SEQUENCE, 'tbsCertificate');
  const out = new Map<string, Buffer>();
  const explicit3 = derChildren(tbs).find((c) => c.tag === 0xa3);
  if (!explicit3) return out;
  const list = expectTag(derChildren(explicit3)[0], TAG.SEQUENCE, 'extensions');
  for (const ext of derChildren(list)) {
    const parts = derChildren(expectTag(ext, TAG.SEQUENCE, 'extension'));
    const oid = decodeOid(expectTag(parts[0], TAG.OID, 'extension id').content);
    const value = expectTag(parts[parts.length - 1], TAG.OCTET_STRING, 'extension value');
    if (out.has(oid)) throw new Error(`extension ${oid} appears twice`);
    out.set(oid, value.content);
  }
  return out;
}
