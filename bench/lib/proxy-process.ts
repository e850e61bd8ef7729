/**
 * Spawns bench/proxy-runner.ts as its own process with a raised open-files limit
 * (`bash -c 'ulimit -n N; exec node ...'`), and talks to it over IPC.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { freePort } from '../../src/kernel/net.ts';
import type { RunnerConfig } from '../proxy-runner.ts';
import { REPO, exited } from './common.ts';

export interface ProxyStats { rss: number; heapUsed: number; cpuUs: number; open: number }

export interface ProxyProcess {
  port: number;
  pid: number;
  stats(): Promise<ProxyStats>;
  /** Closes the proxy and waits for the process to exit; resolves with its total CPU (µs). */
  stop(): Promise<number>;
}

export interface SpawnProxyOptions extends Omit<RunnerConfig, 'port'> {
  /** Open-files limit for the proxy process (each session holds two sockets). */
  nofile?: number;
  /** Directory for a V8 CPU profile (--cpu-prof), if profiling. */
  cpuProfDir?: string;
}

export async function spawnProxy(o: SpawnProxyOptions): Promise<ProxyProcess> {
  const port = await freePort();
  const nodeArgs = ['--import', 'tsx', ...(o.cpuProfDir ? ['--cpu-prof', `--cpu-prof-dir=${o.cpuProfDir}`] : []), path.join(REPO, 'bench', 'proxy-runner.ts')];
  const quoted = [process.execPath, ...nodeArgs].map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
  const child: ChildProcess = spawn('bash', ['-c',
    // Raise the soft limit towards N, capped at the hard limit (raising the hard one needs root and a config change).
    `n=${o.nofile ?? 20000}; h=$(ulimit -Hn); [ "$h" != unlimited ] && [ "$h" -lt "$n" ] && n=$h; ulimit -n "$n" && exec ${quoted}`], {
    cwd: REPO, stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  child.on('error', () => undefined); // EPIPE on a dead child surfaces through ask()'s exit handler
  const replies: Array<(m: any) => void> = [];
  child.on('message', (m: any) => replies.shift()?.(m));
  const ask = (msg: unknown): Promise<any> => new Promise((resolve, reject) => {
    if (!child.connected) return reject(new Error('proxy process is gone'));
    const onExit = () => reject(new Error(`proxy process exited (${child.exitCode ?? child.signalCode})`));
    child.once('exit', onExit);
    replies.push((m) => {
      child.off('exit', onExit);
      if (m?.error) reject(new Error(`proxy process: ${m.error}`));
      else resolve(m);
    });
    child.send(msg as never);
  });
  const { nofile: _n, cpuProfDir: _c, ...config } = o;
  try {
    await ask({ cmd: 'start', config: { ...config, port } satisfies RunnerConfig });
  } catch (e) {
    child.kill('SIGKILL');
    throw e;
  }
  return {
    port,
    pid: child.pid!,
    stats: () => ask({ cmd: 'stats' }),
    async stop() {
      const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
      try {
        const r = await ask({ cmd: 'stop' }).catch(() => ({ cpuUs: NaN }));
        await exited(child);
        return r.cpuUs as number;
      } finally {
        clearTimeout(timer);
      }
    },
  };
}

/** spawnProxy, stopping `owner` (the database it fronts) if the proxy cannot start, so nothing leaks. */
export async function spawnProxyOrStop(owner: { stop(): Promise<void> }, o: SpawnProxyOptions): Promise<ProxyProcess> {
  try {
    return await spawnProxy(o);
  } catch (e) {
    await owner.stop();
    throw e;
  }
}
