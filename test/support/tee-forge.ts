/**
 * An attacker's (or a test's) own "vendor" PKI: a self-signed root with a vendor's name, an intermediate
 * and a leaf with chosen X.509 extensions, made with the openssl CLI (EC keys, fast). Used to prove that a
 * chain to another root is refused, and — with that root passed as the verifier's trust anchor — to reach
 * checks behind the chain that real vectors cannot (a VCEK for another TCB, a revoked PCK).
 * Also builds a signed X.509 CRL in DER (RFC 5280) with node:crypto.
 */
import { execFileSync } from 'node:child_process';
import { createPrivateKey, sign, X509Certificate, type KeyObject } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { derChildren, derSequence, derTlv, readDer } from '../../src/crypto/der.ts';
import { tempDir } from './tmp.ts';

export interface ForgedChain {
  root: X509Certificate;
  intermediate: X509Certificate;
  leaf: X509Certificate;
  rootKey: KeyObject;
  intermediateKey: KeyObject;
  leafKey: KeyObject;
  leafSerialHex: string;
}

export interface ForgeOptions {
  curve: 'P-256' | 'P-384';
  rootSubject: string;
  intermediateSubject: string;
  leafSubject: string;
  /** openssl extension lines for the leaf, e.g. `1.3.6.1.4.1.3704.1.3.1 = DER:020102`. */
  leafExtensions?: string[];
  notBefore?: string;
  days?: number;
  leafSerialHex?: string;
}

function openssl(args: string[], cwd: string): void {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
}

export function forgeChain(o: ForgeOptions): ForgedChain {
  const dir = tempDir('tee-forge');
  try {
    const d = dir.path;
    const curve = o.curve === 'P-256' ? 'prime256v1' : 'secp384r1';
    const hash = o.curve === 'P-256' ? '-sha256' : '-sha384';
    for (const k of ['root', 'int', 'leaf']) openssl(['ecparam', '-name', curve, '-genkey', '-noout', '-out', `${k}.key`], d);
    writeFileSync(path.join(d, 'ca.ext'), 'basicConstraints = critical, CA:true\nkeyUsage = critical, keyCertSign, cRLSign\n');
    writeFileSync(path.join(d, 'leaf.ext'), ['basicConstraints = critical, CA:false', ...(o.leafExtensions ?? [])].join('\n') + '\n');
    const days = String(o.days ?? 3650);
    openssl(['req', '-new', '-x509', '-key', 'root.key', '-subj', o.rootSubject, '-days', days, hash, '-out', 'root.pem',
      '-addext', 'basicConstraints=critical,CA:true', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'], d);
    openssl(['req', '-new', '-key', 'int.key', '-subj', o.intermediateSubject, '-out', 'int.csr'], d);
    openssl(['x509', '-req', '-in', 'int.csr', '-CA', 'root.pem', '-CAkey', 'root.key', '-set_serial', '2', '-days', days, hash,
      '-extfile', 'ca.ext', '-out', 'int.pem'], d);
    openssl(['req', '-new', '-key', 'leaf.key', '-subj', o.leafSubject, '-out', 'leaf.csr'], d);
    const serial = o.leafSerialHex ?? '0badc0ffee';
    openssl(['x509', '-req', '-in', 'leaf.csr', '-CA', 'int.pem', '-CAkey', 'int.key', '-set_serial', `0x${serial}`, '-days', days, hash,
      '-extfile', 'leaf.ext', '-out', 'leaf.pem'], d);
    const read = (f: string) => readFileSync(path.join(d, f));
    return {
      root: new X509Certificate(read('root.pem')), intermediate: new X509Certificate(read('int.pem')), leaf: new X509Certificate(read('leaf.pem')),
      rootKey: createPrivateKey(read('root.key')), intermediateKey: createPrivateKey(read('int.key')), leafKey: createPrivateKey(read('leaf.key')),
      leafSerialHex: serial,
    };
  } finally {
    dir.remove();
  }
}

/** A DER X.509 v2 CRL (ecdsa-with-SHA256) by `issuer`, revoking `serialsHex`. */
export function forgeCrl(issuer: X509Certificate, issuerKey: KeyObject, serialsHex: string[], thisUpdate: Date, nextUpdate: Date): Buffer {
  const ecdsaSha256 = derSequence(derTlv(0x06, Buffer.from('2a8648ce3d040302', 'hex')));
  const time = (d: Date) => derTlv(0x17, Buffer.from(d.toISOString().replace(/[-:T]/g, '').slice(2, 14) + 'Z', 'latin1'));
  const int = (hex: string) => {
    let b = Buffer.from(hex.length % 2 ? '0' + hex : hex, 'hex');
    if (b[0]! & 0x80) b = Buffer.concat([Buffer.from([0]), b]);
    return derTlv(0x02, b);
  };
  const issuerName = subjectDer(issuer);
  const revoked = serialsHex.length ? [derSequence(...serialsHex.map((s) => derSequence(int(s), time(thisUpdate))))] : [];
  const tbs = derSequence(int('01'), ecdsaSha256, issuerName, time(thisUpdate), time(nextUpdate), ...revoked);
  const sig = sign('sha256', tbs, issuerKey);
  return derSequence(tbs, ecdsaSha256, derTlv(0x03, Buffer.concat([Buffer.from([0]), sig])));
}

/** The subject Name's DER, sliced from the certificate (tbs: [0] version, serial, sigAlg, issuer, validity, subject). */
function subjectDer(cert: X509Certificate): Buffer {
  const tbs = derChildren(readDer(cert.raw))[0]!;
  return derChildren(tbs)[5]!.raw;
}
