/**
 * The compose stack's `ha` profile under a real Docker engine: a 3-member etcd, 3 CAS members (member 1
 * bootstraps, 2 and 3 join) and a MariaDB + proxy pair whose proxy counts on the members by majority,
 * brought up with docker-compose v1 through testcontainers (only `proxy-ha` and what it depends on).
 * The host's stock `mariadb` client writes through the proxy with TLS verified against the deployment CA.
 * Then: a member that crashes is restarted by Docker and rejoins as a new incarnation while writes go on;
 * a member stopped with `docker kill` (which Docker does not restart) leaves a majority that includes the
 * rejoined one; after a stop of the whole stack nothing reopens by itself, until the owner's `ha-recover`
 * (sign, member 1 reopens, the others join, re-anchor); a teardown that leaves nothing.
 *
 * Needs DOCKER_HOST (a local engine; .ci/containers starts a private one), docker-compose v1 and mariadb.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DockerComposeEnvironment, Wait, type StartedDockerComposeEnvironment } from 'testcontainers';
import {
  ComposeProject, COMPOSE_DIR, buildImages, run, runOk, fetchJson, waitFor, explainStartFailure, type RunResult,
} from './support.ts';

const project = `cdbpha${randomBytes(3).toString('hex')}`;
const env: Record<string, string> = {
  // Ephemeral host ports on loopback (the default pair is not started: its ports stay unused).
  CDBP_HA_MYSQL_PUBLISH: '127.0.0.1:',
  CDBP_HA_OPS_PUBLISH: '127.0.0.1:',
  CDBP_MYSQL_PUBLISH: '127.0.0.1:',
  CDBP_OPS_PUBLISH: '127.0.0.1:',
  CDBP_PG_PUBLISH: '127.0.0.1:',
  CDBP_PG_OPS_PUBLISH: '127.0.0.1:',
  CDBP_DRAIN_DELAY_MS: '0',
};
const stack = new ComposeProject(project, env, ['ha']);
const appPassword = randomBytes(18).toString('base64url');
const work = mkdtempSync(path.join(os.tmpdir(), 'cdbp-containers-ha-'));
const caFile = path.join(work, 'ca.pem');
const MEMBERS = ['cas-1', 'cas-2', 'cas-3'] as const;
const container = (service: string) => `${project}_${service}_1`;

let environment: StartedDockerComposeEnvironment | undefined;
let rows = 0;

/** The host's stock client through the HA proxy, verifying its certificate against the deployment CA. */
async function client(sql: string): Promise<RunResult> {
  const { host, port } = await stack.port('mariadb-ha', 3307);
  return run('mariadb', [
    `--ssl-ca=${caFile}`, '--ssl-verify-server-cert', '-h', host, '-P', String(port),
    '-u', 'app', `-p${appPassword}`, '--batch', '--skip-column-names', '-e', sql,
  ], { timeoutMs: 60_000 });
}

/** Inserts `n` rows (each commit is acknowledged only once a majority of members advanced the counter). */
async function write(n: number): Promise<void> {
  const values = Array.from({ length: n }, (_, i) => `(${rows + i + 1}, 'row-${rows + i + 1}')`).join(', ');
  const r = await client(`INSERT INTO shop.t VALUES ${values}; SELECT COUNT(*) FROM shop.t`);
  assert.equal(r.code, 0, r.stderr);
  rows += n;
  assert.equal(r.stdout.trim(), String(rows));
}

async function ops(): Promise<string> {
  const { host, port } = await stack.port('mariadb-ha', 9090);
  return `http://${host}:${port}`;
}

async function waitProxyReady(): Promise<void> {
  const url = await ops();
  await waitFor('proxy-ha /readyz 200', async () => ((await fetchJson(`${url}/readyz`))?.status === 200 ? true : undefined), 180_000);
}

interface MemberStatus { instance: string; stateSeq: number; services: number }

/**
 * Every member's /v1/replication/status as seen from inside the compose network (the members' port is not
 * published), asked from a running member with the deployment CA pinned; undefined for one that does not
 * answer within 3 s (the name of a stopped container can take a resolver timeout to fail).
 */
async function members(via: string): Promise<Record<string, MemberStatus | undefined>> {
  const script = `const https = require('node:https'); const ca = require('node:fs').readFileSync('/srv/cas-public/ca.pem');
    const ask = (m) => new Promise((resolve) => { const req = https.get('https://' + m + ':8700/v1/replication/status', { ca, timeout: 2500 }, (res) => {
      let b = ''; res.on('data', (c) => { b += c; }); res.on('end', () => resolve(res.statusCode === 200 ? JSON.parse(b) : null)); });
      req.on('timeout', () => req.destroy(new Error('timeout'))); req.on('error', () => resolve(null));
      setTimeout(() => resolve(null), 3000); });
    Promise.all(${JSON.stringify(MEMBERS)}.map(ask)).then((a) => { console.log(JSON.stringify(a)); process.exit(0); });`;
  const out = JSON.parse(await runOk('docker', ['exec', container(via), 'node', '-e', script], { timeoutMs: 60_000 })) as Array<MemberStatus | null>;
  return Object.fromEntries(MEMBERS.map((m, i) => [m, out[i] ?? undefined]));
}

async function inspectState(service: string): Promise<{ running: boolean; restarts: number; health: string }> {
  const [running, restarts, health] = (await runOk('docker', ['inspect', '-f', '{{.State.Running}} {{.RestartCount}} {{if .State.Health}}{{.State.Health.Status}}{{end}}', container(service)])).trim().split(' ');
  return { running: running === 'true', restarts: Number(restarts), health: health ?? '' };
}

/** A container's log (stdout: the CAS's JSON lines; stderr: the start script's and the CLI's lines). */
async function logs(service: string, sinceSeconds: number): Promise<string> {
  const r = await run('docker', ['logs', '--since', String(sinceSeconds), container(service)]);
  return r.stdout + r.stderr;
}

const now = () => Math.floor(Date.now() / 1000);

function waitHealthy(service: string, timeoutMs = 120_000): Promise<true> {
  return waitFor(`${service} healthy`, async () => ((await inspectState(service)).health === 'healthy' ? true : undefined), timeoutMs);
}

describe('compose profile ha: replicated CAS (docker-compose v1, private Docker engine)', { timeout: 15 * 60_000 }, () => {
  before(async () => {
    assert.ok(process.env.DOCKER_HOST, 'DOCKER_HOST must point at a Docker engine (see .ci/containers)');
    await runOk('docker', ['info'], { timeoutMs: 30_000 });
    await buildImages();
    let compose = new DockerComposeEnvironment(COMPOSE_DIR, 'docker-compose.yml')
      .withClientOptions({ executable: { standalone: true } })
      .withProjectName(project)
      .withProfiles('ha')
      .withEnvironment(env);
    for (const s of [...MEMBERS, 'mariadb-ha', 'proxy-ha']) compose = compose.withWaitStrategy(container(s), Wait.forHealthCheck());
    environment = await explainStartFailure(stack, () => compose.withStartupTimeout(300_000).up(['proxy-ha']));
  });

  after(async () => {
    // Safety net for a failed run; the last test asserts the normal teardown leaves nothing.
    await stack.forceRemove().catch(() => undefined);
    rmSync(work, { recursive: true, force: true });
  });

  it('comes up: 3 etcd members, 3 CAS members (three incarnations, one state), the proxy ready on all three', async () => {
    const running = (await stack.composeOk(['ps', '--services', '--filter', 'status=running'])).trim().split('\n').sort();
    assert.deepEqual(running, ['cas-1', 'cas-2', 'cas-3', 'etcd-1', 'etcd-2', 'etcd-3', 'mariadb-ha', 'proxy-ha']);
    for (const e of ['etcd-1', 'etcd-2', 'etcd-3']) assert.equal((await inspectState(e)).health, 'healthy', `${e} reports a leader`);
    const st = await members('cas-1');
    const instances = MEMBERS.map((m) => st[m]?.instance);
    assert.equal(new Set(instances).size, 3, `three distinct incarnations: ${JSON.stringify(st)}`);
    for (const m of MEMBERS) assert.equal(st[m]?.services, 1, `${m} holds the mariadb service (policy applied on one, carried by etcd)`);
    // Every service of the profile runs as the cdbp uid, read-only, without capabilities; etcd included.
    for (const s of ['etcd-1', 'cas-1', 'cas-2', 'proxy-ha']) {
      const [i] = JSON.parse(await runOk('docker', ['inspect', container(s)])) as Array<{ HostConfig: { ReadonlyRootfs: boolean; CapDrop: string[] }; Config: { User: string; Env: string[] } }>;
      assert.equal(i!.Config.User, '10001:10001', s);
      assert.equal(i!.HostConfig.ReadonlyRootfs, true, s);
      assert.deepEqual(i!.HostConfig.CapDrop, ['ALL'], s);
      if (s === 'proxy-ha') assert.ok(i!.Config.Env.includes('CDBP_CAS_URL=https://cas-1:8700,https://cas-2:8700,https://cas-3:8700'));
    }
    const status = (await fetchJson(`${await ops()}/v1/status`))!.body;
    assert.equal((status.lifecycle as { state: string }).state, 'ready');
    assert.equal((status.freshness as { mode: string }).mode, 'strict');
  });

  it('serves the stock client over TLS verified against the deployment CA; writes are acknowledged', async () => {
    // The deployment CA as member 1 published it (what the proxy pins too).
    writeFileSync(caFile, await stack.composeOk(['exec', '-T', 'cas-1', 'cat', '/srv/cas-public/ca.pem']));
    await stack.composeOk(['exec', '-T', 'mariadb-ha', 'mariadb'], {
      input: `CREATE USER 'app'@'%' IDENTIFIED BY '${appPassword}'; GRANT ALL PRIVILEGES ON *.* TO 'app'@'%';\n`,
    });
    const r = await client('CREATE DATABASE shop; CREATE TABLE shop.t (id INT PRIMARY KEY, v VARCHAR(40)) ENGINE=InnoDB');
    assert.equal(r.code, 0, r.stderr);
    await write(5);
    const tls = await client('status');
    assert.match(tls.stdout, /SSL:\s+Cipher in use is TLS/);
  });

  it('a crashed member is restarted by Docker and rejoins as a new incarnation, and counts: writes go on throughout', async () => {
    const before = await members('cas-1');
    const restarts = (await inspectState('cas-2')).restarts;
    const since = now();
    // The member process dies (as under the OOM killer): the container exits and its restart policy applies.
    await run('docker', ['exec', container('cas-2'), 'sh', '-c', 'kill -KILL -1']);
    await write(3);
    await waitFor('cas-2 restarted by Docker', async () => ((await inspectState('cas-2')).restarts > restarts ? true : undefined), 60_000);
    await waitHealthy('cas-2');
    const after = await members('cas-1');
    assert.ok(after['cas-2'], 'cas-2 answers again');
    assert.notEqual(after['cas-2']!.instance, before['cas-2']!.instance, 'a new incarnation');
    assert.equal(after['cas-1']!.instance, before['cas-1']!.instance);
    assert.match(await logs('cas-2', since), /caught up from a majority of members/);
    // Now `docker kill` another member: Docker applies no restart policy to a container it was told to
    // kill, so it stays down, and the majority left is member 1 plus cas-2's new incarnation.
    await runOk('docker', ['kill', container('cas-3')]);
    await new Promise((r) => setTimeout(r, 2000));
    assert.equal((await inspectState('cas-3')).running, false);
    await write(4);
    // (cas-3 stays down until the next test brings the whole profile back.)
  });

  it('after a stop of the whole stack nothing reopens by itself; the owner recovers it; no row is lost', async () => {
    const t0 = Date.now();
    const step = (m: string) => process.stderr.write(`[ha.test] +${((Date.now() - t0) / 1000).toFixed(1)} s ${m}\n`);
    await stack.composeOk(['stop', '-t', '45'], { timeoutMs: 180_000 });
    step('stopped');
    // The proxy stopped first and cleanly (its final seal acknowledged by the members, still running then).
    assert.equal((await runOk('docker', ['inspect', '-f', '{{.State.ExitCode}}', container('proxy-ha')])).trim(), '0');
    const stoppedAt = now();
    // Member 1 (and what it depends on: setup, etcd): it tries to join, nobody can admit it, it retries
    // and never serves. (`up -d proxy-ha` would wait for it until its health check gives up.)
    await stack.composeOk(['up', '-d', '--no-build', 'cas-1'], { timeoutMs: 180_000 });
    const refusal = await waitFor('cas-1 to fail its join', async () => {
      const l = await logs('cas-1', stoppedAt);
      return /could not join/.test(l) ? l : undefined;
    }, 90_000);
    step('cas-1 refused');
    assert.match(refusal, /CAS_QUORUM_UNAVAILABLE: cannot join: 0 of the 2 other members admitted this instance/);
    assert.notEqual((await inspectState('cas-1')).health, 'healthy');
    // The owner signs (refused while a member answers; none does); member 1 takes it at its next try.
    const signed = await stack.compose(['run', '--rm', '-T', 'ha-recover'], { timeoutMs: 120_000 });
    assert.equal(signed.code, 0, signed.stderr + signed.stdout);
    assert.match(signed.stderr, /statement signed, valid until/);
    step('signed');
    await waitHealthy('cas-1');
    step('cas-1 healthy');
    assert.match(await logs('cas-1', stoppedAt), /serving: the deployment reopened by the owner's statement/);
    // The others join it (cas-3 depends on cas-2, which depends on cas-1); cas-3, killed before, included.
    const before = await members('cas-1');
    await stack.composeOk(['up', '-d', '--no-build', 'cas-3'], { timeoutMs: 300_000 });
    await waitHealthy('cas-3');
    step('cas-2, cas-3 joined');
    const after = await members('cas-1');
    for (const m of MEMBERS) assert.ok(after[m], `${m} answers`);
    assert.equal(after['cas-1']!.instance, before['cas-1']!.instance);
    // Members run again: the owner's tool refuses to sign another statement.
    const again = await stack.compose(['run', '--rm', '-T', 'ha-recover'], { timeoutMs: 120_000 });
    assert.notEqual(again.code, 0);
    assert.match(again.stderr, /members still run, so this is no full stop.*nothing signed/);
    // The owner re-anchors the counter to the sealed record on the volume as found; then the database starts.
    const anchored = await stack.compose(['run', '--rm', '-T', 'ha-recover', 'reanchor'], { timeoutMs: 240_000 });
    assert.equal(anchored.code, 0, anchored.stderr + anchored.stdout);
    assert.match(anchored.stdout, /counter of mariadb re-anchored to \d+ .* on 3 of 3 CAS instances/);
    step('re-anchored');
    await stack.composeOk(['up', '-d', '--no-build', 'proxy-ha'], { timeoutMs: 300_000 });
    step('up proxy-ha');
    await waitProxyReady();
    step('proxy ready');
    await write(2);
    // The statement was consumed: nothing is left for a later start to reopen with.
    const left = await runOk('docker', ['exec', container('cas-1'), 'ls', '-A', '/srv/cas-ha-recovery']);
    assert.equal(left.trim(), '');
  });

  it('tears down without leaving containers, volumes or networks', async () => {
    assert.ok(environment, 'stack was not started');
    await environment.down({ removeVolumes: true, timeout: 30_000 });
    environment = undefined;
    // `docker-compose run` containers of ha-recover were --rm; the project's label finds anything else.
    assert.deepEqual(await stack.leftovers(), []);
  });
});
