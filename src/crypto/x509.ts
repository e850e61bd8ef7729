/**
 * X.509 for the CAS: its own CA, CSRs and leaf certificates. Keys are ECDSA P-256 from node's crypto
 * (fast to generate, understood by OpenSSL, MariaDB and PostgreSQL clients). node-forge builds the ASN.1
 * of names and extensions; node's crypto signs and verifies; the SubjectPublicKeyInfo bytes from the
 * CSR are copied verbatim into the certificate (forge itself only handles RSA keys).
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes, sign, verify,
  X509Certificate, type KeyObject } from 'node:crypto';
import { checkServerIdentity as tlsCheckServerIdentity, type PeerCertificate } from 'node:tls';
import forge from 'node-forge';
import { CdbpError } from '../kernel/errors.ts';
import { derBitString, derChildren, derSequence, derTlv, readDer } from './der.ts';

const asn1 = forge.asn1;
/** ecdsa-with-SHA256 (RFC 5758 §3.2), no parameters. */
const ECDSA_SHA256_ALGID = derSequence(derTlv(0x06, Buffer.from('2a8648ce3d040302', 'hex')));
/** sha256WithRSAEncryption (RFC 4055), NULL parameters: accepted in CSRs only. */
const RSA_SHA256_OID = Buffer.from('2a864886f70d01010b', 'hex');
const ECDSA_SHA256_OID = Buffer.from('2a8648ce3d040302', 'hex');

/** SHA-256 over a certificate's DER, hex: how a CA or root is pinned and named (PEM, DER or parsed). */
export function sha256Fingerprint(cert: X509Certificate | string | Buffer): string {
  const parsed = cert instanceof X509Certificate ? cert : new X509Certificate(cert);
  return createHash('sha256').update(parsed.raw).digest('hex');
}

export interface DistinguishedName {
  commonName: string;
  organization?: string;
  organizationalUnit?: string;
}

export function generateTlsKeyPair(): { privateKey: KeyObject; publicKey: KeyObject } {
  return generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
}

export function spkiDer(publicKey: KeyObject): Buffer {
  return publicKey.export({ type: 'spki', format: 'der' });
}

function forgeDer(obj: forge.asn1.Asn1): Buffer {
  return Buffer.from(asn1.toDer(obj).getBytes(), 'binary');
}

function nameDer(dn: DistinguishedName): Buffer {
  const attrs: forge.pki.CertificateField[] = [];
  if (dn.organization) attrs.push({ name: 'organizationName', value: dn.organization });
  if (dn.organizationalUnit) attrs.push({ name: 'organizationalUnitName', value: dn.organizationalUnit });
  attrs.push({ name: 'commonName', value: dn.commonName });
  const holder = forge.pki.createCertificate();
  holder.setSubject(attrs);
  return forgeDer((forge.pki as unknown as { distinguishedNameToAsn1(dn: unknown): forge.asn1.Asn1 }).distinguishedNameToAsn1(holder.subject));
}

function timeDer(d: Date): Buffer {
  // RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime after.
  return d.getUTCFullYear() < 2050
    ? forgeDer(asn1.create(asn1.Class.UNIVERSAL, asn1.Type.UTCTIME, false, asn1.dateToUtcTime(d)))
    : forgeDer(asn1.create(asn1.Class.UNIVERSAL, asn1.Type.GENERALIZEDTIME, false, asn1.dateToGeneralizedTime(d)));
}

/** SHA-1 of the subjectPublicKey bits (RFC 5280 §4.2.1.2 method 1): only an identifier, not security. */
function keyIdentifier(spki: Buffer): Buffer {
  const bits = derChildren(readDer(spki))[1];
  if (!bits || bits.tag !== 0x03) throw new CdbpError('BAD_REQUEST', 'malformed SubjectPublicKeyInfo');
  return createHash('sha1').update(bits.content.subarray(1)).digest();
}

function octetStringExt(oid: string, inner: Buffer): Record<string, unknown> {
  return { id: oid, critical: false, value: Buffer.from(inner).toString('binary') };
}

function extensionsDer(exts: Array<Record<string, unknown>>): Buffer {
  const holder = forge.pki.createCertificate();
  holder.setExtensions(exts);
  return forgeDer((forge.pki as unknown as { certificateExtensionsToAsn1(e: unknown): forge.asn1.Asn1 }).certificateExtensionsToAsn1(holder.extensions));
}

function serialNumber(): Buffer {
  const b = randomBytes(16);
  b[0] = (b[0]! & 0x7f) | 0x01; // positive and without a leading zero byte
  return b;
}

function signCertificate(tbs: Buffer, caKey: KeyObject): string {
  const sig = sign('sha256', tbs, caKey);
  const der = derSequence(tbs, ECDSA_SHA256_ALGID, derBitString(sig));
  return `-----BEGIN CERTIFICATE-----\n${der.toString('base64').replace(/.{1,64}/g, '$&\n')}-----END CERTIFICATE-----\n`;
}

function tbsCertificate(o: { serial: Buffer; issuer: DistinguishedName; subject: DistinguishedName; notBefore: Date;
  notAfter: Date; spki: Buffer; extensions: Array<Record<string, unknown>> }): Buffer {
  return derSequence(
    derTlv(0xa0, derTlv(0x02, Buffer.from([2]))), // version v3
    derTlv(0x02, o.serial),
    ECDSA_SHA256_ALGID,
    nameDer(o.issuer),
    derSequence(timeDer(o.notBefore), timeDer(o.notAfter)),
    nameDer(o.subject),
    o.spki,
    extensionsDer(o.extensions),
  );
}

export interface CaMaterial {
  keyPem: string;
  certPem: string;
}

export function createCa(o: { commonName: string; lifetimeDays: number }): CaMaterial {
  const { privateKey, publicKey } = generateTlsKeyPair();
  const spki = spkiDer(publicKey);
  const dn = { commonName: o.commonName, organization: 'confidential-db-proxy' };
  const now = Date.now();
  const tbs = tbsCertificate({
    serial: serialNumber(), issuer: dn, subject: dn, spki,
    notBefore: new Date(now - 5 * 60_000), notAfter: new Date(now + o.lifetimeDays * 86_400_000),
    extensions: [
      { name: 'basicConstraints', cA: true, pathLenConstraint: 0, critical: true },
      { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
      octetStringExt('2.5.29.14', derTlv(0x04, keyIdentifier(spki))),
    ],
  });
  return { keyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(), certPem: signCertificate(tbs, privateKey) };
}

/**
 * Our private OID arc: 2.25.<UUID e6c62021-8246-46f5-a2fc-e2f786a25e0a> (ITU-T X.667: a UUID-based OID
 * needs no registration and cannot collide with anyone else's).
 */
export const CDBP_OID_ARC = '2.25.306751165500475237643499862428131417610';
/** Extended key usages that say what a certificate from the CAS CA is for (see ROLE_URI). */
export const OID_EKU_CAS_SERVER = `${CDBP_OID_ARC}.1.1`;
export const OID_EKU_SERVICE = `${CDBP_OID_ARC}.1.2`;
export const OID_EKU_CAS_SIGNING = `${CDBP_OID_ARC}.1.3`;
const OID_EKU_SERVER_AUTH = '1.3.6.1.5.5.7.3.1';
const OID_EKU_CLIENT_AUTH = '1.3.6.1.5.5.7.3.2';

/**
 * What a leaf from the CAS CA is. The one CA signs the CAS's own TLS certificate, its answer-signing key
 * and every service certificate, and service names come from owner policies: so names alone never say
 * "this is the CAS". The role is a URI SAN plus a private EKU, set only from `role` here (a caller can
 * never smuggle one in through `uris`), and clients of the CAS require the `cas` role.
 */
export type CertRole = 'cas' | 'service' | 'cas-signing';
export const ROLE_URI: Record<CertRole, string> = {
  cas: 'urn:cdbp:role:cas',
  service: 'urn:cdbp:role:service',
  'cas-signing': 'urn:cdbp:role:cas-signing',
};
const ROLE_EKUS: Record<CertRole, string[]> = {
  cas: [OID_EKU_SERVER_AUTH, OID_EKU_CAS_SERVER],
  service: [OID_EKU_SERVER_AUTH, OID_EKU_CLIENT_AUTH, OID_EKU_SERVICE],
  // Not usable for TLS at all: only to verify the CAS's signed answers.
  'cas-signing': [OID_EKU_CAS_SIGNING],
};

/** DER of an OBJECT IDENTIFIER; BigInt arcs (our UUID arc is 128 bits). */
export function oidDer(oid: string): Buffer {
  const arcs = oid.split('.').map((a) => BigInt(a));
  if (arcs.length < 2) throw new CdbpError('INTERNAL', `bad OID ${oid}`);
  const out: number[] = [];
  const push = (v: bigint) => {
    const bytes = [Number(v & 0x7fn)];
    for (let x = v >> 7n; x > 0n; x >>= 7n) bytes.unshift(Number((x & 0x7fn) | 0x80n));
    out.push(...bytes);
  };
  push(arcs[0]! * 40n + arcs[1]!);
  for (const a of arcs.slice(2)) push(a);
  return derTlv(0x06, Buffer.from(out));
}

/** URI SANs out of node's `subjectaltname` text ("DNS:a, IP Address:b, URI:c"). */
export function sanUris(subjectAltName: string | undefined): string[] {
  return (subjectAltName ?? '').split(', ').filter((p) => p.startsWith('URI:')).map((p) => p.slice(4));
}

/** SubjectPublicKeyInfo DER of a raw 32-byte Ed25519 public key (RFC 8410). */
export function ed25519Spki(publicKey: Buffer): Buffer {
  if (publicKey.length !== 32) throw new CdbpError('INTERNAL', 'Ed25519 public key must be 32 bytes');
  return Buffer.concat([Buffer.from('302a300506032b6570032100', 'hex'), publicKey]);
}

export interface LeafRequest {
  /** Default 'service'. */
  role?: CertRole;
  spki: Buffer;
  subject: DistinguishedName;
  dnsNames: string[];
  ipAddresses: string[];
  uris: string[];
  notAfter: Date;
}

/**
 * The CA's parsed key, certificate, SPKI and DN, kept per CA (a CAS issues thousands of leaves with one CA:
 * parsing its PEMs per certificate was ~0.9 ms of every attest-and-provision).
 */
const parsedCas = new Map<string, { key: KeyObject; cert: X509Certificate; spki: Buffer; dn: ReturnType<typeof dnFromCert> }>();
function parsedCa(ca: CaMaterial): { key: KeyObject; cert: X509Certificate; spki: Buffer; dn: ReturnType<typeof dnFromCert> } {
  const id = `${ca.certPem}\0${ca.keyPem}`;
  let p = parsedCas.get(id);
  if (!p) {
    const cert = new X509Certificate(ca.certPem);
    p = { key: createPrivateKey(ca.keyPem), cert, spki: spkiDer(cert.publicKey), dn: dnFromCert(cert) };
    if (parsedCas.size >= 4) parsedCas.delete(parsedCas.keys().next().value!);
    parsedCas.set(id, p);
  }
  return p;
}

/** The CA certificate's notAfter (parsed once per CA). */
export function caNotAfter(ca: CaMaterial): Date {
  return new Date(parsedCa(ca).cert.validTo);
}

export function issueLeafCertificate(ca: CaMaterial, req: LeafRequest): string {
  const { key: caKey, cert: caCert, spki: caSpki, dn: caDn } = parsedCa(ca);
  const role = req.role ?? 'service';
  if (req.uris.some((u) => u.toLowerCase().startsWith('urn:cdbp:role:'))) {
    throw new CdbpError('INTERNAL', 'a role URI can only come from the certificate role');
  }
  const altNames = [
    ...req.dnsNames.map((value) => ({ type: 2, value })),
    ...req.ipAddresses.map((ip) => ({ type: 7, ip })),
    ...[ROLE_URI[role], ...req.uris].map((value) => ({ type: 6, value })),
  ];
  const tbs = tbsCertificate({
    serial: serialNumber(), issuer: caDn, subject: req.subject, spki: req.spki,
    notBefore: new Date(Date.now() - 60_000), notAfter: req.notAfter,
    extensions: [
      { name: 'basicConstraints', cA: false, critical: true },
      { name: 'keyUsage', digitalSignature: true, critical: true },
      octetStringExt('2.5.29.37', derSequence(...ROLE_EKUS[role].map(oidDer))),
      { name: 'subjectAltName', altNames },
      octetStringExt('2.5.29.14', derTlv(0x04, keyIdentifier(req.spki))),
      // AuthorityKeyIdentifier ::= SEQUENCE { keyIdentifier [0] IMPLICIT OCTET STRING }
      octetStringExt('2.5.29.35', derSequence(derTlv(0x80, keyIdentifier(caSpki)))),
    ],
  });
  return signCertificate(tbs, caKey);
}

function dnFromCert(cert: X509Certificate): DistinguishedName {
  const fields = new Map(cert.subject.split('\n').map((l) => {
    const i = l.indexOf('=');
    return [l.slice(0, i), l.slice(i + 1)] as const;
  }));
  return { commonName: fields.get('CN') ?? '', organization: fields.get('O'), organizationalUnit: fields.get('OU') };
}

/** PEM → DER for one labelled block. */
export function pemToDer(pem: string, label: string): Buffer {
  const m = new RegExp(`-----BEGIN ${label}-----([A-Za-z0-9+/=\\s]+)-----END ${label}-----`).exec(pem);
  if (!m?.[1]) throw new CdbpError('BAD_REQUEST', `expected a PEM ${label}`);
  return Buffer.from(m[1].replace(/\s+/g, ''), 'base64');
}

/** PKCS#10 request, signed with the subject's key (proves possession). */
export function createCsr(o: { privateKey: KeyObject; publicKey: KeyObject; commonName: string }): string {
  const info = derSequence(
    derTlv(0x02, Buffer.from([0])),
    nameDer({ commonName: o.commonName }),
    spkiDer(o.publicKey),
    derTlv(0xa0, Buffer.alloc(0)), // attributes: empty
  );
  const sig = sign('sha256', info, o.privateKey);
  const der = derSequence(info, ECDSA_SHA256_ALGID, derBitString(sig));
  return `-----BEGIN CERTIFICATE REQUEST-----\n${der.toString('base64').replace(/.{1,64}/g, '$&\n')}-----END CERTIFICATE REQUEST-----\n`;
}

/**
 * Parses a CSR and verifies its self-signature. Returns the exact SubjectPublicKeyInfo bytes. Accepts
 * EC P-256 (ecdsa-with-SHA256) and RSA ≥ 2048 (sha256WithRSAEncryption).
 */
export function parseCsr(pem: string): { spki: Buffer; publicKey: KeyObject } {
  const der = pemToDer(pem, 'CERTIFICATE REQUEST');
  const outer = readDer(der);
  if (outer.tag !== 0x30 || outer.raw.length !== der.length) throw new CdbpError('BAD_REQUEST', 'CSR: not a single DER SEQUENCE');
  const [info, algId, sigBits] = derChildren(outer);
  if (!info || !algId || !sigBits || sigBits.tag !== 0x03) throw new CdbpError('BAD_REQUEST', 'CSR: malformed');
  const infoParts = derChildren(info);
  const spkiEl = infoParts[2];
  if (!spkiEl || spkiEl.tag !== 0x30) throw new CdbpError('BAD_REQUEST', 'CSR: missing public key');
  const algOid = derChildren(algId)[0];
  let publicKey: KeyObject;
  try {
    publicKey = createPublicKey({ key: spkiEl.raw, format: 'der', type: 'spki' });
  } catch {
    throw new CdbpError('BAD_REQUEST', 'CSR: unreadable public key');
  }
  const details = publicKey.asymmetricKeyDetails;
  const isEc = publicKey.asymmetricKeyType === 'ec' && details?.namedCurve === 'prime256v1';
  const isRsa = publicKey.asymmetricKeyType === 'rsa' && (details?.modulusLength ?? 0) >= 2048;
  if (!isEc && !isRsa) throw new CdbpError('BAD_REQUEST', 'CSR: key must be EC P-256 or RSA ≥ 2048');
  const expectedOid = isEc ? ECDSA_SHA256_OID : RSA_SHA256_OID;
  if (!algOid || algOid.tag !== 0x06 || !algOid.content.equals(expectedOid)) {
    throw new CdbpError('BAD_REQUEST', 'CSR: unsupported signature algorithm');
  }
  const ok = verify('sha256', info.raw, publicKey, sigBits.content.subarray(1));
  if (!ok) throw new CdbpError('BAD_REQUEST', 'CSR: signature does not verify');
  return { spki: Buffer.from(spkiEl.raw), publicKey };
}

/** True if `certPem` was signed by the CA and is currently valid. */
export function certificateChainsTo(certPem: string, caPem: string, at = new Date()): boolean {
  const cert = new X509Certificate(certPem);
  const ca = new X509Certificate(caPem);
  if (!cert.checkIssued(ca) || !cert.verify(ca.publicKey)) return false;
  return new Date(cert.validFrom) <= at && at <= new Date(cert.validTo);
}

/**
 * `checkServerIdentity` for every client of the CAS: the normal host check, and the certificate must
 * carry the CAS role (URI SAN + EKU) and no service identity. A service certificate that names the CAS
 * host (owners choose service names) is thereby useless for impersonating the CAS.
 */
export function checkCasServerIdentity(host: string, cert: PeerCertificate): Error | undefined {
  const hostError = tlsCheckServerIdentity(host, cert);
  if (hostError) return hostError;
  const uris = sanUris(cert.subjectaltname);
  const ekus = cert.ext_key_usage ?? [];
  if (!uris.includes(ROLE_URI.cas) || !ekus.includes(OID_EKU_CAS_SERVER)
    || uris.some((u) => u === ROLE_URI.service || u.startsWith('urn:cdbp:service:')) || ekus.includes(OID_EKU_SERVICE)) {
    return new CdbpError('CAS_IDENTITY_INVALID',
      `the server at ${host} has a certificate from the CAS CA but not the CAS role (${ROLE_URI.cas}): refusing to talk to it as the CAS`);
  }
  return undefined;
}

/**
 * Checks the CAS's answer-signing certificate against the pinned CA (chain, validity, role) and returns
 * its Ed25519 public key: the key that signs attest and counter answers.
 */
export function verifyCasSigningCert(certPem: string, caPem: string): KeyObject {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(certPem);
  } catch {
    throw new CdbpError('CAS_IDENTITY_INVALID', 'CAS signing certificate is not a certificate');
  }
  const ekus = cert.keyUsage ?? [];
  if (!certificateChainsTo(certPem, caPem) || !sanUris(cert.subjectAltName).includes(ROLE_URI['cas-signing'])
    || !ekus.includes(OID_EKU_CAS_SIGNING) || cert.publicKey.asymmetricKeyType !== 'ed25519') {
    throw new CdbpError('CAS_IDENTITY_INVALID', 'CAS signing certificate does not chain to the pinned CA or lacks the cas-signing role');
  }
  return cert.publicKey;
}
