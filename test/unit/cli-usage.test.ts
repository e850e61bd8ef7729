/**
 * Issue 21, item 9: a typo is a usage error, not an INTERNAL one — on every subcommand (cli/main.ts's
 * own list, so a command added later is covered too). In-process for the whole matrix; the stock binary
 * is run once end to end (the reported `cdbp up --bogus`).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { main, COMMAND_NAMES } from '../../cli/main.ts';

const CLI = fileURLToPath(new URL('../../bin/cdbp.js', import.meta.url));

/** Runs a command line in-process; resolves with its exit code and everything it printed. */
async function cdbp(args: string[]): Promise<{ code: number; output: string }> {
  const out: string[] = [];
  const { log, error } = console;
  console.log = (...a: unknown[]) => { out.push(a.join(' ')); };
  console.error = console.log;
  try {
    const code = await main(args);
    return { code, output: out.join('\n') };
  } catch (e) {
    return { code: -1, output: `${out.join('\n')}\nTHREW ${(e as Error).message}` };
  } finally {
    console.log = log;
    console.error = error;
  }
}

function assertUsage(r: { code: number; output: string }, cmd: string, names: RegExp, what: string): void {
  assert.equal(r.code, 2, `${what}: ${r.output}`);
  assert.match(r.output, names, `${what} names the option`);
  assert.match(r.output, new RegExp(`usage: cdbp ${cmd}`), `${what} shows the usage`);
  assert.doesNotMatch(r.output, /INTERNAL|To specify a positional argument|\n\s+at /, `${what}: no internal error, no stack`);
}

test('an unknown option on every subcommand: exit 2, the option named, the command usage shown', async () => {
  assert.ok(COMMAND_NAMES.length >= 8 && COMMAND_NAMES.includes('up') && COMMAND_NAMES.includes('admin'));
  for (const cmd of COMMAND_NAMES) {
    // Subcommands with their own subcommands get the typo after them too.
    const prefixes = cmd === 'cas' ? [['cas'], ['cas', 'audit', 'verify']] : cmd === 'policy' ? [['policy', 'sign']] : cmd === 'admin' ? [['admin', 'quit']] : [[cmd]];
    for (const p of prefixes) {
      assertUsage(await cdbp([...p, '--bogus']), cmd, /unknown option '--bogus'/, `cdbp ${p.join(' ')} --bogus`);
      assertUsage(await cdbp([...p, '-x']), cmd, /unknown option '-x'/, `cdbp ${p.join(' ')} -x`);
    }
  }
});

test('malformed options: a missing value, a value for a switch, a stray argument', async () => {
  const cases: Array<[string[], RegExp]> = [
    [['status', '--url'], /option '--url' needs a value/],
    [['up', '--dir'], /option '--dir' needs a value/],
    [['verify', '--json=yes'], /option '--json' takes no value/],
    [['proxy', '--mysql-port'], /option '--mysql-port' needs a value/],
    [['cas', '--owner'], /option '--owner' needs a value/],
    [['status', '--url', '--json'], /option '--url' needs a value/],
    [['up', 'stray'], /unexpected argument 'stray'/],
    [['recover', 'stray'], /unexpected argument 'stray'/],
    [['status', 'stray'], /unexpected argument 'stray'/],
    [['admin', 'explode'], /unknown action 'explode'/],
  ];
  for (const [args, re] of cases) assertUsage(await cdbp(args), args[0]!, re, `cdbp ${args.join(' ')}`);
});

test('an unknown command is a usage error too; --help exits 0 on every subcommand', async () => {
  const r = await cdbp(['bogus']);
  assert.equal(r.code, 2);
  assert.match(r.output, /unknown command 'bogus'/);
  for (const cmd of COMMAND_NAMES) {
    const h = await cdbp([cmd, '--help']);
    assert.equal(h.code, 0, `${cmd} --help: ${h.output}`);
    assert.match(h.output, new RegExp(`usage: cdbp ${cmd}`));
  }
});

test('the stock binary: `cdbp up --bogus` exits 2 with the usage, not INTERNAL', () => {
  const r = spawnSync(process.execPath, [CLI, 'up', '--bogus'], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /^cdbp up: unknown option '--bogus'\n\nusage: cdbp up /);
  assert.doesNotMatch(r.stderr, /INTERNAL/);
});
