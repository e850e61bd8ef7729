/**
 * A replicated CAS for tests: N real `cdbp cas` members on fixed loopback ports over a real etcd
 * (test/support/etcd.ts). Member 1 bootstraps, the others join (attesting with the simulated platform
 * key, like proxies do). Members can be killed, frozen and restarted (a restart is a new incarnation
 * that joins again).
 */
import { cpSync, existsSync } from 'node:fs';
import path from 'node:path';
import { generatePlatformKey } from '../../src/attestation/simulated.ts';
import { generateSigningKeyPair, type SigningKeyPair } from '../../src/crypto/ed25519.ts';
import { startTestCas, runCdbp, type TestCas } from './cas.ts';
import { buildNativeDataPlane } from '../../cli/native-build.ts';
import { freePort, startEtcd, type EtcdCluster } from './etcd.ts';

export interface HaMember {
  index: number;
  url: string;
  port: number;
  dir: string;
  cas?: TestCas;
}

export interface HaCluster {
  etcd: EtcdCluster;
  members: HaMember[];
  urls: string[];
  caPem: string;
  caFile: string;
  owner: SigningKeyPair;
  platformKeyFile: string;
  /** Starts member i (1-based): bootstrap for the first start of member 1, join otherwise. */
  start(i: number, o?: { dir?: string; extraArgs?: string[] }): Promise<TestCas>;
  /** The args a joining member i would be started with (for runCdbp expecting a refusal). */
  joinArgs(i: number, dir?: string): string[];
  kill(i: number): void;
  stop(): Promise<void>;
}

export async function startHaCluster(root: string, n = 3, o: { etcdMembers?: number } = {}): Promise<HaCluster> {
  // Members admit only their own measurement, which covers the native binary a proxy build may refresh.
  buildNativeDataPlane();
  const etcd = await startEtcd(path.join(root, 'etcd'), o.etcdMembers ?? 1);
  const platformKeyFile = path.join(root, 'platform.key');
  if (!existsSync(platformKeyFile)) await generatePlatformKey(platformKeyFile);
  const owner = await generateSigningKeyPair();
  const members: HaMember[] = [];
  for (let i = 1; i <= n; i++) {
    const port = await freePort();
    members.push({ index: i, port, url: `https://127.0.0.1:${port}`, dir: path.join(root, `cas${i}`) });
  }
  const urls = members.map((m) => m.url);
  const caFile = path.join(root, 'ha-ca.pem');
  let bootstrapped = false;
  const common = (m: HaMember): string[] => ['--port', String(m.port), '--ha-members', String(n), '--ha-slot', String(m.index), '--ha-peers', urls.filter((u) => u !== m.url).join(','),
    '--etcd', etcd.endpoints.join(','), '--owner', owner.publicKey.toString('hex')];
  const cluster: HaCluster = {
    etcd, members, urls, caPem: '', caFile, owner, platformKeyFile,
    joinArgs(i, dir) {
      const m = members[i - 1]!;
      return ['cas', '--dir', dir ?? m.dir, '--allow-simulated', '--platform-public-key', `${platformKeyFile}.pub`, ...common(m),
        '--ha-ca', caFile, '--ha-platform-key', platformKeyFile];
    },
    async start(i, so = {}) {
      const m = members[i - 1]!;
      const extra = [...(!bootstrapped && i === 1 ? [...common(m), '--ha-bootstrap'] : [...common(m), '--ha-ca', caFile, '--ha-platform-key', platformKeyFile]), ...(so.extraArgs ?? [])];
      const cas = await startTestCas({ root, dir: so.dir ?? m.dir, platformKeyFile, extraArgs: extra, env: { CDBP_LOG_LEVEL: 'info' } });
      if (!bootstrapped) {
        bootstrapped = true;
        cpSync(cas.caFile, caFile);
        cluster.caPem = cas.caPem;
      }
      m.cas = cas;
      return cas;
    },
    kill(i) {
      const m = members[i - 1]!;
      m.cas?.proc.kill('SIGKILL');
    },
    async stop() {
      for (const m of members) {
        if (m.cas && m.cas.proc.exitCode === null && m.cas.proc.signalCode === null) {
          m.cas.proc.kill('SIGCONT');
          await m.cas.stop();
        }
      }
      await etcd.stop();
    },
  };
  return cluster;
}

export { runCdbp };
