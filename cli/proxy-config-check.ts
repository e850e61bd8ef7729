/**
 * Cross-field checks of a proxy's configuration, run before anything else (before the ops API, before
 * attesting): a combination that cannot work fails in a second with CONFIG_INVALID, instead of after a
 * round trip to the CAS, a freshness check and a database start (issue 15, item 3). Single fields are
 * checked by the schema (src/kernel/config.ts); this is what only the combination tells.
 */
import { CdbpError } from '../src/kernel/errors.ts';
import type { ConfigOf } from '../src/kernel/config.ts';
import type { PROXY_SCHEMA } from './settings.ts';

type ProxyConfig = ConfigOf<typeof PROXY_SCHEMA>;

/** Every problem found, in words naming the settings (empty when the combination works). */
export function proxyConfigProblems(c: ProxyConfig): string[] {
  const problems: string[] = [];
  // A comma-separated list names the members of a replicated CAS (docs/CAS.md): each must be a URL.
  for (const one of c.casUrl.split(',').map((u) => u.trim())) {
    let cas: URL | undefined;
    try {
      cas = new URL(one);
    } catch {
      problems.push(`CDBP_CAS_URL is not a URL: ${one}`);
    }
    if (cas && cas.protocol !== 'https:') problems.push(`CDBP_CAS_URL must be https (the CAS is pinned by its CA): ${one}`);
  }

  if (c.engine === 'mariadb') {
    if (c.managePostgres) problems.push('CDBP_MANAGE_POSTGRES needs CDBP_ENGINE=postgres');
    if (c.manageMariadb && (!c.mariadbRunDir || !c.datadir)) problems.push('CDBP_MANAGE_MARIADB needs CDBP_MARIADB_RUN_DIR and CDBP_DATADIR');
    if (!c.manageMariadb && !c.backendSocket && !c.backendHost) problems.push('no backend: set CDBP_BACKEND_SOCKET, CDBP_BACKEND_HOST or CDBP_MANAGE_MARIADB');
    if (c.backendSocket && c.backendHost) problems.push('CDBP_BACKEND_SOCKET and CDBP_BACKEND_HOST are exclusive: pick one backend');
  } else {
    if (c.manageMariadb) problems.push('CDBP_MANAGE_MARIADB needs CDBP_ENGINE=mariadb');
    if (c.managePostgres && (!c.pgRunDir || !c.datadir)) problems.push('CDBP_MANAGE_POSTGRES needs CDBP_PG_RUN_DIR and CDBP_DATADIR');
    if (!c.managePostgres && !c.pgBackendSocketDir) problems.push('CDBP_ENGINE=postgres needs CDBP_PG_BACKEND_SOCKET_DIR or CDBP_MANAGE_POSTGRES');
  }

  // Two listeners of this process on one fixed port: the second would fail only after attesting.
  const ports: Array<[string, number]> = [
    ['CDBP_OPS_PORT', c.opsPort],
    ['CDBP_ADMIN_PORT', c.adminPort],
    [c.engine === 'postgres' ? 'CDBP_PG_PORT' : 'CDBP_MYSQL_PORT', c.engine === 'postgres' ? c.pgPort : c.mysqlPort],
    ['CDBP_KEYRING_PORT', c.manageMariadb || c.keyring ? c.keyringPort : 0],
  ];
  const seen = new Map<number, string>();
  for (const [name, port] of ports) {
    if (port <= 0) continue;
    const other = seen.get(port);
    if (other) problems.push(`${other} and ${name} are both ${port}`);
    else seen.set(port, name);
  }
  return problems;
}

export function checkProxyConfig(c: ProxyConfig): void {
  const problems = proxyConfigProblems(c);
  if (problems.length > 0) {
    throw new CdbpError('CONFIG_INVALID', `configuration cannot work: ${problems.join('; ')}`, { details: { problems } });
  }
}
