/**
 * Real etcd members (Debian's etcd-server 3.4) on private loopback ports and directories, for the
 * replicated CAS's tests and `cdbp up --ha`. Never the system service or its standard ports.
 * Also snapshot save / restore with etcdctl, to play the operator restoring an old snapshot.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, rmSync } from 'node:fs';
import net from 'node:net';
import http from 'node:http';
import path from 'node:path';

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

function etcdArgs(m: EtcdMember, cluster: string, state: 'new' | 'existing'): string[] {
  return ['--name', m.name, '--data-dir', m.dataDir, '--listen-client-urls', m.clientUrl, '--advertise-client-urls', m.clientUrl,
    '--listen-peer-urls', m.peerUrl, '--initial-advertise-peer-urls', m.peerUrl, '--initial-cluster', cluster,
    '--initial-cluster-state', state, '--initial-cluster-token', 'cdbp-test', '--log-level', 'warn', '--logger', 'zap'];
}

async function waitHealthy(url: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const req = http.request(new URL('/v3/kv/range', url), { method: 'POST', timeout: 1000 }, (res) => { res.resume(); resolve(res.statusCode === 200); });
      req.on('error', () => resolve(false));
      req.on('timeout', () => { req.destroy(); resolve(false); });
      req.end(JSON.stringify({ key: Buffer.from('x').toString('base64') }));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`etcd at ${url} not healthy after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Starts `size` etcd members on loopback (1 is enough for most tests; `cdbp up --ha` runs 3). */
export async function startEtcd(root: string, size = 1): Promise<EtcdCluster> {
  mkdirSync(root, { recursive: true });
  const members: EtcdMember[] = [];
  for (let i = 1; i <= size; i++) {
    members.push({ name: `e${i}`, clientUrl: `http://127.0.0.1:${await freePort()}`, peerUrl: `http://127.0.0.1:${await freePort()}`, dataDir: path.join(root, `e${i}.etcd`) });
  }
  const cluster = members.map((m) => `${m.name}=${m.peerUrl}`).join(',');
  let out = '';
  const launch = (m: EtcdMember, state: 'new' | 'existing', extra: string[] = []) => {
    m.proc = spawn('etcd', [...etcdArgs(m, cluster, state), ...extra], { stdio: ['ignore', 'pipe', 'pipe'] });
    m.proc.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
    m.proc.stderr!.on('data', (d: Buffer) => { out += d.toString(); });
  };
  for (const m of members) launch(m, 'new');
  await Promise.all(members.map((m) => waitHealthy(m.clientUrl, 30_000)));
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
      await Promise.all(members.map((m) => waitHealthy(m.clientUrl, 30_000)));
    },
    stop: stopAll,
  };
}
