/**
 * What an owner accepts from real TEE evidence, per TEE type: the appraisal policy the SEV-SNP and TDX
 * verifiers apply after the signatures check out. Pure data and its validation. Defaults are the
 * production ones: debug never, no migration agent, TDX TCB statuses UpToDate / SWHardeningNeeded only,
 * collateral not past its nextUpdate. An absent list is "not pinned"; a present list (even empty) must
 * contain the value, so a policy can never widen by losing its entries.
 */
import { CdbpError } from '../kernel/errors.ts';

export const TCB_STATUSES = ['UpToDate', 'SWHardeningNeeded', 'ConfigurationNeeded', 'ConfigurationAndSWHardeningNeeded',
  'OutOfDate', 'OutOfDateConfigurationNeeded', 'Revoked'] as const;
export type TcbStatus = (typeof TCB_STATUSES)[number];

export interface SnpMinTcb { bootloader?: number; tee?: number; snp?: number; microcode?: number; fmc?: number }

export interface SnpAppraisalPolicy {
  /** Guest policy bit 19. Default false: a debug guest's memory is readable by the host. */
  allowDebug?: boolean;
  /** Guest policy bit 18. Default false. */
  allowMigrationAgent?: boolean;
  /** VMPLs the report may come from; default any (0-3). Pin [0] without an SVSM, the SVSM's guest VMPL with one. */
  vmpls?: number[];
  /** Which AMD key may sign; default both. */
  signers?: Array<'VCEK' | 'VLEK'>;
  /** Minimum reported TCB per component (the VCEK certifies exactly these values). */
  minTcb?: SnpMinTcb;
  /** Hex launch measurements (48 bytes, SHA-384) that may run. */
  measurements?: string[];
  /** Hex HOST_DATA values (32 bytes) the VM may have been launched with. */
  hostData?: string[];
  /** Hex ID key digests (48 bytes). */
  idKeyDigests?: string[];
  /** HOST_DATA must carry the hash of this signed policy (policy-binding.ts): the VM was launched for it. */
  bindPolicyHash?: boolean;
}

export interface TdxAppraisalPolicy {
  /** TD attribute DEBUG (bit 0). Default false. */
  allowDebug?: boolean;
  /** Default ['UpToDate', 'SWHardeningNeeded']. */
  tcbStatuses?: TcbStatus[];
  /** Hex MRTD values (48 bytes) that may run. */
  mrtd?: string[];
  /** Per RTMR index 0-3: allowed hex values (48 bytes); an absent index is not pinned. */
  rtmr?: Array<string[] | null>;
  mrConfigId?: string[];
  mrOwner?: string[];
  /** How long past nextUpdate collateral (TCB info, QE identity, CRLs) may still be used. Default 0. */
  collateralGraceSeconds?: number;
  /**
   * Floor for TEE_TCB_SVN (16 bytes, hex): every byte must be ≥ the floor's byte at the same index
   * (byte 0 = TDX module minor SVN, byte 1 = major, the rest as in Intel's TCB info `tdxtcbcomponents`).
   * Applied on top of the TCB status, so an owner can require a module version newer than Intel's floor.
   */
  minTeeTcbSvn?: string;
  /** MRCONFIGID must carry the hash of this signed policy (policy-binding.ts): the TD was launched for it. */
  bindPolicyHash?: boolean;
}

export interface TeeAppraisalPolicy {
  snp?: SnpAppraisalPolicy;
  tdx?: TdxAppraisalPolicy;
}

export const DEFAULT_TDX_TCB_STATUSES: TcbStatus[] = ['UpToDate', 'SWHardeningNeeded'];

const isObj = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);
const hexOf = (bytes: number) => new RegExp(`^[0-9a-f]{${bytes * 2}}$`);

function hexList(v: unknown, bytes: number, where: string, p: string[]): void {
  if (v === undefined) return;
  if (!Array.isArray(v) || v.length > 64) { p.push(`${where} must be a list of at most 64 hex values`); return; }
  v.forEach((x, i) => { if (typeof x !== 'string' || !hexOf(bytes).test(x)) p.push(`${where}[${i}] must be ${bytes} bytes of lowercase hex`); });
}

function known(o: Record<string, unknown>, keys: string[], where: string, p: string[]): void {
  for (const k of Object.keys(o)) if (!keys.includes(k)) p.push(`${where}: unknown field "${k}"`);
}

/** Validates an untrusted appraisal policy (the `tee` part of a signed policy, or a --policy file). */
export function validateTeeAppraisalPolicy(input: unknown, where = 'tee'): TeeAppraisalPolicy {
  const p: string[] = [];
  if (!isObj(input)) throw new CdbpError('POLICY_INVALID', `${where} must be an object`);
  known(input, ['snp', 'tdx'], where, p);
  if (input.snp !== undefined) {
    const s = input.snp;
    if (!isObj(s)) p.push(`${where}.snp must be an object`);
    else {
      known(s, ['allowDebug', 'allowMigrationAgent', 'vmpls', 'signers', 'minTcb', 'measurements', 'hostData', 'idKeyDigests', 'bindPolicyHash'], `${where}.snp`, p);
      for (const b of ['allowDebug', 'allowMigrationAgent', 'bindPolicyHash']) if (s[b] !== undefined && typeof s[b] !== 'boolean') p.push(`${where}.snp.${b} must be true or false`);
      if (s.vmpls !== undefined && (!Array.isArray(s.vmpls) || s.vmpls.length === 0 || !s.vmpls.every((v) => Number.isInteger(v) && v >= 0 && v <= 3))) {
        p.push(`${where}.snp.vmpls must list VMPLs 0-3`);
      }
      if (s.signers !== undefined && (!Array.isArray(s.signers) || s.signers.length === 0 || !s.signers.every((v) => v === 'VCEK' || v === 'VLEK'))) {
        p.push(`${where}.snp.signers must list VCEK and/or VLEK`);
      }
      if (s.minTcb !== undefined) {
        if (!isObj(s.minTcb)) p.push(`${where}.snp.minTcb must be an object`);
        else {
          known(s.minTcb, ['bootloader', 'tee', 'snp', 'microcode', 'fmc'], `${where}.snp.minTcb`, p);
          for (const [k, v] of Object.entries(s.minTcb)) if (!Number.isInteger(v) || (v as number) < 0 || (v as number) > 255) p.push(`${where}.snp.minTcb.${k} must be 0-255`);
        }
      }
      hexList(s.measurements, 48, `${where}.snp.measurements`, p);
      hexList(s.hostData, 32, `${where}.snp.hostData`, p);
      hexList(s.idKeyDigests, 48, `${where}.snp.idKeyDigests`, p);
      if (s.bindPolicyHash === true && s.hostData !== undefined) p.push(`${where}.snp: bindPolicyHash and hostData exclude each other`);
    }
  }
  if (input.tdx !== undefined) {
    const t = input.tdx;
    if (!isObj(t)) p.push(`${where}.tdx must be an object`);
    else {
      known(t, ['allowDebug', 'tcbStatuses', 'mrtd', 'rtmr', 'mrConfigId', 'mrOwner', 'collateralGraceSeconds', 'minTeeTcbSvn', 'bindPolicyHash'], `${where}.tdx`, p);
      for (const b of ['allowDebug', 'bindPolicyHash']) if (t[b] !== undefined && typeof t[b] !== 'boolean') p.push(`${where}.tdx.${b} must be true or false`);
      if (t.minTeeTcbSvn !== undefined && (typeof t.minTeeTcbSvn !== 'string' || !hexOf(16).test(t.minTeeTcbSvn))) {
        p.push(`${where}.tdx.minTeeTcbSvn must be 16 bytes of lowercase hex`);
      }
      // A pinned MRCONFIGID and the policy-hash binding would contradict each other (the hash is not known
      // when the value is written into the policy).
      if (t.bindPolicyHash === true && t.mrConfigId !== undefined) p.push(`${where}.tdx: bindPolicyHash and mrConfigId exclude each other`);
      if (t.tcbStatuses !== undefined && (!Array.isArray(t.tcbStatuses) || t.tcbStatuses.length === 0
        || !t.tcbStatuses.every((v) => (TCB_STATUSES as readonly unknown[]).includes(v)))) {
        p.push(`${where}.tdx.tcbStatuses must list some of ${TCB_STATUSES.join(', ')}`);
      }
      hexList(t.mrtd, 48, `${where}.tdx.mrtd`, p);
      hexList(t.mrConfigId, 48, `${where}.tdx.mrConfigId`, p);
      hexList(t.mrOwner, 48, `${where}.tdx.mrOwner`, p);
      if (t.rtmr !== undefined) {
        if (!Array.isArray(t.rtmr) || t.rtmr.length > 4) p.push(`${where}.tdx.rtmr must be a list of up to 4 entries (null or a hex list)`);
        else t.rtmr.forEach((r, i) => { if (r !== null) hexList(r, 48, `${where}.tdx.rtmr[${i}]`, p); });
      }
      if (t.collateralGraceSeconds !== undefined && (!Number.isSafeInteger(t.collateralGraceSeconds) || (t.collateralGraceSeconds as number) < 0)) {
        p.push(`${where}.tdx.collateralGraceSeconds must be a non-negative integer`);
      }
    }
  }
  if (p.length > 0) throw new CdbpError('POLICY_INVALID', `invalid TEE policy: ${p.join('; ')}`, { details: { problems: p } });
  return input as TeeAppraisalPolicy;
}

/** The first byte index where `svn` (16 bytes) is below `min` (hex), or -1 if every byte reaches it. */
export function svnBelow(svn: Buffer, minHex: string): number {
  const min = Buffer.from(minHex, 'hex');
  for (let i = 0; i < min.length; i++) if ((svn[i] ?? 0) < min[i]!) return i;
  return -1;
}

/** `value` (hex) is in the pinned list, or the list is absent (not pinned). */
export function allowedBy(list: string[] | undefined, value: string): boolean {
  return list === undefined || list.includes(value);
}
