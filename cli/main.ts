/**
 * `cdbp` entry point: a thin dispatcher. Each subcommand lives in cli/commands/<name>.ts and exports
 * `run(argv)`; this file and cli/commands are the composition root, the only code that wires
 * cas/, proxy/, keyring/ and src/ together.
 */
import { asCdbpError, isCdbpError } from '../src/kernel/errors.ts';

const COMMANDS: Record<string, { summary: string; load: () => Promise<{ run(argv: string[]): Promise<number> }> }> = {
  up: { summary: 'run the embedded local stack (CAS, MariaDB, proxy) in the foreground', load: () => import('./commands/up.ts') },
  cas: { summary: 'run the Configuration and Attestation Service (and `cas audit verify`)', load: () => import('./commands/cas.ts') },
  policy: { summary: 'owner tools: policy init | sign | apply', load: () => import('./commands/policy.ts') },
  recover: { summary: 'owner: re-anchor a service counter after a legitimate restore (signed, audited)', load: () => import('./commands/recover.ts') },
  proxy: { summary: 'run the attested proxy (MySQL/PostgreSQL listeners, keyring, ops API)', load: () => import('./commands/proxy.ts') },
  collateral: { summary: 'fetch and check TEE collateral (Intel PCS, AMD KDS) for the CAS', load: () => import('./commands/collateral.ts') },
  verify: { summary: 'check a running endpoint: TLS chains to the CAS CA, evidence binds its key and measurement', load: () => import('./commands/verify.ts') },
  admin: { summary: 'drive a running proxy: drain | quit | renew (loopback admin API, per-start token)', load: () => import('./commands/admin.ts') },
  status: { summary: 'print the status of a running role (--url http://127.0.0.1:PORT)', load: () => import('./commands/status.ts') },
};

/** Every subcommand's name (tests walk them all). */
export const COMMAND_NAMES: readonly string[] = Object.keys(COMMANDS);

function usage(): string {
  return ['usage: cdbp <command> [options]', '', 'commands:',
    ...Object.entries(COMMANDS).map(([n, c]) => `  ${n.padEnd(10)} ${c.summary}`),
    '', 'Run `cdbp <command> --help` for its options.'].join('\n');
}

/** Runs one `cdbp` command line; resolves with the exit code (throws only for real failures). */
export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    console.log(usage());
    return name ? 0 : 2;
  }
  const cmd = COMMANDS[name];
  if (!cmd) {
    console.error(`cdbp: unknown command '${name}'\n\n${usage()}`);
    return 2;
  }
  const mod = await cmd.load();
  try {
    return await mod.run(rest);
  } catch (e) {
    if (!isCdbpError(e, 'USAGE')) throw e;
    // A typo is the user's mistake, not ours: name it, show this command's usage, exit 2.
    console.error(`cdbp ${name}: ${e.message}\n\n${await usageOf(mod)}`);
    return 2;
  }
}

/** A command's usage is what its --help prints (one source), captured rather than printed. */
async function usageOf(mod: { run(argv: string[]): Promise<number> }): Promise<string> {
  const lines: string[] = [];
  const { log, error } = console;
  console.log = (...a: unknown[]) => { lines.push(a.join(' ')); };
  console.error = console.log;
  try {
    await mod.run(['--help']);
  } catch { /* the usage is whatever was printed */ } finally {
    console.log = log;
    console.error = error;
  }
  return lines.join('\n').trim();
}

/** The process entry point (bin/cdbp.js): exit code and the one-line error for failures. */
export function runMain(): void {
  void main(process.argv.slice(2)).then(
    (code) => { process.exitCode = code; },
    (e: unknown) => {
      const err = asCdbpError(e);
      // One line, no stack: operators need the reason; CDBP_DEBUG=1 shows the stack.
      console.error(`cdbp: ${err.code}: ${err.message}`);
      if (process.env.CDBP_DEBUG) console.error(e);
      process.exitCode = 1;
    },
  );
}
