/**
 * Configuration schemas of the roles the entry point composes. All use the one CDBP_ prefix; every
 * field has a safe default (loopback listeners, strict freshness, no simulation) or is required.
 */
import type { Schema } from '../src/kernel/config.ts';
import { DEFAULT_IDLE_TIMEOUT_MS } from '../proxy/shared/limits.ts';

export const PROXY_SCHEMA = {
  casUrl: { kind: 'string', doc: 'CAS base URL (https://host:port)', required: true },
  casCaFile: { kind: 'string', doc: 'CAS root CA certificate (pinned out of band)', required: true },
  service: { kind: 'string', doc: 'service name in the owner policy', default: 'mariadb' },
  engine: { kind: 'enum', values: ['mariadb', 'postgres'], doc: 'database behind this proxy (one proxy per database)', default: 'mariadb' },
  teeMode: { kind: 'enum', values: ['none', 'simulated', 'sev-snp', 'tdx', 'auto'], doc: 'attestation provider (none = fail closed; auto = what the machine offers, never simulated)', default: 'none' },
  tsmRoot: { kind: 'string', doc: 'configfs-tsm report directory (sev-snp, tdx)', default: '/sys/kernel/config/tsm/report' },
  allowSimulated: { kind: 'bool', doc: 'permit the simulated TEE (development only; loud everywhere)', default: false },
  platformKeyFile: { kind: 'string', doc: 'simulated platform signing key (stands in for the CPU)' },
  dnsNames: { kind: 'list', doc: 'extra DNS names to request in the certificate', default: [] },

  mysqlHost: { kind: 'string', doc: 'MySQL listener address', default: '127.0.0.1' },
  mysqlPort: { kind: 'int', doc: 'MySQL listener port (0 = any free port)', default: 3307, min: 0, max: 65535 },
  opsHost: { kind: 'string', doc: 'ops API address (health, metrics, status)', default: '127.0.0.1' },
  opsPort: { kind: 'int', doc: 'ops API port (0 = any free port)', default: 9090, min: 0, max: 65535 },
  adminPort: { kind: 'int', doc: 'loopback-only admin port (drain, quit); 0 = any free, -1 = off', default: -1, min: -1, max: 65535 },
  adminTokenFile: { kind: 'string', doc: 'where the per-start admin token is written (0600) [runtime dir/admin.token]' },

  backendSocket: { kind: 'string', doc: 'MariaDB unix socket (default backend leg)' },
  backendHost: { kind: 'string', doc: 'remote MariaDB host (TLS, verified)' },
  backendPort: { kind: 'int', doc: 'remote MariaDB port', default: 3306, min: 1, max: 65535 },
  backendCaFile: { kind: 'string', doc: 'CA for a TLS backend leg (on a socket leg: only for REQUIRE SSL accounts)' },
  allowInsecureBackend: { kind: 'bool', doc: 'UNSAFE: plaintext to a non-loopback backend', default: false },

  manageMariadb: { kind: 'bool', doc: 'start and supervise mariadbd after attestation, freshness and keyring', default: false },
  mariadbRunDir: { kind: 'string', doc: 'runtime dir for the managed mariadbd (cnf, socket, logs)' },
  datadir: { kind: 'string', doc: 'MariaDB data directory (untrusted volume)' },
  volatileDir: { kind: 'string', doc: 'memory-backed (tmpfs) dir for what MariaDB cannot encrypt: Aria log, internal temp tables' },
  untrustedDir: { kind: 'string', doc: 'untrusted volume for the sealed freshness record', required: true },
  monitorUser: { kind: 'string', doc: 'account for LSN/GTID reads (default root over the socket)', default: 'root' },
  monitorPassword: { kind: 'string', doc: 'password of the monitor account', secret: true },

  keyring: { kind: 'bool', doc: 'serve the loopback keyring for MariaDB (always on with CDBP_MANAGE_MARIADB)', default: false },
  keyringPort: { kind: 'int', doc: 'loopback keyring port (0 = any free port)', default: 0, min: 0, max: 65535 },
  keyringCaDir: { kind: 'string', doc: 'dir where keyring-ca.pem (public) is written for MariaDB' },
  keyringTokenFile: { kind: 'string', doc: 'external MariaDB only: memory-backed (tmpfs) file receiving the keyring token for its start' },

  freshness: { kind: 'enum', values: ['strict', 'bounded', 'relaxed', 'off'], doc: 'rollback protection mode (bounded = relaxed: ack at once, seal every sealIntervalMs)', default: 'strict' },
  holdTimeoutMs: { kind: 'int', doc: 'strict mode: max time a write ack waits for a counted epoch', default: 10_000, min: 100 },
  sealIntervalMs: { kind: 'int', doc: 'relaxed mode window / strict idle seal period', default: 1000, min: 10 },
  inventorySweepMs: { kind: 'int', doc: 'managed MariaDB or PostgreSQL: period of the background sweep of the data files sealed into the freshness record (after a crash, a file put back to a copy taken within this window is not caught; docs/FRESHNESS.md)', default: 30_000, min: 100 },
  inventorySweepMibPerSecond: { kind: 'int', doc: 'read-rate cap of the background data-file sweep (MiB/s; 0 = unbounded)', default: 64, min: 0 },

  maxConnections: { kind: 'int', doc: 'max client connections per listener, counted from accept', default: 1000, min: 1 },
  maxPendingHandshakes: { kind: 'int', doc: 'of those, max not logged in yet (over it: refused as overload)', default: 256, min: 1 },
  maxRefusalHandshakes: { kind: 'int', doc: 'max refusals being delivered at once (beyond: dropped unanswered)', default: 64, min: 0 },
  handshakeTimeoutMs: { kind: 'int', doc: 'TLS + auth handshake timeout', default: 10_000, min: 100 },
  idleTimeoutMs: { kind: 'int', doc: 'close sessions idle this long (0 = never)', default: DEFAULT_IDLE_TIMEOUT_MS, min: 0 },
  dataPlane: {
    kind: 'enum', values: ['auto', 'native', 'node'], default: 'auto',
    doc: 'MySQL endpoint: who terminates TLS and relays queries (native = C relay, node = JS; auto = native when built and the backend leg is plaintext)',
  },
  nativeWorkers: { kind: 'int', doc: 'native data plane worker threads', default: 1, min: 1, max: 16 },

  drainDelayMs: { kind: 'int', doc: 'on SIGTERM, keep accepting this long after readiness flips', default: 2000, min: 0 },
  drainTimeoutMs: { kind: 'int', doc: 'on SIGTERM, max time open sessions may take to finish', default: 30_000, min: 0 },
  renewBeforeSeconds: { kind: 'int', doc: 'renew the certificate this long before it expires', default: 0, min: 0 },

  pgHost: { kind: 'string', doc: 'PostgreSQL listener address (engine=postgres)', default: '127.0.0.1' },
  pgPort: { kind: 'int', doc: 'PostgreSQL listener port (0 = any free port)', default: 5433, min: 0, max: 65535 },
  pgBackendSocketDir: { kind: 'string', doc: 'PostgreSQL unix socket directory (external PostgreSQL)' },
  pgBackendPort: { kind: 'int', doc: 'PostgreSQL backend port (names the socket file)', default: 5432, min: 1, max: 65535 },
  managePostgres: { kind: 'bool', doc: 'start and supervise a private PostgreSQL after attestation and freshness', default: false },
  pgRunDir: { kind: 'string', doc: 'runtime dir for the managed PostgreSQL (socket, logs)' },
  pgMonitorUser: { kind: 'string', doc: 'PostgreSQL account for WAL position reads', default: 'postgres' },
  pgEncryption: { kind: 'enum', values: ['gocryptfs', 'off'], doc: 'managed PostgreSQL at rest: gocryptfs = its whole instance (data, WAL, temp, log, socket) in an encrypted directory keyed by the CAS, CDBP_DATADIR holds only ciphertext (docs/PG-AT-REST.md); off = plaintext files', default: 'gocryptfs' },
  pgRekey: { kind: 'bool', doc: 'when the encrypted directory opens only with an older key version, re-encrypt it with the newest before PostgreSQL starts (key rotation, docs/PG-AT-REST.md)', default: true },
} as const satisfies Schema;
