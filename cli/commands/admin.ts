/**
 * `cdbp admin drain|quit|renew`: drives a proxy's loopback admin API the way it demands (src/ops/server.ts):
 * the per-start token from its 0600 file as a Bearer token, a JSON body, no Origin. `--dir DIR` takes the
 * URL and token file from a `cdbp up` stack's stack.json; `--url` and `--token-file` name them directly.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parseFlags } from '../../src/kernel/args.ts';
import { CdbpError } from '../../src/kernel/errors.ts';

export const USAGE = `usage: cdbp admin drain|quit|renew [--dir DIR | --url http://127.0.0.1:PORT --token-file FILE] [--json]

  drain   graceful stop (as SIGTERM)
  quit    prompt stop: no drain delay, open sessions closed
  renew   re-attest now for a fresh certificate`;

const ACTIONS = new Set(['drain', 'quit', 'renew']);

export async function run(argv: string[]): Promise<number> {
  const { flags, positionals } = parseFlags(argv, ['json'], ['dir', 'url', 'token-file']);
  if (flags.help) {
    console.log(USAGE);
    return 0;
  }
  const [action, ...extra] = positionals;
  if (!action || !ACTIONS.has(action) || extra.length > 0) {
    throw new CdbpError('USAGE', action ? `unknown action '${action}'` : 'no action given');
  }
  let url = flags.url as string | undefined;
  let tokenFile = flags['token-file'] as string | undefined;
  if (!url || !tokenFile) {
    const dir = path.resolve(String(flags.dir ?? '.cdbp'));
    let control: { url?: string; tokenFile?: string } | undefined;
    try {
      control = (JSON.parse(readFileSync(path.join(dir, 'stack.json'), 'utf8')) as { control?: { url: string; tokenFile: string } }).control;
    } catch {
      throw new CdbpError('CONFIG_INVALID', `no --url/--token-file given and no stack.json in ${dir}`);
    }
    if (!control?.url || !control.tokenFile) throw new CdbpError('CONFIG_INVALID', `${dir}/stack.json names no admin API (started by an older cdbp up?)`);
    url ??= control.url;
    tokenFile ??= control.tokenFile;
  }
  let token: string;
  try {
    token = readFileSync(tokenFile, 'utf8').trim();
  } catch (e) {
    throw new CdbpError('CONFIG_INVALID', `cannot read the admin token file ${tokenFile}: ${(e as Error).message} (is the proxy running?)`);
  }
  let res: Response;
  try {
    res = await fetch(`${url.replace(/\/$/, '')}/v1/admin/${action}`, {
      method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: '{}',
      signal: AbortSignal.timeout(60_000),
    });
  } catch (e) {
    throw new CdbpError('BACKEND_UNAVAILABLE', `cannot reach the admin API at ${url}: ${(e as Error).message}`);
  }
  const body = (await res.json().catch(() => ({}))) as { error?: { code: string; message: string } } & Record<string, unknown>;
  if (flags.json) console.log(JSON.stringify(body, null, 2));
  if (!res.ok) {
    if (!flags.json) console.error(`cdbp admin ${action}: ${body.error?.code ?? res.status}: ${body.error?.message ?? ''}`);
    return 1;
  }
  if (!flags.json) console.log(`cdbp admin ${action}: accepted${action === 'renew' && body.serial ? ` (new certificate serial ${String(body.serial)}, expires ${String(body.notAfter)})` : ''}`);
  return 0;
}
