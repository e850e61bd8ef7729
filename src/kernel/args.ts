/**
 * Minimal flag parser on node's util.parseArgs: every option is a string (or boolean flag); typing and
 * validation happen in the config schema, so the CLI and env share one set of rules.
 */
import { parseArgs } from 'node:util';

export function parseFlags(argv: string[], booleans: string[] = [], strings: string[] = []):
  { flags: Record<string, string | boolean | undefined>; positionals: string[] } {
  const options: Record<string, { type: 'string' | 'boolean' }> = {};
  for (const b of ['help', ...booleans]) options[b] = { type: 'boolean' };
  for (const s of strings) options[s] = { type: 'string' };
  const { values, positionals } = parseArgs({ args: argv, options, allowPositionals: true, strict: true });
  return { flags: values as Record<string, string | boolean | undefined>, positionals };
}

/** `--mysql-port` → `mysqlPort`. */
export function camel(flag: string): string {
  return flag.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
}
