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
import { createCa, createCsr, ed25519Spki, generateTlsKeyPair, issueLeafCertificate, parseCsr, type CaMaterial } from '../src/crypto/x509.ts';
import { generateSigningKeyPair } from '../src/crypto/ed25519.ts';
import { writeFileDurable } from '../src/crypto/atomic-file.ts';
import { AuditLog } from './audit.ts';
import { CounterLog } from './counter-log.ts';
import { CasCore } from './core.ts';
import { NonceStore } from './nonces.ts';
import { deriveKey, type SealingKeyProvider } from './sealing-key.ts';
import { StateStore, type CasMeta } from './state.ts';
import { buildCasServer } from './server.ts';
import type { HaRuntime } from './replication/instance.ts';

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
  /**
   * Owner keys (hex Ed25519) allowed to create services. Bound into the sealed state on first start;
   * later starts must name the same set (or none). Without any, the first policy's owner is bound.
   */
  owners?: string[];
  /** Member of a replicated CAS (cas/replication/instance.ts prepareHa): counters in memory, state on etcd. */
  ha?: HaRuntime;
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

/** The CAS-level meta of a new (or pre-meta) state: a fresh answer-signing key certified by the CA. */
async function makeMeta(ca: CaMaterial, existingOwners: string[]): Promise<CasMeta> {
  const kp = await generateSigningKeyPair();
  const signingCertPem = issueLeafCertificate(ca, {
    role: 'cas-signing', spki: ed25519Spki(kp.publicKey),
    subject: { commonName: 'cdbp CAS answer signing', organization: 'confidential-db-proxy', organizationalUnit: 'cas' },
    dnsNames: [], ipAddresses: [], uris: [], notAfter: new Date(new X509Certificate(ca.certPem).validTo),
  });
  const meta: CasMeta = {
    format: 'cdbp-cas-meta/1', signingSecretKey: kp.secretKey.toString('hex'), signingCertPem,
    owners: existingOwners, ownersBoundBy: existingOwners.length > 0 ? 'existing-services' : null,
  };
  kp.secretKey.fill(0);
  return meta;
}

export async function startCas(o: CasOptions): Promise<RunningCas> {
  mkdirSync(o.dir, { recursive: true, mode: 0o700 });
  o.ha?.prepareDir(o.dir);
  const master = await (o.ha?.sealing ?? o.sealing).masterKey();
  // A replicated member hands the state key to members that join (over their attested channel).
  const haMaster = o.ha ? Buffer.from(master) : undefined;
  const { store, created, upgraded } = await StateStore.open(o.dir, deriveKey(master, 'state'),
    () => createCa({ commonName: 'cdbp CAS root', lifetimeDays: 3650 }), makeMeta);
  // The owner allow-list is part of the sealed state: flags can set it once, never silently change it.
  const configured = [...new Set(o.owners ?? [])].sort();
  let ownersBoundNow = false;
  if (configured.length > 0) {
    const sealed = [...store.meta.owners].sort();
    if (sealed.length === 0) {
      await store.updateMeta({ ...store.meta, owners: configured, ownersBoundBy: 'configured' });
      ownersBoundNow = true;
    } else if (sealed.join(',') !== configured.join(',')) {
      throw new CdbpError('CONFIG_INVALID', `--owner names ${configured.length} key(s) that differ from the owner allow-list sealed in ${o.dir} `
        + `(${sealed.map((k) => k.slice(0, 16) + '…').join(', ')}); start without --owner or with exactly that set`);
    }
  }
  // The audit log is checked against the anchor sealed with the state (a truncated tail is caught), and
  // every durable append moves the anchor.
  const audit = await AuditLog.open(auditFile(o.dir), deriveKey(master, 'audit'), {
    // A replicated member's audit log is its own (the sealed root it received names another member's anchor).
    anchor: o.ha ? undefined : store.auditAnchor, onDurable: (a) => store.setAuditAnchor(a),
  });
  // Every service's counter in one group-committed log, checked against its anchor (cas/counter-log.ts).
  const counters = o.ha ? o.ha.counters : await CounterLog.open(store.stateDir, deriveKey(master, 'counters'), { mustExist: store.counterLogCreated });
  if (!o.ha) await store.markCounterLog();
  const stateKey = o.ha ? deriveKey(master, 'state') : undefined;
  master.fill(0);
  const ca = store.caMaterial;
  const caFile = path.join(o.dir, 'ca.pem');
  await writeFileDurable(caFile, ca.certPem, 0o644);

  const metrics = new MetricsRegistry();
  const verifiers = selectVerifiers({ allowSimulated: o.allowSimulated, platformPublicKey: o.platformPublicKey, log: o.log });
  // The CAS's own serving certificate: fresh key per start, kept in memory only.
  const names = new Set(['localhost', '127.0.0.1', o.host, ...(o.tlsNames ?? [])].filter((n) => n && n !== '0.0.0.0' && n !== '::'));
  const core = new CasCore({
    store, audit, counters, nonces: new NonceStore(o.nonceTtlMs ?? 60_000), verifiers, allowSimulated: o.allowSimulated, log: o.log, metrics,
    reservedNames: [...names],
    ...(o.ha ? { signing: { ...await o.ha.instanceSigning(ca), membership: o.ha.membership }, acceptLagging: true } : {}),
  });
  const kp = generateTlsKeyPair();
  const { spki } = parseCsr(createCsr({ ...kp, commonName: 'cdbp-cas' }));
  // Role `cas` (URI SAN + EKU): the CA never gives it to a service, and every CAS client requires it.
  const certPem = issueLeafCertificate(ca, {
    role: 'cas', spki, subject: { commonName: 'cdbp-cas', organization: 'confidential-db-proxy', organizationalUnit: 'cas' },
    dnsNames: [...names].filter((n) => isIP(n) === 0), ipAddresses: [...names].filter((n) => isIP(n) !== 0), uris: [],
    notAfter: new Date(Math.min(Date.now() + 30 * 86_400_000, new Date(new X509Certificate(ca.certPem).validTo).getTime())),
  });
  const app = buildCasServer({
    core, audit, metrics, log: o.log, simulated: o.allowSimulated,
    tls: { keyPem: kp.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(), certPem, caPem: ca.certPem },
  });
  await o.ha?.attach({ app, store, audit, verifiers, stateKey: stateKey!, masterKey: haMaster!, allowSimulated: o.allowSimulated, log: o.log });
  if (ownersBoundNow || upgraded) {
    await audit.append({ event: 'cas.owners', outcome: 'ok', details: { owners: store.meta.owners.join(','), boundBy: store.meta.ownersBoundBy } });
  }
  await audit.append({
    event: 'cas.start', outcome: 'ok',
    details: { services: store.size, createdState: created, upgradedState: upgraded, simulatedAttestation: o.allowSimulated, sealing: o.sealing.kind,
      owners: store.meta.owners.length, ownersBoundBy: store.meta.ownersBoundBy },
  });
  try {
    await app.listen({ host: o.host, port: o.port });
  } catch (e) {
    await audit.close();
    await counters.close();
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
      await o.ha?.close();
      await app.close();
      await audit.close();
      await counters.close();
    },
  };
}

export function writeReadyFile(dir: string, info: { url: string; caFile: string; pid: number }): void {
  writeFileSync(path.join(dir, 'cas-ready.json'), JSON.stringify(info) + '\n');
}
