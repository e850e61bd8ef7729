import { test } from 'node:test';
import assert from 'node:assert/strict';
import { keyringEnv, mariadbEncryptionConfig } from '../../keyring/index.ts';
import { parseVaultRequest } from '../../keyring/vault-api.ts';

const base = { vaultUrl: 'https://127.0.0.1:4444/v1/cdbp', caFile: '/run/cdbp/ca.pem' };

test('encryption config: plugin, URL, CA, empty token option, and every encryption switch', () => {
  const lines = mariadbEncryptionConfig({ ...base, ariaLogDir: '/dev/shm/x/aria' });
  for (const l of [
    'plugin-load-add=hashicorp_key_management.so', 'hashicorp-key-management=FORCE',
    'hashicorp-key-management-vault-url=https://127.0.0.1:4444/v1/cdbp', 'hashicorp-key-management-token=',
    'hashicorp-key-management-vault-ca=/run/cdbp/ca.pem', 'hashicorp-key-management-max-retries=1',
    'hashicorp-key-management-caching-enabled=ON', 'innodb_encrypt_tables=FORCE', 'innodb_encrypt_log=ON',
    'innodb_encrypt_temporary_tables=ON', 'encrypt_tmp_files=ON', 'encrypt_tmp_disk_tables=ON',
    'aria_encrypt_tables=ON', 'log-bin=mariadb-bin', 'encrypt_binlog=ON', 'aria-log-dir-path=/dev/shm/x/aria',
  ]) assert.ok(lines.includes(l), `missing ${l}`);
  assert.ok(!lines.some((l) => /^hashicorp-key-management-retries/.test(l)), 'not the wrong Debian sample name');
  assert.ok(!mariadbEncryptionConfig({ ...base, binlog: false }).some((l) => l.startsWith('log-bin')));
});

test('encryption config refuses values that would inject options or point off loopback', () => {
  assert.throws(() => mariadbEncryptionConfig({ ...base, caFile: '/x\nskip-grant-tables' }), /single-line/);
  assert.throws(() => mariadbEncryptionConfig({ ...base, vaultUrl: 'http://127.0.0.1:1/v1/cdbp' }), /https/);
  assert.throws(() => mariadbEncryptionConfig({ ...base, vaultUrl: 'https://10.0.0.1:1/v1/cdbp' }), /loopback/);
  assert.throws(() => mariadbEncryptionConfig({ ...base, vaultUrl: 'https://127.0.0.1:1/kr' }), /\/v1\//);
  assert.throws(() => mariadbEncryptionConfig({ ...base, caFile: 'ca.pem' }), /absolute/);
  assert.throws(() => mariadbEncryptionConfig({ ...base, maxRetries: -1 }), /maxRetries/);
});

test('keyringEnv passes the token as VAULT_TOKEN only, and checks its shape', () => {
  assert.deepEqual(keyringEnv('a'.repeat(43)), { VAULT_TOKEN: 'a'.repeat(43) });
  assert.throws(() => keyringEnv('short'));
  assert.throws(() => keyringEnv('x'.repeat(40) + '\n'));
});

test('request parsing: the three plugin requests, and one spelling only', () => {
  assert.deepEqual(parseVaultRequest('GET', '/v1/sys/mounts/cdbp/tune', 'cdbp'), { kind: 'tune' });
  assert.deepEqual(parseVaultRequest('GET', '/v1/cdbp/data/1', 'cdbp'), { kind: 'key', id: 1, version: 'latest' });
  assert.deepEqual(parseVaultRequest('GET', '/v1/cdbp/data/4294967294?version=7', 'cdbp'), { kind: 'key', id: 4294967294, version: 7 });
  for (const [m, t] of [['POST', '/v1/cdbp/data/1'], ['GET', '/v1/cdbp/data/0'], ['GET', '/v1/cdbp/data/4294967295'],
    ['GET', '/v1/cdbp/data/1?version=1&x=2'], ['GET', '/v1/cdbp/data/1/'], ['GET', '/v1/cdbp//data/1'],
    ['GET', '/v1/cdbp/data/-1'], ['GET', '/v1/cdbp/data/1e3'], ['GET', '/v1/sys/mounts/cdbp/tune?x'],
    ['GET', '/v1/sys/mounts/other/tune'], ['GET', '/v1/cdbp/data/' + '1'.repeat(600)], ['GET', undefined]] as const) {
    assert.equal(parseVaultRequest(m, t, 'cdbp').kind, 'malformed', `${m} ${t}`);
  }
});
