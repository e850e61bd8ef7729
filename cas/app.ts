/**
 * Composition of a running CAS: sealing key → sealed state (+ CA) → audit log → verifiers → HTTPS
 * server. Used by `cdbp cas` and by tests that need a CAS in-process.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { X509Certificate } from 'node:crypto';
import { isIP } from 'node:net';
import type { Logger } from '../src/kernel/log.ts';
import { CdbpError } from '../src/kernel/errors.ts';
import { MetricsRegistry } from '../src/kernel/metrics.ts';
import { selectVerifiers } from '../src/attestation/select.ts';
import { createCa, createCsr, generateTlsKeyPair, issueLeafCertificate, parseCsr } from '../src/crypto/x509.ts';
import { writeFileDurable } from '../src/crypto/atomic-file.ts';
import { AuditLog } from './audit.ts';
import { CasCore } from './core.ts';
import { NonceStore } from './nonces.ts';
import { deriveKey, type SealingKeyProvider } from './sealing-key.ts';
import { StateStore } from './state.ts';
import { buildCasServer } from './server.ts';

export interface CasOptions {
  dir: string;
  host: string;
  port: number;
  allowSimulated: boolean;
  platformPublicKey?: Buffer;
  sealing: SealingKeyProvider;
  log: Logger;
  /** Extra DNS names / IPs for the CAS's own server certificate. */
  tlsNames?: string[];
  nonceTtlMs?: number;
}

export interface RunningCas {
  url: string;
  caPem: string;
  caFile: string;
  core: CasCore;
  /** The CAS's Prometheus registry (served by its HTTPS /metrics and by the ops server). */
  metrics: MetricsRegistry;
  close(): Promise<void>;
}

export function auditFile(dir: string): string {
  return path.join(dir, 'audit.log');
}

export async function startCas(o: CasOptions): Promise<RunningCas> {
  mkdirSync(o.dir, { recursive: true, mode: 0o700 });
  const master = await o.sealing.masterKey();
  const { store, created } = await StateStore.open(o.dir, deriveKey(master, 'state'),
    () => createCa({ commonName: 'cdbp CAS root', lifetimeDays: 3650 }));
  const audit = await AuditLog.open(auditFile(o.dir), deriveKey(master, 'audit'));
  master.fill(0);
  const ca = store.caMaterial;
  const caFile = path.join(o.dir, 'ca.pem');
  await writeFileDurable(caFile, ca.certPem, 0o644);

  const metrics = new MetricsRegistry();
  const verifiers = selectVerifiers({ allowSimulated: o.allowSimulated, platformPublicKey: o.platformPublicKey, log: o.log });
  const core = new CasCore({
    store, audit, nonces: new NonceStore(o.nonceTtlMs ?? 60_000), verifiers, allowSimulated: o.allowSimulated, log: o.log, metrics,
  });

  // The CAS's own serving certificate: fresh key per start, kept in memory only.
  const names = new Set(['localhost', '127.0.0.1', o.host, ...(o.tlsNames ?? [])].filter((n) => n && n !== '0.0.0.0' && n !== '::'));
  const kp = generateTlsKeyPair();
  const { spki } = parseCsr(createCsr({ ...kp, commonName: 'cdbp-cas' }));
  const certPem = issueLeafCertificate(ca, {
    spki, subject: { commonName: 'cdbp-cas', organization: 'confidential-db-proxy', organizationalUnit: 'cas' },
    dnsNames: [...names].filter((n) => isIP(n) === 0), ipAddresses: [...names].filter((n) => isIP(n) !== 0), uris: [],
    notAfter: new Date(Math.min(Date.now() + 30 * 86_400_000, new Date(new X509Certificate(ca.certPem).validTo).getTime())),
  });
  const app = buildCasServer({
    core, audit, metrics, log: o.log, simulated: o.allowSimulated,
    tls: { keyPem: kp.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(), certPem, caPem: ca.certPem },
  });
  await audit.append({
    event: 'cas.start', outcome: 'ok',
    details: { services: store.size, createdState: created, simulatedAttestation: o.allowSimulated, sealing: o.sealing.kind },
  });
  try {
    await app.listen({ host: o.host, port: o.port });
  } catch (e) {
    await audit.close();
    throw new CdbpError('CONFIG_INVALID', `cannot listen on ${o.host}:${o.port}: ${(e as Error).message}`);
  }
  const addr = app.server.address();
  const port = typeof addr === 'object' && addr ? addr.port : o.port;
  const urlHost = o.host === '0.0.0.0' || o.host === '::' ? '127.0.0.1' : isIP(o.host) === 6 ? `[${o.host}]` : o.host;
  const url = `https://${urlHost}:${port}`;
  o.log.info({ url, services: store.size, createdState: created, simulated: o.allowSimulated, sealing: o.sealing.kind }, 'CAS listening');
  return {
    url, caPem: ca.certPem, caFile, core, metrics,
    async close() {
      await app.close();
      await audit.close();
    },
  };
}

export function writeReadyFile(dir: string, info: { url: string; caFile: string; pid: number }): void {
  writeFileSync(path.join(dir, 'cas-ready.json'), JSON.stringify(info) + '\n');
}
