/**
 * A replicated CAS for tests: N real `cdbp cas` members on fixed loopback ports over a real etcd
 * (test/support/etcd.ts). Member 1 bootstraps, the others join (attesting with the simulated platform
 * key, like proxies do). Members can be killed, frozen and restarted (a restart is a new incarnation
 * that joins again).
 *
 * With `delayable`, a TCP forwarder (tcp-delay-proxy.ts) stands in front of each member: the peers lists
 * and `urls` name the forwarders' ports, the member listens on its own. `delay`, `partition` and `heal`
 * then slow down or cut everything that reaches one member (clients and the other members alike) and
 * its answers. A member's own outgoing calls (to etcd, to the other members' forwarders) are not
 * touched: a partition here is one member nobody can reach, not one that can reach nobody.
 */
import { cpSync, existsSync } from 'node:fs';
import path from 'node:path';
import { generatePlatformKey } from '../../src/attestation/simulated.ts';
import { generateSigningKeyPair, type SigningKeyPair } from '../../src/crypto/ed25519.ts';
import { startTestCas, runCdbp, applyTestPolicy, type TestCas } from './cas.ts';
import { buildNativeDataPlane } from '../../cli/native-build.ts';
import { freePort, startEtcd, type EtcdCluster } from './etcd.ts';
import { casAgent, casRequest } from '../../src/cas-client/http.ts';
import { startDelayProxy, type DelayProxy } from './tcp-delay-proxy.ts';

export interface HaMember {
  index: number;
  /** What clients and the other members dial: the member itself, or its forwarder in a delayable cluster. */
  url: string;
  /** The port the member listens on. */
  port: number;
  dir: string;
  cas?: TestCas;
  /** The forwarder in front of the member (delayable clusters only). */
  front?: DelayProxy;
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
  /** Delayable clusters: every chunk to and from member i waits `ms` (+ up to `jitterMs`). */
  delay(i: number, ms: number, jitterMs?: number): void;
  /** Delayable clusters: nothing reaches member i, nor leaves it towards whoever dialled it. */
  partition(i: number): void;
  /** Delayable clusters: member i is reachable as usual again (connections a partition held are closed). */
  heal(i: number): void;
  /**
   * Starts every member: member 1 bootstraps, applies a test policy per service (the others receive
   * them from etcd when joining), then the others join.
   */
  startAll(services?: string[]): Promise<void>;
  stop(): Promise<void>;
}

export async function startHaCluster(root: string, n = 3, o: { etcdMembers?: number; delayable?: boolean } = {}): Promise<HaCluster> {
  // Members admit only their own measurement, which covers the native binary a proxy build may refresh.
  buildNativeDataPlane();
  const etcd = await startEtcd(path.join(root, 'etcd'), o.etcdMembers ?? 1);
  const platformKeyFile = path.join(root, 'platform.key');
  if (!existsSync(platformKeyFile)) await generatePlatformKey(platformKeyFile);
  const owner = await generateSigningKeyPair();
  const members: HaMember[] = [];
  for (let i = 1; i <= n; i++) {
    const port = await freePort();
    // Same host either way: the member's certificate (issued for 127.0.0.1) still matches through the forwarder.
    const front = o.delayable ? await startDelayProxy({ target: port }) : undefined;
    members.push({ index: i, port, url: `https://127.0.0.1:${front?.port ?? port}`, dir: path.join(root, `cas${i}`), ...(front ? { front } : {}) });
  }
  const front = (i: number): DelayProxy => {
    const f = members[i - 1]?.front;
    if (!f) throw new Error(`member ${i} has no forwarder: start the cluster with { delayable: true }`);
    return f;
  };
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
    async startAll(services = []) {
      await cluster.start(1);
      for (const service of services) await applyTestPolicy({ url: urls[0]!, caPem: cluster.caPem }, { service, owner });
      for (let i = 2; i <= n; i++) await cluster.start(i);
    },
    kill(i) {
      const m = members[i - 1]!;
      m.cas?.proc.kill('SIGKILL');
    },
    delay(i, ms, jitterMs) {
      front(i).set({ kind: 'delay', ms, ...(jitterMs ? { jitterMs } : {}) });
    },
    partition(i) {
      front(i).set({ kind: 'partition' });
    },
    heal(i) {
      front(i).set({ kind: 'pass' });
    },
    async stop() {
      for (const m of members) {
        if (m.cas && m.cas.proc.exitCode === null && m.cas.proc.signalCode === null) {
          m.cas.proc.kill('SIGCONT');
          await m.cas.stop();
        }
      }
      for (const m of members) await m.front?.close();
      await etcd.stop();
    },
  };
  return cluster;
}

export { runCdbp };

/**
 * One member's own answer to a counter read (mutual TLS with the service's identity). A
 * QuorumCounterClient never counts one member: majorities are of the deployment's slots.
 */
export async function readMember(url: string, service: string, id: { caPem: string; keyPem: string; certPem: string }, timeoutMs = 2000): Promise<{ value: number; digest: string }> {
  const agent = casAgent({ caPem: id.caPem, keyPem: id.keyPem, certPem: id.certPem, keepAlive: false });
  try {
    return await casRequest(url, 'GET', `/v1/services/${encodeURIComponent(service)}/counter`, undefined, { agent, timeoutMs });
  } finally {
    agent.destroy();
  }
}
