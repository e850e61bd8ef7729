/**
 * TCB level evaluation for a TD, as Intel's Quote Verification Library does it (SGX-TDX-DCAP-
 * QuoteVerificationLibrary, TcbLevelCheck / "TDX TCB status"): walk the TCB info's levels in order
 * (newest first) and take the first whose SGX components and PCESVN are ≤ the PCK certificate's and whose
 * TDX components are ≤ the TD's TEE_TCB_SVN. With TDX module identities in the TCB info and
 * TEE_TCB_SVN[1] > 0, bytes 0-1 of TEE_TCB_SVN are the module's SVN and major version, evaluated against
 * the module identity instead of the levels. The QE identity gives the Quoting Enclave its own status;
 * the result is the worse of the two.
 */
import { CdbpError } from '../../kernel/errors.ts';
import type { TcbStatus } from '../tee-policy.ts';
import { TCB_STATUSES } from '../tee-policy.ts';
import type { QeIdentity, TdxTcbInfo, TdxTcbLevel } from './collateral.ts';
import type { PckTcb } from './pck.ts';
import type { QeReport, TdReportBody } from './quote.ts';

export interface TcbEvaluation {
  status: TcbStatus;
  tcbDate: string;
  advisoryIds: string[];
  /** Which part decided: the platform level, the TDX module identity or the QE identity. */
  platformStatus: TcbStatus;
  moduleStatus?: TcbStatus;
  qeStatus: TcbStatus;
}

/** Statuses from best to worst; combining takes the worse. */
const ORDER: readonly TcbStatus[] = TCB_STATUSES;
export function worse(a: TcbStatus, b: TcbStatus): TcbStatus {
  if ((a === 'ConfigurationNeeded' && b === 'SWHardeningNeeded') || (b === 'ConfigurationNeeded' && a === 'SWHardeningNeeded')) {
    return 'ConfigurationAndSWHardeningNeeded';
  }
  if ((a === 'OutOfDate' && b === 'ConfigurationNeeded') || (b === 'OutOfDate' && a === 'ConfigurationNeeded')) return 'OutOfDateConfigurationNeeded';
  return ORDER.indexOf(a) >= ORDER.indexOf(b) ? a : b;
}

function hexEq(buf: Buffer, hex: string): boolean {
  return buf.toString('hex') === hex.toLowerCase();
}

function masked(value: Buffer, maskHex: string): string {
  const mask = Buffer.from(maskHex, 'hex');
  return Buffer.from(value.map((b, i) => b & (mask[i] ?? 0))).toString('hex');
}

export function evaluatePlatformTcb(info: TdxTcbInfo, pck: PckTcb, body: TdReportBody): { level: TdxTcbLevel; moduleStatus?: TcbStatus } {
  const svn = body.teeTcbSvn;
  const useModuleIdentity = info.tdxModuleIdentities !== undefined && svn[1]! > 0;
  let moduleStatus: TcbStatus | undefined;
  if (info.tdxModule) {
    if (!hexEq(body.mrSignerSeam, info.tdxModule.mrsigner)) {
      throw new CdbpError('TEE_TCB_STATUS_REFUSED', 'the TDX module is not signed by the signer the TCB info names (MRSIGNERSEAM)');
    }
    if (masked(body.seamAttributes, info.tdxModule.attributesMask) !== masked(Buffer.from(info.tdxModule.attributes, 'hex'), info.tdxModule.attributesMask)) {
      throw new CdbpError('TEE_TCB_STATUS_REFUSED', 'the TDX module attributes do not match the TCB info');
    }
  }
  if (useModuleIdentity) {
    const id = `TDX_${svn[1]!.toString(16).padStart(2, '0').toUpperCase()}`;
    const identity = info.tdxModuleIdentities!.find((m) => m.id.toUpperCase() === id)
      ?? fail(`the TCB info has no TDX module identity ${id}`);
    if (!hexEq(body.mrSignerSeam, identity.mrsigner)) fail(`the TDX module ${id} is not signed by the signer its identity names`);
    const level = identity.tcbLevels.find((l) => svn[0]! >= l.tcb.isvsvn) ?? fail(`the TDX module ${id} SVN ${svn[0]} is below every known level`);
    moduleStatus = level.tcbStatus;
  }
  const start = useModuleIdentity ? 2 : 0;
  for (const level of info.tcbLevels) {
    const sgxOk = level.tcb.sgxtcbcomponents.every((c, i) => pck.components[i]! >= c.svn) && pck.pceSvn >= level.tcb.pcesvn;
    if (!sgxOk) continue;
    const tdxOk = level.tcb.tdxtcbcomponents.every((c, i) => i < start || svn[i]! >= c.svn);
    if (tdxOk) return { level, ...(moduleStatus ? { moduleStatus } : {}) };
  }
  return fail('the platform TCB (PCK certificate and TEE_TCB_SVN) is below every level in the TCB info: status unknown');
}

export function evaluateQe(identity: QeIdentity, qe: QeReport): TcbStatus {
  if (!hexEq(qe.mrSigner, identity.mrsigner)) throw new CdbpError('TEE_QE_IDENTITY_MISMATCH', 'the Quoting Enclave is not signed by Intel\'s QE signer (MRSIGNER)');
  if (qe.isvProdId !== identity.isvprodid) throw new CdbpError('TEE_QE_IDENTITY_MISMATCH', `QE ISVPRODID ${qe.isvProdId} is not ${identity.isvprodid}`);
  const misc = Buffer.alloc(4);
  misc.writeUInt32LE(qe.miscSelect >>> 0);
  // The identity's hex is the byte order of the report (little-endian u32 as bytes).
  if (masked(misc, identity.miscselectMask) !== masked(Buffer.from(identity.miscselect, 'hex'), identity.miscselectMask)) {
    throw new CdbpError('TEE_QE_IDENTITY_MISMATCH', 'QE MISCSELECT does not match the QE identity');
  }
  if (masked(qe.attributes, identity.attributesMask) !== masked(Buffer.from(identity.attributes, 'hex'), identity.attributesMask)) {
    throw new CdbpError('TEE_QE_IDENTITY_MISMATCH', 'QE ATTRIBUTES do not match the QE identity');
  }
  const level = identity.tcbLevels.find((l) => qe.isvSvn >= l.tcb.isvsvn);
  if (!level) throw new CdbpError('TEE_TCB_STATUS_REFUSED', `QE ISVSVN ${qe.isvSvn} is below every level in the QE identity: status unknown`);
  return level.tcbStatus;
}

export function evaluateTdxTcb(info: TdxTcbInfo, identity: QeIdentity, pck: PckTcb, body: TdReportBody, qe: QeReport): TcbEvaluation {
  const { level, moduleStatus } = evaluatePlatformTcb(info, pck, body);
  const qeStatus = evaluateQe(identity, qe);
  let status = level.tcbStatus;
  if (moduleStatus) status = worse(status, moduleStatus);
  status = worse(status, qeStatus);
  return {
    status, tcbDate: level.tcbDate, advisoryIds: level.advisoryIDs ?? [], platformStatus: level.tcbStatus,
    ...(moduleStatus ? { moduleStatus } : {}), qeStatus,
  };
}

function fail(message: string): never {
  throw new CdbpError('TEE_TCB_STATUS_REFUSED', message);
}
