/**
 * `cdbp policy tee`: the owner sets minimum TCB, accepted TCB statuses, debug and the launch binding in
 * an unsigned policy file; the policy it writes then refuses the real vectors that fall short, with the
 * TCB and its status named (cdbp verify --evidence --policy, the same verifier the CAS runs).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { run as policyCommand } from '../../cli/commands/policy.ts';
import { applyTeeKnobs, describeTeeAppraisal } from '../../cli/commands/policy-tee.ts';
import { checkEvidenceFile } from '../../cli/commands/verify-evidence.ts';
import { buildPolicy, validatePolicy, type Policy } from '../../src/provisioning/policy.ts';
import { parseSnpReport } from '../../src/attestation/snp/report.ts';
import { parseTdxQuote } from '../../src/attestation/tdx/quote.ts';
import { isCdbpError } from '../../src/kernel/errors.ts';
import { fixture, snpVector, tdxQuote } from '../support/tee-vectors.ts';
import { tempDir } from '../support/tmp.ts';

const quiet = async <T>(f: () => Promise<T>): Promise<T> => {
  const log = console.log;
  console.log = () => {};
  try {
    return await f();
  } finally {
    console.log = log;
  }
};

function policyFile(dir: string, name: string, p: Policy): string {
  const file = path.join(dir, name);
  writeFileSync(file, JSON.stringify(p, null, 2));
  return file;
}

const SNP_M = parseSnpReport(snpVector('milan-vcek-2').evidence.bytes).measurement.toString('hex');
const TDX_MRTD = parseTdxQuote(tdxQuote('quote-4')).body.mrTd.toString('hex');
const snpPolicy = () => buildPolicy({ service: 'orders-db', measurements: [], teeModes: ['sev-snp'], tee: { snp: { measurements: [SNP_M] } } });
const tdxPolicy = () => buildPolicy({ service: 'orders-db', measurements: [], teeModes: ['tdx'], tee: { tdx: { mrtd: [TDX_MRTD] } } });

const snpCheck = (policy: string) => checkEvidenceFile({ evidence: fixture('snp/milan-vcek-2/report.hex'), certs: fixture('snp/milan-vcek-2'),
  policy, at: '2026-01-01T00:00:00Z' });
const tdxCheck = (policy: string) => checkEvidenceFile({ evidence: fixture('tdx/quote-4/quote.dat'), collateral: fixture('tdx/spr-v4'),
  policy, at: '2023-07-01T00:00:00Z' });

test('knobs: minimum TCB, VMPLs, signers, statuses, TEE_TCB_SVN floor, grace, debug and binding land in the tee part', () => {
  const tee = applyTeeKnobs({ snp: { measurements: [SNP_M] } }, {
    'snp-min-tcb': 'bootloader=3,tee=0,snp=8,microcode=115', 'snp-vmpls': '0', 'snp-signers': 'VCEK',
    'tdx-tcb-statuses': 'UpToDate', 'tdx-min-tee-tcb-svn': '03000500000000000000000000000000', 'collateral-grace': '3600',
    'allow-debug': 'tdx', 'bind-policy-hash': 'snp,tdx',
  });
  assert.deepEqual(tee, {
    snp: { measurements: [SNP_M], minTcb: { bootloader: 3, tee: 0, snp: 8, microcode: 115 }, vmpls: [0], signers: ['VCEK'], bindPolicyHash: true },
    tdx: { tcbStatuses: ['UpToDate'], minTeeTcbSvn: '03000500000000000000000000000000', collateralGraceSeconds: 3600, allowDebug: true, bindPolicyHash: true },
  });
  // none clears; debug for SNP was never set.
  const cleared = applyTeeKnobs(tee, { 'allow-debug': 'none', 'bind-policy-hash': 'none' });
  assert.equal(cleared.tdx?.allowDebug, undefined);
  assert.equal(cleared.snp?.bindPolicyHash, undefined);
  assert.match(describeTeeAppraisal(tee).join('\n'), /minimum TCB bootloader=3 tee=0 snp=8 microcode=115/);
  assert.match(describeTeeAppraisal(cleared).join('\n'), /debug refused, TCB statuses UpToDate/);
  for (const [flag, value] of [['snp-min-tcb', 'snp=256'], ['snp-min-tcb', 'fw=1'], ['tdx-tcb-statuses', 'Fine'], ['tdx-tcb-statuses', 'UpToDate,Revoked'],
    ['allow-debug', 'sgx'], ['snp-vmpls', '4']] as const) {
    assert.throws(() => applyTeeKnobs({}, { [flag]: value }), (e: unknown) => isCdbpError(e, 'USAGE'), `${flag} ${value}`);
  }
  assert.throws(() => applyTeeKnobs({}, { 'tdx-min-tee-tcb-svn': '0300' }), (e: unknown) => isCdbpError(e, 'POLICY_INVALID'));
});

test('cdbp policy tee edits an unsigned policy file and refuses a signed one', async (t) => {
  const d = tempDir('policy-tee');
  t.after(() => d.remove());
  const file = policyFile(d.path, 'p.json', snpPolicy());
  assert.equal(await quiet(() => policyCommand(['tee', '--in', file, '--snp-min-tcb', 'snp=9', '--bind-policy-hash', 'snp'])), 0);
  const p = validatePolicy(JSON.parse(readFileSync(file, 'utf8')));
  assert.deepEqual(p.tee?.snp, { measurements: [SNP_M], minTcb: { snp: 9 }, bindPolicyHash: true });
  const signed = path.join(d.path, 'signed.json');
  writeFileSync(signed, JSON.stringify({ format: 'cdbp-signed-policy/1', policy: p }));
  await assert.rejects(quiet(() => policyCommand(['tee', '--in', signed, '--snp-min-tcb', 'snp=1'])), (e: unknown) => isCdbpError(e, 'POLICY_INVALID'));
});

test('SEV-SNP: a real report below the owner\'s minimum TCB is refused with the component and the reported TCB named', async (t) => {
  const d = tempDir('policy-tee');
  t.after(() => d.remove());
  const file = policyFile(d.path, 'snp.json', snpPolicy());
  // milan-vcek-2 reports bootloader 3, tee 0, snp 8, microcode 115.
  await quiet(() => policyCommand(['tee', '--in', file, '--snp-min-tcb', 'bootloader=3,tee=0,snp=8,microcode=115']));
  assert.equal(snpCheck(file).verified, true);
  await quiet(() => policyCommand(['tee', '--in', file, '--snp-min-tcb', 'bootloader=3,snp=9']));
  const r = snpCheck(file);
  assert.equal(r.error?.code, 'TEE_TCB_STATUS_REFUSED');
  assert.match(r.error!.message, /snp 8 is below the policy's minimum 9 \(reported TCB 0300000000000873: bootloader 3, tee 0, snp 8, microcode 115\)/);
  await quiet(() => policyCommand(['tee', '--in', file, '--snp-min-tcb', 'microcode=200']));
  assert.match(snpCheck(file).error!.message, /microcode 115 is below the policy's minimum 200/);
});

test('SEV-SNP: debug is refused by default and by a policy that does not name it (snp/milan-vcek)', async (t) => {
  const d = tempDir('policy-tee');
  t.after(() => d.remove());
  const m = parseSnpReport(snpVector('milan-vcek').evidence.bytes).measurement.toString('hex');
  const file = policyFile(d.path, 'dbg.json', buildPolicy({ service: 'x', measurements: [], teeModes: ['sev-snp'], tee: { snp: { measurements: [m] } } }));
  const check = () => checkEvidenceFile({ evidence: fixture('snp/milan-vcek/report.bin'), certs: fixture('snp/milan-vcek'), policy: file, at: '2026-01-01T00:00:00Z' });
  assert.equal(check().error?.code, 'TEE_DEBUG_REFUSED');
  await quiet(() => policyCommand(['tee', '--in', file, '--allow-debug', 'tdx']));
  assert.equal(check().error?.code, 'TEE_DEBUG_REFUSED');
  await quiet(() => policyCommand(['tee', '--in', file, '--allow-debug', 'snp']));
  assert.equal(check().verified, true);
});

test('TDX: accepted statuses and a TEE_TCB_SVN floor refuse tdx/quote-4 (UpToDate, TEE_TCB_SVN 0300050…) with its status named', async (t) => {
  const d = tempDir('policy-tee');
  t.after(() => d.remove());
  const file = policyFile(d.path, 'tdx.json', tdxPolicy());
  assert.equal(tdxCheck(file).error?.code, 'TEE_DEBUG_REFUSED'); // quote-4 is a debug TD
  await quiet(() => policyCommand(['tee', '--in', file, '--allow-debug', 'tdx']));
  assert.equal(tdxCheck(file).verified, true);
  assert.equal(tdxCheck(file).verdict?.tcbStatus, 'UpToDate');
  await quiet(() => policyCommand(['tee', '--in', file, '--tdx-tcb-statuses', 'SWHardeningNeeded']));
  assert.equal(tdxCheck(file).error?.code, 'TEE_TCB_STATUS_REFUSED');
  assert.match(tdxCheck(file).error!.message, /TCB status UpToDate .* is not accepted \(policy: SWHardeningNeeded\)/);
  await quiet(() => policyCommand(['tee', '--in', file, '--tdx-tcb-statuses', 'UpToDate', '--tdx-min-tee-tcb-svn', '03000500000000000000000000000000']));
  assert.equal(tdxCheck(file).verified, true);
  await quiet(() => policyCommand(['tee', '--in', file, '--tdx-min-tee-tcb-svn', '03000600000000000000000000000000']));
  const r = tdxCheck(file);
  assert.equal(r.error?.code, 'TEE_TCB_STATUS_REFUSED');
  assert.match(r.error!.message, /TEE_TCB_SVN 03000500000000000000000000000000 is below the policy's minimum 03000600000000000000000000000000 at byte 2 \(5 < 6\); TCB status UpToDate/);
});

test('policy measure --into pins MRTD and RTMR0-2 of tdx/quote-4 and leaves RTMR3 unpinned: the same quote then verifies', async (t) => {
  const d = tempDir('policy-tee');
  t.after(() => d.remove());
  const file = policyFile(d.path, 'm.json', buildPolicy({ service: 'orders-db', measurements: ['aa'.repeat(32)], teeModes: ['simulated'] }));
  await quiet(() => policyCommand(['measure', '--from-evidence', fixture('tdx/quote-4/quote.dat'), '--into', file]));
  await quiet(() => policyCommand(['tee', '--in', file, '--allow-debug', 'tdx']));
  const p = validatePolicy(JSON.parse(readFileSync(file, 'utf8')));
  assert.deepEqual(p.teeModes, ['simulated', 'tdx']);
  assert.deepEqual(p.tee?.tdx?.mrtd, [TDX_MRTD]);
  assert.equal(p.tee?.tdx?.rtmr?.length, 4);
  assert.equal(p.tee?.tdx?.rtmr?.[3], null);
  const r = tdxCheck(file);
  assert.equal(r.verified, true, JSON.stringify(r.error));
});
