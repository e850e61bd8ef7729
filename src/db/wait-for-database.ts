/**
 * Waiting for an external database that may still be starting (MariaDB waits for the keyring before it
 * accepts connections): poll a cheap read until it answers or a deadline passes. Used by the proxy role
 * for a database it does not manage.
 */
import type { Logger } from '../kernel/log.ts';
import { CdbpError, asCdbpError } from '../kernel/errors.ts';

export interface WaitForDatabaseOptions {
  /** Give up after this long (default 2 min). */
  timeoutMs?: number;
  /** Between attempts (default 0.5 s). */
  intervalMs?: number;
}

/** Resolves once `source.read()` succeeds; rejects with BACKEND_UNAVAILABLE (the last error) at the deadline. */
export async function waitForDatabase(source: { read(): Promise<unknown> }, log: Logger, o: WaitForDatabaseOptions = {}): Promise<void> {
  const deadline = Date.now() + (o.timeoutMs ?? 120_000);
  let logged = false;
  for (;;) {
    try {
      await source.read();
      return;
    } catch (e) {
      if (Date.now() > deadline) throw new CdbpError('BACKEND_UNAVAILABLE', `database not reachable: ${asCdbpError(e).message}`);
      if (!logged) log.info('waiting for the database to come up');
      logged = true;
      await new Promise((r) => setTimeout(r, o.intervalMs ?? 500));
    }
  }
}
