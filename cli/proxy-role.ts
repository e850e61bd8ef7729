/**
 * The proxy role: the composition root that wires attestation, provisioning, the freshness guard, the
 * keyring, the managed MariaDB and the protocol listeners, in the order the trust model demands:
 *
 *   attest → provisioned → freshness verified → keyring ready → (first run) install-db → mariadbd →
 *   online position check → listeners → ready
 *
 * If any step fails, later steps never run: keys are not served, MariaDB is not started, /readyz stays
 * 503 and /v1/status says why.
 */
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { randomBytes, X509Certificate } from 'node:crypto';
import type { ConfigOf } from '../src/kernel/config.ts';
import type { Logger } from '../src/kernel/log.ts';
import { Lifecycle } from '../src/kernel/lifecycle.ts';
import { MetricsRegistry } from '../src/kernel/metrics.ts';
import { CdbpError, asCdbpError } from '../src/kernel/errors.ts';
import { buildOpsServer, buildAdminServer, newAdminToken } from '../src/ops/server.ts';
import { endpointReportData } from '../src/ops/evidence.ts';
import { MariadbServer } from '../src/db/mariadb-server.ts';
import { checkMariadbServer } from '../src/db/mariadb-encryption-check.ts';
import { waitForDatabase } from '../src/db/wait-for-database.ts';
import { hardeningDirs, hardeningPaths, mariadbHardeningConfig, preparePluginDir } from '../src/db/mariadb-hardening.ts';
import { mariadbPluginDir } from '../src/kernel/binaries.ts';
import type { Provision, CounterClient } from '../src/provisioning/types.ts';
import type { AttestationProvider } from '../src/attestation/types.ts';
import { attestAndProvision } from '../src/cas-client/index.ts';
import { attestAndProvisionAny, parseCasUrls } from '../src/cas-client/quorum-counter.ts';
import { attestedTeeOf, type AttestedTee } from '../src/attestation/attested-tee.ts';
import { onCasIdentityAlarm } from '../src/cas-client/http.ts';
import { CasTrustPin } from '../src/cas-client/trust-pin.ts';
import { checkProxyConfig } from './proxy-config-check.ts';
import { RenewalDriver, type RenewalOutcome } from '../src/cas-client/renewal.ts';
import { certificateFacts, certificateStatus, proxyReadiness } from '../src/ops/proxy-status.ts';
import { CurrentCounter, closeClient } from '../src/cas-client/current-counter.ts';
import { FreshnessGuard } from '../proxy/freshness/guard.ts';
import { RecordStore } from '../proxy/freshness/store.ts';
import { MariadbPositionSource, readOfflineCheckpoint, type PositionSource } from '../proxy/freshness/mariadb-position.ts';
import { PostgresPositionSource } from '../proxy/freshness/postgres-position.ts';
import { MariadbInventory, describeFileViolations } from '../proxy/freshness/inventory/mariadb-inventory.ts';
import { InventoryStore } from '../proxy/freshness/inventory/store.ts';
import { PostgresInventory, WAL_SLOT_KEEP, dropInventoryWalSlot } from '../proxy/freshness/inventory/postgres-inventory.ts';
import type { FileViolation } from '../proxy/freshness/inventory/check.ts';
import type { InventoryRef } from '../proxy/freshness/inventory/types.ts';
import { createPgProxy, type PgProxy } from '../proxy/pg/index.ts';
import { PostgresServer, lookupOsUser } from '../src/db/postgres-server.ts';
import type { EncryptedDirectory } from '../src/storage/index.ts';
import { postgresStorage, type PostgresLayout } from '../src/storage/postgres-storage.ts';
import { createMysqlProxy, MariadbAccountTls, type MysqlProxy } from '../proxy/mysql/index.ts';
import { createKeyring, mariadbEncryptionConfig, keyringEnv, prepareVolatileDir, writeKeyringCaFile, type Keyring } from '../keyring/index.ts';
import { writeFileDurable } from '../src/crypto/atomic-file.ts';
import type { PROXY_SCHEMA } from './settings.ts';
import { VERSION } from './version.ts';
import { TlsIdentityHolder } from '../src/crypto/tls-identity.ts';

/** What the role drives of either engine's data-file inventory (MariadbInventory, PostgresInventory). */
interface DataFileInventory {
  readonly running: boolean;
  status(): Record<string, unknown>;
  verifyOffline(ref: InventoryRef | undefined): Promise<FileViolation[]>;
  start(sealed: (ref: InventoryRef) => void): void;
  stop(): Promise<void>;
  countedRef(digest: string | undefined): void;
  sweep(stopped: boolean): Promise<InventoryRef | undefined>;
}

export type ProxyConfig = ConfigOf<typeof PROXY_SCHEMA>;

export interface ProxyRoleDeps {
  config: ProxyConfig;
  provider: AttestationProvider;
  log: Logger;
}

export class ProxyRole {
  readonly lifecycle = new Lifecycle();
  readonly metrics = new MetricsRegistry();
  private provision: (Provision & { counter: CounterClient }) | undefined;
  /** The one TLS identity every listener reads; renewal swaps it here (src/crypto/tls-identity.ts). */
  private identity: TlsIdentityHolder | undefined;
  private guard: FreshnessGuard | undefined;
  /** Per-file freshness of the managed MariaDB's data files (issue 22). */
  private inventory: MariadbInventory | undefined;
  /** The managed PostgreSQL's data-file inventory (issue 22), checked inside the mount before it starts. */
  private pgInventory: PostgresInventory | undefined;
  private keyring: Keyring | undefined;
  private keyringCaFile: string | undefined;
  private mariadb: MariadbServer | undefined;
  /** The managed mariadbd's memory-backed directory (Aria log, tmpdir, logs, secure_file_priv). */
  private mariadbVolatileDir: string | undefined;
  private positions: PositionSource | undefined;
  private mysql: MysqlProxy | undefined;
  private mysqlAddress: { host: string; port: number } | undefined;
  private postgres: PostgresServer | undefined;
  /** The managed PostgreSQL's encrypted directory (CDBP_PG_ENCRYPTION), mounted before it starts. */
  private pgStorage: EncryptedDirectory | undefined;
  private pg: PgProxy | undefined;
  private pgAddress: { host: string; port: number } | undefined;
  private ops: ReturnType<typeof buildOpsServer> | undefined;
  private admin: ReturnType<typeof buildAdminServer> | undefined;
  private draining = false;
  /**
   * The CAS root CA this process trusts, read once before the first attestation and never again: a
   * host-writable file must not be able to hand the counter to another CAS (docs/SECURITY.md).
   */
  private casPin: CasTrustPin | undefined;
  private stopCasAlarms: (() => void) | undefined;
  /** When to renew and the bookkeeping of attempts (src/cas-client/renewal.ts); what a renewal does is renewOnce. */
  private readonly renewal: RenewalDriver;
  private startup: Promise<void> | undefined;
  private stopping: Promise<void> | undefined;
  /** The managed database exited on its own (crash, kill): a stop seals nothing more. */
  private databaseDied = false;
  private stoppedResolve: () => void = () => undefined;
  private readonly stoppedPromise = new Promise<void>((r) => { this.stoppedResolve = r; });
  /** What the freshness guard holds: the current counter client (mTLS), swapped on renewal. */
  private readonly counter = new CurrentCounter();
  readonly addresses: { ops?: string; admin?: string; adminTokenFile?: string; mysql?: { host: string; port: number }; keyring?: string } = {};

  constructor(private readonly deps: ProxyRoleDeps) {
    this.renewal = new RenewalDriver({ attempt: () => this.renewOnce(), renewBeforeSeconds: deps.config.renewBeforeSeconds, log: deps.log });
    const { metrics } = this;
    metrics.gauge('cdbp_mode', 'TEE mode of this process (simulated is not a real TEE)', (g) => g.set(1, { mode: deps.provider.mode }));
    metrics.gauge('cdbp_ready', '1 when ready to serve', (g) => g.set(this.lifecycle.state === 'ready' && !this.draining ? 1 : 0));
    metrics.gauge('cdbp_cert_expiry_seconds', 'Seconds until the serving certificate expires', (g) => {
      if (this.provision) g.set(Math.round((this.provision.identity.notAfter.getTime() - Date.now()) / 1000));
    });
    metrics.gauge('cdbp_cert_renewal_failing', '1 while certificate renewal is failing', (g) => g.set(this.renewal.status().error ? 1 : 0));
    metrics.gauge('cdbp_cert_renewals_total', 'Certificates renewed since start', (g) => g.set(this.renewal.status().renewals));
    metrics.gauge('cdbp_cert_renewal_failures', 'Consecutive failed renewal attempts', (g) => g.set(this.renewal.status().consecutiveFailures));
    metrics.gauge('cdbp_cas_identity_alarms_total', 'Times a server at the CAS URL failed the pinned CAS CA (an impostor)', (g) => g.set(this.casPin?.impostorAlarms ?? 0));
    metrics.gauge('cdbp_cas_ca_file_changed', '1 when the CAS CA file on disk differs from the CA pinned at start (ignored, alarmed)', (g) => g.set(this.casPin?.fileChanged ? 1 : 0));
    metrics.gauge('cdbp_tee_info', 'TEE and TCB the CAS attested (from its certificate); simulated is not a TEE', (g) => {
      const a = this.attestedTee();
      g.clear();
      g.set(1, { tee: a.tee, tcb_status: a.tcbStatus });
    });
    metrics.gauge('cdbp_draining', '1 while draining for shutdown', (g) => g.set(this.draining ? 1 : 0));
    metrics.gauge('cdbp_info', 'Build and role of this process', (g) => g.set(1, { role: 'proxy', version: VERSION }));
    this.lifecycle.on('change', (state) => deps.log.info({ state }, `lifecycle: ${state}`));
  }

  /** Starts the ops API first, so probes see every start-up step, then runs the start-up sequence. */
  async start(): Promise<void> {
    const { config, log } = this.deps;
    // Cross-field checks before anything else (also for callers that skip cdbp proxy): seconds, not an attestation.
    checkProxyConfig(config);
    if (this.deps.provider.mode === 'simulated') {
      log.warn('SIMULATED TEE: this process is NOT protected by hardware; attestation is a software stand-in');
    }
    this.ops = buildOpsServer({
      role: 'proxy', version: VERSION, lifecycle: this.lifecycle, metrics: this.metrics, log,
      readiness: () => this.readiness(),
      status: () => this.status(),
      attestation: (nonce) => this.attestation(nonce),
    });
    this.addresses.ops = await this.ops.listen({ host: config.opsHost, port: config.opsPort });
    if (config.adminPort >= 0) {
      // A new token every start, only in memory and in a 0600 file for `cdbp admin` (never logged).
      const token = newAdminToken();
      const tokenFile = adminTokenFile(config);
      // 0711, not 0700: the runtime directory is also the way to the databases' own run directories, and they
      // run as unprivileged OS users; the token file itself is 0600.
      mkdirSync(path.dirname(tokenFile), { recursive: true, mode: 0o711 });
      await writeFileDurable(tokenFile, `${token}\n`, 0o600);
      this.addresses.adminTokenFile = tokenFile;
      this.admin = buildAdminServer({
        drain: () => void this.shutdown('admin drain'),
        quit: () => void this.shutdown('admin quit', { immediate: true }),
        renew: () => this.renew(),
      }, log, { token });
      // Always loopback, whatever the ops host is: these actions stop the proxy.
      this.addresses.admin = await this.admin.listen({ host: '127.0.0.1', port: config.adminPort });
    }
    this.startup = this.startSequence();
    try {
      await this.startup;
      this.lifecycle.advance('ready');
      log.info({ mysql: this.mysqlAddress, ops: this.addresses.ops }, 'proxy ready');
    } catch (e) {
      const err = asCdbpError(e);
      this.lifecycle.fail({ code: err.code, message: err.message, ...(err.details ? { details: err.details } : {}) });
      log.error({ err: { code: err.code, message: err.message, details: err.details } }, `start-up failed: ${err.message}`);
      await this.stopBackends();
      throw err;
    }
  }

  private async startSequence(): Promise<void> {
    const { config, log, provider } = this.deps;
    this.lifecycle.advance('attesting');
    this.casPin = CasTrustPin.fromFile(config.casCaFile);
    this.stopCasAlarms = onCasIdentityAlarm((a) => this.casPin!.impostor(a, log));
    const provision = await provisionFrom(config.casUrl)({
      casUrl: config.casUrl, caPem: this.casPin.caPem, service: config.service, provider, log,
      tls: { dnsNames: config.dnsNames },
    });
    this.provision = provision;
    this.identity = new TlsIdentityHolder({ keyPem: provision.identity.keyPem, certPem: provision.identity.certPem });
    this.counter.set(provision.counter);
    const attested = this.attestedTee();
    log.info(attested, `attested as ${attested.tee}, TCB ${attested.tcbStatus}`);
    this.lifecycle.advance('provisioned');
    this.renewal.scheduleFor(provision.identity.notAfter);

    this.lifecycle.advance('verifying');
    // Traversable (not listable): the databases run as unprivileged OS users and their data lives below it.
    mkdirSync(config.untrustedDir, { recursive: true, mode: 0o711 });
    this.guard = new FreshnessGuard({
      store: new RecordStore(path.join(config.untrustedDir, `freshness-${config.service}.sealed`)),
      key: provision.secrets.freshnessKey,
      databaseId: provision.secrets.databaseId,
      counter: this.counter,
      mode: config.freshness,
      engine: config.engine,
      log, metrics: this.metrics,
      holdTimeoutMs: config.holdTimeoutMs,
      sealIntervalMs: config.sealIntervalMs,
    });
    this.guard.on('violation', (v: { kind: string; message: string }) => {
      this.lifecycle.fail({ code: v.kind === 'rollback' ? 'ROLLBACK_DETECTED' : 'TAMPER_DETECTED', message: v.message });
      void this.failClosed(`freshness ${v.kind}`);
    });
    const offline = config.datadir && config.engine === 'mariadb' ? readOfflineCheckpoint(config.datadir) : undefined;
    const verdict = await this.guard.verifyAtStartup(offline);
    // Per-file check, still offline: no key has left the proxy (the keyring starts below).
    if (config.engine === 'mariadb' && config.manageMariadb && config.datadir && config.freshness !== 'off') {
      await this.verifyDataFiles(config.datadir, provision.secrets.freshnessKey, provision.secrets.databaseId);
    }
    log.info({ verdict: verdict.kind, epoch: this.guard.status().epoch }, 'freshness verified');

    this.lifecycle.advance('starting_backend');
    if (config.engine === 'postgres') {
      await this.startPostgresPath();
      return;
    }
    // Keys are released only now, after attestation and the freshness verdict.
    if (config.manageMariadb || config.keyring) await this.startKeyring();
    let socket = config.backendSocket;
    if (config.manageMariadb) socket = await this.startManagedMariadb();
    if (!socket && !config.backendHost) {
      throw new CdbpError('CONFIG_INVALID', 'no backend: set CDBP_BACKEND_SOCKET, CDBP_BACKEND_HOST or CDBP_MANAGE_MARIADB');
    }
    if (socket) {
      const positions = new MariadbPositionSource({ socket, user: config.monitorUser, password: config.monitorPassword });
      this.positions = positions;
      if (!config.manageMariadb) await waitForDatabase(positions, log);
      if (this.keyring) await this.verifyBackendEncryption(socket);
      await this.guard.verifyOnline(positions);
      if (this.inventory) this.startDataFileSweeps(this.inventory, await this.inventory.verifyOnline(socket, config.monitorUser, config.monitorPassword));
      this.guard.startRuntime(positions);
    }

    // REQUIRE SSL/X509 accounts: read once now, then kept current by the proxy's logins (account-tls.ts).
    const accountTls = socket ? new MariadbAccountTls({ socket, user: config.monitorUser, password: config.monitorPassword, log }) : undefined;
    await accountTls?.refresh();
    const backendTls = config.backendCaFile ? { tls: { caPem: readFileSync(config.backendCaFile, 'utf8') } } : {};
    this.mysql = createMysqlProxy({
      listen: { host: config.mysqlHost, port: config.mysqlPort },
      accountTls,
      backend: socket
        ? { socket, ...backendTls }
        : {
          host: config.backendHost!, port: config.backendPort,
          ...backendTls,
          allowInsecure: config.allowInsecureBackend,
        },
      tls: this.identity!,
      limits: { maxConnections: config.maxConnections, maxPendingHandshakes: config.maxPendingHandshakes, maxRefusalHandshakes: config.maxRefusalHandshakes, handshakeTimeoutMs: config.handshakeTimeoutMs, idleTimeoutMs: config.idleTimeoutMs },
      log, metrics: this.metrics,
      ...(config.freshness === 'strict' ? { ackGate: this.guard } : {}),
      dataPlane: config.dataPlane, nativeWorkers: config.nativeWorkers,
    });
    const addr = await this.mysql.listen();
    if ('port' in addr) this.mysqlAddress = addr;
    this.addresses.mysql = this.mysqlAddress;
  }

  /**
   * PostgreSQL: TLS termination plus freshness (WAL flush LSN). Community PostgreSQL has no key plugin, so
   * a managed server runs inside an encrypted directory mounted with the CAS's key (docs/PG-AT-REST.md).
   */
  private async startPostgresPath(): Promise<void> {
    const { config, log } = this.deps;
    let socketDir = config.pgBackendSocketDir;
    if (config.managePostgres) {
      if (!config.pgRunDir || !config.datadir) {
        throw new CdbpError('CONFIG_INVALID', 'CDBP_MANAGE_POSTGRES needs CDBP_PG_RUN_DIR and CDBP_DATADIR');
      }
      // Encrypted (default): everything PostgreSQL writes lives inside the mount; CDBP_DATADIR holds ciphertext.
      const layout = config.pgEncryption === 'off'
        ? { dir: config.pgRunDir, datadir: config.datadir, socketDir: path.join(config.pgRunDir, 'socket') }
        : await this.mountPostgresStorage(config.pgRunDir, config.datadir);
      this.postgres = new PostgresServer({
        ...layout,
        port: config.pgBackendPort, superuser: config.pgMonitorUser,
        hba: ['local all all scram-sha-256'],
        extraConfig: [WAL_SLOT_KEEP],
        onFuse: config.pgEncryption !== 'off',
        dieWithParent: true,
      });
      if (!this.postgres.isInitialized()) {
        log.info({ datadir: this.postgres.datadir }, 'initializing the database (first run)');
      }
      // Per-file check: mounted (plaintext visible to us), PostgreSQL not started yet.
      if (config.freshness !== 'off') await this.verifyPgDataFiles(layout.datadir, layout.socketDir);
      await this.postgres.initialize();
      await this.postgres.start();
      socketDir = this.postgres.socketDir;
      log.info({ pid: this.postgres.pid, socket: this.postgres.socketPath }, 'postgres started');
      void this.postgres.whenExited?.().then((code: number | null) => {
        if (this.stopping) return;
        this.databaseDied = true;
        // A vanished mount usually kills PostgreSQL first: name the cause, not the consequence.
        const storage = this.pgStorage?.health();
        if (storage && !storage.mounted) this.lifecycle.fail({ code: 'STORAGE_UNAVAILABLE', message: `encrypted directory lost: ${storage.reason}` });
        this.lifecycle.fail({ code: 'BACKEND_UNAVAILABLE', message: `postgres exited (code ${code})` });
        void this.pg?.stopAccepting();
      });
    }
    if (!socketDir) throw new CdbpError('CONFIG_INVALID', 'engine=postgres needs CDBP_PG_BACKEND_SOCKET_DIR or CDBP_MANAGE_POSTGRES');
    const positions = new PostgresPositionSource({
      socketDir, port: config.pgBackendPort, user: config.pgMonitorUser, password: config.monitorPassword,
    });
    this.positions = positions;
    if (!config.managePostgres) await waitForDatabase(positions, log);
    await this.guard!.verifyOnline(positions);
    if (this.pgInventory) this.startDataFileSweeps(this.pgInventory, await this.pgInventory.verifyOnline());
    else if (config.managePostgres) {
      await dropInventoryWalSlot({ socketDir, port: config.pgBackendPort, user: config.pgMonitorUser, password: config.monitorPassword })
        .catch((e: unknown) => log.warn({ err: asCdbpError(e).message }, 'could not drop the data-file inventory\'s WAL slot'));
    }
    this.guard!.startRuntime(positions);
    const provision = this.provision!;
    this.pg = createPgProxy({
      listen: { host: config.pgHost, port: config.pgPort },
      backend: { socketDir, port: config.pgBackendPort },
      tls: this.identity!,
      limits: { maxConnections: config.maxConnections, maxPendingHandshakes: config.maxPendingHandshakes, maxRefusalHandshakes: config.maxRefusalHandshakes, handshakeTimeoutMs: config.handshakeTimeoutMs, idleTimeoutMs: config.idleTimeoutMs },
      log, metrics: this.metrics,
      ...(config.freshness === 'strict' ? { ackGate: this.guard! } : {}),
      // The managed server trusts its superuser (our monitor account) on the socket: clients may not use it.
      forbiddenUsers: [config.pgMonitorUser],
    });
    this.pgAddress = await this.pg.listen();
  }

  /**
   * attest → freshness → key → mount: opens the encrypted directory with the CAS-provisioned key (a new
   * one only when no WAL position was ever sealed, i.e. the database's first start) and watches it; a
   * lost mount fails the proxy closed. Returns PostgreSQL's layout inside the mount.
   */
  private async mountPostgresStorage(runDir: string, encryptedDir: string): Promise<PostgresLayout> {
    const { config, log } = this.deps;
    const owner = process.getuid?.() === 0 ? lookupOsUser('postgres') : undefined;
    const prepared = postgresStorage({ runDir, encryptedDir, owner, log });
    this.pgStorage = prepared.storage;
    const layout = await prepared.open({
      dbKeys: this.provision!.secrets.dbKeys,
      sealedWalLsn: (this.guard!.status().position as { walLsn?: string } | null)?.walLsn,
      rekey: config.pgRekey,
    });
    prepared.storage.onLost((reason) => {
      if (this.stopping) return;
      this.lifecycle.fail({ code: 'STORAGE_UNAVAILABLE', message: `encrypted directory lost: ${reason}` });
      void this.failClosed('encrypted directory lost');
    });
    return layout;
  }

  /** Offline: the data files against the sealed inventory the anchored record references (issue 22). */
  private async verifyDataFiles(datadir: string, key: Buffer, databaseId: string): Promise<void> {
    const { config, log } = this.deps;
    const store = new InventoryStore(config.untrustedDir, config.service, key, databaseId);
    this.inventory = new MariadbInventory({
      datadir, store, log, metrics: this.metrics,
      sweepIntervalMs: config.inventorySweepMs, sweepBytesPerSecond: config.inventorySweepMibPerSecond * 2 ** 20,
    });
    await this.checkDataFilesOffline(this.inventory, store);
  }

  /** Offline, PostgreSQL: the files inside the mount against the sealed inventory (issue 22). */
  private async verifyPgDataFiles(datadir: string, socketDir: string): Promise<void> {
    const { config, log } = this.deps;
    const provision = this.provision!;
    const store = new InventoryStore(config.untrustedDir, config.service, provision.secrets.freshnessKey, provision.secrets.databaseId);
    this.pgInventory = new PostgresInventory({
      datadir, store, log, metrics: this.metrics,
      sweepIntervalMs: config.inventorySweepMs, sweepBytesPerSecond: config.inventorySweepMibPerSecond * 2 ** 20,
      connection: () => ({ socketDir: this.postgres?.socketDir ?? socketDir, port: config.pgBackendPort, user: config.pgMonitorUser, password: config.monitorPassword }),
    });
    await this.checkDataFilesOffline(this.pgInventory, store);
  }

  /**
   * Either engine, offline: the data files against the inventory the anchored record references. A
   * missing referenced inventory is a rollback, an edited one tampering; then the files' own verdicts.
   */
  private async checkDataFilesOffline(inventory: DataFileInventory, store: InventoryStore): Promise<void> {
    const ref = this.guard!.inventory;
    let violations: FileViolation[] = [];
    try {
      violations = await inventory.verifyOffline(ref);
    } catch (e) {
      const err = asCdbpError(e);
      if (err.code === 'ROLLBACK_DETECTED') {
        this.guard!.report({ kind: 'rollback', message: `data directory rolled back under a fresh record: ${err.message}`, expected: { inventory: ref?.digest }, seen: { inventory: 'missing' } });
      }
      if (err.code !== 'TAMPER_DETECTED') throw e;
      this.guard!.report({ kind: 'tamper', message: err.message, expected: { inventory: ref?.digest }, seen: { inventory: 'edited or foreign' } });
    }
    this.reportFileViolations(violations);
    // Sweeps left by an interrupted run that no counted record references.
    store.retain([ref?.digest]);
  }

  /** Either engine, after its online check: report what it found, then keep the inventory current. */
  private startDataFileSweeps(inventory: DataFileInventory, onlineViolations: FileViolation[]): void {
    this.reportFileViolations(onlineViolations);
    this.guard!.on('counted', (r: { inventory?: { digest: string } }) => inventory.countedRef(r.inventory?.digest));
    inventory.start((ref) => this.guard?.setInventory(ref));
  }

  private reportFileViolations(v: FileViolation[]): void {
    if (v.length === 0) return;
    const d = describeFileViolations(v);
    this.guard!.report({ kind: 'rollback', message: `data directory rolled back under a fresh record: ${d.message}`, expected: d.expected, seen: d.seen });
  }

  /**
   * Clean stop, after the database exited (PostgreSQL: before the unmount): an exact sweep of the data
   * files, sealed by one last epoch, so the next start refuses any difference (not only what the last
   * background sweep saw).
   */
  private async sealFinalDataFiles(inventory: DataFileInventory | undefined, databaseRunning: boolean): Promise<void> {
    if (!inventory?.running || !this.guard || this.guard.violated || databaseRunning || this.databaseDied) return;
    await inventory.stop();
    const started = Date.now();
    const ref = await inventory.sweep(true);
    if (!ref) return;
    await this.guard.sealFinal(ref);
    inventory.countedRef(ref.digest);
    this.deps.log.info({ files: ref.files, ms: Date.now() - started }, 'freshness: exact data-file inventory sealed after the clean stop');
  }

  /** The loopback keyring with the provisioned keys; for an external MariaDB, hands it the token via tmpfs. */
  private async startKeyring(): Promise<void> {
    const { config, log } = this.deps;
    const provision = this.provision!;
    this.keyring = createKeyring({
      keys: provision.secrets.dbKeys,
      tls: this.identity!,
      port: config.keyringPort, log, metrics: this.metrics,
      audit: (e) => log.info({ keyring: e }, 'keyring request'),
    });
    const { url } = await this.keyring.listen();
    this.addresses.keyring = url;
    const caDir = config.keyringCaDir ?? config.mariadbRunDir;
    if (caDir) this.keyringCaFile = writeKeyringCaFile(caDir, provision.identity.caPem);
    if (!config.manageMariadb && config.keyringTokenFile) {
      // An external mariadbd (its own container) reads the token from a memory-backed file shared with
      // this process; it is valid until this proxy restarts.
      const dir = prepareVolatileDir(path.dirname(config.keyringTokenFile));
      if (!dir.volatile) log.warn({ file: config.keyringTokenFile }, 'keyring token file is not on tmpfs: the token reaches a disk');
      await writeFileDurable(config.keyringTokenFile, this.keyring.issueToken(), 0o600);
    }
    log.info({ url }, 'keyring ready');
  }

  private async startManagedMariadb(): Promise<string> {
    const { config, log } = this.deps;
    if (!config.mariadbRunDir || !config.datadir) {
      throw new CdbpError('CONFIG_INVALID', 'CDBP_MANAGE_MARIADB needs CDBP_MARIADB_RUN_DIR and CDBP_DATADIR');
    }
    mkdirSync(config.mariadbRunDir, { recursive: true, mode: 0o700 });
    const url = this.addresses.keyring!;
    const caFile = this.keyringCaFile!;
    // A fresh token for this mariadbd start; it reaches mariadbd only through its environment.
    const token = this.keyring!.issueToken();
    // MariaDB writes the Aria transaction log and internal temp tables unencrypted: keep them in memory.
    const volatileRoot = config.volatileDir ?? path.join(config.mariadbRunDir, 'volatile');
    const ariaLog = prepareVolatileDir(path.join(volatileRoot, 'aria-log'));
    const tmp = prepareVolatileDir(path.join(volatileRoot, 'tmp'));
    if (!ariaLog.volatile || !tmp.volatile) {
      log.warn({ dir: volatileRoot }, 'volatile dir is not memory-backed: the Aria log and internal temp tables reach a disk in plaintext (set CDBP_VOLATILE_DIR to a tmpfs)');
    }
    // Only encrypting engines, SQL-bearing logs and INTO OUTFILE on the volatile dir, no INSTALL SONAME.
    const hardening = { volatileDir: path.resolve(volatileRoot), pluginDir: preparePluginDir(path.join(config.mariadbRunDir, 'plugins'), mariadbPluginDir()) };
    this.mariadbVolatileDir = hardening.volatileDir;
    this.mariadb = new MariadbServer({
      dir: config.mariadbRunDir,
      datadir: config.datadir,
      tmpdir: tmp.dir,
      extraConfig: [...mariadbEncryptionConfig({ vaultUrl: url, caFile, ariaLogDir: ariaLog.dir }), ...mariadbHardeningConfig(hardening)],
      env: keyringEnv(token),
      // mariadbd runs as the `mysql` OS user (when we are root): it must own what it writes.
      ownedDirs: [ariaLog.dir, tmp.dir, ...hardeningDirs(hardening)],
      errorLog: hardeningPaths(hardening).errorLog,
      // aria_log_control (the Aria UUID) stays in the datadir: losing it breaks encrypted Aria tables.
      ariaLogDir: ariaLog.dir,
      // Undo logs in their own tablespaces (MariaDB 11's default), not in ibdata1: each is its own file in
      // the sealed inventory, and innodb_undo_log_truncate stays possible later.
      undoTablespaces: 3,
    });
    if (!this.mariadb.isInitialized()) {
      log.info({ datadir: config.datadir }, 'initializing the database (first run)');
      await this.mariadb.initialize();
    }
    try {
      await this.mariadb.start();
    } catch (e) {
      // After a crash, InnoDB's recovery refuses a tablespace the offline check left to the dictionary.
      if (this.inventory) this.reportFileViolations(this.inventory.explainStartFailure(this.mariadb.startLog()));
      throw e;
    }
    log.info({ pid: this.mariadb.pid, socket: this.mariadb.socket }, 'mariadbd started');
    void this.mariadb.whenExited().then((code) => {
      if (this.stopping) return;
      this.databaseDied = true;
      log.error({ code, log: this.mariadb?.errorLogTail() }, 'mariadbd exited unexpectedly');
      this.lifecycle.fail({ code: 'BACKEND_UNAVAILABLE', message: `mariadbd exited (code ${code})` });
      void this.mysql?.stopAccepting();
    });
    return this.mariadb.socket;
  }

  /**
   * Before anyone is served: the server encrypts everything with keys from our keyring, and (managed)
   * runs hardened and unprivileged. A server started with encryption off never goes ready.
   */
  private async verifyBackendEncryption(socket: string): Promise<void> {
    const { config, log } = this.deps;
    await checkMariadbServer({
      socket, user: config.monitorUser, password: config.monitorPassword,
      keysServed: () => this.keyring!.keysServedSinceToken(),
      serverPid: this.mariadb?.pid,
      expect: {
        plugin: 'hashicorp_key_management', hardened: config.manageMariadb,
        ...(this.mariadbVolatileDir ? { volatileDirs: [this.mariadbVolatileDir] } : {}),
      },
    });
    log.info({ keysServed: this.keyring!.keysServedSinceToken() }, 'mariadb encryption verified');
  }

  /** The facts /readyz decides on (src/ops/proxy-status.ts decides). */
  private readiness(): { ready: boolean; reasons: string[] } {
    return proxyReadiness({
      now: Date.now(),
      draining: this.draining,
      certificateNotAfter: this.provision?.identity.notAfter,
      renewalError: this.renewal.status().error,
      freshnessViolation: this.guard?.violated,
      casImpostor: this.casPin?.lastImpostor,
      lifecycleReady: this.lifecycle.state === 'ready',
      mariadbRunning: this.mariadb?.running,
      storage: this.pgStorage?.health(),
    });
  }

  /** What the CAS attested (TEE, TCB, collateral age), read from the certificate it issued. */
  private attestedTee(): AttestedTee {
    return attestedTeeOf(this.provision?.identity.certPem, this.deps.provider.mode);
  }

  /** Public facts only (see docs/OPERATIONS.md): never keys, tokens, passwords or SQL. */
  private status(): Record<string, unknown> {
    const p = this.provision;
    const dataFiles: DataFileInventory | undefined = this.inventory ?? this.pgInventory;
    return {
      mode: this.deps.provider.mode,
      ...(this.deps.provider.mode === 'simulated' ? { warning: 'SIMULATED TEE: not protected by hardware' } : {}),
      measurement: this.deps.provider.measurement(),
      attestation: this.attestedTee(),
      service: this.deps.config.service,
      certificate: p ? certificateStatus(p.identity, this.renewal.status(), Date.now()) : null,
      freshness: this.guard ? { ...this.guard.status(), ...(dataFiles ? { dataFiles: dataFiles.status() } : {}) } : null,
      casTrust: this.casPin?.status() ?? null,
      casMembers: this.counter.memberStatus() ?? null,
      backend: {
        engine: this.deps.config.engine,
        managed: this.deps.config.manageMariadb || this.deps.config.managePostgres,
        running: this.mariadb ? this.mariadb.running : this.postgres ? this.postgres.running : null,
        pid: this.mariadb?.pid ?? this.postgres?.pid ?? null,
        socket: this.mariadb?.socket ?? this.postgres?.socketPath ?? this.deps.config.backendSocket ?? this.deps.config.pgBackendSocketDir ?? null,
        ...(this.deps.config.engine === 'postgres' ? { storage: this.pgStorage?.health() ?? { kind: 'none', mounted: false, reason: 'not encrypted at rest' } } : {}),
      },
      engine: this.deps.config.engine,
      listeners: { mysql: this.mysqlAddress ?? null, postgres: this.pgAddress ?? null, keyring: this.addresses.keyring ?? null },
      connections: { mysql: this.mysql?.stats() ?? null, postgres: this.pg?.stats() ?? null },
      draining: this.draining,
    };
  }

  /**
   * Evidence a client can check itself: reportData = SHA-512("cdbp-endpoint-evidence-v1" ‖ nonce ‖ SPKI
   * of the serving certificate). A client compares the SPKI with the one its TLS handshake saw
   * (`cdbp verify`); the domain prefix keeps it from being mistaken for CAS attestation evidence.
   */
  private async attestation(nonce: Buffer): Promise<Record<string, unknown>> {
    const p = this.provision;
    if (!p) throw new CdbpError('ATTESTATION_UNAVAILABLE', 'not attested yet');
    const certPem = p.identity.certPem;
    const reportData = endpointReportData(nonce, new X509Certificate(certPem).publicKey.export({ type: 'spki', format: 'der' }));
    const evidence = await this.deps.provider.collect(reportData);
    return {
      mode: this.deps.provider.mode,
      ...(this.deps.provider.mode === 'simulated' ? { warning: 'SIMULATED TEE: this evidence is signed by a software key, not by hardware' } : {}),
      nonce: nonce.toString('hex'),
      evidence, certificate: certPem, caCertificate: p.identity.caPem,
      binding: 'reportData = SHA-512("cdbp-endpoint-evidence-v1" ‖ nonce ‖ certificate SPKI DER)',
    };
  }

  /**
   * Re-attests for a new certificate now (new key, new nonce); new handshakes use it, open sessions keep
   * theirs. The schedule, retries and shared attempts are the RenewalDriver's. Rejects with the failure.
   */
  renew(): Promise<Record<string, unknown>> {
    if (!this.provision) return Promise.reject(new CdbpError('ATTESTATION_UNAVAILABLE', 'not attested yet'));
    if (this.stopping) return Promise.reject(new CdbpError('LIFECYCLE_INVALID_TRANSITION', 'shutting down'));
    return this.renewal.renew();
  }

  /** One renewal: all or nothing. A failure keeps the current certificate (the driver counts and retries). */
  private async renewOnce(): Promise<RenewalOutcome> {
    const { config, log, provider } = this.deps;
    try {
      // The CA pinned at start, never the file again; a changed file is only reported.
      this.casPin!.checkFile(log);
      const fresh = await provisionFrom(config.casUrl)({
        casUrl: config.casUrl, caPem: this.casPin!.caPem, service: config.service, provider, log,
        tls: { dnsNames: config.dnsNames },
      });
      if (this.stopping) {
        closeClient(fresh.counter);
        throw new CdbpError('LIFECYCLE_INVALID_TRANSITION', 'shutting down');
      }
      const id = { keyPem: fresh.identity.keyPem, certPem: fresh.identity.certPem };
      // Stage everything that can fail before anything changes, so a renewal is all or nothing: the
      // keyring refuses changed bytes for an existing key version, and a bad key/cert pair throws here.
      this.keyring?.addKeys(fresh.secrets.dbKeys);
      this.identity!.set(id);
      this.provision = { ...this.provision!, identity: fresh.identity };
      this.counter.set(fresh.counter);
      const facts = { ...certificateFacts(fresh.identity.certPem), notAfter: fresh.identity.notAfter.toISOString() };
      log.info(facts, 'certificate renewed');
      return { notAfter: fresh.identity.notAfter, facts };
    } catch (e) {
      const err = asCdbpError(e);
      if (!this.stopping && err.code === 'CAS_IDENTITY_INVALID') this.casPin!.impostor({ casUrl: config.casUrl, reason: err.code, message: err.message }, log);
      throw err;
    }
  }

  /**
   * A violation found at run time (a fork lost the counter race): this copy of the database must not
   * serve anyone any more. Held writes were already refused; now close every session, revoke the
   * keyring and stop the managed database. The ops API stays up to say why.
   */
  private async failClosed(reason: string): Promise<void> {
    this.deps.log.error({ reason }, 'failing closed: closing sessions, revoking the keyring, stopping the database');
    await Promise.all([this.mysql?.close(), this.pg?.close()].map((p) => p?.catch(() => undefined)));
    await this.keyring?.close().catch(() => undefined);
    await this.mariadb?.stop().catch(() => undefined);
    await this.postgres?.stop().catch(() => undefined);
    await this.pgStorage?.unmount().catch(() => undefined);
  }

  /**
   * Second signal: the caller exits right after this. Asks the managed database to shut down on its
   * own (SIGTERM is sent synchronously; its clean shutdown does not need us), so no mariadbd outlives us.
   */
  forceStop(): void {
    void this.mariadb?.stop().catch(() => undefined);
    void this.postgres?.stop().catch(() => undefined);
  }

  /** Resolves once shutdown() has finished (whoever started it: signal, admin, parent watch). */
  whenStopped(): Promise<void> {
    return this.stoppedPromise;
  }

  /**
   * Graceful stop: readiness flips to 503, new connections are still accepted for drainDelayMs (load
   * balancers need a moment to notice), then listeners close, sessions drain up to drainTimeoutMs,
   * a final epoch is sealed and MariaDB is shut down cleanly. `immediate` (admin quit) skips the delay
   * and the drain. A start-up still in progress is let finish first, so no half-started mariadbd is
   * left behind.
   */
  shutdown(reason: string, o: { immediate?: boolean } = {}): Promise<void> {
    if (this.stopping) return this.stopping;
    const { config, log } = this.deps;
    this.draining = true;
    this.stopping = (async () => {
      log.info({ reason }, 'shutting down');
      const renewalStopped = this.renewal.stop();
      await this.startup?.catch(() => undefined);
      if (this.lifecycle.state === 'ready') this.lifecycle.advance('draining');
      const delay = o.immediate ? 0 : config.drainDelayMs;
      if (this.lifecycle.state === 'draining' && delay > 0) {
        log.info({ delayMs: delay }, 'draining: readiness is 503, still accepting new connections for the drain delay');
        await sleep(delay);
      }
      await Promise.all([this.mysql?.stopAccepting(), this.pg?.stopAccepting()]);
      const open = (this.mysql?.stats().open ?? 0) + (this.pg?.stats().open ?? 0);
      if (open > 0) log.info({ open, timeoutMs: o.immediate ? 0 : config.drainTimeoutMs }, 'draining open sessions');
      const timeout = o.immediate ? 0 : config.drainTimeoutMs;
      await Promise.all([this.mysql?.drain(timeout), this.pg?.drain(timeout)]);
      // A database that died under us has no position to read and no clean files to sweep: the next
      // start verifies its crash recovery against the last counted epoch (nothing acknowledged is lost,
      // acks wait for their seal), so a stop does not spin on a socket that will never answer.
      if (!this.databaseDied) await this.guard?.sealNow().catch((e: unknown) => log.warn({ err: asCdbpError(e).message }, 'final seal failed'));
      await this.stopBackends();
      await this.sealFinalDataFiles(this.inventory, this.mariadb?.running === true).catch((e: unknown) => log.warn({ err: asCdbpError(e).message }, 'sealing the final data-file inventory failed (the last sweep stays sealed)'));
      await renewalStopped;
      this.counter.close();
      await this.ops?.close();
      await this.admin?.close();
      if (this.addresses.adminTokenFile) rmSync(this.addresses.adminTokenFile, { force: true });
      this.stopCasAlarms?.();
      if (!this.lifecycle.isTerminal()) this.lifecycle.advance('stopped');
      log.info('stopped');
    })().finally(() => this.stoppedResolve());
    return this.stopping;
  }

  private async stopBackends(): Promise<void> {
    await this.mysql?.close().catch(() => undefined);
    await this.pg?.close().catch(() => undefined);
    await this.guard?.stop();
    await this.positions?.close().catch(() => undefined);
    await this.mariadb?.stop();
    await this.postgres?.stop();
    await this.sealFinalDataFiles(this.pgInventory, this.postgres?.running === true).catch((e: unknown) => this.deps.log.warn({ err: asCdbpError(e).message }, 'sealing the final data-file inventory failed (the last sweep stays sealed)'));
    await this.pgStorage?.unmount().catch((e: unknown) => this.deps.log.error({ err: asCdbpError(e).message }, 'unmounting the encrypted directory failed'));
    await this.keyring?.close().catch(() => undefined);
  }
}

/** Where the admin token goes: CDBP_ADMIN_TOKEN_FILE, else admin.token in the role's runtime dir. */
export function adminTokenFile(config: ProxyConfig): string {
  return config.adminTokenFile ?? path.join(config.mariadbRunDir ?? config.pgRunDir ?? config.untrustedDir, 'admin.token');
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export function randomPassword(): string {
  return randomBytes(18).toString('base64url');
}

/**
 * Several CAS URLs (comma-separated CDBP_CAS_URL) = a replicated CAS: attest to any member, count by
 * majority (src/cas-client/quorum-counter.ts, docs/CAS.md "Replicated CAS"). One URL = the single CAS.
 */
function provisionFrom(casUrl: string): typeof attestAndProvision {
  const urls = parseCasUrls(casUrl);
  if (urls.length <= 1) return attestAndProvision;
  return (o) => attestAndProvisionAny({ ...o, casUrls: urls });
}

