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
import { createHash, randomBytes, X509Certificate, type KeyObject } from 'node:crypto';
import type { Logger } from '../kernel/log.ts';
import { CdbpError } from '../kernel/errors.ts';
import type { AttestationProvider } from '../attestation/types.ts';
import type { CounterClient, CounterState, FreshnessAlarm, DbKey, Provision } from '../provisioning/types.ts';
import { sha512, isHex } from '../crypto/hash.ts';
import { generateSealingKeyPair, openSealed } from '../crypto/box.ts';
import { certificateChainsTo, createCsr, generateTlsKeyPair, sanUris, spkiDer, verifyCasSigningCert } from '../crypto/x509.ts';
import { CAS_INSTANCE_URN } from './quorum.ts';
import { isCdbpError } from '../kernel/errors.ts';
import { casAgent, casRequest } from './http.ts';
import { ChannelCounterClient } from './counter-channel.ts';
import { attestAnswerMessage, counterAnswerMessage, verifyAnswer, type CounterAnswer } from '../provisioning/answers.ts';

export { casRequest } from './http.ts';
export { applySignedPolicy, getCurrentPolicyHash, getCurrentPolicy, recoverCounter } from './policy.ts';

interface AttestResponse {
  service: string; mode: string; measurement: string; policyHash: string; certPem: string; caPem: string;
  notAfter: string; sealedSecrets: string; signingCertPem: string; signature: string;
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
  /**
   * Set by the replicated-CAS client (quorum-counter.ts). Otherwise a member of a replicated CAS is
   * refused: one member's receipt is not a majority, so a proxy configured with one member's URL (a
   * host-controlled setting) must not count on it alone.
   */
  replicated?: boolean;
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

    // Check what we got before using it: signed by the CAS's answer key (certified by the pinned CA) over
    // our nonce, our sealing key and exactly these bytes; the certificate chains to the CA and carries our key.
    if (typeof r?.signingCertPem !== 'string') throw new CdbpError('CAS_IDENTITY_INVALID', 'CAS attest answer carries no signing certificate');
    const signingKey = verifyCasSigningCert(r.signingCertPem, o.caPem);
    if (!o.replicated && sanUris(new X509Certificate(r.signingCertPem).subjectAltName).some((u) => u.startsWith(CAS_INSTANCE_URN))) {
      throw new CdbpError('CAS_IDENTITY_INVALID', `${o.casUrl} is one member of a replicated CAS: list every member in the CAS URL (one member's receipt is not a majority)`);
    }
    const sha = (t: string) => createHash('sha256').update(t).digest('hex');
    if (typeof r.certPem !== 'string' || typeof r.sealedSecrets !== 'string' || !verifyAnswer(signingKey, attestAnswerMessage({
      service: r.service, nonce, mode: r.mode, measurement: r.measurement, policyHash: r.policyHash, notAfter: r.notAfter,
      certSha256: sha(r.certPem), sealedSecretsSha256: sha(r.sealedSecrets), sealingPublicKey: sealing.publicKey.toString('hex'),
    }), r.signature)) {
      throw new CdbpError('CAS_IDENTITY_INVALID', 'CAS attest answer is not signed by the CAS (forged or altered on the way)');
    }
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
      counter: counterClient(o.casUrl, o.service, o.caPem, keyPem, r.certPem, signingKey),
    };
  } finally {
    agent.destroy();
  }
}

/**
 * The counter client a proxy uses: the persistent ordered channel (counter-channel.ts), with HTTPS for
 * alarms and for a CAS without the channel. CDBP_COUNTER_TRANSPORT=https keeps the HTTPS client alone
 * (one request at a time; for comparison and as an escape hatch).
 */
export function counterClient(casUrl: string, service: string, caPem: string, keyPem: string, certPem: string, signingKey: KeyObject): CounterClient {
  const http = new HttpCounterClient(casUrl, service, caPem, keyPem, certPem, signingKey);
  if (process.env.CDBP_COUNTER_TRANSPORT === 'https') return http;
  return new ChannelCounterClient({ casUrl, service, caPem, keyPem, certPem, signingKey, http });
}

/**
 * The CAS's answer-signing key, from its certificate checked against the pinned CA (GET /v1/ca; the
 * certificate is public, the trust comes from the CA).
 */
export async function fetchCasSigningKey(casUrl: string, caPem: string): Promise<KeyObject> {
  const r = await casRequest<{ signingCertPem?: string }>(casUrl, 'GET', '/v1/ca', undefined, { caPem });
  if (typeof r?.signingCertPem !== 'string') throw new CdbpError('CAS_IDENTITY_INVALID', 'CAS published no signing certificate');
  return verifyCasSigningCert(r.signingCertPem, caPem);
}

/**
 * Talks to the CAS counter for one service over mutual TLS with the CAS-issued certificate. Every
 * request carries a fresh nonce and every answer (including a COUNTER_CONFLICT's current value) must be
 * signed by the CAS's answer key over it: a forged or replayed counter value is refused even if the TLS
 * channel were compromised.
 */
export class HttpCounterClient implements CounterClient {
  private readonly agent;
  private readonly path: string;

  constructor(private readonly casUrl: string, private readonly service: string, caPem: string, keyPem: string, certPem: string,
    private readonly signingKey: KeyObject) {
    this.agent = casAgent({ caPem, keyPem, certPem });
    this.path = `/v1/services/${encodeURIComponent(service)}/counter`;
  }

  /** The signed state in `answer` for `nonce`, or CAS_IDENTITY_INVALID. */
  private checked(op: CounterAnswer['op'], nonce: string, answer: unknown): CounterState {
    const a = answer as { value?: unknown; digest?: unknown; signature?: unknown; record?: unknown } | undefined;
    if (!a || !Number.isSafeInteger(a.value) || typeof a.digest !== 'string'
      || !verifyAnswer(this.signingKey, counterAnswerMessage({ service: this.service, op, nonce, value: a.value as number, digest: a.digest }), a.signature)) {
      throw new CdbpError('CAS_IDENTITY_INVALID', `counter ${op} answer is not signed by the CAS for this request (forged, replayed or altered)`);
    }
    // The signature covers the digest; the record is bound to it by its hash.
    const record = typeof a.record === 'string' ? Buffer.from(a.record, 'base64') : undefined;
    if (record && createHash(a.digest.length === 128 ? 'sha512' : 'sha256').update(record).digest('hex') !== a.digest) {
      throw new CdbpError('CAS_IDENTITY_INVALID', `counter ${op} answer carries a record that is not the one its signed digest names`);
    }
    return { value: a.value as number, digest: a.digest, ...(record ? { record } : {}) };
  }

  async read(): Promise<CounterState> {
    const nonce = randomBytes(32).toString('hex');
    return this.checked('read', nonce, await casRequest<unknown>(this.casUrl, 'GET', `${this.path}?nonce=${nonce}`, undefined, { agent: this.agent }));
  }

  /** Throws COUNTER_CONFLICT (details: { value, digest } of the CAS's counter, signed) if `expected` is stale. */
  async advance(expected: number, next: number, digest: string, record?: Buffer, expectedDigest?: string): Promise<CounterState> {
    const nonce = randomBytes(32).toString('hex');
    let answer: unknown;
    try {
      answer = await casRequest<unknown>(this.casUrl, 'POST', this.path,
        { expected, next, digest, nonce, ...(record ? { record: record.toString('base64') } : {}), ...(expectedDigest !== undefined ? { expectedDigest } : {}) },
        { agent: this.agent });
    } catch (e) {
      if (isCdbpError(e, 'COUNTER_CONFLICT')) {
        // The guard acts on the conflict's value and digest (lost answer vs. fork): they must be the CAS's.
        const current = this.checked('conflict', nonce, e.details);
        throw new CdbpError('COUNTER_CONFLICT', e.message, { details: { ...e.details, value: current.value, digest: current.digest } });
      }
      throw e;
    }
    return this.checked('advance', nonce, answer);
  }

  reportAlarm(alarm: FreshnessAlarm): Promise<void> {
    return casRequest<void>(this.casUrl, 'POST', this.path.replace(/\/counter$/, '/alarm'), alarm, { agent: this.agent });
  }

  close(): void {
    this.agent.destroy();
  }
}
