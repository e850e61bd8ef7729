/**
 * Cross-field configuration checks run before attestation (issue 15, item 3): each combination that
 * cannot work is named; a good one passes. The end-to-end "fails in a second with no CAS request" is in
 * test/integration/proxy-config-fast.test.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadConfig } from '../../src/kernel/config.ts';
import { PROXY_SCHEMA } from '../../cli/settings.ts';
import { proxyConfigProblems, checkProxyConfig } from '../../cli/proxy-config-check.ts';

const base = { casUrl: 'https://127.0.0.1:8700', casCaFile: '/x/ca.pem', untrustedDir: '/x/u' };
const cfg = (o: Record<string, unknown>) => loadConfig(PROXY_SCHEMA, { ...base, ...o } as never, {});

test('good combinations pass', () => {
  assert.deepEqual(proxyConfigProblems(cfg({ manageMariadb: true, mariadbRunDir: '/r', datadir: '/d' })), []);
  assert.deepEqual(proxyConfigProblems(cfg({ backendSocket: '/s.sock' })), []);
  assert.deepEqual(proxyConfigProblems(cfg({ engine: 'postgres', managePostgres: true, pgRunDir: '/r', datadir: '/d' })), []);
  assert.deepEqual(proxyConfigProblems(cfg({ engine: 'postgres', pgBackendSocketDir: '/s' })), []);
  assert.deepEqual(proxyConfigProblems(cfg({ backendSocket: '/s', opsPort: 0, mysqlPort: 0, adminPort: 0 })), [], 'port 0 never clashes');
});

test('each bad combination is named', () => {
  const cases: Array<[Record<string, unknown>, RegExp]> = [
    [{ manageMariadb: true }, /CDBP_MANAGE_MARIADB needs CDBP_MARIADB_RUN_DIR and CDBP_DATADIR/],
    [{}, /no backend/],
    [{ backendSocket: '/s', backendHost: 'db' }, /exclusive/],
    [{ backendSocket: '/s', managePostgres: true }, /CDBP_MANAGE_POSTGRES needs CDBP_ENGINE=postgres/],
    [{ engine: 'postgres' }, /CDBP_ENGINE=postgres needs CDBP_PG_BACKEND_SOCKET_DIR or CDBP_MANAGE_POSTGRES/],
    [{ engine: 'postgres', managePostgres: true }, /CDBP_MANAGE_POSTGRES needs CDBP_PG_RUN_DIR and CDBP_DATADIR/],
    [{ engine: 'postgres', pgBackendSocketDir: '/s', manageMariadb: true }, /CDBP_MANAGE_MARIADB needs CDBP_ENGINE=mariadb/],
    [{ backendSocket: '/s', casUrl: 'http://cas:8700' }, /CDBP_CAS_URL must be https/],
    [{ backendSocket: '/s', casUrl: 'not a url' }, /CDBP_CAS_URL is not a URL/],
    [{ backendSocket: '/s', opsPort: 3307, mysqlPort: 3307 }, /CDBP_OPS_PORT and CDBP_MYSQL_PORT are both 3307/],
    [{ backendSocket: '/s', adminPort: 9090 }, /CDBP_OPS_PORT and CDBP_ADMIN_PORT are both 9090/],
    [{ manageMariadb: true, mariadbRunDir: '/r', datadir: '/d', keyringPort: 9090 }, /CDBP_OPS_PORT and CDBP_KEYRING_PORT are both 9090/],
  ];
  for (const [o, re] of cases) {
    const problems = proxyConfigProblems(cfg(o));
    assert.ok(problems.some((p) => re.test(p)), `${JSON.stringify(o)}: ${JSON.stringify(problems)}`);
    assert.throws(() => checkProxyConfig(cfg(o)), (e: any) => e.code === 'CONFIG_INVALID' && re.test(e.message));
  }
});
