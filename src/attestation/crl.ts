/**
 * X.509 certificate revocation lists (RFC 5280, section 5), just enough for Intel's PCK and root CRLs:
 * parse the TBSCertList, verify its signature by the issuer's key over the exact TBS bytes, check the
 * update window at `now`, and answer "is this serial revoked". Intel serves CRLs in DER (or as hex of the
 * DER); PEM is accepted too.
 *
 * CertificateList ::= SEQUENCE { tbsCertList, signatureAlgorithm, signatureValue BIT STRING }
 * TBSCertList ::= SEQUENCE { version INTEGER OPTIONAL, signature AlgorithmIdentifier, issuer Name,
 *   thisUpdate Time, nextUpdate Time OPTIONAL, revokedCertificates SEQUENCE OF SEQUENCE { userCertificate
 *   INTEGER, revocationDate Time, crlEntryExtensions OPTIONAL } OPTIONAL, crlExtensions [0] OPTIONAL }
 */
import { verify, type X509Certificate } from 'node:crypto';
import { CdbpError } from '../kernel/errors.ts';
import { memoKey, verifiedOnce } from './verified-cache.ts';
import { derChildren, readDer } from '../crypto/der.ts';
import { decodeOid, decodeTime, derRead, expectTag, integerHex, TAG } from './asn1.ts';

const SIG_ALGS: Record<string, string> = {
  '1.2.840.10045.4.3.2': 'sha256', // ecdsa-with-SHA256
  '1.2.840.10045.4.3.3': 'sha384',
  '1.2.840.113549.1.1.11': 'sha256', // sha256WithRSAEncryption
  '1.2.840.113549.1.1.12': 'sha384',
};

export interface Crl {
  /** The issuer Name's DER (compared with the issuer certificate's subject by the signature check). */
  tbs: Buffer;
  hash: string;
  signature: Buffer;
  thisUpdate: Date;
  nextUpdate: Date | undefined;
  /** Revoked serial numbers, lowercase hex without leading zeros. */
  revoked: Set<string>;
}

/** DER, PEM ("X509 CRL"), or hex text of the DER. */
export function crlBytes(data: Buffer): Buffer {
  const text = data.toString('latin1').trim();
  const pem = /-----BEGIN X509 CRL-----([\s\S]*?)-----END X509 CRL-----/.exec(text);
  if (pem) return Buffer.from(pem[1]!.replace(/\s+/g, ''), 'base64');
  if (/^[0-9a-fA-F]+$/.test(text) && text.length % 2 === 0) return Buffer.from(text, 'hex');
  return data;
}

export function parseCrl(data: Buffer, what: string): Crl {
  return derRead('TEE_COLLATERAL_INVALID', what, () => {
    const der = crlBytes(data);
    const top = readDer(der);
    if (top.raw.length !== der.length) throw new Error('trailing bytes after the CRL');
    const [tbsEl, algEl, sigEl] = derChildren(expectTag(top, TAG.SEQUENCE, 'CertificateList'));
    const tbs = expectTag(tbsEl, TAG.SEQUENCE, 'tbsCertList');
    const algOid = decodeOid(expectTag(derChildren(expectTag(algEl, TAG.SEQUENCE, 'signatureAlgorithm'))[0], TAG.OID, 'algorithm').content);
    const hash = SIG_ALGS[algOid];
    if (!hash) throw new Error(`signature algorithm ${algOid} is not supported`);
    const sigBits = expectTag(sigEl, TAG.BIT_STRING, 'signatureValue').content;
    if (sigBits[0] !== 0) throw new Error('signature BIT STRING has unused bits');
    const parts = derChildren(tbs);
    let i = 0;
    if (parts[i]?.tag === TAG.INTEGER) i++; // version
    expectTag(parts[i++], TAG.SEQUENCE, 'signature'); // must equal signatureAlgorithm; the signature check covers it
    expectTag(parts[i++], TAG.SEQUENCE, 'issuer');
    const thisUpdate = decodeTime(parts[i++]!);
    let nextUpdate: Date | undefined;
    if (parts[i] && (parts[i]!.tag === TAG.UTC_TIME || parts[i]!.tag === TAG.GENERALIZED_TIME)) nextUpdate = decodeTime(parts[i++]!);
    const revoked = new Set<string>();
    if (parts[i]?.tag === TAG.SEQUENCE) {
      for (const entry of derChildren(parts[i++]!)) {
        revoked.add(integerHex(expectTag(derChildren(expectTag(entry, TAG.SEQUENCE, 'revoked entry'))[0], TAG.INTEGER, 'serial')));
      }
    }
    return { tbs: tbs.raw, hash, signature: sigBits.subarray(1), thisUpdate, nextUpdate, revoked };
  });
}

/**
 * Signature by `issuer` (who must be the CRL's issuer), and the window: thisUpdate ≤ now ≤ nextUpdate +
 * grace. A CRL past its nextUpdate could be hiding a newer revocation, so it is refused unless the policy
 * grants a grace period.
 */
export function checkCrl(crl: Crl, issuer: X509Certificate, now: Date, graceSeconds: number, what: string): void {
  let ok = false;
  try {
    ok = verifiedOnce(memoKey('crl', crl.hash, crl.tbs, crl.signature, issuer.raw), () => verify(crl.hash, crl.tbs, issuer.publicKey, crl.signature));
  } catch {
    ok = false;
  }
  if (!ok) throw new CdbpError('TEE_COLLATERAL_INVALID', `${what}: signature by ${issuerName(issuer)} does not verify`);
  if (now < crl.thisUpdate) throw new CdbpError('TEE_COLLATERAL_EXPIRED', `${what} is issued ${crl.thisUpdate.toISOString()}, after ${now.toISOString()}`);
  if (crl.nextUpdate && now.getTime() > crl.nextUpdate.getTime() + graceSeconds * 1000) {
    throw new CdbpError('TEE_COLLATERAL_EXPIRED', `${what} was due for an update at ${crl.nextUpdate.toISOString()} (now ${now.toISOString()})`,
      { details: { nextUpdate: crl.nextUpdate.toISOString(), at: now.toISOString() } });
  }
}

export function serialHex(cert: X509Certificate): string {
  const hex = cert.serialNumber.toLowerCase().replace(/^(00)+/, '');
  return hex === '' ? '0' : hex;
}

function issuerName(c: X509Certificate): string {
  return /CN=([^\n]*)/.exec(c.subject)?.[1] ?? c.subject;
}
