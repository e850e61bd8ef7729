import forge from 'node-forge';
import { writeFileSync } from 'node:fs';
import path from 'node:path';

/**
 * Throwaway PKI for tests that need TLS but not a CAS: a root CA and a leaf for localhost/127.0.0.1.
 * Generated at run time; no private key is ever committed.
 */
export interface TestPki {
  caPem: string;
  certPem: string;
  keyPem: string;
  /** Writes ca.pem, cert.pem, key.pem into dir and returns their paths. */
  writeTo(dir: string): { caFile: string; certFile: string; keyFile: string };
}

export function makeTestPki(opts: { hosts?: string[]; ips?: string[] } = {}): TestPki {
  const caKeys = forge.pki.rsa.generateKeyPair(2048);
  const ca = forge.pki.createCertificate();
  ca.publicKey = caKeys.publicKey;
  ca.serialNumber = '01';
  ca.validity.notBefore = new Date(Date.now() - 60_000);
  ca.validity.notAfter = new Date(Date.now() + 24 * 3600_000);
  const caAttrs = [{ name: 'commonName', value: 'cdbp test root' }];
  ca.setSubject(caAttrs);
  ca.setIssuer(caAttrs);
  ca.setExtensions([
    { name: 'basicConstraints', cA: true, critical: true },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
  ]);
  ca.sign(caKeys.privateKey, forge.md.sha256.create());

  const leafKeys = forge.pki.rsa.generateKeyPair(2048);
  const leaf = forge.pki.createCertificate();
  leaf.publicKey = leafKeys.publicKey;
  leaf.serialNumber = '02';
  leaf.validity.notBefore = new Date(Date.now() - 60_000);
  leaf.validity.notAfter = new Date(Date.now() + 24 * 3600_000);
  leaf.setSubject([{ name: 'commonName', value: 'localhost' }]);
  leaf.setIssuer(caAttrs);
  const altNames = [
    ...(opts.hosts ?? ['localhost']).map((value) => ({ type: 2, value })),
    ...(opts.ips ?? ['127.0.0.1']).map((ip) => ({ type: 7, ip })),
  ];
  leaf.setExtensions([
    { name: 'basicConstraints', cA: false },
    { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
    { name: 'extKeyUsage', serverAuth: true, clientAuth: true },
    { name: 'subjectAltName', altNames },
  ]);
  leaf.sign(caKeys.privateKey, forge.md.sha256.create());

  const caPem = forge.pki.certificateToPem(ca);
  const certPem = forge.pki.certificateToPem(leaf);
  const keyPem = forge.pki.privateKeyToPem(leafKeys.privateKey);
  return {
    caPem, certPem, keyPem,
    writeTo(dir) {
      const caFile = path.join(dir, 'ca.pem');
      const certFile = path.join(dir, 'cert.pem');
      const keyFile = path.join(dir, 'key.pem');
      writeFileSync(caFile, caPem);
      writeFileSync(certFile, certPem);
      writeFileSync(keyFile, keyPem, { mode: 0o600 });
      return { caFile, certFile, keyFile };
    },
  };
}
