/**
 * Owner-signed policies ("sessions"): the format both sides share (the owner's tools sign it, the CAS
 * verifies it): validation, hashing, signing, the owner-signed recovery and the owner key file. Pure
 * except the owner key file helpers. The CAS's update rules live in cas/policy.ts; the HTTP calls
 * (apply, current hash, recover) in src/cas-client/policy.ts.
 *
 * Policy (canonical JSON is what gets hashed; see docs/CAS.md):
 *   { "format": "cdbp-policy/1", "service": "orders-db", "predecessor": null | "<hex sha256>",
 *     "measurements": ["<hex sha256>", ...], "teeModes": ["simulated", "sev-snp", "tdx"],
 *     "tls": { "dnsNames": ["localhost"], "ipAddresses": ["127.0.0.1"], "lifetimeSeconds": 86400 },
 *     "dbKeys": [ { "id": 1, "versions": [1, 2] } ] }
 * Signed envelope:
 *   { "format": "cdbp-signed-policy/1", "policy": {...}, "policyHash": "<hex sha256 of canonical policy>",
 *     "owner": "<hex Ed25519 public key>", "signature": "<hex Ed25519 over 'cdbp-signed-policy/1' NUL policyHash>" }
 */
import { isIP } from 'node:net';
import { CdbpError } from '../kernel/errors.ts';
import type { TeeMode } from '../attestation/types.ts';
import { validateTeeAppraisalPolicy, type TeeAppraisalPolicy } from '../attestation/tee-policy.ts';
import { canonicalJson, isHex, sha256Hex } from '../crypto/hash.ts';
import { generateSigningKeyPair, readSigningKeyFile, signDetached, verifyDetached, writeSigningKeyFile,
  type SigningKeyPair } from '../crypto/ed25519.ts';

export const POLICY_FORMAT = 'cdbp-policy/1';
export const SIGNED_POLICY_FORMAT = 'cdbp-signed-policy/1';
export const RECOVERY_FORMAT = 'cdbp-recovery/1';
export const HA_RECOVERY_FORMAT = 'cdbp-ha-recovery/1';
export const OWNER_KEY_FORMAT = 'cdbp-owner-key/1';
/** Modes a policy may name. 'none' is not a TEE and can never be allowed. */
export const POLICY_TEE_MODES = ['simulated', 'sev-snp', 'tdx'] as const;
export const SERVICE_NAME_RE = /^[a-z0-9][a-z0-9._-]{0,62}$/;
export const MAX_KEY_IDS = 64;
export const MAX_VERSIONS_PER_KEY = 256;
export const MIN_CERT_LIFETIME_S = 300;
export const MAX_CERT_LIFETIME_S = 90 * 86_400;
export const DEFAULT_CERT_LIFETIME_S = 86_400;

export interface PolicyDbKey {
  /** Key id as MariaDB's key management sees it (1 = default key). */
  id: number;
  /** Every version ever issued; a version, once named, must stay (keys are kept forever). */
  versions: number[];
}

export interface Policy {
  format: typeof POLICY_FORMAT;
  service: string;
  predecessor: string | null;
  measurements: string[];
  teeModes: Array<(typeof POLICY_TEE_MODES)[number]>;
  tls: { dnsNames: string[]; ipAddresses: string[]; lifetimeSeconds: number };
  dbKeys: PolicyDbKey[];
  /**
   * What real TEE evidence must show, per TEE type (src/attestation/tee-policy.ts): SNP measurements and
   * minimum TCB, TDX MRTD/RTMRs and accepted TCB statuses, debug never unless allowed. Required (with
   * pinned measurements) for every real mode in teeModes. Absent in simulated-only policies, so their
   * hashes are unchanged.
   */
  tee?: TeeAppraisalPolicy;
}

export interface SignedPolicy {
  format: typeof SIGNED_POLICY_FORMAT;
  policy: Policy;
  policyHash: string;
  owner: string;
  signature: string;
}

const DNS_NAME_RE = /^(?=.{1,253}$)(\*\.)?([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*$/;

function isObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function unknownKeys(o: Record<string, unknown>, allowed: string[], where: string, problems: string[]): void {
  for (const k of Object.keys(o)) if (!allowed.includes(k)) problems.push(`${where}: unknown field "${k}"`);
}

const isPositiveInt = (n: unknown, max = 0xffffffff): n is number => Number.isSafeInteger(n) && (n as number) >= 1 && (n as number) <= max;

/** Validates an untrusted policy; every problem is reported at once (POLICY_INVALID). */
export function validatePolicy(input: unknown): Policy {
  const p: string[] = [];
  if (!isObject(input)) throw new CdbpError('POLICY_INVALID', 'policy must be a JSON object');
  unknownKeys(input, ['format', 'service', 'predecessor', 'measurements', 'teeModes', 'tls', 'dbKeys', 'tee'], 'policy', p);
  if (input.format !== POLICY_FORMAT) p.push(`format must be "${POLICY_FORMAT}"`);
  if (typeof input.service !== 'string' || !SERVICE_NAME_RE.test(input.service)) {
    p.push('service must match ' + SERVICE_NAME_RE.source);
  }
  if (input.predecessor !== null && !isHex(input.predecessor, 32)) p.push('predecessor must be null or a hex SHA-256');
  const m = input.measurements;
  // The code measurement (SHA-256) is what simulated evidence carries; real TEEs pin theirs under `tee`.
  const needsCodeMeasurement = !Array.isArray(input.teeModes) || input.teeModes.includes('simulated');
  if (!Array.isArray(m) || (needsCodeMeasurement && m.length === 0) || m.length > 64) p.push('measurements must list 1..64 entries');
  else {
    m.forEach((x, i) => { if (!isHex(x, 32)) p.push(`measurements[${i}] must be a lowercase hex SHA-256`); });
    if (new Set(m).size !== m.length) p.push('measurements has duplicates');
  }
  const t = input.teeModes;
  if (!Array.isArray(t) || t.length === 0) p.push(`teeModes must list at least one of ${POLICY_TEE_MODES.join(', ')}`);
  else {
    t.forEach((x, i) => { if (!(POLICY_TEE_MODES as readonly unknown[]).includes(x)) p.push(`teeModes[${i}] must be one of ${POLICY_TEE_MODES.join(', ')}`); });
    if (new Set(t).size !== t.length) p.push('teeModes has duplicates');
  }
  const tls = input.tls;
  if (!isObject(tls)) p.push('tls must be an object');
  else {
    unknownKeys(tls, ['dnsNames', 'ipAddresses', 'lifetimeSeconds'], 'tls', p);
    const dns = tls.dnsNames;
    const ips = tls.ipAddresses;
    if (!Array.isArray(dns) || dns.length > 32) p.push('tls.dnsNames must be a list of at most 32 names');
    else dns.forEach((d, i) => { if (typeof d !== 'string' || !DNS_NAME_RE.test(d)) p.push(`tls.dnsNames[${i}] is not a DNS name`); });
    if (!Array.isArray(ips) || ips.length > 32) p.push('tls.ipAddresses must be a list of at most 32 addresses');
    else ips.forEach((a, i) => { if (typeof a !== 'string' || isIP(a) === 0) p.push(`tls.ipAddresses[${i}] is not an IP address`); });
    if (Array.isArray(dns) && Array.isArray(ips) && dns.length + ips.length === 0) p.push('tls needs at least one DNS name or IP address');
    if (!Number.isSafeInteger(tls.lifetimeSeconds) || (tls.lifetimeSeconds as number) < MIN_CERT_LIFETIME_S
      || (tls.lifetimeSeconds as number) > MAX_CERT_LIFETIME_S) {
      p.push(`tls.lifetimeSeconds must be an integer in ${MIN_CERT_LIFETIME_S}..${MAX_CERT_LIFETIME_S}`);
    }
  }
  const k = input.dbKeys;
  if (!Array.isArray(k) || k.length === 0 || k.length > MAX_KEY_IDS) p.push(`dbKeys must list 1..${MAX_KEY_IDS} keys`);
  else {
    const ids = new Set<unknown>();
    k.forEach((key, i) => {
      if (!isObject(key)) { p.push(`dbKeys[${i}] must be an object`); return; }
      unknownKeys(key, ['id', 'versions'], `dbKeys[${i}]`, p);
      if (!isPositiveInt(key.id)) p.push(`dbKeys[${i}].id must be an integer ≥ 1`);
      if (ids.has(key.id)) p.push(`dbKeys[${i}].id ${String(key.id)} is listed twice`);
      ids.add(key.id);
      const v = key.versions;
      if (!Array.isArray(v) || v.length === 0 || v.length > MAX_VERSIONS_PER_KEY) p.push(`dbKeys[${i}].versions must list 1..${MAX_VERSIONS_PER_KEY} versions`);
      else {
        v.forEach((x, j) => { if (!isPositiveInt(x)) p.push(`dbKeys[${i}].versions[${j}] must be an integer ≥ 1`); });
        if (new Set(v).size !== v.length) p.push(`dbKeys[${i}].versions has duplicates`);
      }
    });
  }
  if (input.tee !== undefined) {
    try {
      validateTeeAppraisalPolicy(input.tee, 'tee');
    } catch (e) {
      p.push(...(((e as CdbpError).details?.problems as string[] | undefined) ?? [(e as Error).message]));
    }
  }
  if (Array.isArray(t)) {
    const tee = (isObject(input.tee) ? input.tee : {}) as TeeAppraisalPolicy;
    if (t.includes('sev-snp') && !(tee.snp?.measurements?.length)) p.push('teeModes names sev-snp: tee.snp.measurements must pin at least one launch measurement');
    if (t.includes('tdx') && !(tee.tdx?.mrtd?.length)) p.push('teeModes names tdx: tee.tdx.mrtd must pin at least one MRTD');
  }
  if (p.length > 0) throw new CdbpError('POLICY_INVALID', `invalid policy: ${p.join('; ')}`, { details: { problems: p } });
  return input as unknown as Policy;
}

export function policyHash(policy: Policy): string {
  return sha256Hex(canonicalJson(policy));
}

function signedMessage(format: string, body: string): Buffer {
  return Buffer.from(`${format}\0${body}`);
}

export interface BuildPolicyOptions {
  service: string;
  measurements: string[];
  teeModes: Policy['teeModes'];
  predecessor?: string | null;
  /** Default ['localhost'] (the proxy also serves its loopback keyring with this certificate). */
  dnsNames?: string[];
  /** Default ['127.0.0.1']. */
  ipAddresses?: string[];
  lifetimeSeconds?: number;
  /** Default [{ id: 1, versions: [1] }]. */
  dbKeys?: PolicyDbKey[];
  tee?: TeeAppraisalPolicy;
}

export function buildPolicy(o: BuildPolicyOptions): Policy {
  return validatePolicy({
    format: POLICY_FORMAT,
    service: o.service,
    predecessor: o.predecessor ?? null,
    measurements: [...o.measurements],
    teeModes: [...o.teeModes],
    tls: {
      dnsNames: o.dnsNames ?? ['localhost'],
      ipAddresses: o.ipAddresses ?? ['127.0.0.1'],
      lifetimeSeconds: o.lifetimeSeconds ?? DEFAULT_CERT_LIFETIME_S,
    },
    dbKeys: (o.dbKeys ?? [{ id: 1, versions: [1] }]).map((k) => ({ id: k.id, versions: [...k.versions] })),
    ...(o.tee ? { tee: structuredClone(o.tee) } : {}),
  });
}

export async function signPolicy(policy: Policy, ownerKey: SigningKeyPair): Promise<SignedPolicy> {
  const valid = validatePolicy(policy);
  const hash = policyHash(valid);
  const signature = await signDetached(ownerKey.secretKey, signedMessage(SIGNED_POLICY_FORMAT, hash));
  return { format: SIGNED_POLICY_FORMAT, policy: valid, policyHash: hash, owner: ownerKey.publicKey.toString('hex'), signature: signature.toString('hex') };
}

/** Checks format, hash and signature of an untrusted signed policy; returns it typed. */
export async function verifySignedPolicy(input: unknown): Promise<SignedPolicy> {
  if (!isObject(input) || input.format !== SIGNED_POLICY_FORMAT) {
    throw new CdbpError('POLICY_INVALID', `signed policy must be an object with format "${SIGNED_POLICY_FORMAT}"`);
  }
  const extra = Object.keys(input).filter((k) => !['format', 'policy', 'policyHash', 'owner', 'signature'].includes(k));
  if (extra.length > 0) throw new CdbpError('POLICY_INVALID', `signed policy: unknown fields ${extra.join(', ')}`);
  const policy = validatePolicy(input.policy);
  if (!isHex(input.owner, 32)) throw new CdbpError('POLICY_SIGNATURE_INVALID', 'owner must be a hex Ed25519 public key');
  if (!isHex(input.signature, 64)) throw new CdbpError('POLICY_SIGNATURE_INVALID', 'signature missing or malformed');
  const hash = policyHash(policy);
  if (input.policyHash !== hash) throw new CdbpError('POLICY_INVALID', 'policyHash does not match the policy');
  const ok = await verifyDetached(Buffer.from(input.owner, 'hex'), signedMessage(SIGNED_POLICY_FORMAT, hash), Buffer.from(input.signature, 'hex'));
  if (!ok) throw new CdbpError('POLICY_SIGNATURE_INVALID', 'policy signature does not verify with the named owner key');
  return { format: SIGNED_POLICY_FORMAT, policy, policyHash: hash, owner: input.owner, signature: input.signature };
}

// ---- owner-signed recovery ---------------------------------------------------------------------------

export interface RecoveryRequest {
  format: typeof RECOVERY_FORMAT;
  service: string;
  /** Counter value to re-anchor to (the epoch of the restored sealed record). */
  value: number;
  /** Hex digest of the restored sealed record. */
  digest: string;
  /** A fresh single-use CAS nonce (purpose 'recover'): a signed recovery cannot be replayed. */
  nonce: string;
}

export interface SignedRecovery {
  recovery: RecoveryRequest;
  owner: string;
  signature: string;
}

export const COUNTER_DIGEST_RE = /^([0-9a-f]{64}|[0-9a-f]{128})?$/;

export async function signRecovery(recovery: Omit<RecoveryRequest, 'format'>, ownerKey: SigningKeyPair): Promise<SignedRecovery> {
  const r: RecoveryRequest = { format: RECOVERY_FORMAT, ...recovery };
  const sig = await signDetached(ownerKey.secretKey, signedMessage(RECOVERY_FORMAT, canonicalJson(r)));
  return { recovery: r, owner: ownerKey.publicKey.toString('hex'), signature: sig.toString('hex') };
}

export async function verifySignedRecovery(input: SignedRecovery): Promise<void> {
  const r = input.recovery;
  if (r.format !== RECOVERY_FORMAT || !Number.isSafeInteger(r.value) || r.value < 0 || !COUNTER_DIGEST_RE.test(r.digest)) {
    throw new CdbpError('BAD_REQUEST', 'malformed recovery request');
  }
  const ok = isHex(input.owner, 32) && isHex(input.signature, 64)
    && await verifyDetached(Buffer.from(input.owner, 'hex'), signedMessage(RECOVERY_FORMAT, canonicalJson(r)), Buffer.from(input.signature, 'hex'));
  if (!ok) throw new CdbpError('POLICY_SIGNATURE_INVALID', 'recovery signature does not verify');
}

// ---- owner-signed recovery of a replicated CAS deployment ------------------------------------------------

/**
 * The owner's permission to restart a replicated CAS deployment that lost a majority of its members at
 * once (docs/CAS.md "Losing a majority"): one member reopens the deployment from etcd with its sealed
 * state key and EMPTY counters. It cannot carry a CAS nonce (no member is running to issue one), so it
 * is bound to the deployment (its CA) and expires; what a replay within that window can do is written
 * down in CAS.md.
 */
export interface HaRecoveryStatement {
  format: typeof HA_RECOVERY_FORMAT;
  /** SHA-256 of the deployment CA certificate (DER), hex. */
  ca: string;
  /** ISO time after which the statement is void (at most MAX_HA_RECOVERY_VALIDITY_MS after signing). */
  notAfter: string;
  /** The lowest etcd state version the owner accepts to reopen (0: any the state key opens). */
  minStateSeq: number;
}

export interface SignedHaRecovery {
  statement: HaRecoveryStatement;
  owner: string;
  signature: string;
}

export const MAX_HA_RECOVERY_VALIDITY_MS = 24 * 3600_000;

export async function signHaRecovery(statement: Omit<HaRecoveryStatement, 'format'>, ownerKey: SigningKeyPair): Promise<SignedHaRecovery> {
  const s: HaRecoveryStatement = { format: HA_RECOVERY_FORMAT, ...statement };
  const sig = await signDetached(ownerKey.secretKey, signedMessage(HA_RECOVERY_FORMAT, canonicalJson(s)));
  return { statement: s, owner: ownerKey.publicKey.toString('hex'), signature: sig.toString('hex') };
}

/** Checks form, signature, owner, deployment and time; returns the statement. */
export async function verifySignedHaRecovery(input: SignedHaRecovery, o: { owners: string[]; caFingerprint: string; now?: Date }): Promise<HaRecoveryStatement> {
  const s = input?.statement;
  if (s?.format !== HA_RECOVERY_FORMAT || !isHex(s.ca, 32) || typeof s.notAfter !== 'string' || Number.isNaN(Date.parse(s.notAfter))
    || !Number.isSafeInteger(s.minStateSeq) || s.minStateSeq < 0 || Object.keys(s).length !== 4) {
    throw new CdbpError('BAD_REQUEST', 'malformed deployment recovery statement (cdbp-ha-recovery/1)');
  }
  const ok = isHex(input.owner, 32) && isHex(input.signature, 64)
    && await verifyDetached(Buffer.from(input.owner, 'hex'), signedMessage(HA_RECOVERY_FORMAT, canonicalJson(s)), Buffer.from(input.signature, 'hex'));
  if (!ok) throw new CdbpError('POLICY_SIGNATURE_INVALID', 'deployment recovery statement signature does not verify');
  if (!o.owners.includes(input.owner)) throw new CdbpError('POLICY_OWNER_MISMATCH', `deployment recovery signed by ${input.owner.slice(0, 16)}…, not an owner of this deployment`);
  if (s.ca !== o.caFingerprint) throw new CdbpError('POLICY_OWNER_MISMATCH', 'deployment recovery statement is for another deployment (CA fingerprint differs)');
  const now = (o.now ?? new Date()).getTime();
  const until = Date.parse(s.notAfter);
  if (until <= now) throw new CdbpError('HA_RECOVERY_REFUSED', `deployment recovery statement expired at ${s.notAfter}`);
  if (until - now > MAX_HA_RECOVERY_VALIDITY_MS) throw new CdbpError('HA_RECOVERY_REFUSED', 'deployment recovery statement is valid for more than 24 h: sign one that expires sooner');
  return s;
}

// ---- owner key files -----------------------------------------------------------------------------------

export async function generateOwnerKey(file: string): Promise<SigningKeyPair> {
  const kp = await generateSigningKeyPair();
  try {
    writeSigningKeyFile(file, kp, OWNER_KEY_FORMAT);
  } catch (e) {
    throw new CdbpError('CONFIG_INVALID', `cannot create owner key ${file}: ${(e as Error).message}`);
  }
  return kp;
}

export function loadOwnerKey(file: string): SigningKeyPair {
  return readSigningKeyFile(file, OWNER_KEY_FORMAT);
}

export type { SigningKeyPair as OwnerKey };
export type { TeeMode };
