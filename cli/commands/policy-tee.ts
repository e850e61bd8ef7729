/**
 * `cdbp policy tee`: the owner's knobs for real TEE evidence, written into an unsigned policy file's `tee`
 * part (src/attestation/tee-policy.ts) before `cdbp policy sign`. Pure edits of the JSON plus the usage
 * text; the file handling is in policy.ts. Every knob only narrows what the production default accepts,
 * except the explicit `--allow-debug` and `--tdx-tcb-statuses` (which may list OutOfDate… deliberately;
 * Revoked is never accepted).
 */
import { CdbpError } from '../../src/kernel/errors.ts';
import { TCB_STATUSES, DEFAULT_TDX_TCB_STATUSES, validateTeeAppraisalPolicy, type SnpMinTcb, type TeeAppraisalPolicy,
  type TcbStatus } from '../../src/attestation/tee-policy.ts';

export const TEE_KNOB_FLAGS = ['snp-min-tcb', 'snp-vmpls', 'snp-signers', 'tdx-tcb-statuses', 'tdx-min-tee-tcb-svn', 'allow-debug',
  'bind-policy-hash', 'collateral-grace'] as const;

export const TEE_KNOBS_USAGE = `       cdbp policy tee --in policy.json [--snp-min-tcb bootloader=N,tee=N,snp=N,microcode=N[,fmc=N]]
                         [--snp-vmpls 0[,1..]] [--snp-signers VCEK[,VLEK]]
                         [--tdx-tcb-statuses UpToDate[,SWHardeningNeeded,ConfigurationNeeded,...]]
                         [--tdx-min-tee-tcb-svn HEX16] [--collateral-grace SECONDS]
                         [--allow-debug snp,tdx|none] [--bind-policy-hash snp,tdx|none]
                         what real TEE evidence must show (docs/ATTESTATION.md "Policy"); edits the unsigned
                         file in place and prints the result. Debug stays refused unless --allow-debug names it.`;

type Flags = Record<string, string | boolean | undefined>;

const list = (v: string): string[] => v.split(',').map((s) => s.trim()).filter(Boolean);

/** `none` clears, otherwise a subset of snp,tdx. */
function platforms(v: string, flag: string): Set<'snp' | 'tdx'> {
  const items = list(v);
  if (items.length === 1 && items[0] === 'none') return new Set();
  if (items.length === 0 || !items.every((x) => x === 'snp' || x === 'tdx')) throw new CdbpError('USAGE', `--${flag} takes snp, tdx, snp,tdx or none`);
  return new Set(items as Array<'snp' | 'tdx'>);
}

function int(v: string, what: string, max: number): number {
  const n = Number(v);
  if (!/^\d+$/.test(v) || n > max) throw new CdbpError('USAGE', `${what}: "${v}" is not an integer 0..${max}`);
  return n;
}

/** The policy's `tee` part with the knobs in `flags` applied, validated as the CAS will validate it. */
export function applyTeeKnobs(current: TeeAppraisalPolicy | undefined, flags: Flags): TeeAppraisalPolicy {
  const tee: TeeAppraisalPolicy = structuredClone(current ?? {});
  const snp = () => (tee.snp ??= {});
  const tdx = () => (tee.tdx ??= {});
  const str = (k: string) => (typeof flags[k] === 'string' ? (flags[k] as string) : undefined);
  const minTcb = str('snp-min-tcb');
  if (minTcb !== undefined) {
    const floor: SnpMinTcb = {};
    for (const pair of list(minTcb)) {
      const [k, v] = pair.split('=');
      if (!k || v === undefined || !['bootloader', 'tee', 'snp', 'microcode', 'fmc'].includes(k)) {
        throw new CdbpError('USAGE', `--snp-min-tcb: "${pair}" is not COMPONENT=SVN (bootloader, tee, snp, microcode, fmc)`);
      }
      floor[k as keyof SnpMinTcb] = int(v, `--snp-min-tcb ${k}`, 255);
    }
    snp().minTcb = floor;
  }
  const vmpls = str('snp-vmpls');
  if (vmpls !== undefined) snp().vmpls = list(vmpls).map((v) => int(v, '--snp-vmpls', 3));
  const signers = str('snp-signers');
  if (signers !== undefined) snp().signers = list(signers) as Array<'VCEK' | 'VLEK'>;
  const statuses = str('tdx-tcb-statuses');
  if (statuses !== undefined) {
    const s = list(statuses);
    const unknown = s.filter((x) => !(TCB_STATUSES as readonly string[]).includes(x));
    if (unknown.length) throw new CdbpError('USAGE', `--tdx-tcb-statuses: unknown ${unknown.join(', ')} (known: ${TCB_STATUSES.join(', ')})`);
    if (s.includes('Revoked')) throw new CdbpError('USAGE', '--tdx-tcb-statuses: Revoked is never accepted');
    tdx().tcbStatuses = s as TcbStatus[];
  }
  const svn = str('tdx-min-tee-tcb-svn');
  if (svn !== undefined) tdx().minTeeTcbSvn = svn.toLowerCase();
  const grace = str('collateral-grace');
  if (grace !== undefined) tdx().collateralGraceSeconds = int(grace, '--collateral-grace', 365 * 86_400);
  const debug = str('allow-debug');
  if (debug !== undefined) {
    const on = platforms(debug, 'allow-debug');
    for (const p of ['snp', 'tdx'] as const) {
      const part = p === 'snp' ? (on.has(p) ? snp() : tee.snp) : (on.has(p) ? tdx() : tee.tdx);
      if (part) { if (on.has(p)) part.allowDebug = true; else delete part.allowDebug; }
    }
  }
  const bind = str('bind-policy-hash');
  if (bind !== undefined) {
    const on = platforms(bind, 'bind-policy-hash');
    for (const p of ['snp', 'tdx'] as const) {
      const part = p === 'snp' ? (on.has(p) ? snp() : tee.snp) : (on.has(p) ? tdx() : tee.tdx);
      if (part) { if (on.has(p)) part.bindPolicyHash = true; else delete part.bindPolicyHash; }
    }
  }
  return validateTeeAppraisalPolicy(tee, 'tee');
}

/** One line per rule, production defaults spelled out, so the owner sees what they are about to sign. */
export function describeTeeAppraisal(tee: TeeAppraisalPolicy | undefined): string[] {
  const out: string[] = [];
  const s = tee?.snp;
  const t = tee?.tdx;
  if (s) {
    out.push(`  sev-snp  measurements ${s.measurements?.length ?? 'not pinned'}, debug ${s.allowDebug ? 'ALLOWED' : 'refused'}, migration agent ${s.allowMigrationAgent ? 'allowed' : 'refused'}`);
    out.push(`           minimum TCB ${s.minTcb && Object.keys(s.minTcb).length ? Object.entries(s.minTcb).map(([k, v]) => `${k}=${v}`).join(' ') : 'none (any TCB the VCEK certifies)'}`);
    out.push(`           VMPLs ${s.vmpls?.join(',') ?? 'any'}, signers ${s.signers?.join(',') ?? 'VCEK,VLEK'}, HOST_DATA ${s.bindPolicyHash ? '= this policy\'s hash' : s.hostData ? `one of ${s.hostData.length}` : 'not checked'}`);
  }
  if (t) {
    out.push(`  tdx      MRTD ${t.mrtd?.length ?? 'not pinned'}, debug ${t.allowDebug ? 'ALLOWED' : 'refused'}, TCB statuses ${(t.tcbStatuses ?? DEFAULT_TDX_TCB_STATUSES).join(',')}`);
    out.push(`           minimum TEE_TCB_SVN ${t.minTeeTcbSvn ?? 'none'}, collateral grace ${t.collateralGraceSeconds ?? 0} s, MRCONFIGID ${t.bindPolicyHash ? '= this policy\'s hash' : t.mrConfigId ? `one of ${t.mrConfigId.length}` : 'not checked'}`);
  }
  if (!out.length) out.push('  no real TEE rules (simulated only)');
  return out;
}
