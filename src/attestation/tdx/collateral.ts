/**
 * Intel's signed collateral for TDX: TCB info (per FMSPC) and the QE identity, as Intel PCS serves them
 * (https://api.trustedservices.intel.com/tdx/certification/v4/tcb, .../qe/identity). The signature (hex
 * r‖s, ECDSA P-256/SHA-256) is over the exact bytes of the inner object as served — so the inner object
 * is sliced out of the text, never re-serialised — by "Intel SGX TCB Signing", whose chain (the
 * TCB-Info-Issuer-Chain header, PEM) must reach the pinned Intel root.
 */
import type { X509Certificate } from 'node:crypto';
import { CdbpError } from '../../kernel/errors.ts';
import { cn, verifyChainToPinnedRoot } from '../chain.ts';
import { verifyP1363 } from '../ecdsa.ts';
import { memoKey, verifiedOnce } from '../verified-cache.ts';
import type { TcbStatus } from '../tee-policy.ts';
import { TCB_STATUSES } from '../tee-policy.ts';

/** Collateral files are a few KB; anything past this is refused before parsing. */
export const COLLATERAL_MAX_SIZE = 1024 * 1024;

export interface SignedJson<T> {
  body: T;
  /** The exact signed bytes. */
  signedBytes: Buffer;
  signature: Buffer;
}

function invalid(what: string, why: string): never {
  throw new CdbpError('TEE_COLLATERAL_INVALID', `${what}: ${why}`);
}

/**
 * Splits `{"<key>":{...},"signature":"<hex>"}` into the signed inner bytes and the signature. The outer
 * object is parsed too, and its `key` value must be exactly the sliced text, so no trickery with
 * duplicate keys or whitespace can make the bytes checked differ from the object used.
 */
export function splitSignedJson<T>(text: Buffer, key: string, what: string): SignedJson<T> {
  if (text.length > COLLATERAL_MAX_SIZE) invalid(what, `${text.length} bytes is too large`);
  const s = text.toString('utf8').trim();
  const prefix = `{"${key}":`;
  const m = /,\s*"signature"\s*:\s*"([0-9a-fA-F]*)"\s*}$/.exec(s);
  if (!s.startsWith(prefix) || !m) invalid(what, `expected {"${key}":{...},"signature":"<hex>"} as Intel serves it`);
  const inner = s.slice(prefix.length, m.index);
  let outer: Record<string, unknown>;
  try {
    outer = JSON.parse(s) as Record<string, unknown>;
  } catch (e) {
    return invalid(what, `not JSON (${(e as Error).message})`);
  }
  let body: T;
  try {
    body = JSON.parse(inner) as T;
  } catch {
    return invalid(what, 'the signed object is not a JSON value on its own');
  }
  if (Object.keys(outer).length !== 2 || JSON.stringify(outer[key]) !== JSON.stringify(body)) invalid(what, 'unexpected fields');
  if (m[1]!.length !== 128) invalid(what, 'signature must be 64 bytes of hex (r‖s)');
  return { body, signedBytes: Buffer.from(inner, 'utf8'), signature: Buffer.from(m[1]!, 'hex') };
}

/** The TCB Signing chain to the pinned root at `now`, then the signature over the exact bytes. */
export function verifyCollateralSignature(signed: SignedJson<unknown>, issuerChain: X509Certificate[], pinnedRoot: X509Certificate,
  now: Date, what: string): void {
  if (issuerChain.length === 0) throw new CdbpError('TEE_COLLATERAL_MISSING', `${what}: no issuer chain (the TCB Signing certificate) was supplied`);
  const signer = issuerChain[0]!;
  verifyChainToPinnedRoot(issuerChain.map((c, i) => ({ cert: c, name: i === 0 ? `${what} signer (${cn(c)})` : cn(c) })), [pinnedRoot], now);
  checkCollateralSignatureOnly(signed, signer, what);
}

/** The signature alone (for collateral whose signer certificate has since expired: tests of exact-bytes signing). */
export function checkCollateralSignatureOnly(signed: SignedJson<unknown>, signer: X509Certificate, what: string): void {
  const key = memoKey('collateral', signed.signedBytes, signed.signature, signer.raw);
  if (!verifiedOnce(key, () => verifyP1363('sha256', signed.signedBytes, signer.publicKey, signed.signature))) {
    throw new CdbpError('TEE_COLLATERAL_INVALID', `${what}: signature by ${cn(signer)} does not verify over the bytes as served`);
  }
}

export function checkCollateralWindow(issueDate: string, nextUpdate: string, now: Date, graceSeconds: number, what: string): { issued: Date; nextUpdate: Date } {
  const issued = new Date(issueDate);
  const next = new Date(nextUpdate);
  if (Number.isNaN(issued.getTime()) || Number.isNaN(next.getTime())) invalid(what, 'issueDate/nextUpdate are not dates');
  if (now < issued) throw new CdbpError('TEE_COLLATERAL_EXPIRED', `${what} is issued ${issued.toISOString()}, after ${now.toISOString()}`);
  if (now.getTime() > next.getTime() + graceSeconds * 1000) {
    throw new CdbpError('TEE_COLLATERAL_EXPIRED', `${what} was due for an update at ${next.toISOString()} (now ${now.toISOString()}); fetch fresh collateral (cdbp collateral) or allow a grace period in the policy`,
      { details: { nextUpdate: next.toISOString(), at: now.toISOString() } });
  }
  return { issued, nextUpdate: next };
}

// ---- TCB info (TDX: id "TDX", version 3) ----------------------------------------------------------------

export interface TdxTcbLevel {
  tcb: { sgxtcbcomponents: Array<{ svn: number }>; pcesvn: number; tdxtcbcomponents: Array<{ svn: number }> };
  tcbDate: string;
  tcbStatus: TcbStatus;
  advisoryIDs?: string[];
}

export interface TdxTcbInfo {
  id: 'TDX';
  version: number;
  issueDate: string;
  nextUpdate: string;
  fmspc: string;
  pceId: string;
  tcbEvaluationDataNumber: number;
  tdxModule?: { mrsigner: string; attributes: string; attributesMask: string };
  tdxModuleIdentities?: Array<{ id: string; mrsigner: string; attributes: string; attributesMask: string;
    tcbLevels: Array<{ tcb: { isvsvn: number }; tcbDate: string; tcbStatus: TcbStatus }> }>;
  tcbLevels: TdxTcbLevel[];
}

const isHexStr = (v: unknown, bytes: number) => typeof v === 'string' && new RegExp(`^[0-9a-fA-F]{${bytes * 2}}$`).test(v);
const isSvn = (v: unknown) => Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 0xffff;
const isStatus = (v: unknown) => (TCB_STATUSES as readonly unknown[]).includes(v);

export function parseTcbInfo(text: Buffer): SignedJson<TdxTcbInfo> {
  const what = 'TCB info';
  const signed = splitSignedJson<TdxTcbInfo>(text, 'tcbInfo', what);
  const t = signed.body as unknown as Record<string, any>;
  if (t === null || typeof t !== 'object') invalid(what, 'not an object');
  if (t.id !== 'TDX') invalid(what, `id ${JSON.stringify(t.id)} is not "TDX" (SGX TCB info cannot evaluate a TD)`);
  if (t.version !== 3) invalid(what, `version ${JSON.stringify(t.version)} is not 3`);
  if (!isHexStr(t.fmspc, 6) || !isHexStr(t.pceId, 2)) invalid(what, 'fmspc/pceId malformed');
  if (typeof t.issueDate !== 'string' || typeof t.nextUpdate !== 'string') invalid(what, 'issueDate/nextUpdate missing');
  if (!Array.isArray(t.tcbLevels) || t.tcbLevels.length === 0) invalid(what, 'no tcbLevels');
  for (const l of t.tcbLevels) {
    const c = l?.tcb;
    if (!c || !Array.isArray(c.sgxtcbcomponents) || c.sgxtcbcomponents.length !== 16 || !c.sgxtcbcomponents.every((x: any) => isSvn(x?.svn))
      || !Array.isArray(c.tdxtcbcomponents) || c.tdxtcbcomponents.length !== 16 || !c.tdxtcbcomponents.every((x: any) => isSvn(x?.svn))
      || !isSvn(c.pcesvn) || !isStatus(l.tcbStatus)) {
      invalid(what, 'a tcbLevel is malformed (16 SGX and 16 TDX components, pcesvn, a known tcbStatus)');
    }
  }
  if (t.tdxModuleIdentities !== undefined && (!Array.isArray(t.tdxModuleIdentities) || !t.tdxModuleIdentities.every((m: any) =>
    typeof m?.id === 'string' && isHexStr(m.mrsigner, 48) && isHexStr(m.attributes, 8) && isHexStr(m.attributesMask, 8)
    && Array.isArray(m.tcbLevels) && m.tcbLevels.every((l: any) => isSvn(l?.tcb?.isvsvn) && isStatus(l.tcbStatus))))) {
    invalid(what, 'tdxModuleIdentities malformed');
  }
  if (t.tdxModule !== undefined && !(isHexStr(t.tdxModule?.mrsigner, 48) && isHexStr(t.tdxModule.attributes, 8) && isHexStr(t.tdxModule.attributesMask, 8))) {
    invalid(what, 'tdxModule malformed');
  }
  return signed;
}

// ---- QE identity (id "TD_QE", version 2) ----------------------------------------------------------------

export interface QeIdentity {
  id: 'TD_QE';
  version: number;
  issueDate: string;
  nextUpdate: string;
  tcbEvaluationDataNumber: number;
  miscselect: string;
  miscselectMask: string;
  attributes: string;
  attributesMask: string;
  mrsigner: string;
  isvprodid: number;
  tcbLevels: Array<{ tcb: { isvsvn: number }; tcbDate: string; tcbStatus: TcbStatus }>;
}

export function parseQeIdentity(text: Buffer): SignedJson<QeIdentity> {
  const what = 'QE identity';
  const signed = splitSignedJson<QeIdentity>(text, 'enclaveIdentity', what);
  const q = signed.body as unknown as Record<string, any>;
  if (q === null || typeof q !== 'object') invalid(what, 'not an object');
  if (q.id !== 'TD_QE') invalid(what, `id ${JSON.stringify(q.id)} is not "TD_QE"`);
  if (q.version !== 2) invalid(what, `version ${JSON.stringify(q.version)} is not 2`);
  if (!isHexStr(q.miscselect, 4) || !isHexStr(q.miscselectMask, 4) || !isHexStr(q.attributes, 16) || !isHexStr(q.attributesMask, 16)
    || !isHexStr(q.mrsigner, 32) || !isSvn(q.isvprodid)) invalid(what, 'miscselect/attributes/mrsigner/isvprodid malformed');
  if (!Array.isArray(q.tcbLevels) || q.tcbLevels.length === 0 || !q.tcbLevels.every((l: any) => isSvn(l?.tcb?.isvsvn) && isStatus(l.tcbStatus))) {
    invalid(what, 'tcbLevels malformed');
  }
  return signed;
}
