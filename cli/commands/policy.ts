/**
 * `cdbp policy`: owner tools.
 *   init  --out owner.key                         new Ed25519 owner key; prints the public key
 *   new   --service S [--measurement HEX]... [--tee-modes simulated,...] [--dns a,b] [--ips a,b]
 *         [--lifetime SECONDS] [--keys 1:1,2:1] --out policy.json        a policy template
 *   sign  --key owner.key --in policy.json --out signed.json [--predecessor HASH | --cas URL --ca FILE]
 *   apply --cas URL --ca FILE --in signed.json
 *   show  --cas URL --ca FILE --service S
 *   measure --from-evidence FILE [--into policy.json]
 *   tee   --in policy.json [knobs]                 real-TEE appraisal rules (policy-tee.ts)
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { parseFlags } from '../../src/kernel/args.ts';
import { CdbpError } from '../../src/kernel/errors.ts';
import { measureShippedCode } from '../../src/attestation/measurement.ts';
import { buildPolicy, generateOwnerKey, loadOwnerKey, POLICY_FORMAT, signPolicy, validatePolicy, type Policy,
  type PolicyDbKey } from '../../src/provisioning/policy.ts';
import { applySignedPolicy, getCurrentPolicy, getCurrentPolicyHash } from '../../src/cas-client/policy.ts';
import { loadEvidenceFile } from '../../src/attestation/evidence-file.ts';
import { parseSnpReport } from '../../src/attestation/snp/report.ts';
import { parseTdxQuote } from '../../src/attestation/tdx/quote.ts';
import type { TeeAppraisalPolicy } from '../../src/attestation/tee-policy.ts';
import { applyTeeKnobs, describeTeeAppraisal, TEE_KNOB_FLAGS, TEE_KNOBS_USAGE } from './policy-tee.ts';

const USAGE = `usage: cdbp policy init  --out owner.key
       cdbp policy new   --service S [--measurement HEX[,HEX]] [--tee-modes simulated[,sev-snp,tdx]]
                         [--dns localhost,...] [--ips 127.0.0.1,...] [--lifetime SECONDS] [--keys ID:V[,ID:V]] --out policy.json
       cdbp policy sign  --key owner.key --in policy.json --out signed.json [--predecessor HASH | --cas URL --ca FILE]
       cdbp policy apply --cas URL --ca FILE --in signed.json
       cdbp policy show  --cas URL --ca FILE --service S
       cdbp policy measure --from-evidence FILE [--into policy.json]
                         the TEE measurements a real report or quote carries (SNP MEASUREMENT; TDX MRTD and
                         RTMR0-2), as the policy's "tee" part; --into adds them to an unsigned policy file
${TEE_KNOBS_USAGE}

Policy JSON format: docs/CAS.md.`;

function need(flags: Record<string, string | boolean | undefined>, name: string): string {
  const v = flags[name];
  if (typeof v !== 'string' || v === '') throw new CdbpError('CONFIG_INVALID', `--${name} is required\n${USAGE}`);
  return v;
}

function readJson(file: string): unknown {
  try {
    return JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new CdbpError('POLICY_INVALID', `cannot read JSON from ${file}: ${(e as Error).message}`);
  }
}

/**
 * What to pin from a known-good VM's evidence. Parsed, not verified: the owner takes the report from a
 * VM they launched themselves (verify it with `cdbp verify --evidence` first if it came from elsewhere).
 * RTMR3 is left out: the running system extends it, so it is not a property of the image.
 */
export function measureEvidence(file: string): TeeAppraisalPolicy {
  const ev = loadEvidenceFile(file);
  if (ev.format === 'tdx-quote') {
    const b = parseTdxQuote(ev.bytes).body;
    return { tdx: { mrtd: [b.mrTd.toString('hex')], rtmr: [[b.rtmr[0].toString('hex')], [b.rtmr[1].toString('hex')], [b.rtmr[2].toString('hex')], null] } };
  }
  return { snp: { measurements: [parseSnpReport(ev.bytes).measurement.toString('hex')] } };
}

const list = (v: string | boolean | undefined): string[] | undefined =>
  typeof v === 'string' ? v.split(',').map((s) => s.trim()).filter(Boolean) : undefined;

export async function run(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  const { flags } = parseFlags(rest, [], ['out', 'key', 'in', 'predecessor', 'cas', 'ca', 'service', 'measurement', 'tee-modes', 'dns', 'ips', 'lifetime', 'keys', 'from-evidence', 'into', ...TEE_KNOB_FLAGS]);
  if (!sub || flags.help || sub === 'help' || sub === '--help' || sub === '-h') {
    console.log(USAGE);
    return sub ? 0 : 2;
  }
  switch (sub) {
    case 'init': {
      const out = need(flags, 'out');
      const kp = await generateOwnerKey(out);
      console.log(`owner key written to ${out} (keep it offline; it authorises every policy change)`);
      console.log(`owner public key: ${kp.publicKey.toString('hex')}`);
      return 0;
    }
    case 'new': {
      const dbKeys: PolicyDbKey[] = [];
      for (const spec of list(flags.keys) ?? ['1:1']) {
        const [id, v] = spec.split(':').map(Number);
        if (!id || !v) throw new CdbpError('CONFIG_INVALID', `--keys: "${spec}" is not ID:VERSION`);
        const k = dbKeys.find((x) => x.id === id);
        if (k) k.versions.push(v); else dbKeys.push({ id, versions: [v] });
      }
      const policy = buildPolicy({
        service: need(flags, 'service'),
        measurements: list(flags.measurement) ?? [measureShippedCode()],
        teeModes: (list(flags['tee-modes']) ?? ['simulated']) as Policy['teeModes'],
        dnsNames: list(flags.dns), ipAddresses: list(flags.ips),
        lifetimeSeconds: typeof flags.lifetime === 'string' ? Number(flags.lifetime) : undefined,
        dbKeys,
      });
      writeFileSync(need(flags, 'out'), JSON.stringify(policy, null, 2) + '\n');
      console.log(`policy for ${policy.service} written to ${String(flags.out)}`);
      return 0;
    }
    case 'sign': {
      const key = loadOwnerKey(need(flags, 'key'));
      const raw = readJson(need(flags, 'in')) as Record<string, unknown>;
      if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw new CdbpError('POLICY_INVALID', 'policy must be a JSON object');
      const input: Record<string, unknown> = { format: POLICY_FORMAT, ...raw };
      if (typeof flags.predecessor === 'string') input.predecessor = flags.predecessor;
      else if (typeof flags.cas === 'string') {
        input.predecessor = await getCurrentPolicyHash(flags.cas, readFileSync(need(flags, 'ca'), 'utf8'), String(input.service));
      } else if (input.predecessor === undefined) input.predecessor = null;
      const signed = await signPolicy(validatePolicy(input), key);
      writeFileSync(need(flags, 'out'), JSON.stringify(signed, null, 2) + '\n');
      console.log(`signed policy ${signed.policyHash} for ${signed.policy.service} (predecessor ${signed.policy.predecessor ?? 'none'}) → ${String(flags.out)}`);
      const bound = [signed.policy.tee?.snp?.bindPolicyHash && 'SEV-SNP HOST_DATA', signed.policy.tee?.tdx?.bindPolicyHash && 'TDX MRCONFIGID'].filter(Boolean);
      if (bound.length) console.log(`launch the VMs with ${bound.join(' / ')} = ${signed.policyHash} (MRCONFIGID: followed by 16 zero bytes)`);
      return 0;
    }
    case 'apply': {
      const r = await applySignedPolicy(need(flags, 'cas'), readFileSync(need(flags, 'ca'), 'utf8'), readJson(need(flags, 'in')) as never);
      console.log(`${r.service}: ${r.status} (policy ${r.policyHash}${r.newKeys.length ? `, new keys ${r.newKeys.join(', ')}` : ''})`);
      return 0;
    }
    case 'measure': {
      const tee = measureEvidence(need(flags, 'from-evidence'));
      if (typeof flags.into === 'string') {
        const raw = readJson(flags.into) as Policy;
        const mode = tee.snp ? 'sev-snp' : 'tdx';
        const merged: Record<string, any> = { ...raw, tee: { ...(raw.tee ?? {}) } };
        if (tee.snp) merged.tee.snp = { ...(merged.tee.snp ?? {}), measurements: [...new Set([...(merged.tee.snp?.measurements ?? []), ...tee.snp.measurements!])] };
        if (tee.tdx) {
          merged.tee.tdx = { ...(merged.tee.tdx ?? {}), mrtd: [...new Set([...(merged.tee.tdx?.mrtd ?? []), ...tee.tdx.mrtd!])],
            // An RTMR neither side pins (RTMR3, extended at runtime) stays null: an empty list would allow nothing.
            rtmr: tee.tdx.rtmr!.map((r, i) => {
              const have = (merged.tee.tdx?.rtmr?.[i] as string[] | null | undefined) ?? null;
              return have === null && r === null ? null : [...new Set([...(have ?? []), ...(r ?? [])])];
            }) };
        }
        if (!(raw.teeModes ?? []).includes(mode)) merged.teeModes = [...(raw.teeModes ?? []), mode];
        writeFileSync(flags.into, JSON.stringify(validatePolicy({ format: POLICY_FORMAT, predecessor: null, ...merged }), null, 2) + '\n');
        console.log(`${flags.into}: allows ${mode} with ${tee.snp ? `measurement ${tee.snp.measurements![0]}` : `MRTD ${tee.tdx!.mrtd![0]}`}`);
      } else {
        console.log(JSON.stringify({ tee }, null, 2));
      }
      return 0;
    }
    case 'tee': {
      const file = need(flags, 'in');
      const raw = readJson(file) as Record<string, unknown>;
      if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw new CdbpError('POLICY_INVALID', `${file}: a policy must be a JSON object`);
      if (raw.format === 'cdbp-signed-policy/1') throw new CdbpError('POLICY_INVALID', `${file} is signed: edit the unsigned policy, then sign it again`);
      const tee = applyTeeKnobs(raw.tee as TeeAppraisalPolicy | undefined, flags);
      const next = validatePolicy({ format: POLICY_FORMAT, predecessor: null, ...raw, tee });
      writeFileSync(file, JSON.stringify(next, null, 2) + '\n');
      console.log(`${file}: TEE rules for ${next.service} (teeModes ${next.teeModes.join(',')})`);
      for (const line of describeTeeAppraisal(next.tee)) console.log(line);
      return 0;
    }
    case 'show': {
      const cur = await getCurrentPolicy(need(flags, 'cas'), readFileSync(need(flags, 'ca'), 'utf8'), need(flags, 'service'));
      if (!cur) {
        console.error(`no policy for ${String(flags.service)}`);
        return 1;
      }
      console.log(JSON.stringify({ policyHash: cur.policyHash, owner: cur.owner, policy: cur.policy, history: cur.history }, null, 2));
      return 0;
    }
    default:
      console.error(`unknown policy command ${sub}\n${USAGE}`);
      return 2;
  }
}
