/**
 * libsodium, initialised once. Every helper that needs it awaits `sodiumReady()`; after the first call
 * it resolves immediately.
 */
import sodium from 'libsodium-wrappers';

let ready: Promise<typeof sodium> | undefined;

export function sodiumReady(): Promise<typeof sodium> {
  ready ??= sodium.ready.then(() => sodium);
  return ready;
}
