/**
 * Certificate chains to a pinned vendor root, at a given time. node:crypto checks each signature
 * (X509Certificate.verify handles the RSA-PSS/SHA-384 certificates AMD uses and Intel's ECDSA P-256);
 * this module adds what a chain needs on top: issuer/subject linkage, CA flags on issuers, validity at
 * `now` (an input: tests verify real vectors inside their window and prove the refusal outside it), and a
 * root that is one of the pinned ones byte for byte — never "whatever self-signed certificate came along".
 */
import { X509Certificate } from 'node:crypto';
import { CdbpError } from '../kernel/errors.ts';
import { sha256Fingerprint } from '../crypto/x509.ts';
import { memoKey, verifiedOnce } from './verified-cache.ts';

export { sha256Fingerprint };

/** Parses one certificate (PEM or DER); a malformed one is TEE_CERT_CHAIN_INVALID, naming `what`. */
export function parseCertificate(data: Buffer | string, what: string): X509Certificate {
  try {
    return new X509Certificate(data);
  } catch (e) {
    throw new CdbpError('TEE_CERT_CHAIN_INVALID', `${what}: not a certificate (${(e as Error).message})`);
  }
}

/** Every certificate in a PEM bundle, in order. */
export function parsePemBundle(pem: string, what: string): X509Certificate[] {
  const blocks = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? [];
  return blocks.map((b, i) => parseCertificate(b, `${what} #${i + 1}`));
}

export function checkValidAt(cert: X509Certificate, now: Date, what: string): void {
  const from = new Date(cert.validFrom);
  const to = new Date(cert.validTo);
  if (now < from || now > to) {
    throw new CdbpError('TEE_CERT_EXPIRED', `${what} is valid ${from.toISOString()} → ${to.toISOString()}, not at ${now.toISOString()}`,
      { details: { notBefore: from.toISOString(), notAfter: to.toISOString(), at: now.toISOString() } });
  }
}

export interface ChainLink {
  cert: X509Certificate;
  /** For messages: "VCEK", "ASK", "PCK certificate", ... */
  name: string;
}

/**
 * Verifies `links` (leaf first, each signed by the next) up to a root that must be one of `pinnedRoots`
 * (matched by SHA-256 of the DER). The last link may itself be the root; if it is not, the root is taken
 * from the pinned set by issuer name. Returns the pinned root that anchors the chain.
 */
export function verifyChainToPinnedRoot(links: ChainLink[], pinnedRoots: X509Certificate[], now: Date): X509Certificate {
  if (links.length === 0) throw new CdbpError('TEE_CERT_CHAIN_INVALID', 'empty certificate chain');
  const pinned = new Map(pinnedRoots.map((r) => [sha256Fingerprint(r), r]));
  const chain = [...links];
  const top = chain[chain.length - 1]!;
  if (top.cert.subject !== top.cert.issuer) {
    const root = pinnedRoots.find((r) => r.subject === top.cert.issuer);
    if (!root) throw new CdbpError('TEE_UNTRUSTED_ROOT', `${top.name} is issued by "${oneLine(top.cert.issuer)}", which is not a pinned root`);
    chain.push({ cert: root, name: `pinned root ${cn(root)}` });
  }
  const root = chain[chain.length - 1]!;
  if (!pinned.has(sha256Fingerprint(root.cert))) {
    throw new CdbpError('TEE_UNTRUSTED_ROOT', `${root.name} (${cn(root.cert)}, SHA-256 ${sha256Fingerprint(root.cert)}) is not a pinned root`);
  }
  if (!verifiedOnce(memoKey('x509-self', root.cert.raw), () => root.cert.verify(root.cert.publicKey))) throw new CdbpError('TEE_CERT_CHAIN_INVALID', `${root.name}: self-signature does not verify`);
  for (let i = 0; i < chain.length; i++) {
    const { cert, name } = chain[i]!;
    checkValidAt(cert, now, name);
    if (i === chain.length - 1) break;
    const issuer = chain[i + 1]!;
    if (cert.issuer !== issuer.cert.subject) {
      throw new CdbpError('TEE_CERT_CHAIN_INVALID', `${name} is issued by "${oneLine(cert.issuer)}", not by ${issuer.name} "${oneLine(issuer.cert.subject)}"`);
    }
    if (!issuer.cert.ca) throw new CdbpError('TEE_CERT_CHAIN_INVALID', `${issuer.name} is not a CA certificate`);
    let ok = false;
    try {
      ok = verifiedOnce(memoKey('x509', cert.raw, issuer.cert.raw), () => cert.verify(issuer.cert.publicKey));
    } catch {
      ok = false;
    }
    if (!ok) throw new CdbpError('TEE_CERT_CHAIN_INVALID', `${name}: signature by ${issuer.name} does not verify`);
  }
  return root.cert;
}

export function cn(cert: X509Certificate): string {
  return /(?:^|\n)CN=([^\n]*)/.exec(cert.subject)?.[1] ?? oneLine(cert.subject);
}

function oneLine(name: string): string {
  return name.replace(/\n/g, ', ');
}
