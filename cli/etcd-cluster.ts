/**
 * Private etcd members (Debian's etcd-server 3.4) on loopback ports: the replicated CAS's durable store
 * for `cdbp up --ha`, and for the tests (test/support/etcd.ts adds snapshots and restores). Never the
 * system service or its standard ports.
 */
import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import http from 'node:http';

export interface EtcdMemberSpec {
  name: string;
  clientUrl: string;
  peerUrl: string;
  dataDir: string;
}

/** The `--initial-cluster` value naming every member. */
export function initialCluster(members: EtcdMemberSpec[]): string {
  return members.map((m) => `${m.name}=${m.peerUrl}`).join(',');
}

/**
 * Starts one member. `state` 'new' bootstraps the cluster; a member whose data dir already holds a WAL
 * ignores the initial-cluster flags and resumes (so `cdbp up --ha` restarts with the same command).
 */
export function spawnEtcdMember(m: EtcdMemberSpec, o: { cluster: string; state: 'new' | 'existing'; token: string; stdio: StdioOptions; detached?: boolean }): ChildProcess {
  return spawn('etcd', ['--name', m.name, '--data-dir', m.dataDir, '--listen-client-urls', m.clientUrl, '--advertise-client-urls', m.clientUrl,
    '--listen-peer-urls', m.peerUrl, '--initial-advertise-peer-urls', m.peerUrl, '--initial-cluster', o.cluster,
    '--initial-cluster-state', o.state, '--initial-cluster-token', o.token, '--log-level', 'warn', '--logger', 'zap'],
  { stdio: o.stdio, detached: o.detached ?? false });
}

/** Resolves once the member serves the v3 JSON gateway (a range request answers 200). */
export async function waitEtcdHealthy(url: string, timeoutMs: number): Promise<void> {
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
