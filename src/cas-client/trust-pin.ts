/**
 * The CAS identity a process trusts, fixed for the life of the process.
 *
 * The CA file (CDBP_CAS_CA_FILE) sits on a host-writable volume. Read once, before the first attestation,
 * it is the pin; re-read at every renewal, it would let root swap in its own CA, answer the renewal from a
 * fake CAS at the same URL, and hand the freshness counter to a CAS it controls (issue 16, item 1). So the
 * file is read here once; later reads only *compare* and alarm. A server at the CAS URL that fails this CA
 * is an impostor: the caller refuses it (src/cas-client/http.ts) and records the alarm here, for the log,
 * a metric, /v1/status and readiness.
 *
 * In a real TEE even the first read is not enough: the pin must come from something measured (baked into
 * the measured image, or a policy field the evidence covers) — docs/ATTESTATION.md "Where the CAS pin comes
 * from".
 */
import { readFileSync } from 'node:fs';
import { X509Certificate } from 'node:crypto';
import type { Logger } from '../kernel/log.ts';
import { CdbpError } from '../kernel/errors.ts';
import type { CasIdentityAlarm } from './http.ts';

export interface ImpostorRecord extends CasIdentityAlarm {
  at: string;
}

export class CasTrustPin {
  /** SHA-256 fingerprint of the pinned CA certificate. */
  readonly fingerprint256: string;
  impostorAlarms = 0;
  lastImpostor: ImpostorRecord | undefined;
  /** True once the file on disk was seen to differ from the pin (it is ignored either way). */
  fileChanged = false;
  private fileSeen: string | undefined;

  private constructor(readonly caPem: string, readonly file: string | undefined) {
    this.fingerprint256 = caFingerprint(caPem) ?? '';
    if (!this.fingerprint256) throw new CdbpError('CONFIG_INVALID', `CAS CA ${file ?? ''} is not a PEM certificate`);
  }

  static fromPem(caPem: string): CasTrustPin {
    return new CasTrustPin(caPem, undefined);
  }

  /** The one read of the CA file. */
  static fromFile(file: string): CasTrustPin {
    let pem: string;
    try {
      pem = readFileSync(file, 'utf8');
    } catch (e) {
      throw new CdbpError('CONFIG_INVALID', `cannot read the CAS CA file ${file}: ${(e as Error).message}`);
    }
    return new CasTrustPin(pem, file);
  }

  /**
   * Compares the file with the pin (never trusts it): a different CA on disk means someone rewrote the
   * pinned CA under us. Logged at error once per new content; `fileChanged` stays set.
   */
  checkFile(log?: Logger): void {
    if (!this.file) return;
    let seen: string;
    try {
      seen = caFingerprint(readFileSync(this.file, 'utf8')) ?? 'unparsable';
    } catch {
      seen = 'unreadable';
    }
    if (seen === this.fingerprint256) return;
    this.fileChanged = true;
    if (seen === this.fileSeen) return;
    this.fileSeen = seen;
    log?.error({ casCaFile: this.file, pinned: this.fingerprint256, onDisk: seen },
      'CAS CA file changed since start: ignoring it, the CA pinned at start stays the only one trusted');
  }

  /** A server at the CAS URL failed the pin: alarm (error log once per reason, count every time). */
  impostor(a: CasIdentityAlarm, log?: Logger): void {
    this.impostorAlarms++;
    const first = !this.lastImpostor || this.lastImpostor.reason !== a.reason;
    this.lastImpostor = { ...a, at: new Date().toISOString() };
    if (first) {
      log?.error({ alarm: 'cas_identity', casUrl: a.casUrl, reason: a.reason, pinned: this.fingerprint256 },
        'ALARM: a server at the CAS URL is not the pinned CAS; refusing it (renewal and counter fail closed)');
    }
  }

  status(): Record<string, unknown> {
    return {
      pinnedCaFingerprint256: this.fingerprint256,
      caFileChanged: this.fileChanged,
      impostorAlarms: this.impostorAlarms,
      lastImpostor: this.lastImpostor ?? null,
    };
  }
}

function caFingerprint(pem: string): string | undefined {
  try {
    return new X509Certificate(pem).fingerprint256;
  } catch {
    return undefined;
  }
}
