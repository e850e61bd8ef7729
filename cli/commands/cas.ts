/**
 * `cdbp cas`: runs the Configuration and Attestation Service in the foreground.
 * `cdbp cas audit verify --dir DIR`: checks the audit log's hash chain (and MACs, with the sealing key).
 */
import { watchParent } from '../../src/kernel/parent-watch.ts';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { loadConfig, describeSchema, type Schema } from '../../src/kernel/config.ts';
import { parseFlags } from '../../src/kernel/args.ts';
import { lockStateDir } from '../../src/kernel/state-lock.ts';
import { createLogger } from '../../src/kernel/log.ts';
import { CdbpError } from '../../src/kernel/errors.ts';
import { readPublicKeyFile } from '../../src/crypto/ed25519.ts';
import { isHex } from '../../src/crypto/hash.ts';
import { simulationAllowed, SIMULATION_WARNING } from '../../src/attestation/select.ts';
import { startCas, writeReadyFile, auditFile, type RunningCas } from '../../cas/app.ts';
import { Lifecycle } from '../../src/kernel/lifecycle.ts';
import { MetricsRegistry } from '../../src/kernel/metrics.ts';
import type { Logger } from '../../src/kernel/log.ts';
import { buildOpsServer } from '../../src/ops/server.ts';
import { VERSION } from '../version.ts';
import { verifyAuditFile } from '../../cas/audit.ts';
import { verifyCounterLogFiles } from '../../cas/counter-log.ts';
import { readSealedAuditAnchor, type AuditAnchor } from '../../cas/state.ts';
import { deriveKey, FailClosedSealingKeyProvider, FileSealingKeyProvider, type SealingKeyProvider } from '../../cas/sealing-key.ts';
import { prepareHa, type HaRuntime } from '../../cas/replication/index.ts';
import { selectProvider } from '../../src/attestation/select.ts';
import { measureShippedCode } from '../../src/attestation/measurement.ts';
import type { SignedHaRecovery } from '../../src/provisioning/policy.ts';

export const CAS_SCHEMA = {
  casDir: { kind: 'string', doc: 'CAS trusted directory (sealed state, audit log, ca.pem)', required: true },
  casHost: { kind: 'string', doc: 'listen address', default: '127.0.0.1' },
  casPort: { kind: 'int', doc: 'listen port (0 = any free port; see cas-ready.json)', default: 8700, min: 0, max: 65535 },
  casAllowSimulated: { kind: 'bool', doc: 'accept SIMULATED attestation (development only)', default: false },
  casPlatformPublicKey: { kind: 'string', doc: 'simulated platform public key file (hex), trusted for simulated evidence' },
  casSealing: { kind: 'enum', values: ['file', 'fail-closed'], doc: 'state sealing key source (file = simulated, key in DIR)', default: 'file' },
  casSealingKeyFile: { kind: 'string', doc: 'sealing key file for --sealing file [DIR/sealing.key]' },
  casNonceTtlMs: { kind: 'int', doc: 'lifetime of attestation/recovery nonces in ms', default: 60_000, min: 100, max: 600_000 },
  casTlsNames: { kind: 'list', doc: 'extra DNS names/IPs for the CAS server certificate', default: [] },
  casOwners: { kind: 'list', doc: 'owner public keys (hex) or files of them allowed to create services (--owner, repeatable); none = first policy binds its owner', default: [] },
  casOpsHost: { kind: 'string', doc: 'ops API address (plain HTTP: health, metrics, status)', default: '127.0.0.1' },
  casOpsPort: { kind: 'int', doc: 'ops API port (-1 = off, 0 = any free port)', default: -1, min: -1, max: 65535 },
  casHaMembers: { kind: 'int', doc: 'replicated CAS: number of members (0 = single CAS, no replication)', default: 0, min: 0, max: 15 },
  casHaPeers: { kind: 'list', doc: 'replicated CAS: the other members\' URLs', default: [] },
  casHaSlot: { kind: 'int', doc: 'replicated CAS: this member\'s place, 1..members (a restarted member takes its place back as a new incarnation)', default: 0, min: 0, max: 15 },
  casHaBootstrap: { kind: 'bool', doc: 'replicated CAS: create a new deployment (empty dir and empty etcd only); otherwise join', default: false },
  casHaCa: { kind: 'string', doc: 'replicated CAS: the deployment CA file a joining member pins' },
  casHaPlatformKey: { kind: 'string', doc: 'replicated CAS, simulated TEE: platform key file a joining member signs its evidence with' },
  casEtcd: { kind: 'list', doc: 'replicated CAS: etcd client URLs (http://host:port, the durable state store)', default: [] },
  casHaRecover: { kind: 'string', doc: 'replicated CAS: owner-signed statement (cdbp recover deployment) to reopen a deployment that lost a majority of its members; counters start empty' },
} satisfies Schema;

const FLAG_TO_KEY: Record<string, string> = {
  dir: 'casDir', host: 'casHost', port: 'casPort', 'allow-simulated': 'casAllowSimulated',
  'platform-public-key': 'casPlatformPublicKey', sealing: 'casSealing', 'sealing-key-file': 'casSealingKeyFile', 'tls-names': 'casTlsNames',
  'ops-host': 'casOpsHost', 'ops-port': 'casOpsPort',
  'ha-members': 'casHaMembers', 'ha-peers': 'casHaPeers', 'ha-slot': 'casHaSlot', 'ha-bootstrap': 'casHaBootstrap', 'ha-ca': 'casHaCa', 'ha-platform-key': 'casHaPlatformKey', etcd: 'casEtcd',
  'ha-recover': 'casHaRecover',
};

const USAGE = `usage: cdbp cas --dir DIR [--host 127.0.0.1] [--port N] [--allow-simulated --platform-public-key FILE]
                [--sealing file|fail-closed] [--sealing-key-file FILE] [--tls-names a,b] [--ops-port N]
                [--owner HEX|FILE]...
                [--ha-members N --ha-slot K --ha-peers URL,URL --etcd URL,.. (--ha-bootstrap | --ha-ca FILE [--ha-platform-key FILE] [--ha-recover FILE])]
       cdbp cas audit verify --dir DIR

Environment (flags override):
${describeSchema(CAS_SCHEMA)}`;

/** `--owner` may repeat (parseFlags keeps one value per flag): pull every occurrence out first. */
function takeRepeated(argv: string[], name: string): { values: string[]; rest: string[] } {
  const values: string[] = [];
  const rest: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === `--${name}`) {
      const v = argv[++i];
      if (v === undefined) throw new CdbpError('USAGE', `option '--${name}' needs a value (--${name} VALUE)`);
      values.push(v);
    } else if (a.startsWith(`--${name}=`)) values.push(a.slice(name.length + 3));
    else rest.push(a);
  }
  return { values, rest };
}

/** Each entry is a hex key, or a file with one hex key per line (# comments allowed). */
function resolveOwnerKeys(entries: string[]): string[] {
  const keys: string[] = [];
  for (const entry of entries) {
    if (isHex(entry.toLowerCase(), 32)) { keys.push(entry.toLowerCase()); continue; }
    let text: string;
    try {
      text = readFileSync(entry, 'utf8');
    } catch (e) {
      throw new CdbpError('CONFIG_INVALID', `--owner ${entry}: neither a 64-hex Ed25519 public key nor a readable file (${(e as Error).message})`);
    }
    for (const line of text.split('\n').map((l) => l.replace(/#.*/, '').trim()).filter(Boolean)) {
      if (!isHex(line.toLowerCase(), 32)) throw new CdbpError('CONFIG_INVALID', `--owner file ${entry}: "${line.slice(0, 20)}" is not a 64-hex Ed25519 public key`);
      keys.push(line.toLowerCase());
    }
  }
  return keys;
}

export async function run(argv0: string[]): Promise<number> {
  if (argv0[0] === 'audit') return auditCommand(argv0.slice(1));
  const { values: ownerFlags, rest: argv } = takeRepeated(argv0, 'owner');
  const { flags, positionals } = parseFlags(argv, ['allow-simulated', 'ha-bootstrap'], ['dir', 'host', 'port', 'platform-public-key', 'sealing', 'sealing-key-file', 'tls-names', 'ops-host', 'ops-port',
    'ha-members', 'ha-slot', 'ha-peers', 'ha-ca', 'ha-platform-key', 'etcd', 'ha-recover']);
  if (flags.help) {
    console.log(USAGE);
    return 0;
  }
  if (positionals.length > 0) throw new CdbpError('USAGE', `unexpected argument '${positionals[0]}'`);
  const overrides: Record<string, string | boolean | undefined> = {};
  for (const [flag, key] of Object.entries(FLAG_TO_KEY)) if (flags[flag] !== undefined) overrides[key] = flags[flag];
  const config = loadConfig(CAS_SCHEMA, overrides);
  const owners = resolveOwnerKeys(ownerFlags.length > 0 ? ownerFlags : config.casOwners);
  const allowSimulated = simulationAllowed(config.casAllowSimulated);
  const dir = path.resolve(config.casDir);
  const log = createLogger({ name: 'cas', base: allowSimulated ? { simulated: true } : {} });
  if (allowSimulated) log.warn({ mode: 'simulated' }, SIMULATION_WARNING);
  if (allowSimulated && !config.casPlatformPublicKey) {
    throw new CdbpError('CONFIG_INVALID', '--allow-simulated needs --platform-public-key FILE (the simulated platform key it trusts)');
  }
  const sealing = config.casSealing === 'file'
    ? new FileSealingKeyProvider(config.casSealingKeyFile ?? path.join(dir, 'sealing.key'), log)
    : new FailClosedSealingKeyProvider();
  // One CAS per state directory: two would append to one audit log and break its chain for good.
  await lockStateDir(dir, { role: 'cdbp cas', scope: 'cas' });
  rmSync(path.join(dir, 'cas-ready.json'), { force: true });
  const ops = config.casOpsPort >= 0 ? await startCasOps(config.casOpsHost, config.casOpsPort, allowSimulated, log) : undefined;
  const ha = config.casHaMembers > 0 ? await prepareHaFromConfig(config, owners, sealing, dir, allowSimulated, log) : undefined;
  let cas: RunningCas;
  try {
    cas = await startCas({
      ...(ha ? { ha } : {}),
      dir, host: config.casHost, port: config.casPort, allowSimulated, sealing, log, tlsNames: config.casTlsNames, nonceTtlMs: config.casNonceTtlMs, owners,
      platformPublicKey: config.casPlatformPublicKey ? readPublicKeyFile(config.casPlatformPublicKey) : undefined,
    });
  } catch (e) {
    await ops?.stop();
    throw e;
  }
  // The stop handlers go in before the ready file is written: whoever waits for that file may signal at
  // once, and a SIGTERM before them killed the process with the default action (no clean stop, exit by
  // signal; seen in CI as a test CAS whose stop returned null).
  const stopped = new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) return;
      stopping = true;
      log.info({ signal }, 'CAS stopping');
      rmSync(path.join(dir, 'cas-ready.json'), { force: true });
      ops?.lifecycle.advance('draining');
      cas.close().then(() => ops?.stop()).then(() => resolve(0), (e: unknown) => {
        log.error({ err: e }, 'error while stopping');
        resolve(1);
      });
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
    watchParent(() => stop('parent exited'));
  });
  ops?.started(cas);
  writeReadyFile(dir, { url: cas.url, caFile: cas.caFile, pid: process.pid });
  return stopped;
}

/**
 * The CAS's ops server (src/ops/server.ts, role 'cas') on its own plain-HTTP port, loopback by default:
 * /livez /startupz /readyz /metrics /v1/status. Started before the CAS so probes see its start-up.
 */
async function startCasOps(host: string, port: number, simulated: boolean, log: Logger) {
  const lifecycle = new Lifecycle();
  const own = new MetricsRegistry();
  own.gauge('cdbp_mode', 'Attestation the CAS accepts (simulated = software platform key, not a TEE)', (g) => g.set(1, { mode: simulated ? 'simulated' : 'none' }));
  own.gauge('cdbp_ready', '1 when ready to serve', (g) => g.set(lifecycle.state === 'ready' ? 1 : 0));
  own.gauge('cdbp_info', 'Build and role of this process', (g) => g.set(1, { role: 'cas', version: VERSION }));
  let cas: RunningCas | undefined;
  const app = buildOpsServer({
    role: 'cas', version: VERSION, lifecycle, log,
    metrics: { render: () => own.render() + (cas?.metrics.render() ?? '') },
    status: () => ({
      mode: simulated ? 'simulated' : 'none',
      ...(simulated ? { warning: SIMULATION_WARNING } : {}),
      url: cas?.url ?? null,
    }),
  });
  const url = await app.listen({ host, port });
  log.info({ ops: url }, 'CAS ops API listening');
  return {
    lifecycle, url,
    started(running: RunningCas) {
      cas = running;
      lifecycle.advance('ready');
    },
    async stop() {
      if (!lifecycle.isTerminal()) lifecycle.advance('stopped');
      await app.close();
    },
  };
}

async function auditCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  const { flags } = parseFlags(rest, [], ['dir', 'sealing-key-file']);
  if (sub !== 'verify' || flags.help || typeof flags.dir !== 'string') {
    console.log('usage: cdbp cas audit verify --dir DIR [--sealing-key-file FILE]');
    return flags.help ? 0 : 2;
  }
  const dir = path.resolve(flags.dir);
  const file = auditFile(dir);
  if (!existsSync(file)) {
    console.error(`audit log ${file} does not exist`);
    return 1;
  }
  // With the (file) sealing key at hand, the MACs are checked too: a rewritten chain is caught.
  const keyFile = typeof flags['sealing-key-file'] === 'string' ? flags['sealing-key-file'] : path.join(dir, 'sealing.key');
  let macKey: Buffer | undefined;
  let anchor: AuditAnchor | undefined;
  if (existsSync(keyFile)) {
    const text = readFileSync(keyFile, 'utf8').trim();
    if (isHex(text, 32)) {
      const master = Buffer.from(text, 'hex');
      macKey = deriveKey(master, 'audit');
      // The sealed anchor (last seq + head hash) catches a truncated or rolled-back tail.
      try {
        anchor = await readSealedAuditAnchor(dir, deriveKey(master, 'state'));
      } catch (e) {
        console.error(`audit log NOT VERIFIED: ${(e as Error).message}`);
        return 1;
      }
    }
  }
  const v = await verifyAuditFile(file, macKey, anchor);
  if (!v.ok) {
    console.error(`audit log BROKEN (AUDIT_CHAIN_BROKEN): ${file} line ${v.line}: ${v.problem} (${v.entries} entries verified before it)`);
    return 1;
  }
  console.log(`audit log OK: ${v.entries} entries, head ${v.head}${macKey
    ? `, MACs verified, ${anchor ? `sealed anchor at entry ${anchor.seq} matches` : 'no sealed anchor yet'}`
    : ' (hash chain only: no sealing key, MACs and truncation not checked)'}`);
  // The freshness counters' log (cas/counter-log.ts): chain, MACs, and the anchored batch.
  if (macKey) {
    const master = Buffer.from(readFileSync(keyFile, 'utf8').trim(), 'hex');
    try {
      const c = await verifyCounterLogFiles(path.join(dir, 'state'), deriveKey(master, 'counters'));
      console.log(c.present
        ? `counter log OK: ${c.entries} entries for ${c.services} service(s), MACs verified, reaches its anchor${c.tornTail || c.repairable ? ` (the next CAS start drops a torn last line / restores ${c.repairable} anchored line(s))` : ''}`
        : 'counter log: none yet');
    } catch (e) {
      console.error(`counter log BROKEN (STATE_TAMPERED): ${(e as Error).message}`);
      return 1;
    } finally {
      master.fill(0);
    }
  }
  return 0;
}

/** A replicated CAS member (docs/CAS.md "Replicated CAS"): bootstrap a deployment or join one. */
async function prepareHaFromConfig(config: { casHaMembers: number; casHaSlot: number; casHaPeers: string[]; casHaBootstrap: boolean; casHaCa?: string; casHaPlatformKey?: string; casEtcd: string[]; casHaRecover?: string; casSealing: string; casSealingKeyFile?: string },
  owners: string[], sealing: SealingKeyProvider, dir: string, allowSimulated: boolean, log: Logger): Promise<HaRuntime> {
  if (config.casEtcd.length === 0) throw new CdbpError('CONFIG_INVALID', '--ha-members needs --etcd URL,.. (the durable state store)');
  // Only 3: the fencing argument was checked (model search, docs/CAS.md) for n = 3 and is false for even n;
  // larger odd n are unproven.
  if (config.casHaMembers !== 3) throw new CdbpError('CONFIG_INVALID', `--ha-members ${config.casHaMembers}: a replicated CAS has exactly 3 members (other sizes are not proven safe: docs/CAS.md "Slots and fencing")`);
  if (config.casHaSlot < 1 || config.casHaSlot > config.casHaMembers) throw new CdbpError('CONFIG_INVALID', `--ha-members ${config.casHaMembers} needs --ha-slot 1..${config.casHaMembers} (this member's place; the same across its restarts)`);
  if (config.casHaPeers.length !== config.casHaMembers - 1) {
    throw new CdbpError('CONFIG_INVALID', `--ha-members ${config.casHaMembers} needs the ${config.casHaMembers - 1} other members in --ha-peers (got ${config.casHaPeers.length})`);
  }
  // Every member must hold the same owner allow-list: it is sealed at bootstrap, never bound by a first policy.
  if (config.casHaBootstrap && owners.length === 0) throw new CdbpError('CONFIG_INVALID', '--ha-bootstrap needs --owner (the owner allow-list is sealed once for all members)');
  let recover: SignedHaRecovery | undefined;
  if (config.casHaRecover) {
    if (config.casHaBootstrap) throw new CdbpError('CONFIG_INVALID', '--ha-recover reopens an existing deployment: not with --ha-bootstrap');
    const keyFile = config.casSealingKeyFile ?? path.join(dir, 'sealing.key');
    // A member that never held the deployment's state key cannot reopen it (and must not mint a new one trying).
    if (config.casSealing === 'file' && !existsSync(keyFile)) throw new CdbpError('HA_RECOVERY_REFUSED', `--ha-recover: ${keyFile} does not exist: only a member that held the deployment's state key can reopen it`);
    try {
      recover = JSON.parse(readFileSync(config.casHaRecover, 'utf8')) as SignedHaRecovery;
    } catch (e) {
      throw new CdbpError('CONFIG_INVALID', `--ha-recover ${config.casHaRecover}: ${(e as Error).message}`);
    }
  }
  const provider = config.casHaBootstrap || recover ? undefined : selectProvider(allowSimulated && config.casHaPlatformKey
    ? { mode: 'simulated', allowSimulated, platformKeyFile: config.casHaPlatformKey, log }
    : { mode: 'auto', log });
  return prepareHa({
    members: config.casHaMembers, slot: config.casHaSlot, peers: config.casHaPeers, etcdEndpoints: config.casEtcd, bootstrap: config.casHaBootstrap,
    ...(config.casHaCa ? { caPem: readFileSync(config.casHaCa, 'utf8') } : {}), ...(provider ? { provider } : {}),
    measurement: measureShippedCode(), ...(recover ? { recover } : {}),
  }, sealing, dir, log);
}
