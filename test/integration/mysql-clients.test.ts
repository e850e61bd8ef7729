import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import mariadb from 'mariadb';
import mysql2 from 'mysql2/promise';
import { startPrivateMariadb, type PrivateMariadb } from '../support/mariadb.ts';
import { makeTestPki } from '../support/test-pki.ts';
import { tempDir } from '../support/tmp.ts';
import { silentLogger } from '../../src/kernel/log.ts';
import { createMysqlProxy, type MysqlProxy } from '../../proxy/mysql/index.ts';

const run = promisify(execFile);

let db: PrivateMariadb;
let proxy: MysqlProxy;
let port: number;
let caFile: string;
let caPem: string;
const dir = tempDir('mysql-clients');

before(async () => {
  db = await startPrivateMariadb();
  const pki = makeTestPki();
  caPem = pki.caPem;
  caFile = pki.writeTo(dir.path).caFile;
  proxy = createMysqlProxy({
    listen: { host: '127.0.0.1', port: 0 },
    backend: { socket: db.server.socket },
    tls: { keyPem: pki.keyPem, certPem: pki.certPem },
    log: silentLogger(),
  });
  const addr = await proxy.listen();
  assert.ok('port' in addr);
  port = addr.port;
});

after(async () => {
  await proxy?.close();
  await db?.stop();
  dir.remove();
});

function cli(args: string[], user = db.user, password = db.password) {
  return run('mariadb', ['-h127.0.0.1', `-P${port}`, `-u${user}`, `-p${password}`, `--ssl-ca=${caFile}`, '--ssl-verify-server-cert', '--batch', '--skip-column-names', ...args], { timeout: 20_000 });
}

test('mariadb CLI connects over TLS verified with the CA and queries through the proxy', async () => {
  const { stdout } = await cli(['-e', "SELECT CURRENT_USER(); SHOW SESSION STATUS LIKE 'Ssl_cipher'"]);
  assert.match(stdout, /^app@/m);
  // Backend leg is a unix socket: the database sees no TLS; the client leg is TLS (verified by --ssl-verify-server-cert).
  assert.match(stdout, /Ssl_cipher\t*$/m);
});
