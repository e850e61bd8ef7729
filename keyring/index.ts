/**
 * The keyring role: serves provisioned DB keys to MariaDB's hashicorp_key_management plugin over loopback
 * TLS, and generates the MariaDB configuration that points the plugin at it. See docs/KEYRING.md.
 */
export { createKeyring, DEFAULT_LIMITS } from './keyring.ts';
export type { Keyring, KeyringOptions, KeyringLimits, KeyringAuditEvent, KeyringOutcome } from './keyring.ts';
export { KeyStore, KEY_LENGTH } from './key-store.ts';
export { TokenGate } from './token.ts';
export { mariadbEncryptionConfig, keyringEnv, writeKeyringCaFile, prepareVolatileDir, DEFAULT_BINLOG_BASENAME } from './mariadb-config.ts';
export type { MariadbEncryptionOptions } from './mariadb-config.ts';
