import { mkdirSync, statfsSync, writeFileSync, chmodSync } from 'node:fs';
import path from 'node:path';
import { CdbpError } from '../src/kernel/errors.ts';

/**
 * The `[mariadbd]` option lines that point MariaDB 10.11's hashicorp_key_management plugin at our keyring
 * and switch on encryption of everything MariaDB can encrypt. Pure: returns lines for
 * `MariadbServerOptions.extraConfig`; the token never appears here (it travels in VAULT_TOKEN, see
 * `keyringEnv`). Facts behind each line: docs/KEYRING.md.
 */
export interface MariadbEncryptionOptions {
  /** https://127.0.0.1:PORT/v1/<mount>, as returned by `Keyring.listen()`. */
  vaultUrl: string;
  /** Absolute path of the CAS root CA (PEM) that signed the keyring's certificate. Public; readable by mariadbd. */
  caFile: string;
  /**
   * Directory for the Aria control file and Aria transaction log (`aria_log.0000000N`), which MariaDB does
   * NOT encrypt. Put it on a non-persistent filesystem (tmpfs) so plaintext row images of Aria tables
   * (including mysql.global_priv) never reach the disk. Omitted: the log stays in the datadir (leaks).
   */
  ariaLogDir?: string;
  /**
   * Binary log base name (absolute, or relative to the datadir); default 'mariadb-bin'. `false` turns the
   * binary log off (it is on by default so that a binlogged write is encrypted like everything else).
   */
  binlog?: string | false;
  /** Plugin timeout per request (s); default 3. The plugin waits timeout × (retries+1) on a hang. */
  timeoutSec?: number;
  /** Plugin retries; default 1. */
  maxRetries?: number;
  /** How long the plugin caches key bytes (ms); default 60 000. */
  cacheTimeoutMs?: number;
  /** How long the plugin caches "latest version" (ms): the delay before a rotation is picked up. Default 60 000. */
  cacheVersionTimeoutMs?: number;
  /** InnoDB background (re-)encryption threads; default 2. */
  encryptionThreads?: number;
  /**
   * innodb_encryption_rotate_key_age, default 1. Observed in 10.11: a page is re-encrypted only when
   * page_version + age < latest, so with 1 pages move after the SECOND new version (not the first).
   */
  rotateKeyAge?: number;
}

export const DEFAULT_BINLOG_BASENAME = 'mariadb-bin';


export function mariadbEncryptionConfig(opts: MariadbEncryptionOptions): string[] {
  const url = parseVaultUrl(opts.vaultUrl);
  const caFile = requireOptionValue('caFile', opts.caFile);
  if (!path.isAbsolute(caFile)) throw new CdbpError('CONFIG_INVALID', 'keyring caFile must be an absolute path');
  const lines = [
    'plugin-load-add=hashicorp_key_management.so',
    // FORCE: mariadbd refuses to start when the plugin cannot initialise (keyring unreachable, bad TLS).
    'hashicorp-key-management=FORCE',
    `hashicorp-key-management-vault-url=${url}`,
    // Empty on purpose: the plugin then reads the token from the VAULT_TOKEN environment variable, so it
    // is never written to my.cnf, the command line or SHOW VARIABLES.
    'hashicorp-key-management-token=',
    `hashicorp-key-management-vault-ca=${caFile}`,
    `hashicorp-key-management-timeout=${int('timeoutSec', opts.timeoutSec ?? 3, 1, 86_400)}`,
    `hashicorp-key-management-max-retries=${int('maxRetries', opts.maxRetries ?? 1, 0, 10)}`,
    'hashicorp-key-management-check-kv-version=ON',
    'hashicorp-key-management-caching-enabled=ON',
    // While the keyring is briefly unreachable, keep using cached keys rather than failing a page read.
    'hashicorp-key-management-use-cache-on-timeout=ON',
    `hashicorp-key-management-cache-timeout=${int('cacheTimeoutMs', opts.cacheTimeoutMs ?? 60_000, 0, 2 ** 31 - 1)}`,
    `hashicorp-key-management-cache-version-timeout=${int('cacheVersionTimeoutMs', opts.cacheVersionTimeoutMs ?? 60_000, 0, 2 ** 31 - 1)}`,
    // InnoDB: every tablespace (FORCE refuses ENCRYPTED=NO), the redo log, temporary tablespace.
    'innodb_encrypt_tables=FORCE',
    'innodb_encrypt_log=ON',
    'innodb_encrypt_temporary_tables=ON',
    `innodb_encryption_threads=${int('encryptionThreads', opts.encryptionThreads ?? 2, 1, 255)}`,
    `innodb_encryption_rotate_key_age=${int('rotateKeyAge', opts.rotateKeyAge ?? 1, 1, 2 ** 31 - 1)}`,
    // Filesort/ binlog-cache temp files, Aria internal temp tables, Aria user tables (PAGE format).
    'encrypt_tmp_files=ON',
    'encrypt_tmp_disk_tables=ON',
    'aria_encrypt_tables=ON',
  ];
  if (opts.binlog !== false) {
    // sync_binlog=1: the freshness guard seals and checks the GTID position, so a binlog tail lost in an
    // OS crash would look like a rollback (and would lose acknowledged writes).
    lines.push(`log-bin=${requireOptionValue('binlog', opts.binlog ?? DEFAULT_BINLOG_BASENAME)}`, 'encrypt_binlog=ON', 'sync_binlog=1');
  }
  if (opts.ariaLogDir !== undefined) {
    const dir = requireOptionValue('ariaLogDir', opts.ariaLogDir);
    if (!path.isAbsolute(dir)) throw new CdbpError('CONFIG_INVALID', 'ariaLogDir must be an absolute path');
    lines.push(`aria-log-dir-path=${dir}`);
  }
  return lines;
}

/** Environment for mariadbd (and mariadb-install-db): the only way the token reaches the plugin. */
export function keyringEnv(token: string): Record<string, string> {
  if (!/^[A-Za-z0-9_-]{16,256}$/.test(token)) {
    throw new CdbpError('CONFIG_INVALID', 'keyring token has an unexpected shape (expected base64url from Keyring.issueToken)');
  }
  return { VAULT_TOKEN: token };
}

/**
 * Writes the CA certificate the plugin verifies the keyring with (public: mode 0644) and returns its path.
 * The plugin takes a CA *file* only, and always checks the host name against the URL.
 */
export function writeKeyringCaFile(dir: string, caPem: string): string {
  if (!/-----BEGIN CERTIFICATE-----/.test(caPem)) throw new CdbpError('CONFIG_INVALID', 'keyring CA is not a PEM certificate');
  mkdirSync(dir, { recursive: true });
  const file = path.resolve(dir, 'keyring-ca.pem');
  writeFileSync(file, caPem, { mode: 0o644 });
  chmodSync(file, 0o644);
  return file;
}

const TMPFS_MAGIC = 0x01021994;
const RAMFS_MAGIC = 0x858458f6;

/**
 * Creates a directory meant for plaintext MariaDB cannot encrypt (the Aria log, `ariaLogDir`; the tmpdir,
 * where internal on-disk Aria temp tables are written unencrypted, see docs/KEYRING.md) and reports whether
 * it is memory-backed (tmpfs/ramfs). The composition root decides what `volatile: false` means (refuse in
 * production; at least warn: that plaintext then reaches a disk).
 */
export function prepareVolatileDir(dir: string): { dir: string; volatile: boolean } {
  const abs = path.resolve(dir);
  mkdirSync(abs, { recursive: true, mode: 0o700 });
  const type = Number(statfsSync(abs).type);
  return { dir: abs, volatile: type === TMPFS_MAGIC || type === RAMFS_MAGIC };
}

function parseVaultUrl(raw: string): string {
  const value = requireOptionValue('vaultUrl', raw);
  let u: URL;
  try {
    u = new URL(value);
  } catch {
    throw new CdbpError('CONFIG_INVALID', 'keyring vaultUrl is not a URL');
  }
  if (u.protocol !== 'https:') throw new CdbpError('CONFIG_INVALID', 'keyring vaultUrl must be https');
  if (!/^\/v1\/[A-Za-z0-9_-]+$/.test(u.pathname) || u.search || u.hash || u.username || u.password) {
    throw new CdbpError('CONFIG_INVALID', 'keyring vaultUrl must be https://HOST:PORT/v1/<mount> (the plugin requires the /v1/ prefix)');
  }
  const host = u.hostname.replace(/^\[|\]$/g, '');
  if (!(host === 'localhost' || host === '::1' || /^127\./.test(host))) {
    throw new CdbpError('CONFIG_INVALID', 'keyring vaultUrl must point at loopback');
  }
  return value;
}

/** Option values end up in my.cnf lines: a newline or NUL would inject options. */
function requireOptionValue(name: string, value: string): string {
  if (typeof value !== 'string' || value.length === 0 || /[\r\n\0]/.test(value) || value !== value.trim()) {
    throw new CdbpError('CONFIG_INVALID', `${name} must be a non-empty single-line value without surrounding spaces`);
  }
  return value;
}

function int(name: string, v: number, min: number, max: number): number {
  if (!Number.isInteger(v) || v < min || v > max) throw new CdbpError('CONFIG_INVALID', `${name} must be an integer in ${min}..${max}`);
  return v;
}
