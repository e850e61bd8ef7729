import { test } from 'node:test';
import assert from 'node:assert/strict';
import { checkMariadbEncryption, verifyMariadbEncryption, type MariadbEncryptionFacts, type EncryptionExpectations } from '../../src/db/mariadb-encryption-check.ts';
import { mariadbHardeningConfig, hardeningPaths } from '../../src/db/mariadb-hardening.ts';

const VOL = '/dev/shm/cdbp-x';
const EXPECT: EncryptionExpectations = { plugin: 'hashicorp_key_management', hardened: true, volatileDirs: [VOL] };

/** What a healthy managed server reports (shape of readMariadbEncryptionFacts). */
function healthy(): MariadbEncryptionFacts {
  return {
    variables: {
      innodb_encrypt_tables: 'FORCE', innodb_encrypt_log: 'ON', innodb_encrypt_temporary_tables: 'ON', innodb_encryption_threads: '2',
      encrypt_tmp_files: 'ON', encrypt_tmp_disk_tables: 'ON', aria_encrypt_tables: 'ON', encrypt_binlog: 'ON', log_bin: 'ON',
      enforce_storage_engine: 'InnoDB', secure_file_priv: `${VOL}/files/`, log_output: 'FILE', general_log: 'OFF',
      general_log_file: `${VOL}/logs/general.log`, slow_query_log: 'OFF', slow_query_log_file: `${VOL}/logs/slow.log`,
      log_error: `${VOL}/logs/mariadb.err`, aria_log_dir_path: `${VOL}/aria-log`, tmpdir: `${VOL}/tmp`,
    },
    encryptionPlugins: [{ name: 'hashicorp_key_management', status: 'ACTIVE' }],
    tablespaces: [{ name: 'innodb_system', scheme: 1, rotating: false }, { name: 'app/t', scheme: 1, rotating: false }],
    nonInnodbTables: [],
    keysServed: 3,
    serverUid: 107,
  };
}

test('a healthy server passes', () => {
  assert.deepEqual(checkMariadbEncryption(healthy(), EXPECT), { ok: true, failures: [], pending: [] });
});

test('each way a server can be unsafe is named', () => {
  const cases: Array<[string, (f: MariadbEncryptionFacts) => void, RegExp]> = [
    ['no key plugin', (f) => { f.encryptionPlugins = []; }, /hashicorp_key_management is not active \(active: none\)/],
    ['another key plugin', (f) => { f.encryptionPlugins = [{ name: 'file_key_management', status: 'ACTIVE' }]; }, /active: file_key_management/],
    ['two plugins', (f) => { f.encryptionPlugins.push({ name: 'file_key_management', status: 'ACTIVE' }); }, /more than one/],
    ['no keys from us', (f) => { f.keysServed = 0; }, /served no key/],
    ['tables ON only', (f) => { f.variables.innodb_encrypt_tables = 'ON'; }, /innodb_encrypt_tables=ON \(expected FORCE\)/],
    ['redo plain', (f) => { f.variables.innodb_encrypt_log = 'OFF'; }, /innodb_encrypt_log=OFF/],
    ['temp files plain', (f) => { f.variables.encrypt_tmp_files = 'OFF'; }, /encrypt_tmp_files=OFF/],
    ['aria plain', (f) => { f.variables.aria_encrypt_tables = 'OFF'; }, /aria_encrypt_tables=OFF/],
    ['binlog plain', (f) => { f.variables.encrypt_binlog = 'OFF'; }, /encrypt_binlog=OFF/],
    ['no binlog', (f) => { f.variables.log_bin = 'OFF'; }, /log_bin=OFF/],
    ['no threads', (f) => { f.variables.innodb_encryption_threads = '0'; }, /innodb_encryption_threads=0/],
    ['plain tablespace', (f) => { f.tablespaces.push({ name: 'app/old', scheme: 0, rotating: false }); }, /app\/old is not encrypted/],
    ['tablespace unknown to the view', (f) => { f.tablespaces.push({ name: 'app/x', scheme: undefined, rotating: false }); }, /app\/x is not encrypted/],
    ['MyISAM table', (f) => { f.nonInnodbTables.push({ schema: 'app', table: 'm', engine: 'MyISAM', rowFormat: 'Fixed' }); }, /app\.m uses MyISAM \(Fixed\)/],
    ['CSV table', (f) => { f.nonInnodbTables.push({ schema: 'app', table: 'c', engine: 'CSV', rowFormat: null }); }, /app\.c uses CSV/],
    ['Aria not PAGE', (f) => { f.nonInnodbTables.push({ schema: 'app', table: 'a', engine: 'Aria', rowFormat: 'Dynamic' }); }, /app\.a uses Aria \(Dynamic\)/],
    ['engine not enforced', (f) => { f.variables.enforce_storage_engine = ''; }, /enforce_storage_engine=\(empty\)/],
    ['OUTFILE anywhere', (f) => { f.variables.secure_file_priv = ''; }, /secure_file_priv=\(empty\)/],
    ['log to tables', (f) => { f.variables.log_output = 'TABLE'; f.variables.general_log = 'ON'; }, /CSV tables in the datadir/],
    ['general log on the volume', (f) => { f.variables.general_log_file = '/srv/data/host.log'; }, /general_log_file=\/srv\/data\/host.log is not on the memory-backed/],
    ['error log on the volume', (f) => { f.variables.log_error = '/srv/data/err'; }, /log_error=/],
    ['prefix is not a parent', (f) => { f.variables.tmpdir = `${VOL}-evil/tmp`; }, /tmpdir=/],
    ['aria log on the volume', (f) => { f.variables.aria_log_dir_path = '/srv/data'; }, /aria_log_dir_path=/],
    ['root', (f) => { f.serverUid = 0; }, /runs as root/],
  ];
  for (const [name, mutate, want] of cases) {
    const f = healthy();
    mutate(f);
    const v = checkMariadbEncryption(f, EXPECT);
    assert.equal(v.ok, false, name);
    assert.match(v.failures.join('\n'), want, name);
  }
});

test('allowed: MEMORY tables, Aria PAGE tables with aria_encrypt_tables, unknowns left out; external servers skip hardening', () => {
  const f = healthy();
  f.nonInnodbTables.push({ schema: 'app', table: 'mem', engine: 'MEMORY', rowFormat: 'Fixed' }, { schema: 'app', table: 'ar', engine: 'Aria', rowFormat: 'Page' });
  delete f.keysServed;
  delete f.serverUid;
  assert.equal(checkMariadbEncryption(f, EXPECT).ok, true);
  const ext = healthy();
  ext.variables.enforce_storage_engine = '';
  ext.variables.secure_file_priv = '';
  ext.variables.log_error = '';
  assert.equal(checkMariadbEncryption(ext, { plugin: 'hashicorp_key_management', hardened: false }).ok, true);
});

test('background encryption in progress is pending, then final', async () => {
  const f = healthy();
  f.tablespaces.push({ name: 'app/big', scheme: 0, rotating: true });
  const v = checkMariadbEncryption(f, EXPECT);
  assert.deepEqual([v.ok, v.failures, v.pending], [false, [], ['app/big']]);
  let reads = 0;
  const done = await verifyMariadbEncryption(async () => (++reads < 3 ? f : healthy()), EXPECT, { pollMs: 1 });
  assert.equal(done.ok, true);
  assert.equal(reads, 3);
  await assert.rejects(verifyMariadbEncryption(async () => f, EXPECT, { pollMs: 1, pendingTimeoutMs: 20 }),
    (e: Error & { code?: string }) => e.code === 'BACKEND_NOT_ENCRYPTED' && /app\/big is still not encrypted/.test(e.message));
});

test('the hardening lines put every SQL-bearing file on the volatile dir and match what the check expects', () => {
  const lines = mariadbHardeningConfig({ volatileDir: VOL, pluginDir: '/run/cdbp/plugins' });
  const p = hardeningPaths({ volatileDir: VOL });
  for (const want of ['enforce_storage_engine=InnoDB', 'log_output=FILE', 'general_log=OFF', `general_log_file=${p.generalLog}`,
    `slow_query_log_file=${p.slowLog}`, `secure_file_priv=${p.filesDir}`, `log-error=${p.errorLog}`, 'plugin_dir=/run/cdbp/plugins']) {
    assert.ok(lines.includes(want), want);
  }
  assert.throws(() => mariadbHardeningConfig({ volatileDir: 'relative' }), /absolute/);
  assert.throws(() => mariadbHardeningConfig({ volatileDir: '/x\nplugin_dir=/evil' }), /single-line/);
});
