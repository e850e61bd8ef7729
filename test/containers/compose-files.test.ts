/**
 * Static checks of the compose stack's files (no engine needed, only the docker-compose binary):
 * the hand-written MariaDB encryption config equals what keyring/mariadb-config.ts generates, the paths
 * the proxy is told match the ones MariaDB uses, the compose file validates, and it carries no secret.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { mariadbEncryptionConfig } from '../../keyring/mariadb-config.ts';
import { COMPOSE_DIR, COMPOSE_FILE, REPO_ROOT, run } from './support.ts';

const cnfLines = (file: string) => readFileSync(path.join(COMPOSE_DIR, 'mariadb', file), 'utf8')
  .split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#') && !l.startsWith('['));
const option = (lines: string[], name: string) => lines.find((l) => l.startsWith(`${name}=`))?.slice(name.length + 1);

/**
 * The lines of one service in the compose file (from `  name:`, with or without an anchor, to the next
 * top-level service); also works on the normalized output of `docker-compose config`.
 */
function serviceBlock(yml: string, name: string): string {
  const start = yml.search(new RegExp(`\n  ${name}:( &[a-z-]+)?\n`));
  assert.ok(start >= 0, `service ${name} not in the compose file`);
  const rest = yml.slice(start + 1);
  const end = rest.slice(1).search(/\n {2}[a-z][a-z0-9-]*:( &[a-z-]+)?\n|\n[a-z]/);
  return end < 0 ? rest : rest.slice(0, end + 1);
}

describe('compose files', () => {
  it('encryption.cnf is exactly mariadbEncryptionConfig() for the compose paths', () => {
    const expected = mariadbEncryptionConfig({
      vaultUrl: 'https://127.0.0.1:8200/v1/cdbp',
      caFile: '/run/cdbp/keyring-ca.pem',
      ariaLogDir: '/run/cdbp-volatile/aria-log',
    });
    assert.deepEqual(cnfLines('encryption.cnf'), expected);
  });

  it('the proxy and MariaDB agree on socket, datadir, keyring port, CA and token paths', () => {
    const server = cnfLines('server.cnf');
    const enc = cnfLines('encryption.cnf');
    const yml = readFileSync(COMPOSE_FILE, 'utf8');
    const env = (name: string) => new RegExp(`^\\s+${name}: (.+)$`, 'm').exec(yml)?.[1]?.trim();
    assert.equal(env('CDBP_BACKEND_SOCKET'), option(server, 'socket'));
    assert.equal(env('CDBP_DATADIR'), option(server, 'datadir'));
    assert.equal(option(enc, 'hashicorp-key-management-vault-url'), `https://127.0.0.1:${env('CDBP_KEYRING_PORT')!.replace(/"/g, '')}/v1/cdbp`);
    assert.equal(option(enc, 'hashicorp-key-management-vault-ca'), `${env('CDBP_KEYRING_CA_DIR')}/keyring-ca.pem`);
    const entrypoint = readFileSync(path.join(COMPOSE_DIR, 'mariadb', 'entrypoint.sh'), 'utf8');
    assert.match(entrypoint, /TOKEN_FILE=\$\{CDBP_KEYRING_TOKEN_FILE:-\$RUN_DIR\/keyring-token\}/);
    assert.equal(env('CDBP_KEYRING_TOKEN_FILE'), '/run/cdbp/keyring-token');
    // The untrusted dir (sealed freshness record) sits on the same volume as the datadir: one disk, one
    // snapshot, rolled back together.
    assert.equal(path.dirname(env('CDBP_UNTRUSTED_DIR')!), path.dirname(env('CDBP_DATADIR')!));
    assert.equal(env('network_mode'), '"service:mariadb"');
  });

  it('validates with docker-compose and names every service', async () => {
    const r = await run('docker-compose', ['-f', COMPOSE_FILE, 'config', '-q']);
    assert.equal(r.code, 0, r.stderr);
    const services = await run('docker-compose', ['-f', COMPOSE_FILE, 'config', '--services']);
    assert.equal(services.code, 0, services.stderr);
    // docker-compose 1.29 lists profile services too; `up` starts them only with --profile postgres / ha.
    assert.deepEqual(services.stdout.trim().split('\n').sort(),
      ['cas', 'cas-1', 'cas-2', 'cas-3', 'etcd-1', 'etcd-2', 'etcd-3', 'ha-recover', 'mariadb', 'mariadb-ha',
        'policy', 'policy-ha', 'policy-pg', 'postgres', 'proxy', 'proxy-ha', 'setup']);
    const yml = readFileSync(COMPOSE_FILE, 'utf8');
    for (const name of ['policy-pg', 'postgres']) {
      assert.match(serviceBlock(yml, name), /^\s+profiles: \["postgres"\]$/m, `${name} is in the postgres profile`);
    }
    for (const name of ['setup', 'cas', 'policy', 'mariadb', 'proxy']) {
      assert.doesNotMatch(serviceBlock(yml, name), /profiles:/, `${name} stays in the default stack`);
    }
  });

  it('the postgres profile runs PostgreSQL inside the proxy, encrypted at rest, with FUSE and nothing more', () => {
    const yml = readFileSync(COMPOSE_FILE, 'utf8');
    const pg = serviceBlock(yml, 'postgres');
    const env = (name: string) => new RegExp(`^\\s+${name}: (.+)$`, 'm').exec(pg)?.[1]?.trim().replace(/^"|"$/g, '');
    assert.equal(env('CDBP_ENGINE'), 'postgres');
    assert.equal(env('CDBP_SERVICE'), 'postgres');
    assert.equal(env('CDBP_MANAGE_POSTGRES'), '1');
    assert.equal(env('CDBP_PG_ENCRYPTION'), 'gocryptfs');
    // Ciphertext and the sealed record on one volume: one snapshot, rolled back together.
    assert.equal(path.dirname(env('CDBP_UNTRUSTED_DIR')!), path.dirname(env('CDBP_DATADIR')!));
    assert.match(pg, /- pg-untrusted:\/srv\/untrusted$/m);
    // The mount point and run dir are memory only.
    assert.match(pg, new RegExp(`- ${env('CDBP_PG_RUN_DIR')}:size=`));
    // FUSE: the device and SYS_ADMIN, on top of cap_drop ALL; no privileged mode.
    assert.match(pg, /devices: \["\/dev\/fuse:\/dev\/fuse"\]/);
    assert.match(pg, /cap_drop: \[ALL\]/);
    assert.match(pg, /cap_add: \[SYS_ADMIN, /);
    assert.doesNotMatch(pg, /privileged:/);
    assert.match(pg, new RegExp(`http://127\\.0\\.0\\.1:${env('CDBP_OPS_PORT')}/readyz`));
    const dockerfile = readFileSync(path.join(COMPOSE_DIR, 'images', 'postgres.Dockerfile'), 'utf8');
    assert.match(dockerfile, /postgresql-15 .*gocryptfs fuse3/);
  });

  it('the ha profile: 3 etcd and 3 CAS members, hardened, each its own state; recovery only when the owner names it', async () => {
    // The resolved file (anchors and merges applied): docker-compose prints it normalized.
    const r = await run('docker-compose', ['-f', COMPOSE_FILE, 'config']);
    assert.equal(r.code, 0, r.stderr);
    const resolved = r.stdout;
    const ha = ['etcd-1', 'etcd-2', 'etcd-3', 'cas-1', 'cas-2', 'cas-3', 'policy-ha', 'mariadb-ha', 'proxy-ha'];
    for (const name of ha) assert.match(serviceBlock(resolved, name), /^ {4}profiles:\n {4}- ha\n/m, `${name} is in the ha profile`);
    // The owner's recovery is in a profile of its own: `up` never starts it, only `run ha-recover` does.
    const recover = serviceBlock(resolved, 'ha-recover');
    assert.match(recover, /^ {4}profiles:\n {4}- ha-recover\n/m);
    assert.doesNotMatch(resolved, /^ {6}ha-recover:$/m, 'nothing depends on ha-recover');
    assert.match(recover, /- owner-key:\/keys\/owner:ro$/m);
    assert.match(recover, /- untrusted-ha:\/srv\/untrusted:ro$/m);
    for (const [i, name] of ['cas-1', 'cas-2', 'cas-3'].entries()) {
      const b = serviceBlock(resolved, name);
      assert.match(b, new RegExp(`CDBP_CAS_HA_SLOT: '${i + 1}'`), `${name} holds slot ${i + 1}`);
      assert.match(b, new RegExp(`- cas-${i + 1}-state:/var/lib/cdbp-cas:rw$`, 'm'), `${name} has its own state volume`);
      assert.match(b, new RegExp(`CDBP_CAS_TLS_NAMES: ${name}$`, 'm'));
      assert.match(b, /compose\/bin\/cas-ha-run\.sh/);
      // Only member 1 publishes the deployment CA and reads the owner's recovery statement.
      if (i === 0) {
        assert.match(b, /- cas-ha-public:\/srv\/cas-public:rw$/m);
        assert.match(b, /- cas-ha-recovery:\/srv\/cas-ha-recovery:rw$/m);
      } else {
        assert.match(b, /- cas-ha-public:\/srv\/cas-public:ro$/m);
        assert.doesNotMatch(b, /cas-ha-recovery/);
      }
    }
    for (const [i, name] of ['etcd-1', 'etcd-2', 'etcd-3'].entries()) {
      assert.match(serviceBlock(resolved, name), new RegExp(`- etcd-${i + 1}-data:/var/lib/cdbp-etcd:rw$`, 'm'));
    }
    for (const name of ['etcd-1', 'etcd-2', 'etcd-3', 'cas-1', 'cas-2', 'cas-3', 'policy-ha', 'mariadb-ha', 'proxy-ha', 'ha-recover']) {
      const b = serviceBlock(resolved, name);
      assert.match(b, /^ {4}user: '?10001:10001'?$/m, `${name} runs as cdbp`);
      assert.match(b, /^ {4}read_only: true$/m, `${name} has a read-only rootfs`);
      assert.match(b, /^ {4}cap_drop:\n {4}- ALL$/m, `${name} drops every capability`);
      assert.match(b, /no-new-privileges:true/, name);
      assert.doesNotMatch(b, /privileged:|cap_add:/, name);
    }
    // A crashed member or etcd member comes back (and a member rejoins as a new incarnation).
    for (const name of ['etcd-1', 'etcd-2', 'etcd-3', 'cas-1', 'cas-2', 'cas-3']) {
      const b = serviceBlock(resolved, name);
      assert.match(b, /^ {4}restart: unless-stopped$/m, `${name} restarts`);
      assert.doesNotMatch(b, /^ {4}ports:/m, `${name} publishes no port`);
    }
    // The HA pair: its own disk and tmpfs, the three members, ports apart from the default pair's.
    const proxy = serviceBlock(resolved, 'proxy-ha');
    assert.match(proxy, /CDBP_CAS_URL: https:\/\/cas-1:8700,https:\/\/cas-2:8700,https:\/\/cas-3:8700$/m);
    assert.match(proxy, /network_mode: service:mariadb-ha$/m);
    assert.match(proxy, /- untrusted-ha:\/srv\/untrusted:rw$/m);
    assert.match(proxy, /- shared-run-ha:\/run\/cdbp:rw$/m);
    assert.match(serviceBlock(resolved, 'mariadb-ha'), /- untrusted-ha:\/srv\/untrusted:rw$/m);
    assert.match(serviceBlock(resolved, 'mariadb-ha'), /- 127\.0\.0\.1:3308:3307\/tcp$/m);
    assert.match(serviceBlock(resolved, 'mariadb-ha'), /- 127\.0\.0\.1:9092:9090\/tcp$/m);
    const dockerfile = readFileSync(path.join(COMPOSE_DIR, 'images', 'etcd.Dockerfile'), 'utf8');
    assert.match(dockerfile, /apt-get install -y --no-install-recommends etcd-server;/);
    assert.match(dockerfile, /^USER \$\{CDBP_UID\}:\$\{CDBP_UID\}$/m);
  });

  it('carries no secret and runs nothing as root but the FUSE mounter', () => {
    const yml = readFileSync(COMPOSE_FILE, 'utf8');
    for (const line of yml.split('\n')) {
      if (/^\s*#/.test(line)) continue;
      // Names of files/dirs/timeouts are fine; a value for a password, token or secret is not.
      const m = /^\s*-?\s*([A-Z0-9_]*(?:PASSWORD|TOKEN|SECRET)[A-Z0-9_]*)\s*[:=]\s*(\S.*)$/i.exec(line);
      // etcd's initial cluster token is a cluster name (it keeps two clusters' members apart), no credential.
      if (m && !/_(FILE|DIR|SECONDS)$/i.test(m[1]!) && m[1] !== 'ETCD_INITIAL_CLUSTER_TOKEN') assert.fail(`compose line looks like a secret: ${line}`);
    }
    // Every service runs as the unprivileged cdbp uid with a read-only root filesystem, except the
    // postgres profile's proxy: root in its container for the FUSE mount (PostgreSQL runs unprivileged).
    assert.equal(yml.match(/user: "10001:10001"/g)?.length, 2, 'the app anchor and mariadb set the user');
    assert.equal(yml.match(/user: "0:0"/g)?.length, 1, 'only the encrypting PostgreSQL proxy is root');
    assert.equal(yml.match(/read_only: true/g)?.length, 3);
    for (const f of ['app.Dockerfile', 'mariadb.Dockerfile', 'etcd.Dockerfile']) {
      const dockerfile = readFileSync(path.join(COMPOSE_DIR, 'images', f), 'utf8');
      assert.match(dockerfile, /^USER \$\{CDBP_UID\}:\$\{CDBP_UID\}$/m, `${f} switches to the cdbp user`);
      assert.doesNotMatch(dockerfile, /^COPY .*(\.key|\.pem|owner|sealing)/m, `${f} copies key material`);
    }
    const ignore = readFileSync(path.join(REPO_ROOT, '.dockerignore'), 'utf8');
    assert.match(ignore, /\*\*\/\*\.key/);
  });
});
