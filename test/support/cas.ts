/**
 * Spawns a real `cdbp cas` process (node bin/cdbp.js cas ...) for tests, with a fresh simulated
 * platform key, and waits for its cas-ready.json. Other roles' tests use it to get a CAS to attest to.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { generatePlatformKey } from '../../src/attestation/simulated.ts';
import { generateSigningKeyPair, readSigningKeyFile, writeSigningKeyFile, type SigningKeyPair } from '../../src/crypto/ed25519.ts';
import { measureShippedCode } from '../../src/attestation/measurement.ts';
import { buildNativeDataPlane } from '../../cli/native-build.ts';
import { buildPolicy, signPolicy, type BuildPolicyOptions, type SignedPolicy } from '../../src/provisioning/policy.ts';
import { applySignedPolicy } from '../../src/cas-client/policy.ts';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

export interface TestCas {
  url: string;
  caPem: string;
  caFile: string;
  /** The CAS's trusted dir (state, audit.log, sealing.key). */
  dir: string;
  /** Simulated platform private key file (give it to SimulatedProvider) and its .pub. */
  platformKeyFile: string;
  platformPublicKeyFile: string;
  /**
   * The owner key applyTestPolicy signs with by default: a CAS binds its first policy's owner and then
   * lets only that owner create services, so one test CAS has one default owner (kept next to its dir,
   * so a restarted CAS gets the same one).
   */
  owner: SigningKeyPair;
  proc: ChildProcess;
  output(): string;
  /** SIGTERM and wait; resolves with the exit code. */
  stop(): Promise<number | null>;
}

export interface StartTestCasOptions {
  /** Parent dir for the CAS dir and keys (the test's temp dir). */
  root: string;
  /** Reuse an existing CAS dir (restart tests). Default: <root>/cas. */
  dir?: string;
  allowSimulated?: boolean;
  /** Reuse a platform key file; default <root>/platform.key (created if missing). */
  platformKeyFile?: string;
  extraArgs?: string[];
  env?: NodeJS.ProcessEnv;
  timeoutMs?: number;
}

/** Spawns `cdbp cas` and resolves once it is listening; rejects with its output if it exits first. */
export async function startTestCas(o: StartTestCasOptions): Promise<TestCas> {
  mkdirSync(o.root, { recursive: true });
  const dir = o.dir ?? path.join(o.root, 'cas');
  const platformKeyFile = o.platformKeyFile ?? path.join(o.root, 'platform.key');
  if (!existsSync(platformKeyFile)) await generatePlatformKey(platformKeyFile);
  const ownerFile = `${dir}.test-owner.key`;
  if (!existsSync(ownerFile)) writeSigningKeyFile(ownerFile, await generateSigningKeyPair(), 'cdbp-owner-key/1');
  const owner = readSigningKeyFile(ownerFile, 'cdbp-owner-key/1');
  const args = [path.join(REPO, 'bin', 'cdbp.js'), 'cas', '--dir', dir, '--port', '0',
    ...(o.allowSimulated === false ? [] : ['--allow-simulated', '--platform-public-key', `${platformKeyFile}.pub`]),
    ...(o.extraArgs ?? [])];
  const env: NodeJS.ProcessEnv = { ...process.env, CDBP_LOG_LEVEL: process.env.CDBP_LOG_LEVEL ?? 'warn', ...o.env };
  if (o.allowSimulated === false) delete env.CDBP_ALLOW_SIMULATED;
  // Profiling (as cli/commands/up.ts): NODE_OPTIONS may not carry --cpu-prof.
  const prof = process.env.CDBP_CPU_PROF_DIR ? ['--cpu-prof', `--cpu-prof-dir=${process.env.CDBP_CPU_PROF_DIR}`] : [];
  const proc = spawn(process.execPath, [...prof, ...args], { cwd: REPO, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
  proc.stderr!.on('data', (d: Buffer) => { out += d.toString(); });
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  let exitCode: number | null | undefined;
  void exited.then((c) => { exitCode = c; });
  const readyFile = path.join(dir, 'cas-ready.json');
  const deadline = Date.now() + (o.timeoutMs ?? 30_000);
  for (;;) {
    if (exitCode !== undefined) throw new Error(`cdbp cas exited with ${exitCode} before it was ready:\n${out}`);
    if (existsSync(readyFile)) {
      try {
        const info = JSON.parse(readFileSync(readyFile, 'utf8')) as { url: string; caFile: string; pid: number };
        if (info.pid === proc.pid) {
          return {
            url: info.url, caFile: info.caFile, caPem: readFileSync(info.caFile, 'utf8'), dir, platformKeyFile,
            platformPublicKeyFile: `${platformKeyFile}.pub`, owner, proc, output: () => out,
            async stop() {
              if (exitCode !== undefined) return exitCode;
              proc.kill('SIGTERM');
              // Generous: a clean stop under a loaded CI machine once took longer than 10 s (then SIGKILL, exit null).
              const t = setTimeout(() => proc.kill('SIGKILL'), 30_000);
              const code = await exited;
              clearTimeout(t);
              return code;
            },
          };
        }
      } catch { /* partially written; retry */ }
    }
    if (Date.now() > deadline) {
      proc.kill('SIGKILL');
      throw new Error(`cdbp cas not ready after ${o.timeoutMs ?? 30_000} ms:\n${out}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Runs `cdbp cas ...` expecting it to exit (e.g. refusing tampered state); resolves with code and output. */
export function runCdbp(args: string[], env: NodeJS.ProcessEnv = {}, timeoutMs = 30_000): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, [path.join(REPO, 'bin', 'cdbp.js'), ...args], {
      cwd: REPO, env: { ...process.env, CDBP_LOG_LEVEL: 'warn', ...env }, stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    proc.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    proc.stderr.on('data', (d: Buffer) => { out += d.toString(); });
    const t = setTimeout(() => { proc.kill('SIGKILL'); reject(new Error(`cdbp ${args.join(' ')} timed out:\n${out}`)); }, timeoutMs);
    proc.once('exit', (code) => { clearTimeout(t); resolve({ code, output: out }); });
  });
}

/**
 * Signs and applies a policy for `service` allowing the current measurement in simulated mode, with
 * `o.owner`, else the test CAS's default owner, else a new key.
 */
export async function applyTestPolicy(cas: Pick<TestCas, 'url' | 'caPem'> & { owner?: SigningKeyPair },
  o: Partial<BuildPolicyOptions> & { service: string; owner?: SigningKeyPair }): Promise<{ owner: SigningKeyPair; signed: SignedPolicy }> {
  const owner = o.owner ?? cas.owner ?? await generateSigningKeyPair();
  // The native binary is measured code and a proxy builds a stale one at start: build it before measuring
  // (as `cdbp up` does), or a single test run after a C change signs for the old binary.
  buildNativeDataPlane();
  const signed = await signPolicy(buildPolicy({ measurements: [measureShippedCode()], teeModes: ['simulated'], ...o }), owner);
  await applySignedPolicy(cas.url, cas.caPem, signed);
  return { owner, signed };
}
