/**
 * The compose stack's `postgres` profile under a real Docker engine: the proxy running Debian PostgreSQL
 * 15 inside a gocryptfs directory keyed by the CAS (service `postgres`), brought up with docker-compose
 * v1 through testcontainers (only postgres and what it depends on: setup, cas, policy-pg), the operator's
 * account bootstrap with `docker exec -u postgres psql`, the host's stock `psql` writing and reading
 * through the proxy with sslmode=verify-full pinned to the CAS root CA, the logins that must NOT work
 * through the proxy, a restart that re-verifies the sealed freshness record and finds only ciphertext on
 * the volume, a rolled-back copy of the untrusted volume refused, and a teardown that leaves nothing.
 *
 * Needs DOCKER_HOST (a local engine; .ci/containers starts a private one), docker-compose v1 and psql.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DockerComposeEnvironment, Wait, type StartedDockerComposeEnvironment } from 'testcontainers';
import {
  ComposeProject, COMPOSE_DIR, buildImages, run, runOk, withVolumes, fetchJson, waitFor, restoreVolume, waitForStartDecision, explainStartFailure, type RunResult,
} from './support.ts';

const project = `cdbppg${randomBytes(3).toString('hex')}`;
const env: Record<string, string> = {
  // Ephemeral host ports on loopback (the MariaDB services are not started: their ports stay unused).
  CDBP_PG_PUBLISH: '127.0.0.1:',
  CDBP_PG_OPS_PUBLISH: '127.0.0.1:',
  CDBP_MYSQL_PUBLISH: '127.0.0.1:',
  CDBP_OPS_PUBLISH: '127.0.0.1:',
  CDBP_DRAIN_DELAY_MS: '0',
};
const stack = new ComposeProject(project, env, ['postgres']);
const snapshotVolume = `${project}_pgsnapshot`;
const recordVolume = `${project}_pgrecord`;
const appPassword = randomBytes(18).toString('base64url');
const marker = `cdbp-pg-${randomBytes(8).toString('hex')}`;
const work = mkdtempSync(path.join(os.tmpdir(), 'cdbp-containers-pg-'));
const caFile = path.join(work, 'ca.pem');

let environment: StartedDockerComposeEnvironment | undefined;

/** The host's stock psql through the postgres profile's proxy, verifying the CAS-issued certificate (name `localhost`). */
async function psql(user: string, sql: string, opts: { password?: string; sslmode?: string; db?: string } = {}): Promise<RunResult> {
  const { port } = await stack.port('postgres', 5433);
  const conninfo = [
    'host=localhost', 'hostaddr=127.0.0.1', `port=${port}`, `user=${user}`, `dbname=${opts.db ?? 'appdb'}`,
    `sslmode=${opts.sslmode ?? 'verify-full'}`, `sslrootcert=${caFile}`, 'connect_timeout=20',
  ].join(' ');
  // Password in the environment, not on the command line; no ~/.pgpass or service file of the host.
  return run('psql', [conninfo, '-X', '-v', 'ON_ERROR_STOP=1', '-At', '-c', sql], {
    env: { PGPASSWORD: opts.password ?? '', PGPASSFILE: '/nonexistent', PGSERVICEFILE: '/nonexistent' },
    timeoutMs: 60_000,
  });
}

async function ops(): Promise<string> {
  const { host, port } = await stack.port('postgres', 9091);
  return `http://${host}:${port}`;
}

interface Inspect { HostConfig: { NetworkMode: string; ReadonlyRootfs: boolean; CapDrop: string[] | null; CapAdd: string[] | null }; Config: { User: string } }
async function inspect(container: string): Promise<Inspect> {
  return (JSON.parse(await runOk('docker', ['inspect', container])) as Inspect[])[0]!;
}

describe('compose profile postgres (docker-compose v1, private Docker engine)', { timeout: 10 * 60_000 }, () => {
  before(async () => {
    assert.ok(process.env.DOCKER_HOST, 'DOCKER_HOST must point at a Docker engine (see .ci/containers)');
    await runOk('docker', ['info'], { timeoutMs: 30_000 });
    await buildImages();
    environment = await explainStartFailure(stack, () => new DockerComposeEnvironment(COMPOSE_DIR, 'docker-compose.yml')
      .withClientOptions({ executable: { standalone: true } })
      .withProjectName(project)
      .withProfiles('postgres')
      .withEnvironment(env)
      .withWaitStrategy(`${project}_cas_1`, Wait.forHealthCheck())
      .withWaitStrategy(`${project}_postgres_1`, Wait.forHealthCheck())
      .withStartupTimeout(300_000)
      .up(['postgres']));
  });

  after(async () => {
    // Safety net for a failed run; the last test asserts the normal teardown leaves nothing.
    await stack.forceRemove([snapshotVolume, recordVolume]).catch(() => undefined);
    rmSync(work, { recursive: true, force: true });
  });

  it('comes up healthy with only the PostgreSQL services; the data directory is mounted encrypted', async () => {
    const ready = await fetchJson(`${await ops()}/readyz`);
    assert.equal(ready?.status, 200, JSON.stringify(ready?.body));
    const status = (await fetchJson(`${await ops()}/v1/status`))!.body;
    assert.equal(status.service, 'postgres');
    assert.equal(status.engine, 'postgres');
    assert.equal(status.mode, 'simulated');
    assert.equal((status.lifecycle as { state: string }).state, 'ready');
    const running = (await stack.composeOk(['ps', '--services', '--filter', 'status=running'])).trim().split('\n').sort();
    assert.deepEqual(running, ['cas', 'postgres'], 'the MariaDB services were not asked for');
    // Exactly the proxy's PostgreSQL and ops ports are published (PostgreSQL itself has no TCP listener).
    const ports = (await runOk('docker', ['port', `${project}_postgres_1`])).trim().split('\n').map((l) => l.split(' ')[0]).sort();
    assert.deepEqual(ports, ['5433/tcp', '9091/tcp']);
    const c = await inspect(`${project}_postgres_1`);
    assert.equal(c.HostConfig.ReadonlyRootfs, true);
    assert.equal(c.Config.User, '0:0', 'root in the container for the FUSE mount');
    assert.deepEqual(c.HostConfig.CapDrop, ['ALL']);
    assert.ok(c.HostConfig.CapAdd?.some((x) => /SYS_ADMIN/.test(x)));
    const storage = (status.backend as { storage: { kind: string; mounted: boolean } }).storage;
    assert.equal(storage.kind, 'gocryptfs');
    assert.equal(storage.mounted, true);
  });

  it('bootstraps an account over the socket and serves the host psql with verify-full: write, read', async () => {
    writeFileSync(caFile, await stack.composeOk(['exec', '-T', 'cas', 'cat', '/srv/cas-public/ca.pem']));
    // The operator's bootstrap (compose/README.md): the `postgres` OS user inside the container, over the
    // socket inside the encrypted mount; SQL on stdin so the password is on no command line.
    await stack.composeOk(['exec', '-T', '-u', 'postgres', 'postgres', 'psql', '-X', '-v', 'ON_ERROR_STOP=1'], {
      input: `CREATE ROLE app LOGIN PASSWORD '${appPassword}';\nCREATE DATABASE appdb OWNER app;\n`,
    });
    const write = await psql('app', `CREATE TABLE notes (id int PRIMARY KEY, body text); INSERT INTO notes VALUES (1, '${marker}')`, { password: appPassword });
    assert.equal(write.code, 0, write.stderr);
    const read = await psql('app', 'SELECT body FROM notes WHERE id = 1', { password: appPassword });
    assert.equal(read.code, 0, read.stderr);
    assert.equal(read.stdout.trim(), marker);
    const conninfo = await psql('app', '\\conninfo', { password: appPassword });
    assert.match(conninfo.stdout, /SSL connection \(protocol: TLSv1\.[23]/);
  });

  it('refuses what must not pass: plaintext, a wrong password, the socket-only superuser', async () => {
    const plain = await psql('app', 'SELECT 1', { password: appPassword, sslmode: 'disable' });
    assert.notEqual(plain.code, 0);
    assert.match(plain.stderr, /TLS is required/);
    const wrong = await psql('app', 'SELECT 1', { password: `${appPassword}x` });
    assert.notEqual(wrong.code, 0);
    assert.match(wrong.stderr, /password authentication failed for user "app"/);
    // `postgres` is the superuser the proxy itself uses over the socket: through the proxy it is refused
    // before any backend is dialed.
    const superuser = await psql('postgres', 'SELECT 1', { db: 'postgres', password: 'guess' });
    assert.notEqual(superuser.code, 0);
    assert.match(superuser.stderr, /role "postgres" may not log in through this proxy/);
  });

  it('keeps only ciphertext and the sealed record on one volume; a restart re-verifies it', async () => {
    const before = ((await fetchJson(`${await ops()}/v1/status`))!.body.freshness as { epoch: number }).epoch;
    await stack.composeOk(['restart', '-t', '30', 'postgres']);
    const url = await ops();
    await waitFor('postgres /readyz 200 after the restart', async () => ((await fetchJson(`${url}/readyz`))?.status === 200 ? true : undefined), 120_000);
    const logs = await stack.composeOk(['logs', '--no-color', 'postgres']);
    const verdicts = [...logs.matchAll(/"verdict":"([a-z-]+)"/g)].map((m) => m[1]);
    assert.deepEqual(verdicts, ['first-start', 'fresh'], 'the second start verified the sealed record');
    const after = ((await fetchJson(`${url}/v1/status`))!.body.freshness as { epoch: number }).epoch;
    assert.ok(after > before, `epoch ${after} after the restart, ${before} before`);
    const read = await psql('app', 'SELECT count(*) FROM notes', { password: appPassword });
    assert.equal(read.code, 0, read.stderr);
    assert.equal(read.stdout.trim(), '1');
    const ls = await withVolumes([[stack.volume('pg-untrusted'), '/v', 'ro']], 'ls /v/freshness; test -f /v/postgres/gocryptfs.conf && echo encrypted; test -e /v/postgres/PG_VERSION || echo no-plaintext');
    assert.equal(ls.code, 0, ls.stderr);
    // The freshness directory holds the sealed record and the sealed data-file inventories it references (issue 22).
    const listed = ls.stdout.trim().split('\n');
    assert.deepEqual(listed.filter((l) => !/^inventory-postgres-[0-9a-f]{64}\.sealed$/.test(l)), ['freshness-postgres.sealed', 'encrypted', 'no-plaintext']);
    assert.ok(listed.some((l) => l.startsWith('inventory-postgres-')), `no sealed inventory: ${listed.join(', ')}`);
    // The row written through the proxy is nowhere on the volume in plaintext (grep exits 1: no match).
    const grep = await withVolumes([[stack.volume('pg-untrusted'), '/v', 'ro']], `grep -rl '${marker}' /v`);
    assert.equal(grep.code, 1, `plaintext on the volume: ${grep.stdout}`);
  });

  it('refuses a rolled-back copy of pg-untrusted (503, ROLLBACK_DETECTED) until the owner recovers', async () => {
    // The proxy drains, seals a final epoch, stops PostgreSQL (clean checkpoint) and unmounts.
    const stopBoth = () => stack.composeOk(['stop', '-t', '30', 'postgres']);
    const startBoth = () => stack.composeOk(['up', '-d', '--no-build', 'postgres'], { timeoutMs: 180_000 });
    await stopBoth();
    const snap = await withVolumes([[stack.volume('pg-untrusted'), '/from', 'ro'], [snapshotVolume, '/to']], 'cp -a /from/. /to/');
    assert.equal(snap.code, 0, snap.stderr);
    await startBoth();
    const url = await ops();
    await waitFor('postgres ready on the current volume', async () => ((await fetchJson(`${url}/readyz`))?.status === 200 ? true : undefined), 120_000);
    const later = await psql('app', "INSERT INTO notes VALUES (2, 'after-snapshot'); SELECT count(*) FROM notes", { password: appPassword });
    assert.equal(later.code, 0, later.stderr);
    assert.equal(later.stdout.trim().split('\n').at(-1), '2');
    await stopBoth();
    const restore = await restoreVolume(stack.volume('pg-untrusted'), snapshotVolume);
    assert.equal(restore.code, 0, restore.stderr);
    await startBoth();
    const url2 = await ops();
    const decided = await waitForStartDecision('postgres to decide on the rolled-back volume', url2);
    const lifecycle = decided.body.lifecycle as { state: string; reason?: { code: string; message: string } };
    assert.equal(lifecycle.state, 'failed', 'the proxy accepted a rolled-back volume');
    assert.equal(lifecycle.reason?.code, 'ROLLBACK_DETECTED');
    assert.equal((await fetchJson(`${url2}/readyz`))?.status, 503);
    const sql = await psql('app', 'SELECT count(*) FROM notes', { password: appPassword });
    assert.notEqual(sql.code, 0, 'the rolled-back database answered through the proxy');

    // A legitimate restore: the owner re-anchors the CAS counter to the restored record (the README's
    // command), restarts postgres, and the restored data is served again.
    // The postgres container runs as root (FUSE), so the record it leaves is root's, behind 0700: the owner
    // copies it out first (it is sealed and not secret), as compose/README.md says, then recovers from the copy.
    const copied = await withVolumes([[stack.volume('pg-untrusted'), '/v', 'ro'], [recordVolume, '/out']],
      'cp /v/freshness/freshness-postgres.sealed /out/ && chmod 0755 /out && chmod 0644 /out/freshness-postgres.sealed');
    assert.equal(copied.code, 0, copied.stderr);
    await stack.composeOk(['run', '--rm', '--no-deps', '-v', `${recordVolume}:/srv/untrusted/freshness:ro`, 'policy-pg',
      'node', '/app/bin/cdbp.js', 'recover', '--cas', 'https://cas:8700', '--ca', '/srv/cas-public/ca.pem',
      '--owner-key', '/keys/owner/owner.key', '--service', 'postgres', '--record', '/srv/untrusted/freshness/freshness-postgres.sealed'],
    { timeoutMs: 120_000 });
    await stack.composeOk(['restart', '-t', '30', 'postgres']);
    // A restart publishes the ops port on a new ephemeral host port: ask for it again.
    const url3 = await ops();
    await waitFor('postgres ready after the owner\'s recovery', async () => ((await fetchJson(`${url3}/readyz`))?.status === 200 ? true : undefined), 120_000);
    const restored = await psql('app', 'SELECT count(*) FROM notes', { password: appPassword });
    assert.equal(restored.code, 0, restored.stderr);
    assert.equal(restored.stdout.trim(), '1', 'the restored (older) data');
  });

  it('tears down without leaving containers, volumes or networks', async () => {
    assert.ok(environment, 'stack was not started');
    await environment.down({ removeVolumes: true, timeout: 30_000 });
    environment = undefined;
    await runOk('docker', ['volume', 'rm', snapshotVolume, recordVolume]);
    assert.deepEqual(await stack.leftovers([snapshotVolume, recordVolume]), []);
  });
});
