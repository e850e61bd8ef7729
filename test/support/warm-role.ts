/**
 * A pre-loaded `cdbp cas` / `cdbp proxy` for crash loops: loads the role's modules (the slow part of a
 * start on a loaded machine: Node + the TypeScript loader), then waits for one line on stdin and runs
 * the real command with the given arguments, exactly as bin/cdbp.js would. A test keeps one warm spare
 * and starts it the moment it kill -9s the active process.
 *
 *   node --import tsx test/support/warm-role.ts cas --dir D --port P ...
 */
import { createInterface } from 'node:readline';

const [role, ...args] = process.argv.slice(2);
const mod = role === 'cas' ? await import('../../cli/commands/cas.ts') : role === 'proxy' ? await import('../../cli/commands/proxy.ts') : undefined;
if (!mod) throw new Error(`warm-role: unknown role ${String(role)}`);
if (role === 'proxy') await import('../../cli/proxy-role.ts');
const rl = createInterface({ input: process.stdin });
rl.once('line', () => {
  rl.close();
  mod.run(args).then((code) => { process.exitCode = code; }, (e: unknown) => {
    console.error(`warm-role ${role}: ${(e as Error).message}`);
    process.exitCode = 1;
  });
});
