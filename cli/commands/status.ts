/**
 * `cdbp status --url http://127.0.0.1:PORT` (or `--dir DIR` of a `cdbp up` stack): the role's state
 * at a glance, human-readable. `--json` prints the raw /v1/status document.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parseFlags } from '../../src/kernel/args.ts';
import { CdbpError } from '../../src/kernel/errors.ts';

export async function run(argv: string[]): Promise<number> {
  const { flags } = parseFlags(argv, ['json'], ['url', 'dir'], { maxPositionals: 0 });
  if (flags.help) {
    console.log('usage: cdbp status [--url http://127.0.0.1:PORT | --dir DIR] [--json]');
    return 0;
  }
  let url = flags.url as string | undefined;
  if (!url) {
    const dir = path.resolve(String(flags.dir ?? '.cdbp'));
    try {
      url = (JSON.parse(readFileSync(path.join(dir, 'stack.json'), 'utf8')) as { ops: { url: string } }).ops.url;
    } catch {
      throw new CdbpError('CONFIG_INVALID', `no --url given and no stack.json in ${dir}`);
    }
  }
  let status: Record<string, any>;
  try {
    const res = await fetch(`${url.replace(/\/$/, '')}/v1/status`, { signal: AbortSignal.timeout(5000) });
    status = (await res.json()) as Record<string, any>;
  } catch (e) {
    throw new CdbpError('BACKEND_UNAVAILABLE', `cannot reach ${url}: ${(e as Error).message}`);
  }
  if (flags.json) {
    console.log(JSON.stringify(status, null, 2));
  } else {
    console.log(formatStatus(status));
  }
  return status.ready ? 0 : 1;
}

export function formatStatus(s: Record<string, any>): string {
  const lines: string[] = [];
  const lc = s.lifecycle ?? {};
  lines.push(`${s.role ?? '?'} ${s.version ?? ''}  ${s.ready ? 'READY' : 'NOT READY'}  (${lc.state} since ${lc.since})`);
  if (s.mode) lines.push(`  TEE mode:     ${s.mode}${s.mode === 'simulated' ? '   <-- SIMULATED: not protected by hardware' : ''}`);
  if (s.measurement) lines.push(`  measurement:  ${s.measurement}`);
  if (s.attestation) lines.push(`  TEE:          ${formatTeeLine(s.attestation)}`);
  for (const r of s.reasons ?? []) lines.push(`  not ready:    ${r}`);
  if (s.certificate) lines.push(`  certificate:  ${s.certificate.subject}, expires ${s.certificate.notAfter} (${s.certificate.expiresInSeconds} s)${s.certificate.renewalError ? `, RENEWAL FAILING: ${s.certificate.renewalError}` : ''}`);
  const f = s.freshness;
  if (f) {
    lines.push(`  freshness:    ${f.mode}, ${f.verified ? 'verified' : 'NOT verified'}, epoch ${f.epoch}, last seal ${f.lastSealAgeSeconds === null ? 'never' : `${Number(f.lastSealAgeSeconds).toFixed(1)} s ago`}, ${f.writesHeld} writes held`);
    if (f.violation) lines.push(`  VIOLATION:    ${f.violation.kind}: ${f.violation.message}`);
  }
  const ct = s.casTrust;
  if (ct?.lastImpostor) lines.push(`  CAS ALARM:    ${ct.impostorAlarms} request(s) met a server that is not the pinned CAS (${ct.lastImpostor.reason}, last ${ct.lastImpostor.at})`);
  if (ct?.caFileChanged) lines.push('  CAS ALARM:    the CAS CA file changed on disk since start (ignored: the CA pinned at start is kept)');
  for (const m of s.casMembers ?? []) {
    const who = m.slot === null ? 'not answered yet' : `slot ${m.slot}, ${m.transport}`;
    lines.push(`  CAS member:   ${m.url} (${who})${m.lastError ? `  FAILING since ${m.lastErrorAt}: ${m.lastError}` : ''}`);
  }
  if (s.backend) lines.push(`  backend:      ${s.backend.managed ? 'managed ' : ''}${s.backend.socket ?? ''}${s.backend.running === false ? ' (NOT running)' : ''}`);
  if (s.listeners?.mysql) lines.push(`  mysql:        ${s.listeners.mysql.host}:${s.listeners.mysql.port}`);
  const c = s.connections?.mysql;
  if (c) lines.push(`  connections:  ${c.open} open, ${c.total} total, ${c.refused} refused`);
  return lines.join('\n');
}

/**
 * The attested TEE in one line, as the CAS's certificate states it (src/attestation/attested-tee.ts):
 * kind, measurement, TCB and its status, and how old the collateral was when the CAS verified.
 * SEV-SNP has no TCB status (the VCEK certifies exactly the reported TCB) and no TCB collateral.
 */
export function formatTeeLine(a: Record<string, any>): string {
  if (a.simulated) return 'simulated — NOT a TEE (software platform key; no TCB, no collateral)';
  const parts = [String(a.tee ?? 'unknown')];
  if (a.measurement) parts.push(`measurement ${a.measurement}`);
  const tcb = String(a.tcbStatus ?? 'unknown');
  if (a.tee === 'sev-snp' && tcb.startsWith('snp-')) {
    parts.push(`TCB ${tcb.slice(4)} (reported TCB, certified by the VCEK/VLEK)`, 'status n/a (SEV-SNP has none)', 'collateral n/a');
  } else {
    parts.push(`TCB status ${tcb}${tcb === 'unknown' ? ' (not attested yet)' : ''}`);
    if (typeof a.collateralAgeAtIssueSeconds === 'number') parts.push(`collateral ${formatAge(a.collateralAgeAtIssueSeconds)} old when the CAS verified`);
    else if (a.tee === 'tdx') parts.push('collateral age unknown');
  }
  return parts.join(', ');
}

function formatAge(seconds: number): string {
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  if (seconds < 2 * 86_400) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86_400).toFixed(1)} d`;
}
