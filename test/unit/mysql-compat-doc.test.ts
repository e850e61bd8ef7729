/**
 * docs/MYSQL-ENDPOINT.md's compatibility table names every capability flag the proxy knows
 * (proxy/mysql/constants.ts) with a verdict, so a flag added to the code cannot go undocumented, and
 * the flags the proxy never lets a client negotiate are documented as refused.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { Cap, CAPS_NEVER_ADVERTISED } from '../../proxy/mysql/constants.ts';

const doc = readFileSync(new URL('../../docs/MYSQL-ENDPOINT.md', import.meta.url), 'utf8');
const section = doc.slice(doc.indexOf('## Compatibility'));
const end = section.indexOf('\n## ', 3);
const table = end > 0 ? section.slice(0, end) : section;

/** The verdict cell of the table row naming `name` (first column, in backticks). */
function verdict(name: string): string | undefined {
  const row = table.split('\n').find((l) => l.startsWith(`| \`${name}\``));
  return row?.split('|')[2]?.trim();
}

test('every capability flag has a row with a verdict (supported / refused / not yet / untested / n/a)', () => {
  assert.ok(table.startsWith('## Compatibility'), 'docs/MYSQL-ENDPOINT.md has a Compatibility section');
  for (const name of Object.keys(Cap)) {
    const v = verdict(name);
    assert.ok(v, `${name} has a row`);
    assert.match(v, /^(supported|refused|not yet|untested|n\/a)\b/, `${name}: verdict "${v}"`);
  }
});

test('the flags the proxy never advertises are documented as refused, compression with its reason', () => {
  for (const [name, bit] of Object.entries(Cap)) {
    if ((bit & CAPS_NEVER_ADVERTISED) !== 0n) assert.match(verdict(name)!, /^refused/, name);
  }
  const compress = table.split('\n').find((l) => l.startsWith('| `CLIENT_COMPRESS`'))!;
  assert.match(compress, /uncompressed/);
});

test('the auth plugins have rows', () => {
  for (const plugin of ['mysql_native_password', 'client_ed25519', 'caching_sha2_password', 'sha256_password', 'mysql_clear_password', 'unix_socket', 'auth_gssapi_client', 'parsec', 'dialog']) {
    assert.ok(verdict(plugin), `${plugin} has a row`);
  }
});
