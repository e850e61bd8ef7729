/**
 * Helpers for the container suite: run docker / docker-compose / the host's stock `mariadb` client,
 * address one compose project, and make sure nothing of it is left behind.
 *
 * Environment (set by .ci/containers; defaults here so a developer with a local engine can run
 * `npm run test:containers` too): DOCKER_HOST, TESTCONTAINERS_RYUK_DISABLED=true (Ryuk's image cannot be
 * pulled here), TESTCONTAINERS_HOST_OVERRIDE=localhost.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, rmdirSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

process.env.TESTCONTAINERS_RYUK_DISABLED ??= 'true';
process.env.TESTCONTAINERS_HOST_OVERRIDE ??= 'localhost';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const COMPOSE_DIR = path.join(REPO_ROOT, 'compose');
export const COMPOSE_FILE = path.join(COMPOSE_DIR, 'docker-compose.yml');
export const APP_IMAGE = process.env.CDBP_APP_IMAGE ?? 'confidential-db-proxy/app:dev';
export const MARIADB_IMAGE = process.env.CDBP_MARIADB_IMAGE ?? 'confidential-db-proxy/mariadb:dev';
export const POSTGRES_IMAGE = process.env.CDBP_POSTGRES_IMAGE ?? 'confidential-db-proxy/postgres:dev';

export interface RunResult { code: number; stdout: string; stderr: string }

/** Runs a command to completion (never throws on a non-zero exit: callers assert on `code`). */
export function run(cmd: string, args: string[], opts: { input?: string; env?: Record<string, string>; cwd?: string; timeoutMs?: number } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd: opts.cwd ?? REPO_ROOT,
      env: { ...process.env, ...opts.env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d; });
    child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 300_000);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? (signal ? 128 : 1), stdout, stderr });
    });
    // A command that exits without reading its stdin (docker exec ... cat) makes this write fail with
    // EPIPE; its exit code and output are what the caller checks, so the write error is not one.
    child.stdin.on('error', () => undefined);
    child.stdin.end(opts.input ?? '');
  });
}

/** Like run, but a non-zero exit is an error carrying the command's output. */
export async function runOk(cmd: string, args: string[], opts: Parameters<typeof run>[2] = {}): Promise<string> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}\n${r.stderr.slice(-4000)}\n${r.stdout.slice(-2000)}`);
  return r.stdout;
}

/**
 * The documented build step (compose/build.sh), serialized across the suite's test files (node's runner
 * runs them in parallel): a second caller waits for the first and then finds every layer cached.
 */
export async function buildImages(): Promise<void> {
  const lock = path.join(os.tmpdir(), `cdbp-containers-build-${(process.env.DOCKER_HOST ?? 'default').replace(/[^a-zA-Z0-9]+/g, '_')}.lock`);
  const deadline = Date.now() + 20 * 60_000;
  for (;;) {
    try {
      mkdirSync(lock);
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      // A lock older than any build is a crashed run's leftover.
      try { if (Date.now() - statSync(lock).mtimeMs > 20 * 60_000) rmdirSync(lock); } catch { /* gone meanwhile */ }
      if (Date.now() > deadline) throw new Error(`timed out waiting for the image build lock ${lock}`);
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
  try {
    await runOk(path.join(COMPOSE_DIR, 'build.sh'), [], { timeoutMs: 15 * 60_000 });
  } finally {
    rmdirSync(lock);
  }
}

/** One compose project: the file, a unique project name, the environment and profiles every call needs. */
export class ComposeProject {
  constructor(readonly name: string, readonly env: Record<string, string>, readonly profiles: string[] = []) {}

  compose(args: string[], opts: { input?: string; timeoutMs?: number } = {}): Promise<RunResult> {
    const profileArgs = this.profiles.flatMap((p) => ['--profile', p]);
    return run('docker-compose', ['-f', COMPOSE_FILE, '-p', this.name, ...profileArgs, ...args], { ...opts, env: this.env });
  }

  async composeOk(args: string[], opts: { input?: string; timeoutMs?: number } = {}): Promise<string> {
    const r = await this.compose(args, opts);
    if (r.code !== 0) throw new Error(`docker-compose ${args.join(' ')} exited ${r.code}\n${r.stderr.slice(-4000)}`);
    return r.stdout;
  }

  /** Host address of a published container port, e.g. { host: '127.0.0.1', port: 49153 }. */
  async port(service: string, containerPort: number): Promise<{ host: string; port: number }> {
    const out = (await this.composeOk(['port', service, String(containerPort)])).trim();
    const m = /^(.*):(\d+)$/.exec(out);
    if (!m) throw new Error(`no published port for ${service}:${containerPort} (got "${out}")`);
    return { host: m[1] === '0.0.0.0' ? '127.0.0.1' : m[1]!, port: Number(m[2]) };
  }

  volume(name: string): string {
    return `${this.name}_${name}`;
  }

  /** Containers, volumes and networks that still carry this project's name or label. */
  async leftovers(extraVolumes: string[] = []): Promise<string[]> {
    const found: string[] = [];
    const label = `label=com.docker.compose.project=${this.name}`;
    const lines = (s: string) => s.split('\n').map((l) => l.trim()).filter(Boolean);
    found.push(...lines(await runOk('docker', ['ps', '-a', '--filter', label, '--format', 'container {{.Names}}'])));
    found.push(...lines(await runOk('docker', ['volume', 'ls', '-q', '--filter', label])).map((v) => `volume ${v}`));
    found.push(...lines(await runOk('docker', ['network', 'ls', '-q', '--filter', label])).map((n) => `network ${n}`));
    for (const v of extraVolumes) {
      if ((await run('docker', ['volume', 'inspect', v])).code === 0) found.push(`volume ${v}`);
    }
    return found;
  }

  /** Best-effort removal of everything of this project (used when a test failed half-way). */
  async forceRemove(extraVolumes: string[] = []): Promise<void> {
    await this.compose(['down', '-v', '--remove-orphans', '-t', '20']);
    const label = `label=com.docker.compose.project=${this.name}`;
    const ids = (await run('docker', ['ps', '-aq', '--filter', label])).stdout.split('\n').filter(Boolean);
    if (ids.length) await run('docker', ['rm', '-f', '-v', ...ids]);
    const vols = (await run('docker', ['volume', 'ls', '-q', '--filter', label])).stdout.split('\n').filter(Boolean);
    for (const v of [...vols, ...extraVolumes]) await run('docker', ['volume', 'rm', '-f', v]);
    const nets = (await run('docker', ['network', 'ls', '-q', '--filter', label])).stdout.split('\n').filter(Boolean);
    for (const n of nets) await run('docker', ['network', 'rm', n]);
  }
}

/**
 * Runs a throwaway root container with named volumes mounted (the "adversary with the disk" and the
 * operator's backup tool: it sees only what is on the untrusted volume).
 */
export function withVolumes(mounts: Array<[volume: string, target: string, mode?: 'ro']>, script: string): Promise<RunResult> {
  const args = ['run', '--rm', '--user', '0', '--network', 'none', '--entrypoint', 'sh'];
  for (const [v, t, m] of mounts) args.push('-v', `${v}:${t}${m ? `:${m}` : ''}`);
  args.push(MARIADB_IMAGE, '-c', script);
  return run('docker', args);
}

export async function fetchJson(url: string): Promise<{ status: number; body: Record<string, unknown> } | undefined> {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(3000) });
    return { status: res.status, body: (await res.json()) as Record<string, unknown> };
  } catch {
    return undefined;
  }
}

/** Replaces a volume's whole content with a copy of another (rolling a disk back to a snapshot). */
export function restoreVolume(volume: string, snapshot: string): Promise<RunResult> {
  return withVolumes([[volume, '/to'], [snapshot, '/from', 'ro']], 'find /to -mindepth 1 -delete && cp -a /from/. /to/');
}

/** Waits until the proxy behind an ops URL has decided at start-up (lifecycle ready or failed); returns its /v1/status. */
export function waitForStartDecision(what: string, opsUrl: string): Promise<{ status: number; body: Record<string, unknown> }> {
  return waitFor(what, async () => {
    const st = await fetchJson(`${opsUrl}/v1/status`);
    const state = (st?.body.lifecycle as { state?: string } | undefined)?.state;
    return state === 'failed' || state === 'ready' ? st : undefined;
  }, 120_000);
}

/** Polls until `probe` returns a value (not undefined) or the deadline passes. */
export async function waitFor<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 500));
  }
}

/**
 * Runs a compose start-up; when it fails, prints the project's recent container logs first, so a CI
 * failure says why a service never became healthy instead of only that it did not.
 */
export async function explainStartFailure<T>(stack: ComposeProject, start: () => Promise<T>): Promise<T> {
  try {
    return await start();
  } catch (e) {
    const logs = await stack.compose(['logs', '--no-color', '--tail', '60']).catch(() => undefined);
    const ps = await stack.compose(['ps']).catch(() => undefined);
    process.stderr.write(`--- ${stack.name}: start-up failed; docker-compose ps:\n${ps?.stdout ?? '(unavailable)'}\n`);
    process.stderr.write(`--- ${stack.name}: last container log lines:\n${logs?.stdout ?? '(unavailable)'}${logs?.stderr ?? ''}\n`);
    throw e;
  }
}
