/**
 * Real etcd members (Debian's etcd-server 3.4, started by cli/etcd-cluster.ts) on private loopback ports
 * and directories, for the replicated CAS's tests. Never the system service or its standard ports.
 * Also snapshot save / restore with etcdctl, to play the operator restoring an old snapshot.
 */
import { spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, rmSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { initialCluster, spawnEtcdMember, waitEtcdHealthy } from '../../cli/etcd-cluster.ts';

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      const port = typeof a === 'object' && a ? a.port : 0;
      s.close(() => resolve(port));
    });
  });
}

export interface EtcdMember {
  name: string;
  clientUrl: string;
  peerUrl: string;
  dataDir: string;
  proc?: ChildProcess;
}

export interface EtcdCluster {
  members: EtcdMember[];
  endpoints: string[];
  output(): string;
  /** Saves a snapshot of the current state (etcdctl snapshot save) to `file`. */
  snapshot(file: string): void;
  /** Stops every member, restores `file` into fresh data dirs (etcdctl snapshot restore) and starts them again. */
  restore(file: string): Promise<void>;
  stop(): Promise<void>;
}

/** Starts `size` etcd members on loopback (1 is enough for most tests; `cdbp up --ha` runs 3). */
export async function startEtcd(root: string, size = 1): Promise<EtcdCluster> {
  mkdirSync(root, { recursive: true });
  const members: EtcdMember[] = [];
  for (let i = 1; i <= size; i++) {
    members.push({ name: `e${i}`, clientUrl: `http://127.0.0.1:${await freePort()}`, peerUrl: `http://127.0.0.1:${await freePort()}`, dataDir: path.join(root, `e${i}.etcd`) });
  }
  const cluster = initialCluster(members);
  let out = '';
  const launch = (m: EtcdMember, state: 'new' | 'existing') => {
    m.proc = spawnEtcdMember(m, { cluster, state, token: 'cdbp-test', stdio: ['ignore', 'pipe', 'pipe'] });
    m.proc.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
    m.proc.stderr!.on('data', (d: Buffer) => { out += d.toString(); });
  };
  for (const m of members) launch(m, 'new');
  await Promise.all(members.map((m) => waitEtcdHealthy(m.clientUrl, 30_000)));
  const stopAll = async () => {
    await Promise.all(members.map((m) => new Promise<void>((resolve) => {
      const p = m.proc;
      if (!p || p.exitCode !== null || p.signalCode !== null) { resolve(); return; }
      p.once('exit', () => resolve());
      p.kill('SIGTERM');
      setTimeout(() => p.kill('SIGKILL'), 5000).unref();
    })));
  };
  return {
    members,
    endpoints: members.map((m) => m.clientUrl),
    output: () => out,
    snapshot(file) {
      const r = spawnSync('etcdctl', ['--endpoints', members[0]!.clientUrl, 'snapshot', 'save', file], { env: { ...process.env, ETCDCTL_API: '3' }, encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`etcdctl snapshot save failed: ${r.stderr}`);
    },
    async restore(file) {
      await stopAll();
      for (const m of members) {
        rmSync(m.dataDir, { recursive: true, force: true });
        const r = spawnSync('etcdctl', ['snapshot', 'restore', file, '--name', m.name, '--data-dir', m.dataDir, '--initial-cluster', cluster,
          '--initial-cluster-token', 'cdbp-test', '--initial-advertise-peer-urls', m.peerUrl], { env: { ...process.env, ETCDCTL_API: '3' }, encoding: 'utf8' });
        if (r.status !== 0) throw new Error(`etcdctl snapshot restore failed: ${r.stderr}`);
      }
      for (const m of members) launch(m, 'existing');
      await Promise.all(members.map((m) => waitEtcdHealthy(m.clientUrl, 30_000)));
    },
    stop: stopAll,
  };
}
