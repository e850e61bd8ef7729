/** `cdbp status`: the TEE line an operator reads (kind, measurement, TCB, status, collateral age), from /v1/status `attestation`. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { formatStatus, formatTeeLine } from '../../cli/commands/status.ts';

const base = {
  role: 'proxy', version: '0.1.0', ready: true, reasons: [], lifecycle: { state: 'ready', since: '2026-01-01T00:00:00.000Z' },
  mode: 'tdx', measurement: 'ab'.repeat(32),
};
const m = 'cd'.repeat(48);

test('TDX: kind, measurement, TCB status and the collateral age when the CAS verified', () => {
  const out = formatStatus({ ...base, attestation: { tee: 'tdx', tcbStatus: 'UpToDate', measurement: m, collateralAgeAtIssueSeconds: 3 * 86_400, simulated: false } });
  assert.match(out, new RegExp(`\\n  TEE: +tdx, measurement ${m}, TCB status UpToDate, collateral 3\\.0 d old when the CAS verified`));
  assert.match(formatTeeLine({ tee: 'tdx', tcbStatus: 'SWHardeningNeeded', collateralAgeAtIssueSeconds: 5400 }), /SWHardeningNeeded, collateral 1\.5 h old/);
  assert.equal(formatTeeLine({ tee: 'tdx', tcbStatus: 'unknown', simulated: false }), 'tdx, TCB status unknown (not attested yet), collateral age unknown');
});

test('SEV-SNP: the reported TCB the VCEK certifies; no status and no collateral, said so', () => {
  assert.equal(formatTeeLine({ tee: 'sev-snp', tcbStatus: 'snp-0300000000000873', measurement: m, simulated: false }),
    `sev-snp, measurement ${m}, TCB 0300000000000873 (reported TCB, certified by the VCEK/VLEK), status n/a (SEV-SNP has none), collateral n/a`);
});

test('simulated: the TEE line says it is not a TEE; no attestation block, no TEE line', () => {
  assert.match(formatStatus({ ...base, mode: 'simulated', attestation: { tee: 'simulated', tcbStatus: 'simulated', simulated: true } }), /\n  TEE: +simulated — NOT a TEE/);
  assert.doesNotMatch(formatStatus(base), /TEE: /);
});
