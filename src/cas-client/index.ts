/**
 * What an attested process calls to get its identity and secrets from the CAS:
 *
 *   1. generate a TLS key pair (ECDSA P-256, in memory only) + CSR, and an ephemeral X25519 sealing pair;
 *   2. get a single-use nonce;
 *   3. collect evidence with reportData = SHA-512(nonce ‖ TLS SubjectPublicKeyInfo DER ‖ X25519 public key);
 *   4. post it; check the issued certificate (chains to the pinned CA, carries our key) and open the
 *      secrets sealed to our ephemeral key.
 *
 * Re-callable: certificate renewal simply calls attestAndProvision again (new keys, new nonce).
 */
import { X509Certificate } from 'node:crypto';
import type { Logger } from '../kernel/log.ts';
import { CdbpError } from '../kernel/errors.ts';
import type { AttestationProvider } from '../attestation/types.ts';
import type { CounterClient, CounterState, FreshnessAlarm, DbKey, Provision } from '../provisioning/types.ts';
import { sha512, isHex } from '../crypto/hash.ts';
import { generateSealingKeyPair, openSealed } from '../crypto/box.ts';
import { certificateChainsTo, createCsr, generateTlsKeyPair, spkiDer } from '../crypto/x509.ts';
import { casAgent, casRequest } from './http.ts';

export { casRequest } from './http.ts';
export { applySignedPolicy, getCurrentPolicyHash, getCurrentPolicy, recoverCounter } from './policy.ts';

interface AttestResponse {
  service: string; mode: string; measurement: string; policyHash: string; certPem: string; caPem: string;
  notAfter: string; sealedSecrets: string;
}
interface SealedSecrets {
  format: string; service: string; policyHash: string; databaseId: string; keyringToken: string; freshnessKey: string;
  dbKeys: Array<{ id: number; version: number; key: string }>;
}

/**
 * Bootstrap only: fetches the CAS root CA without verifying the server. Whoever sits on the network
 * path can hand out their own CA here, so in production the CA must be pinned out of band (copied
 * from the CAS's DIR/ca.pem, or compared by fingerprint) and passed as `caPem`.
 */
export async function fetchCaPem(casUrl: string): Promise<string> {
  const r = await casRequest<{ caPem: string }>(casUrl, 'GET', '/v1/ca', undefined, { insecure: true });
  if (typeof r?.caPem !== 'string' || !r.caPem.includes('BEGIN CERTIFICATE')) throw new CdbpError('PROTOCOL_VIOLATION', 'CAS returned no CA certificate');
  return r.caPem;
}

export interface AttestOptions {
  casUrl: string;
  /** The pinned CAS root CA. */
  caPem: string;
  service: string;
  provider: AttestationProvider;
  /** Names this process will serve; the policy decides what the certificate carries, we warn on gaps. */
  tls: { dnsNames?: string[] };
  log?: Logger;
}

export async function attestAndProvision(o: AttestOptions): Promise<Provision & { counter: CounterClient }> {
  const agent = casAgent({ caPem: o.caPem });
  try {
    const tlsKeys = generateTlsKeyPair();
    const spki = spkiDer(tlsKeys.publicKey);
    const sealing = await generateSealingKeyPair();
    const csr = createCsr({ ...tlsKeys, commonName: o.service });
    const { nonce } = await casRequest<{ nonce: string }>(o.casUrl, 'POST', '/v1/nonce', { purpose: 'attest' }, { agent });
    if (!isHex(nonce, 32)) throw new CdbpError('PROTOCOL_VIOLATION', 'CAS returned a malformed nonce');
    const reportData = sha512(Buffer.from(nonce, 'hex'), spki, sealing.publicKey);
    const evidence = await o.provider.collect(reportData);
    const r = await casRequest<AttestResponse>(o.casUrl, 'POST', '/v1/attest', {
      service: o.service, nonce, csr, sealingPublicKey: sealing.publicKey.toString('hex'), evidence,
    }, { agent });

    // Check what we got before using it: the certificate must chain to the pinned CA and carry our key.
    if (r.service !== o.service || r.mode !== o.provider.mode) throw new CdbpError('PROTOCOL_VIOLATION', 'CAS response is for another service or mode');
    if (!certificateChainsTo(r.certPem, o.caPem)) throw new CdbpError('PROTOCOL_VIOLATION', 'issued certificate does not chain to the pinned CAS CA');
    const cert = new X509Certificate(r.certPem);
    if (!spkiDer(cert.publicKey).equals(spki)) throw new CdbpError('PROTOCOL_VIOLATION', 'issued certificate does not carry our public key');
    const plain = await openSealed(sealing, Buffer.from(r.sealedSecrets, 'base64'));
    sealing.privateKey.fill(0);
    let s: SealedSecrets;
    try {
      s = JSON.parse(plain.toString('utf8')) as SealedSecrets;
    } finally {
      plain.fill(0);
    }
    if (s.format !== 'cdbp-secrets/1' || s.service !== o.service || s.policyHash !== r.policyHash) {
      throw new CdbpError('PROTOCOL_VIOLATION', 'sealed secrets do not match the response');
    }
    const dbKeys: DbKey[] = s.dbKeys.map((k) => ({ id: k.id, version: k.version, key: Buffer.from(k.key, 'hex') }));
    if (dbKeys.some((k) => k.key.length !== 32)) throw new CdbpError('PROTOCOL_VIOLATION', 'a DB key is not 32 bytes');
    const missing = (o.tls.dnsNames ?? []).filter((n) => !cert.checkHost(n) && !cert.checkIP(n));
    if (missing.length > 0) o.log?.warn({ missing }, 'the issued certificate does not cover some configured names (the policy decides the names)');
    if (r.mode === 'simulated') o.log?.warn({ mode: 'simulated' }, 'provisioned on SIMULATED attestation: the certificate says so');
    const keyPem = tlsKeys.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
    const identity = { keyPem, certPem: r.certPem, caPem: o.caPem, notAfter: new Date(cert.validTo), subject: cert.subject.replace(/\n/g, ', ') };
    o.log?.info({ service: o.service, mode: r.mode, policyHash: r.policyHash, notAfter: identity.notAfter.toISOString(), keys: dbKeys.length }, 'attested and provisioned');
    return {
      service: r.service,
      mode: o.provider.mode,
      measurement: r.measurement,
      policyHash: r.policyHash,
      identity,
      secrets: {
        dbKeys,
        keyringToken: s.keyringToken,
        freshnessKey: Buffer.from(s.freshnessKey, 'hex'),
        databaseId: s.databaseId,
      },
      counter: new HttpCounterClient(o.casUrl, o.service, o.caPem, keyPem, r.certPem),
    };
  } finally {
    agent.destroy();
  }
}

/** Talks to the CAS counter for one service over mutual TLS with the CAS-issued certificate. */
export class HttpCounterClient implements CounterClient {
  private readonly agent;
  private readonly path: string;

  constructor(private readonly casUrl: string, service: string, caPem: string, keyPem: string, certPem: string) {
    this.agent = casAgent({ caPem, keyPem, certPem });
    this.path = `/v1/services/${encodeURIComponent(service)}/counter`;
  }

  read(): Promise<CounterState> {
    return casRequest<CounterState>(this.casUrl, 'GET', this.path, undefined, { agent: this.agent });
  }

  /** Throws COUNTER_CONFLICT (details: { value, digest } of the CAS's counter) if `expected` is stale. */
  advance(expected: number, next: number, digest: string): Promise<CounterState> {
    return casRequest<CounterState>(this.casUrl, 'POST', this.path, { expected, next, digest }, { agent: this.agent });
  }

  reportAlarm(alarm: FreshnessAlarm): Promise<void> {
    return casRequest<void>(this.casUrl, 'POST', this.path.replace(/\/counter$/, '/alarm'), alarm, { agent: this.agent });
  }

  close(): void {
    this.agent.destroy();
  }
}
