/**
 * Issue 15, item 3: a configuration that cannot work fails before attestation — the stock `cdbp proxy`
 * exits 1 with CONFIG_INVALID and the CAS address never sees a connection (before, the check ran after
 * attesting, the freshness verdict and the keyring).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import path from 'node:path';
import { tempDir } from '../support/tmp.ts';
import { runCdbp } from '../support/cas.ts';

test('cdbp proxy with a bad combination: CONFIG_INVALID at once, no CAS request', async () => {
  const tmp = tempDir('proxy-config');
  let connections = 0;
  const cas = net.createServer((s) => { connections++; s.destroy(); });
  await new Promise<void>((r) => cas.listen(0, '127.0.0.1', r));
  try {
    const port = (cas.address() as net.AddressInfo).port;
    const env = {
      CDBP_CAS_URL: `https://127.0.0.1:${port}`, CDBP_CAS_CA_FILE: path.join(tmp.path, 'ca.pem'),
      CDBP_TEE_MODE: 'simulated', CDBP_ALLOW_SIMULATED: '1', CDBP_UNTRUSTED_DIR: path.join(tmp.path, 'untrusted'),
      CDBP_OPS_PORT: '0', CDBP_MYSQL_PORT: '0',
      // Managed MariaDB without a datadir or run dir: cannot work.
      CDBP_MANAGE_MARIADB: '1',
    };
    const t0 = Date.now();
    const r = await runCdbp(['proxy'], env, 60_000);
    assert.equal(r.code, 1, r.output);
    assert.match(r.output, /CONFIG_INVALID: configuration cannot work: CDBP_MANAGE_MARIADB needs CDBP_MARIADB_RUN_DIR and CDBP_DATADIR/);
    assert.equal(connections, 0, 'no request reached the CAS address');
    assert.doesNotMatch(r.output, /attesting|INTERNAL/);
    // Seconds, not an attestation round trip (loose bound: a loaded CI box loads tsx slowly).
    assert.ok(Date.now() - t0 < 30_000, `${Date.now() - t0} ms`);
  } finally {
    cas.close();
    tmp.remove();
  }
});
