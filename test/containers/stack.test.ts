/**
 * The compose stack under a real Docker engine: images built with `docker build`, brought up with
 * docker-compose (through testcontainers), the host's stock `mariadb` client querying through the proxy
 * over TLS pinned to the CAS root CA from the stack, the untrusted volume grepped for a plaintext marker,
 * a rolled-back copy of the volume refused by the proxy, and a teardown that leaves nothing behind.
 *
 * Needs DOCKER_HOST (a local engine; .ci/containers starts a private one) and docker-compose v1.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  ComposeProject, COMPOSE_DIR, buildImages, run, runOk, withVolumes, fetchJson, waitFor, restoreVolume, waitForStartDecision, explainStartFailure,
} from './support.ts';
import { DockerComposeEnvironment, Wait, type StartedDockerComposeEnvironment } from 'testcontainers';

const project = `cdbpct${randomBytes(3).toString('hex')}`;
const env: Record<string, string> = {
  // Ephemeral host ports on loopback: parallel runs and a developer's own stack never collide.
  CDBP_MYSQL_PUBLISH: '127.0.0.1:',
  CDBP_OPS_PUBLISH: '127.0.0.1:',
  CDBP_DRAIN_DELAY_MS: '0',
};
const stack = new ComposeProject(project, env);
const snapshotVolume = `${project}_snapshot`;
const marker = `cdbp-marker-${randomBytes(12).toString('hex')}`;
const appPassword = randomBytes(18).toString('base64url');
const work = mkdtempSync(path.join(os.tmpdir(), 'cdbp-containers-'));
const caFile = path.join(work, 'ca.pem');

let environment: StartedDockerComposeEnvironment | undefined;

/** The host's stock client through the proxy, verifying the server certificate against the CAS CA. */
async function client(sql: string): Promise<{ code: number; stdout: string; stderr: string }> {
  const { host, port } = await stack.port('mariadb', 3307);
  return run('mariadb', [
    `--ssl-ca=${caFile}`, '--ssl-verify-server-cert', '-h', host, '-P', String(port),
    '-u', 'app', `-p${appPassword}`, '--batch', '--skip-column-names', '-e', sql,
  ], { timeoutMs: 60_000 });
}

async function ops(): Promise<string> {
  const { host, port } = await stack.port('mariadb', 9090);
  return `http://${host}:${port}`;
}

async function waitReady(): Promise<void> {
  const url = await ops();
  await waitFor('proxy /readyz 200', async () => ((await fetchJson(`${url}/readyz`))?.status === 200 ? true : undefined), 180_000);
}

/** Stops MariaDB and the proxy (the proxy first: it drains, seals a final epoch), keeps the CAS. */
async function stopDatabase(): Promise<void> {
  await stack.composeOk(['stop', '-t', '45', 'proxy']);
  await stack.composeOk(['stop', '-t', '60', 'mariadb']);
}

async function startDatabase(): Promise<void> {
  await stack.composeOk(['up', '-d', '--no-build', 'mariadb', 'proxy'], { timeoutMs: 300_000 });
}

describe('compose stack (docker-compose v1, private Docker engine)', { timeout: 20 * 60_000 }, () => {
  before(async () => {
    assert.ok(process.env.DOCKER_HOST, 'DOCKER_HOST must point at a Docker engine (see .ci/containers)');
    await runOk('docker', ['info'], { timeoutMs: 30_000 });
    // The documented build step (base images: public when reachable, else the local debootstrap base).
    await buildImages();
    environment = await explainStartFailure(stack, () => new DockerComposeEnvironment(COMPOSE_DIR, 'docker-compose.yml')
      .withClientOptions({ executable: { standalone: true } })
      .withProjectName(project)
      .withEnvironment(env)
      .withWaitStrategy(`${project}_cas_1`, Wait.forHealthCheck())
      .withWaitStrategy(`${project}_mariadb_1`, Wait.forHealthCheck())
      .withWaitStrategy(`${project}_proxy_1`, Wait.forHealthCheck())
      .withStartupTimeout(240_000)
      .up());
  });

  after(async () => {
    // Safety net for a failed run; the last test asserts the normal teardown leaves nothing.
    await stack.forceRemove([snapshotVolume]).catch(() => undefined);
    rmSync(work, { recursive: true, force: true });
  });

  it('comes up healthy: proxy ready, simulated mode visible, only the proxy ports published', async () => {
    const ready = await fetchJson(`${await ops()}/readyz`);
    assert.equal(ready?.status, 200);
    const status = (await fetchJson(`${await ops()}/v1/status`))!.body;
    assert.equal(status.mode, 'simulated');
    assert.match(String(status.warning), /SIMULATED/);
    assert.equal((status.lifecycle as { state: string }).state, 'ready');
    // The image ships the native data plane (app.Dockerfile's `native` stage); it serves strict freshness too.
    const plane = (status.connections as { mysql: { dataPlane: { kind: string; reason: string } } }).mysql.dataPlane;
    assert.equal(plane.kind, 'native', `MySQL data plane is ${plane.kind}: ${plane.reason}`);
    // The mariadb container owns the network namespace: exactly the proxy's MySQL + ops ports are published.
    const ports = (await runOk('docker', ['port', `${project}_mariadb_1`])).trim().split('\n').map((l) => l.split(' ')[0]).sort();
    assert.deepEqual(ports, ['3307/tcp', '9090/tcp']);
    const proxyInspect = JSON.parse(await runOk('docker', ['inspect', `${project}_proxy_1`])) as Array<{ HostConfig: { NetworkMode: string; ReadonlyRootfs: boolean }; Config: { User: string } }>;
    assert.match(proxyInspect[0]!.HostConfig.NetworkMode, /^container:/);
    assert.equal(proxyInspect[0]!.HostConfig.ReadonlyRootfs, true);
    assert.equal(proxyInspect[0]!.Config.User, '10001:10001');
  });

  it('serves the stock mariadb client over TLS pinned to the CAS root CA; plaintext is refused', async () => {
    writeFileSync(caFile, await stack.composeOk(['exec', '-T', 'cas', 'cat', '/srv/cas-public/ca.pem']));
    // The operator's bootstrap: an account created over the socket inside the MariaDB container (SQL on
    // stdin, so the password is on no command line).
    await stack.composeOk(['exec', '-T', 'mariadb', 'mariadb'], {
      input: `CREATE USER 'app'@'%' IDENTIFIED BY '${appPassword}'; GRANT ALL PRIVILEGES ON *.* TO 'app'@'%';\n`,
    });
    const ok = await client('SELECT 6 * 7, @@innodb_encrypt_tables');
    assert.equal(ok.code, 0, ok.stderr);
    assert.deepEqual(ok.stdout.trim().split('\t'), ['42', 'FORCE']);
    const tls = await client('status');
    assert.match(tls.stdout, /SSL:\s+Cipher in use is TLS/);
    // Without TLS the proxy refuses (a MySQL error, not a dropped connection).
    const { host, port } = await stack.port('mariadb', 3307);
    const plain = await run('mariadb', ['--skip-ssl', '-h', host, '-P', String(port), '-u', 'app', `-p${appPassword}`, '-e', 'SELECT 1']);
    assert.notEqual(plain.code, 0);
    assert.match(plain.stderr, /ERROR \d+/);
    // The proxy's own OS account (MariaDB's unix_socket user) cannot log in through the proxy.
    const own = await run('mariadb', [`--ssl-ca=${caFile}`, '-h', host, '-P', String(port), '-u', 'cdbp', '-e', 'SELECT 1']);
    assert.notEqual(own.code, 0);
    assert.match(own.stderr, /proxy's own OS account/);
  });

  it('keeps no plaintext marker on the untrusted volume', async () => {
    const sql = [
      'CREATE DATABASE IF NOT EXISTS shop',
      'USE shop',
      'CREATE TABLE shop.secrets (id INT PRIMARY KEY, cdbp_visible_column VARCHAR(200), payload TEXT) ENGINE=InnoDB',
      `INSERT INTO shop.secrets SELECT seq, CONCAT('${marker}-', seq), REPEAT('${marker} ', 8) FROM seq_1_to_2000`,
      'SELECT COUNT(*) FROM shop.secrets',
    ].join('; ');
    const r = await client(sql);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), '2000');
    // A clean stop flushes every page, the redo log and the binlog to the volume.
    await stopDatabase();
    const grep = await withVolumes([[stack.volume('untrusted'), '/v', 'ro']], [
      `echo "hits:$(grep -rlaF '${marker}' /v | tr '\\n' ' ')"`,
      // Control: the volume holds the table (file exists, sizeable) and grep does see plaintext that MariaDB
      // does not encrypt (the column name in the table definition), so a zero count means encrypted.
      `echo "frm:$(grep -rlaF cdbp_visible_column /v | tr '\\n' ' ')"`,
      'echo "ibd:$(stat -c %s /v/mariadb/shop/secrets.ibd)"',
      'echo "sealed:$(ls /v/freshness)"',
    ].join('; '));
    assert.equal(grep.code, 0, grep.stderr);
    const line = (k: string) => grep.stdout.split('\n').find((l) => l.startsWith(`${k}:`))!.slice(k.length + 1).trim();
    assert.equal(line('hits'), '', `plaintext marker found on the untrusted volume in: ${line('hits')}`);
    assert.match(line('frm'), /shop\/secrets\.frm/);
    assert.ok(Number(line('ibd')) >= 64 * 1024, `secrets.ibd is only ${line('ibd')} bytes`);
    assert.match(line('sealed'), /\.sealed/);
  });

  it('refuses a rolled-back copy of the volume: /readyz 503, rollback reason in /v1/status, no listener', async () => {
    // The adversary's backup: a copy of the untrusted volume taken now (database stopped cleanly).
    const snap = await withVolumes([[stack.volume('untrusted'), '/from', 'ro'], [snapshotVolume, '/to']], 'cp -a /from/. /to/');
    assert.equal(snap.code, 0, snap.stderr);
    // Life goes on: a proxy restart (new keyring token: mariadbd is restarted with it) and more writes,
    // each counted by the CAS.
    await startDatabase();
    await waitReady();
    await stack.composeOk(['restart', '-t', '45', 'proxy']);
    await waitReady();
    const later = await client("INSERT INTO shop.secrets VALUES (100001, 'after-snapshot', 'x'); SELECT COUNT(*) FROM shop.secrets");
    assert.equal(later.code, 0, later.stderr);
    assert.equal(later.stdout.trim(), '2001');
    await stopDatabase();
    // Roll the disk back to the copy.
    const restore = await restoreVolume(stack.volume('untrusted'), snapshotVolume);
    assert.equal(restore.code, 0, restore.stderr);
    await startDatabase();
    const url = await ops();
    const refused = await waitForStartDecision('the proxy to decide on the rolled-back volume', url);
    const lifecycle = refused.body.lifecycle as { state: string; reason?: { code: string; message: string } };
    assert.equal(lifecycle.state, 'failed', 'the proxy accepted a rolled-back volume');
    assert.equal(lifecycle.reason?.code, 'ROLLBACK_DETECTED');
    assert.match(lifecycle.reason!.message, /rolled back/);
    const ready = await fetchJson(`${url}/readyz`);
    assert.equal(ready?.status, 503);
    assert.ok((ready!.body.reasons as string[]).some((r) => /rollback/i.test(r)), JSON.stringify(ready!.body));
    // Nothing answers SQL. (The offline redo checkpoint of this copy equals the sealed one, so the rollback
    // is caught by the online position check, after mariadbd got its keys: docs/FRESHNESS.md.)
    const sql = await client('SELECT 1');
    assert.notEqual(sql.code, 0);
    const proxyHealth = (await runOk('docker', ['inspect', '-f', '{{.State.Health.Status}}', `${project}_proxy_1`])).trim();
    assert.notEqual(proxyHealth, 'healthy');
  });

  it('tears down without leaving containers, volumes or networks', async () => {
    assert.ok(environment, 'stack was not started');
    await environment.down({ removeVolumes: true, timeout: 30_000 });
    environment = undefined;
    await runOk('docker', ['volume', 'rm', snapshotVolume]);
    assert.deepEqual(await stack.leftovers([snapshotVolume]), []);
  });
});
