/**
 * The compose stack's `postgres` profile under a real Docker engine: stock Debian PostgreSQL 15 behind
 * `proxy-pg`, brought up with docker-compose v1 through testcontainers (only proxy-pg and what it depends
 * on: setup, cas, policy-pg, postgres), the operator's account bootstrap with `docker exec -u postgres
 * psql`, the host's stock `psql` writing and reading through the proxy with sslmode=verify-full pinned to
 * the CAS root CA, the logins that must NOT work through the proxy, a proxy restart that re-verifies the
 * sealed freshness record, and a teardown that leaves nothing behind.
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
  ComposeProject, COMPOSE_DIR, buildImages, run, runOk, withVolumes, fetchJson, waitFor, type RunResult,
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
const appPassword = randomBytes(18).toString('base64url');
const marker = `cdbp-pg-${randomBytes(8).toString('hex')}`;
const work = mkdtempSync(path.join(os.tmpdir(), 'cdbp-containers-pg-'));
const caFile = path.join(work, 'ca.pem');

let environment: StartedDockerComposeEnvironment | undefined;

/** The host's stock psql through proxy-pg, verifying the CAS-issued certificate (name `localhost`). */
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

interface Inspect { HostConfig: { NetworkMode: string; ReadonlyRootfs: boolean; CapDrop: string[] | null }; Config: { User: string } }
async function inspect(container: string): Promise<Inspect> {
  return (JSON.parse(await runOk('docker', ['inspect', container])) as Inspect[])[0]!;
}

describe('compose profile postgres (docker-compose v1, private Docker engine)', { timeout: 10 * 60_000 }, () => {
  before(async () => {
    assert.ok(process.env.DOCKER_HOST, 'DOCKER_HOST must point at a Docker engine (see .ci/containers)');
    await runOk('docker', ['info'], { timeoutMs: 30_000 });
    await buildImages();
    environment = await new DockerComposeEnvironment(COMPOSE_DIR, 'docker-compose.yml')
      .withClientOptions({ executable: { standalone: true } })
      .withProjectName(project)
      .withProfiles('postgres')
      .withEnvironment(env)
      .withWaitStrategy(`${project}_cas_1`, Wait.forHealthCheck())
      .withWaitStrategy(`${project}_postgres_1`, Wait.forHealthCheck())
      .withWaitStrategy(`${project}_proxy-pg_1`, Wait.forHealthCheck())
      .withStartupTimeout(180_000)
      .up(['proxy-pg']);
  });

  after(async () => {
    // Safety net for a failed run; the last test asserts the normal teardown leaves nothing.
    await stack.forceRemove().catch(() => undefined);
    rmSync(work, { recursive: true, force: true });
  });

  it('comes up healthy with only the PostgreSQL services; proxy-pg joins the postgres namespace', async () => {
    const ready = await fetchJson(`${await ops()}/readyz`);
    assert.equal(ready?.status, 200, JSON.stringify(ready?.body));
    const status = (await fetchJson(`${await ops()}/v1/status`))!.body;
    assert.equal(status.service, 'postgres');
    assert.equal(status.engine, 'postgres');
    assert.equal(status.mode, 'simulated');
    assert.equal((status.lifecycle as { state: string }).state, 'ready');
    const running = (await stack.composeOk(['ps', '--services', '--filter', 'status=running'])).trim().split('\n').sort();
    assert.deepEqual(running, ['cas', 'postgres', 'proxy-pg'], 'the MariaDB services were not asked for');
    // Exactly the proxy's PostgreSQL and ops ports are published (PostgreSQL itself has no TCP listener).
    const ports = (await runOk('docker', ['port', `${project}_postgres_1`])).trim().split('\n').map((l) => l.split(' ')[0]).sort();
    assert.deepEqual(ports, ['5433/tcp', '9091/tcp']);
    const proxy = await inspect(`${project}_proxy-pg_1`);
    assert.match(proxy.HostConfig.NetworkMode, /^container:/);
    for (const c of [proxy, await inspect(`${project}_postgres_1`)]) {
      assert.equal(c.HostConfig.ReadonlyRootfs, true);
      assert.equal(c.Config.User, '10001:10001');
      assert.deepEqual(c.HostConfig.CapDrop, ['ALL']);
    }
  });

  it('bootstraps an account over the socket and serves the host psql with verify-full: write, read', async () => {
    writeFileSync(caFile, await stack.composeOk(['exec', '-T', 'cas', 'cat', '/srv/cas-public/ca.pem']));
    // The operator's bootstrap (compose/README.md): the `postgres` OS user of the postgres container, by
    // peer authentication; SQL on stdin so the password is on no command line.
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

  it('refuses what must not pass: plaintext, a wrong password, the peer-only superuser, the monitor role', async () => {
    const plain = await psql('app', 'SELECT 1', { password: appPassword, sslmode: 'disable' });
    assert.notEqual(plain.code, 0);
    assert.match(plain.stderr, /TLS is required/);
    const wrong = await psql('app', 'SELECT 1', { password: `${appPassword}x` });
    assert.notEqual(wrong.code, 0);
    assert.match(wrong.stderr, /password authentication failed for user "app"/);
    // Through the proxy every login comes from the proxy's OS user (cdbp): `postgres` is peer-only, so
    // it is refused, and the monitor role `cdbp` needs its per-start password, which only the proxy has.
    const superuser = await psql('postgres', 'SELECT 1', { db: 'postgres' });
    assert.notEqual(superuser.code, 0);
    assert.match(superuser.stderr, /Peer authentication failed for user "postgres"/);
    const monitor = await psql('cdbp', 'SELECT 1', { db: 'postgres', password: 'guess' });
    assert.notEqual(monitor.code, 0);
    assert.match(monitor.stderr, /password authentication failed for user "cdbp"/);
    // The per-start password stays on the tmpfs, readable by uid 10001 only (not the operator's OS user).
    const peek = await stack.compose(['exec', '-T', '-u', 'postgres', 'postgres', 'cat', '/run/cdbp-pg/monitor-password']);
    assert.notEqual(peek.code, 0);
    assert.match(peek.stderr, /Permission denied/);
  });

  it('keeps the datadir and the sealed record on one volume; a proxy restart re-verifies it', async () => {
    const before = ((await fetchJson(`${await ops()}/v1/status`))!.body.freshness as { epoch: number }).epoch;
    await stack.composeOk(['restart', '-t', '30', 'proxy-pg']);
    const url = await ops();
    await waitFor('proxy-pg /readyz 200 after the restart', async () => ((await fetchJson(`${url}/readyz`))?.status === 200 ? true : undefined), 120_000);
    const logs = await stack.composeOk(['logs', '--no-color', 'proxy-pg']);
    const verdicts = [...logs.matchAll(/"verdict":"([a-z-]+)"/g)].map((m) => m[1]);
    assert.deepEqual(verdicts, ['first-start', 'fresh'], 'the second start verified the sealed record');
    const after = ((await fetchJson(`${url}/v1/status`))!.body.freshness as { epoch: number }).epoch;
    assert.ok(after > before, `epoch ${after} after the restart, ${before} before`);
    const read = await psql('app', 'SELECT count(*) FROM notes', { password: appPassword });
    assert.equal(read.code, 0, read.stderr);
    assert.equal(read.stdout.trim(), '1');
    const ls = await withVolumes([[stack.volume('pg-untrusted'), '/v', 'ro']], 'ls /v/freshness; cat /v/postgres/PG_VERSION');
    assert.equal(ls.code, 0, ls.stderr);
    assert.deepEqual(ls.stdout.trim().split('\n'), ['freshness-postgres.sealed', '15']);
  });

  it('tears down without leaving containers, volumes or networks', async () => {
    assert.ok(environment, 'stack was not started');
    await environment.down({ removeVolumes: true, timeout: 30_000 });
    environment = undefined;
    assert.deepEqual(await stack.leftovers(), []);
  });
});
