/**
 * A private MariaDB serving TLS on TCP (the "direct" baseline) and a unix socket (the proxy's backend
 * leg, as in a deployment), with a throwaway PKI whose leaf also serves as the proxy's identity, so both
 * arms present the same certificate and clients verify both against the same CA.
 */
import { startPrivateMariadb, type PrivateMariadb } from '../../test/support/mariadb.ts';
import { makeTestPki, type TestPki } from '../../test/support/test-pki.ts';
import { tempDir } from '../../test/support/tmp.ts';

export interface TlsMariadb {
  db: PrivateMariadb;
  pki: TestPki;
  work: { path: string; remove(): void };
  stop(): Promise<void>;
}

export async function startTlsMariadb(extraConfig: string[] = []): Promise<TlsMariadb> {
  const work = tempDir('bench-mariadb');
  const pki = makeTestPki();
  const files = pki.writeTo(work.path);
  try {
    const db = await startPrivateMariadb({
      tcp: true,
      extraConfig: [`ssl-ca=${files.caFile}`, `ssl-cert=${files.certFile}`, `ssl-key=${files.keyFile}`,
        // Commit durability is not what these scenarios compare (the freshness scenario uses the real stack).
        'innodb_flush_log_at_trx_commit=2', ...extraConfig],
    });
    return { db, pki, work, async stop() { try { await db.stop(); } finally { work.remove(); } } };
  } catch (e) {
    work.remove();
    throw e;
  }
}
