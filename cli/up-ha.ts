/**
 * `cdbp up --ha`: the local stack's replicated CAS (docs/CAS.md "Replicated CAS") — a 3-member etcd and
 * 3 CAS members, each its own process, in simulated-TEE mode:
 *
 *   DIR/untrusted/etcd/   etcd's data (sealed blobs only: etcd gives availability, not trust) + ports
 *   DIR/trusted/cas-ha/   member directories m1..m3 and the deployment CA
 *
 * The first run bootstraps the deployment. Stopping the stack stops every member, and their counters
 * live only in memory: that is a majority loss, by design (an old disk can then bring nothing back).
 * So a later run reopens the deployment only when asked (`--ha-recover`): as the owner, with a signed,
 * audited statement, and every service's counter re-anchored to its volume as found (cli/commands/up.ts).
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync, copyFileSync, openSync, rmSync } from 'node:fs';
import path from 'node:path';
import { sha256Fingerprint } from '../src/crypto/x509.ts';
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { CdbpError } from '../src/kernel/errors.ts';
import { findBinary } from '../src/kernel/binaries.ts';
import { freePort } from '../src/kernel/net.ts';
import { loadOwnerKey, signHaRecovery } from '../src/provisioning/policy.ts';
import { initialCluster, spawnEtcdMember, waitEtcdHealthy, type EtcdMemberSpec } from './etcd-cluster.ts';

export const HA_MEMBERS = 3;

export interface HaCasOptions {
  trusted: string;
  untrusted: string;
  run: string;
  platformKey: string;
  ownerKeyFile: string;
  recover: boolean;
  /** How the user named DIR on the command line (` --dir X`, or empty), for the advice in a refusal. */
  dirFlag: string;
  /** up's supervised start of a `cdbp` child (stopped in reverse order by up; restarted with `restartArgs` if it dies). */
  startChild(name: string, args: string[], restartArgs: string[]): void;
  /** Waits for a CAS's cas-ready.json (or the stack's stop). */
  waitReady(file: string, what: string): Promise<{ url: string; caFile: string }>;
  say(msg: string): void;
}

export interface HaCas {
  urls: string[];
  caFile: string;
  etcdEndpoints: string[];
  /** True when this run reopened the deployment (every counter starts empty). */
  reopened: boolean;
  stopEtcd(): Promise<void>;
}

interface EtcdLayout { members: Array<{ name: string; clientPort: number; peerPort: number }> }

export const haRefusal = (stack: string): string => 'the replicated CAS lost all its members when the last `cdbp up --ha` stopped: '
  + 'their counters lived only in memory (that is what makes an old disk harmless), so nothing can rejoin. '
  + `Reopen it as the owner with \`cdbp up --ha --ha-recover${stack}\`: every service's counter is then re-anchored to its volume AS FOUND NOW `
  + '(signed and audited) — do that only if nobody could have rolled the volume back while the stack was down.';

export async function startHaCas(o: HaCasOptions): Promise<HaCas> {
  try { findBinary('etcd'); } catch { throw new CdbpError('BINARY_MISSING', 'etcd not found: install the Debian package etcd-server (cdbp up --ha runs a 3-member etcd)'); }
  const haDir = path.join(o.trusted, 'cas-ha');
  mkdirSync(haDir, { recursive: true, mode: 0o700 });
  const caFile = path.join(haDir, 'ca.pem');
  const exists = existsSync(caFile);
  if (exists && !o.recover) throw new CdbpError('HA_RECOVERY_REFUSED', haRefusal(o.dirFlag));

  const etcd = await startEtcd(path.join(o.untrusted, 'etcd'), o.run, o.say);
  try {
    const ports = await Promise.all(Array.from({ length: HA_MEMBERS }, () => freePort()));
    const urls = ports.map((p) => `https://127.0.0.1:${p}`);
    const owner = loadOwnerKey(o.ownerKeyFile).publicKey.toString('hex');
    const memberArgs = (i: number): string[] => ['cas', '--dir', path.join(haDir, `m${i + 1}`), '--port', String(ports[i]), '--allow-simulated',
      '--platform-public-key', `${o.platformKey}.pub`, '--ha-members', String(HA_MEMBERS), '--ha-slot', String(i + 1), '--ha-peers', urls.filter((_, j) => j !== i).join(','),
      '--etcd', etcd.endpoints.join(','), '--owner', owner];
    const joinArgs = ['--ha-ca', caFile, '--ha-platform-key', o.platformKey];
    let first: string[];
    if (!exists) {
      o.say(`bootstrapping the replicated CAS (${HA_MEMBERS} members, etcd ${etcd.endpoints.length} members)`);
      first = ['--ha-bootstrap'];
    } else {
      o.say('reopening the replicated CAS as the owner (--ha-recover): every counter is unanchored until re-anchored to its volume');
      const statement = path.join(haDir, 'recover.json');
      const ca = sha256Fingerprint(readFileSync(caFile));
      const signed = await signHaRecovery({ ca, notAfter: new Date(Date.now() + 10 * 60_000).toISOString(), minStateSeq: 0 }, loadOwnerKey(o.ownerKeyFile));
      writeFileSync(statement, JSON.stringify(signed, null, 2) + '\n', { mode: 0o600 });
      first = [...joinArgs, '--ha-recover', statement];
    }
    for (let i = 0; i < HA_MEMBERS; i++) {
      const dir = path.join(haDir, `m${i + 1}`);
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      const ready = path.join(dir, 'cas-ready.json');
      rmSync(ready, { force: true });
      o.startChild(`cas${i + 1}`, [...memberArgs(i), ...(i === 0 ? first : joinArgs)], [...memberArgs(i), ...joinArgs]);
      const r = await o.waitReady(ready, `CAS member ${i + 1}`);
      if (i === 0 && !exists) copyFileSync(r.caFile, caFile);
      // Consumed: a statement left on disk could be replayed while it is valid.
      if (i === 0 && exists) rmSync(path.join(haDir, 'recover.json'), { force: true });
      o.say(`CAS member ${i + 1} ready at ${r.url}`);
    }
    return { urls, caFile, etcdEndpoints: etcd.endpoints, reopened: exists, stopEtcd: etcd.stop };
  } catch (e) {
    await etcd.stop();
    throw e;
  }
}

/** A 3-member etcd on loopback, its ports kept in DIR (peers are named in its data), resumed on later runs. */
async function startEtcd(root: string, runDir: string, say: (m: string) => void): Promise<{ endpoints: string[]; stop(): Promise<void> }> {
  mkdirSync(root, { recursive: true, mode: 0o700 });
  const layoutFile = path.join(root, 'cluster.json');
  let layout: EtcdLayout;
  if (existsSync(layoutFile)) {
    layout = JSON.parse(readFileSync(layoutFile, 'utf8')) as EtcdLayout;
  } else {
    layout = { members: [] };
    for (let i = 1; i <= HA_MEMBERS; i++) layout.members.push({ name: `e${i}`, clientPort: await freePort(), peerPort: await freePort() });
    writeFileSync(layoutFile, JSON.stringify(layout, null, 2) + '\n');
  }
  const specs: EtcdMemberSpec[] = layout.members.map((m) => ({
    name: m.name, clientUrl: `http://127.0.0.1:${m.clientPort}`, peerUrl: `http://127.0.0.1:${m.peerPort}`, dataDir: path.join(root, `${m.name}.etcd`),
  }));
  const procs: ChildProcess[] = [];
  const stop = async () => {
    await Promise.all(procs.map(async (p) => {
      if (p.exitCode !== null || p.signalCode !== null) return;
      const exited = once(p, 'exit');
      p.kill('SIGTERM');
      const t = setTimeout(() => p.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(t);
    }));
  };
  for (const m of specs) {
    await stopLeftoverEtcd(path.join(root, `${m.name}.pid`), say);
    const fd = openSync(path.join(runDir, `etcd-${m.name}.log`), 'a');
    // Own process group (Ctrl-C reaches only `up`, which stops etcd last).
    const p = spawnEtcdMember(m, { cluster: initialCluster(specs), state: 'new', token: 'cdbp-up-ha', stdio: ['ignore', fd, fd], detached: true });
    procs.push(p);
    if (p.pid) writeFileSync(path.join(root, `${m.name}.pid`), `${p.pid}\n`);
  }
  try {
    await Promise.all(specs.map((m) => waitEtcdHealthy(m.clientUrl, 30_000)));
  } catch (e) {
    await stop();
    throw new CdbpError('CHILD_FAILED', `etcd did not start: ${(e as Error).message} (logs: ${runDir}/etcd-e*.log)`);
  }
  return { endpoints: specs.map((m) => m.clientUrl), stop };
}

/** An etcd a killed `up` left running holds the data dir and ports: stop it (only if it is etcd). */
async function stopLeftoverEtcd(pidFile: string, say: (m: string) => void): Promise<void> {
  let pid: number;
  try { pid = Number(readFileSync(pidFile, 'utf8').trim()); } catch { return; }
  let cmd = '';
  try { cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8'); } catch { return; }
  if (!cmd.split('\0')[0]?.endsWith('etcd')) return;
  process.kill(pid, 'SIGTERM');
  for (let i = 0; i < 100 && existsSync(`/proc/${pid}`); i++) await new Promise((r) => setTimeout(r, 100));
  if (existsSync(`/proc/${pid}`)) process.kill(pid, 'SIGKILL');
  say(`stopped a leftover etcd (pid ${pid}) of an earlier cdbp up`);
}
