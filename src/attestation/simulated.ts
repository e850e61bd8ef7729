/**
 * The simulated platform: a software Ed25519 "platform key" stands in for the CPU's attestation key.
 * It proves nothing about hardware: anyone with the platform key file can produce evidence for any
 * measurement. It exists for development and CI, and everything it touches says `simulated`.
 *
 * Report (base64 of JSON): { format, mode: 'simulated', measurement, reportData, platformKey, signature }
 * signature = Ed25519(platform key, "cdbp-simulated-report/1" NUL canonicalJson({format, mode,
 * measurement, reportData})).
 */
import { existsSync, writeFileSync } from 'node:fs';
import { CdbpError } from '../kernel/errors.ts';
import { canonicalJson, constantTimeEqual, isHex } from '../crypto/hash.ts';
import { generateSigningKeyPair, readSigningKeyFile, signDetached, verifyDetached, writeSigningKeyFile,
  type SigningKeyPair } from '../crypto/ed25519.ts';
import type { AttestationProvider, Evidence, EvidenceVerifier } from './types.ts';
import { measureShippedCode } from './measurement.ts';

export const SIMULATED_REPORT_FORMAT = 'cdbp-simulated-report/1';
export const PLATFORM_KEY_FORMAT = 'cdbp-simulated-platform-key/1';

function signedBytes(fields: { format: string; mode: string; measurement: string; reportData: string }): Buffer {
  return Buffer.from(`${SIMULATED_REPORT_FORMAT}\0${canonicalJson(fields)}`);
}

/** Creates a platform key file (0600) and `<file>.pub` (hex public key, for the CAS). */
export async function generatePlatformKey(file: string): Promise<{ publicKeyHex: string; publicKeyFile: string }> {
  if (existsSync(file)) throw new CdbpError('CONFIG_INVALID', `${file} exists; refusing to overwrite a platform key`);
  const kp = await generateSigningKeyPair();
  writeSigningKeyFile(file, kp, PLATFORM_KEY_FORMAT);
  const publicKeyHex = kp.publicKey.toString('hex');
  writeFileSync(`${file}.pub`, publicKeyHex + '\n');
  return { publicKeyHex, publicKeyFile: `${file}.pub` };
}

export function loadPlatformKey(file: string): SigningKeyPair {
  return readSigningKeyFile(file, PLATFORM_KEY_FORMAT);
}

export class SimulatedProvider implements AttestationProvider {
  readonly mode = 'simulated' as const;
  private readonly platformKey: SigningKeyPair;
  private readonly measured: string;

  /** `platformKey`: the key pair, or the path of a platform key file. */
  constructor(platformKey: SigningKeyPair | string, measurement: string = measureShippedCode()) {
    this.platformKey = typeof platformKey === 'string' ? loadPlatformKey(platformKey) : platformKey;
    if (!isHex(measurement, 32)) throw new CdbpError('CONFIG_INVALID', 'measurement must be 32 bytes of hex');
    this.measured = measurement;
  }

  measurement(): string {
    return this.measured;
  }

  async collect(reportData: Buffer): Promise<Evidence> {
    if (reportData.length !== 64) throw new CdbpError('INTERNAL', 'report data must be 64 bytes');
    const fields = { format: SIMULATED_REPORT_FORMAT, mode: 'simulated', measurement: this.measured, reportData: reportData.toString('hex') };
    const signature = await signDetached(this.platformKey.secretKey, signedBytes(fields));
    const report = { ...fields, platformKey: this.platformKey.publicKey.toString('hex'), signature: signature.toString('hex') };
    return { mode: 'simulated', measurement: this.measured, reportData: fields.reportData, report: Buffer.from(JSON.stringify(report)).toString('base64') };
  }
}

export class SimulatedVerifier implements EvidenceVerifier {
  readonly mode = 'simulated' as const;
  constructor(private readonly trustedPlatformKey: Buffer) {
    if (trustedPlatformKey.length !== 32) throw new CdbpError('CONFIG_INVALID', 'platform public key must be 32 bytes');
  }

  async verify(evidence: Evidence, expectedReportData: Buffer): Promise<{ measurement: string }> {
    const refuse = (why: string): never => { throw new CdbpError('EVIDENCE_INVALID', `simulated evidence: ${why}`); };
    if (evidence.mode !== 'simulated') refuse('wrong mode');
    if (typeof evidence.report !== 'string' || evidence.report.length > 8192) refuse('report missing or too large');
    let r: Record<string, unknown>;
    try {
      r = JSON.parse(Buffer.from(evidence.report, 'base64').toString('utf8')) as Record<string, unknown>;
    } catch {
      return refuse('report is not base64 JSON');
    }
    if (r === null || typeof r !== 'object') refuse('report is not an object');
    if (r.format !== SIMULATED_REPORT_FORMAT || r.mode !== 'simulated') refuse('unknown report format');
    if (!isHex(r.measurement, 32) || !isHex(r.reportData, 64) || !isHex(r.platformKey, 32) || !isHex(r.signature, 64)) {
      refuse('report fields malformed');
    }
    const fields = { format: SIMULATED_REPORT_FORMAT, mode: 'simulated', measurement: r.measurement as string, reportData: r.reportData as string };
    if (!constantTimeEqual(Buffer.from(r.platformKey as string, 'hex'), this.trustedPlatformKey)) {
      refuse('signed by an untrusted platform key');
    }
    const ok = await verifyDetached(this.trustedPlatformKey, signedBytes(fields), Buffer.from(r.signature as string, 'hex'));
    if (!ok) refuse('platform signature does not verify');
    // The unsigned copies in the Evidence envelope must agree with the signed report.
    if (evidence.measurement !== fields.measurement || evidence.reportData !== fields.reportData) {
      refuse('envelope disagrees with the signed report');
    }
    if (!constantTimeEqual(Buffer.from(fields.reportData, 'hex'), expectedReportData)) {
      refuse('report data does not bind this nonce and these keys');
    }
    return { measurement: fields.measurement };
  }
}
