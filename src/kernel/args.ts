/**
 * Minimal flag parser on node's util.parseArgs: every option is a string (or boolean flag); typing and
 * validation happen in the config schema, so the CLI and env share one set of rules. A flag the command
 * does not know, a missing value, or an argument where none is taken is a USAGE error (exit 2, with the
 * command's usage: cli/main.ts), in our words, not Node's.
 */
import { parseArgs } from 'node:util';
import { CdbpError } from './errors.ts';

export function parseFlags(argv: string[], booleans: string[] = [], strings: string[] = [], o: { maxPositionals?: number } = {}):
  { flags: Record<string, string | boolean | undefined>; positionals: string[] } {
  const options: Record<string, { type: 'string' | 'boolean' }> = {};
  for (const b of ['help', ...booleans]) options[b] = { type: 'boolean' };
  for (const s of strings) options[s] = { type: 'string' };
  let parsed: ReturnType<typeof parseArgs>;
  try {
    parsed = parseArgs({ args: argv, options, allowPositionals: true, strict: true });
  } catch (e) {
    throw usageError(e, argv, options);
  }
  const { values, positionals } = parsed;
  if (o.maxPositionals !== undefined && positionals.length > o.maxPositionals) {
    throw new CdbpError('USAGE', `unexpected argument '${positionals[o.maxPositionals]}'`);
  }
  return { flags: values as Record<string, string | boolean | undefined>, positionals };
}

/** Node's parseArgs errors, said plainly: which option, and what is wrong with it. */
function usageError(e: unknown, argv: string[], options: Record<string, { type: 'string' | 'boolean' }>): CdbpError {
  const err = e as { code?: string; message?: string };
  const named = /'(-{1,2}[^' ]+)/.exec(err.message ?? '')?.[1];
  const option = named ?? argv.find((a) => a.startsWith('-')) ?? '?';
  const name = option.replace(/^-+/, '').replace(/=.*$/, '');
  switch (err.code) {
    case 'ERR_PARSE_ARGS_UNKNOWN_OPTION':
      return new CdbpError('USAGE', `unknown option '${option}'`, { cause: e });
    case 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE':
      return new CdbpError('USAGE', options[name]?.type === 'boolean'
        ? `option '--${name}' takes no value`
        : `option '--${name}' needs a value (--${name} VALUE)`, { cause: e });
    case 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL':
      return new CdbpError('USAGE', 'unexpected argument', { cause: e });
    default:
      return new CdbpError('USAGE', `cannot parse the options: ${err.message ?? String(e)}`, { cause: e });
  }
}

/** `--mysql-port` → `mysqlPort`. */
export function camel(flag: string): string {
  return flag.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
}
