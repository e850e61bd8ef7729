/**
 * `cdbp proxy`: the attested sidecar. Configuration from CDBP_* env (see cli/settings.ts), flags
 * override. On a start-up failure (e.g. rollback detected) the process stays up serving the ops API
 * with /readyz 503 and the reason in /v1/status, so operators see why instead of a restart loop.
 */
import { loadConfig, describeSchema } from '../../src/kernel/config.ts';
import { parseFlags, camel } from '../../src/kernel/args.ts';
import { lockStateDir } from '../../src/kernel/state-lock.ts';
import { createLogger } from '../../src/kernel/log.ts';
import { selectProvider } from '../../src/attestation/select.ts';
import { watchParent } from '../../src/kernel/parent-watch.ts';
import { PROXY_SCHEMA } from '../settings.ts';
import { ProxyRole } from '../proxy-role.ts';
import { ensureNativeDataPlane } from '../native-build.ts';

export async function run(argv: string[]): Promise<number> {
  const stringFlags = Object.keys(PROXY_SCHEMA).filter((k) => PROXY_SCHEMA[k as keyof typeof PROXY_SCHEMA].kind !== 'bool')
    .map((k) => k.replace(/([A-Z])/g, '-$1').toLowerCase());
  const boolFlags = Object.keys(PROXY_SCHEMA).filter((k) => PROXY_SCHEMA[k as keyof typeof PROXY_SCHEMA].kind === 'bool')
    .map((k) => k.replace(/([A-Z])/g, '-$1').toLowerCase());
  const { flags } = parseFlags(argv, ['exit-on-failure', ...boolFlags], stringFlags, { maxPositionals: 0 });
  if (flags.help) {
    console.log(`usage: cdbp proxy [--flag value ...]\n\nEvery setting is a flag (--mysql-port) or an env variable:\n${describeSchema(PROXY_SCHEMA)}`);
    return 0;
  }
  const overrides: Record<string, string | boolean | undefined> = {};
  for (const [k, v] of Object.entries(flags)) if (k !== 'help' && k !== 'exit-on-failure') overrides[camel(k)] = v;
  const config = loadConfig(PROXY_SCHEMA, overrides);
  // One proxy per service on an untrusted volume: two would race on its freshness record and stop
  // each other's database. Taken before anything else; the kernel frees it if we are killed.
  await lockStateDir(config.untrustedDir, { role: `cdbp proxy (${config.service})`, scope: `proxy:${config.service}` });
  const log = createLogger({ name: 'proxy', base: { mode: config.teeMode } });
  // Every path that starts a proxy (cdbp up, cdbp proxy, compose) builds a stale native plane first.
  ensureNativeDataPlane({ dataPlane: config.dataPlane, engine: config.engine, log });
  const provider = selectProvider({
    mode: config.teeMode, allowSimulated: config.allowSimulated, platformKeyFile: config.platformKeyFile, tsmRoot: config.tsmRoot, log,
  });
  const role = new ProxyRole({ config, provider, log });

  // Whoever stops the role (first SIGTERM/SIGINT, admin drain/quit, the parent watch), the process
  // exits 0 once the drain and the backend shutdown are done. A second signal forces exit.
  let signals = 0;
  const onSignal = (sig: string) => {
    signals++;
    if (signals > 1) {
      log.warn({ signal: sig }, 'second signal: forcing exit (the managed database is told to stop on its own)');
      role.forceStop();
      process.exit(1);
    }
    void role.shutdown(sig).catch((e: unknown) => {
      log.error({ err: (e as Error).message }, 'shutdown failed');
      process.exit(1);
    });
  };
  process.on('SIGTERM', () => onSignal('SIGTERM'));
  process.on('SIGINT', () => onSignal('SIGINT'));
  watchParent(() => onSignal('parent exited'));
  let exitCode = 0;
  void role.whenStopped().then(() => process.exit(exitCode));

  try {
    await role.start();
  } catch {
    if (flags['exit-on-failure']) {
      exitCode = 1;
      await role.shutdown('start-up failed');
      return 1;
    }
    // Stay up, unready, with the reason visible on the ops API.
  }
  await new Promise<never>(() => undefined);
  return 0;
}
