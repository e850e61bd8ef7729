/**
 * The only place that picks an attestation provider (in the attested process) or verifiers (in the
 * CAS). Simulation is never a default: it needs an explicit opt-in (a flag, or CDBP_ALLOW_SIMULATED=1),
 * and choosing it logs a loud warning. Anything unconfigured gets the fail-closed implementation.
 */
import type { Logger } from '../kernel/log.ts';
import { CdbpError } from '../kernel/errors.ts';
import type { AttestationProvider, EvidenceVerifier, TeeMode } from './types.ts';
import { SimulatedProvider, SimulatedVerifier } from './simulated.ts';
import { FailClosedProvider, FailClosedVerifier } from './fail-closed.ts';
import { TeeEvidenceVerifier } from './tee-verifier.ts';
import { ConfigfsTsmProvider, detectTee } from './configfs-tsm.ts';

export const SIMULATION_WARNING = 'SIMULATED ATTESTATION: a software key stands in for the TEE. This proves NOTHING about '
  + 'the hardware or the code that runs. Never use it to protect real data.';

export function simulationAllowed(explicit: boolean | undefined, env: NodeJS.ProcessEnv = process.env): boolean {
  return explicit === true || env.CDBP_ALLOW_SIMULATED === '1' || env.CDBP_ALLOW_SIMULATED === 'true';
}

export interface ProviderConfig {
  /**
   * 'simulated' (opt-in), 'sev-snp' / 'tdx' (configfs-tsm), 'auto' (whatever configfs-tsm offers; never
   * simulated: a machine without a TEE fails closed), or undefined/'none' → fail closed.
   */
  mode?: TeeMode | 'fail-closed' | 'auto';
  /** configfs-tsm report directory (default /sys/kernel/config/tsm/report). */
  tsmRoot?: string;
  allowSimulated?: boolean;
  /** Simulated only: the platform key file (see generatePlatformKey). */
  platformKeyFile?: string;
  /** Simulated only: override the measurement (default: measureShippedCode()). */
  measurement?: string;
  log?: Logger;
  env?: NodeJS.ProcessEnv;
}

export function selectProvider(config: ProviderConfig): AttestationProvider {
  switch (config.mode) {
    case 'simulated': {
      if (!simulationAllowed(config.allowSimulated, config.env)) {
        throw new CdbpError('SIMULATION_NOT_ALLOWED',
          'simulated attestation requested but not allowed (pass --allow-simulated or set CDBP_ALLOW_SIMULATED=1)');
      }
      if (!config.platformKeyFile) throw new CdbpError('CONFIG_INVALID', 'simulated attestation needs a platform key file');
      config.log?.warn({ mode: 'simulated' }, SIMULATION_WARNING);
      return config.measurement === undefined
        ? new SimulatedProvider(config.platformKeyFile)
        : new SimulatedProvider(config.platformKeyFile, config.measurement);
    }
    case 'sev-snp':
    case 'tdx':
      // A real mode has exactly one provider; if the platform cannot attest, collect() fails closed.
      return new ConfigfsTsmProvider(config.mode, { ...(config.tsmRoot ? { root: config.tsmRoot } : {}) });
    case 'auto': {
      const found = detectTee({ ...(config.tsmRoot ? { root: config.tsmRoot } : {}) });
      config.log?.info({ tee: found.mode, found: found.found }, `TEE auto-detection: ${found.found}`);
      if (found.mode === 'none') return new FailClosedProvider(`CDBP_TEE_MODE=auto found no TEE: ${found.found}`);
      return new ConfigfsTsmProvider(found.mode, { ...(config.tsmRoot ? { root: config.tsmRoot } : {}) });
    }
    default:
      return new FailClosedProvider();
  }
}

export interface VerifierConfig {
  allowSimulated?: boolean;
  /** Trusted simulated platform public key (32 bytes). */
  platformPublicKey?: Buffer;
  /** Collateral for real TEE evidence; default CDBP_TEE_COLLATERAL_DIR. */
  teeCollateralDir?: string;
  log?: Logger;
  env?: NodeJS.ProcessEnv;
}

/**
 * One verifier per TEE mode. SEV-SNP and TDX evidence is verified against the pinned AMD/Intel roots
 * and the collateral in CDBP_TEE_COLLATERAL_DIR (docs/ATTESTATION.md); a service's policy decides which
 * modes it accepts. Simulated is never a fallback for them: a real mode has only its real verifier.
 */
export function selectVerifiers(config: VerifierConfig): Map<TeeMode, EvidenceVerifier> {
  const env = config.env ?? process.env;
  const collateralDir = config.teeCollateralDir ?? (env.CDBP_TEE_COLLATERAL_DIR || undefined);
  const out = new Map<TeeMode, EvidenceVerifier>([
    ['sev-snp', new TeeEvidenceVerifier('sev-snp', collateralDir)],
    ['tdx', new TeeEvidenceVerifier('tdx', collateralDir)],
    ['none', new FailClosedVerifier('none')],
    ['simulated', new FailClosedVerifier('simulated', 'simulated attestation is not allowed on this CAS')],
  ]);
  if (simulationAllowed(config.allowSimulated, config.env)) {
    if (!config.platformPublicKey) throw new CdbpError('CONFIG_INVALID', 'simulated attestation allowed but no platform public key given');
    config.log?.warn({ mode: 'simulated' }, SIMULATION_WARNING);
    out.set('simulated', new SimulatedVerifier(config.platformPublicKey));
  }
  return out;
}
