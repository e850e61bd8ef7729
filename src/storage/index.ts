export type { EncryptedDirectory, EncryptedState, StorageFailureReason, StorageHealth, StorageKey } from './types.ts';
export { GocryptfsDirectory, type GocryptfsOptions } from './gocryptfs.ts';
export { openEncryptedDirectory, type OpenOptions } from './open.ts';
export { storageKeyCandidates, deriveStorageSecret, STORAGE_KEY_ID } from './keys.ts';
export { parseMountinfo, mountsAt, readMountinfo, type MountEntry } from './mountinfo.ts';
export { reencryptDirectory, recoverInterruptedRotation, copyTree, rekeyPath, retiredPath, type CopyStats } from './rotate.ts';
