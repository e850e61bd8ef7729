import { test } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate, generateKeyPairSync } from 'node:crypto';
import { certificateChainsTo, createCa, createCsr, generateTlsKeyPair, issueLeafCertificate, parseCsr, spkiDer } from '../../src/crypto/x509.ts';
import { isCdbpError } from '../../src/kernel/errors.ts';

test('CSR: parses to the exact key; a tampered CSR or another signer is refused', () => {
  const kp = generateTlsKeyPair();
  const csr = createCsr({ ...kp, commonName: 'svc' });
  assert.ok(parseCsr(csr).spki.equals(spkiDer(kp.publicKey)));
  // Signed by another key than the one it names: possession not proven.
  const other = generateTlsKeyPair();
  const forged = createCsr({ privateKey: other.privateKey, publicKey: kp.publicKey, commonName: 'svc' });
  assert.throws(() => parseCsr(forged), (e: unknown) => isCdbpError(e, 'BAD_REQUEST'));
  assert.throws(() => parseCsr('not a csr'), (e: unknown) => isCdbpError(e, 'BAD_REQUEST'));
  // A P-384 key is not accepted.
  const p384 = generateKeyPairSync('ec', { namedCurve: 'secp384r1' });
  assert.throws(() => parseCsr(createCsr({ ...p384, commonName: 'x' })), (e: unknown) => isCdbpError(e, 'BAD_REQUEST'));
});

test('CA issues a leaf with the requested names and lifetime that chains to it', () => {
  const ca = createCa({ commonName: 'test root', lifetimeDays: 30 });
  const caCert = new X509Certificate(ca.certPem);
  assert.ok(caCert.ca);
  const kp = generateTlsKeyPair();
  const notAfter = new Date(Date.now() + 3600_000);
  const pem = issueLeafCertificate(ca, {
    spki: spkiDer(kp.publicKey), subject: { commonName: 'svc', organization: 'o', organizationalUnit: 'SIMULATED-NOT-A-TEE' },
    dnsNames: ['localhost', 'svc.test'], ipAddresses: ['127.0.0.1', '::1'], uris: ['urn:cdbp:service:svc'], notAfter,
  });
  const cert = new X509Certificate(pem);
  assert.ok(certificateChainsTo(pem, ca.certPem));
  assert.ok(!certificateChainsTo(pem, createCa({ commonName: 'other', lifetimeDays: 1 }).certPem));
  assert.ok(cert.checkHost('svc.test') && cert.checkIP('::1') && cert.checkIP('127.0.0.1'));
  assert.ok(!cert.ca);
  assert.match(cert.subject, /OU=SIMULATED-NOT-A-TEE/);
  assert.ok(Math.abs(new Date(cert.validTo).getTime() - notAfter.getTime()) < 1000);
  assert.ok(spkiDer(cert.publicKey).equals(spkiDer(kp.publicKey)));
});

test('roles: the CAS role comes only from `role`; service certificates fail the CAS identity check even for the right host', async () => {
  const { checkCasServerIdentity, ROLE_URI, OID_EKU_CAS_SERVER, OID_EKU_SERVICE } = await import('../../src/crypto/x509.ts');
  const ca = createCa({ commonName: 'test root', lifetimeDays: 30 });
  const spki = spkiDer(generateTlsKeyPair().publicKey);
  const leaf = (role: 'cas' | 'service', uris: string[] = []) => issueLeafCertificate(ca, {
    role, spki, subject: { commonName: 'x' }, dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'], uris, notAfter: new Date(Date.now() + 3600_000),
  });
  // A caller cannot smuggle a role URI in (e.g. from a policy).
  assert.throws(() => leaf('service', [ROLE_URI.cas]), (e: unknown) => isCdbpError(e, 'INTERNAL'));
  assert.throws(() => leaf('service', ['URN:CDBP:ROLE:cas']), (e: unknown) => isCdbpError(e, 'INTERNAL'));
  const asPeer = (pem: string) => {
    const c = new X509Certificate(pem);
    return { subjectaltname: c.subjectAltName, ext_key_usage: c.keyUsage, subject: { CN: 'x' } } as unknown as import('node:tls').PeerCertificate;
  };
  const cas = asPeer(leaf('cas'));
  const service = asPeer(leaf('service'));
  assert.ok(cas.ext_key_usage!.includes(OID_EKU_CAS_SERVER) && !cas.ext_key_usage!.includes(OID_EKU_SERVICE));
  assert.ok(service.ext_key_usage!.includes(OID_EKU_SERVICE) && service.ext_key_usage!.includes('1.3.6.1.5.5.7.3.2'));
  assert.equal(checkCasServerIdentity('127.0.0.1', cas), undefined);
  assert.equal(checkCasServerIdentity('localhost', cas), undefined);
  assert.ok(isCdbpError(checkCasServerIdentity('127.0.0.1', service), 'CAS_IDENTITY_INVALID'));
  // The host check still applies to the CAS's own certificate.
  assert.ok(checkCasServerIdentity('cas.elsewhere.test', cas) instanceof Error);
});
