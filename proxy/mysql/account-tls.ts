/**
 * Accounts created `REQUIRE SSL` / `REQUIRE X509` behind a TLS-terminating proxy (issue 21, item 3).
 *
 * MariaDB checks an account's REQUIRE clause against its *own* connection (sql_acl.cc acl_check_ssl):
 * through the proxy that is the proxy's unix socket, so such accounts are refused with a bare "Access
 * denied" that hides the cause, although every client of this proxy is on TLS, verified against the CAS
 * root CA. The proxy therefore knows each account's requirement (read from `mysql.user` by its monitor
 * connection) and, at login:
 *
 *   none                      → as before;
 *   ssl (REQUIRE SSL, CIPHER) → over a TLS leg to the database when one is configured (`backend.tls`
 *                               on the socket), so the database sees TLS and the login succeeds; else
 *                               refused with ERR 1045 saying why and what to do;
 *   x509 (X509, ISSUER, SUBJECT) → refused with ERR 1045 saying why: the client's certificate ends at
 *                               the proxy and the database can never see it.
 *
 * Stable API:
 *   const rules = new MariadbAccountTls({ socket, user, password, log });
 *   await rules.refresh();                // once before listening; later refreshes run by themselves
 *   rules.requirement('app');             // 'none' | 'ssl' | 'x509' | undefined (unknown account/not read yet)
 *   createMysqlProxy({ ..., accountTls: rules });
 */
import mariadb from 'mariadb';
import type { Logger } from '../../src/kernel/log.ts';
import { ProxyErrno } from './constants.ts';
import type { ErrPacket } from './codec.ts';

export type TlsRequirement = 'none' | 'ssl' | 'x509';

/** What the session asks at login. */
export interface AccountTlsSource {
  /** The REQUIRE clause of the account the database will match for `user` on the proxy's leg. */
  requirement(user: string): TlsRequirement | undefined;
  /** The database refused a login: the account may be new or changed; re-read soon (rate-limited). */
  stale(): void;
}

/** One row of `mysql.user` (MariaDB 10.4+: a view over mysql.global_priv). */
export interface AccountRow {
  User: string;
  Host: string;
  ssl_type: string;
  x509_issuer: string | Buffer;
  x509_subject: string | Buffer;
}

/** `ssl_type` ('' | ANY | X509 | SPECIFIED) and the X.509 constraints, as a requirement. */
export function requirementOf(row: AccountRow): TlsRequirement {
  const type = String(row.ssl_type ?? '').toUpperCase();
  if (type === '' ) return 'none';
  if (type === 'ANY') return 'ssl';
  if (type === 'X509') return 'x509';
  // SPECIFIED: ISSUER/SUBJECT need a client certificate; CIPHER alone needs only TLS.
  return String(row.x509_issuer ?? '').length > 0 || String(row.x509_subject ?? '').length > 0 ? 'x509' : 'ssl';
}

/**
 * Whether a `Host` pattern of mysql.user matches `host` (`%` any run, `_` one character, as LIKE), and
 * how specific the pattern is (MariaDB matches the most specific account first: exact names before
 * patterns; among patterns, the one with more literal characters).
 */
export function hostMatch(pattern: string, host: string): number | undefined {
  if (pattern === host) return Number.MAX_SAFE_INTEGER;
  const re = new RegExp(`^${pattern.replace(/[.*+?^${}()|[\]\\]/g, '\\$&').replace(/%/g, '.*').replace(/_/g, '.')}$`, 'i');
  if (!re.test(host)) return undefined;
  return pattern.replace(/[%_]/g, '').length;
}

/** The requirement of each user name as the database will see it when connecting from `host`. */
export function requirementsByUser(rows: readonly AccountRow[], host: string): Map<string, TlsRequirement> {
  const best = new Map<string, { score: number; req: TlsRequirement }>();
  for (const row of rows) {
    const score = hostMatch(String(row.Host), host);
    if (score === undefined) continue;
    const user = String(row.User);
    const prev = best.get(user);
    if (!prev || score > prev.score) best.set(user, { score, req: requirementOf(row) });
  }
  return new Map([...best].map(([user, { req }]) => [user, req]));
}

/** The refusal a client gets instead of the database's bare "Access denied" (1045/28000, like it). */
export function accountTlsErr(user: string, req: 'ssl' | 'x509'): ErrPacket {
  const message = req === 'x509'
    ? `Access denied for user '${user}': the account requires a client certificate (REQUIRE X509/ISSUER/SUBJECT). ` +
      'TLS ends at this proxy (its certificate is verified against the CAS root CA), so the database can never see a client certificate: ' +
      'authenticate this account by password (ALTER USER ... REQUIRE NONE or REQUIRE SSL); see docs/MYSQL-ENDPOINT.md'
    : `Access denied for user '${user}': the account requires SSL (REQUIRE SSL), which the database checks on its own connection, ` +
      "and this proxy reaches it over a local socket. Every connection through this proxy is TLS already: ALTER USER ... REQUIRE NONE, " +
      'or give the proxy a TLS leg to the database (backend TLS); see docs/MYSQL-ENDPOINT.md';
  return { ...ProxyErrno.ACCESS_DENIED, message };
}

export interface MariadbAccountTlsOptions {
  /** The database's unix socket (the leg whose host the database sees as 'localhost'). */
  socket: string;
  user?: string;
  password?: string;
  log: Logger;
  /** Re-read at most this often (default 30 s); a refused login asks for a re-read. */
  refreshMs?: number;
}

/** Reads the accounts' requirements over the monitor connection and keeps them current. */
export class MariadbAccountTls implements AccountTlsSource {
  private byUser = new Map<string, TlsRequirement>();
  private readAt = 0;
  private running: Promise<void> | undefined;
  private warned = false;

  constructor(private readonly opts: MariadbAccountTlsOptions) {}

  requirement(user: string): TlsRequirement | undefined {
    if (Date.now() - this.readAt > (this.opts.refreshMs ?? 30_000)) void this.refresh();
    return this.byUser.get(user);
  }

  stale(): void {
    // A re-read at most every 2 s however many logins fail (a password-guessing client must not turn
    // into a query flood on the database).
    if (Date.now() - this.readAt > 2_000) void this.refresh();
  }

  /** Re-reads now (one at a time); failures keep the last answer and are logged once. */
  refresh(): Promise<void> {
    this.running ??= this.read().finally(() => { this.running = undefined; });
    return this.running;
  }

  private async read(): Promise<void> {
    this.readAt = Date.now();
    try {
      const conn = await mariadb.createConnection({
        socketPath: this.opts.socket, user: this.opts.user ?? 'root', password: this.opts.password, connectTimeout: 5000,
      });
      try {
        const rows = (await conn.query('SELECT User, Host, ssl_type, x509_issuer, x509_subject FROM mysql.user')) as AccountRow[];
        this.byUser = requirementsByUser(rows, 'localhost');
        this.warned = false;
      } finally {
        await conn.end().catch(() => conn.destroy());
      }
    } catch (e) {
      if (!this.warned) {
        this.warned = true;
        this.opts.log.warn({ event: 'account_tls_unreadable', err: (e as Error).message },
          "cannot read the accounts' REQUIRE clauses (mysql.user): REQUIRE SSL/X509 accounts get the database's own 'Access denied'");
      }
    }
  }
}
