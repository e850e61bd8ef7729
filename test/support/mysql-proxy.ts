/**
 * A MySQL endpoint under test: loopback listener, the private MariaDB's unix socket, the test PKI, a
 * silent log, and any option a test overrides. A test that asks for a data plane gets exactly that one:
 * a missing native build fails here instead of passing as native coverage.
 */
import assert from 'node:assert/strict';
import { silentLogger } from '../../src/kernel/log.ts';
import { createMysqlProxy, type MysqlProxy, type MysqlProxyOptions } from '../../proxy/mysql/index.ts';

export async function listenMysqlProxy(
  backendSocket: string, identity: { keyPem: string; certPem: string }, extra: Partial<MysqlProxyOptions> = {},
): Promise<{ proxy: MysqlProxy; port: number }> {
  const proxy = createMysqlProxy({
    listen: { host: '127.0.0.1', port: 0 },
    backend: { socket: backendSocket },
    tls: { keyPem: identity.keyPem, certPem: identity.certPem },
    log: silentLogger(),
    ...extra,
  });
  if (extra.dataPlane && extra.dataPlane !== 'auto') assert.equal(proxy.stats().dataPlane.kind, extra.dataPlane);
  const addr = await proxy.listen();
  return { proxy, port: 'port' in addr ? addr.port : 0 };
}

/** Runs `fn` against a fresh endpoint (see listenMysqlProxy) and closes it afterwards, also on failure. */
export async function withMysqlProxy<T>(
  backendSocket: string, identity: { keyPem: string; certPem: string }, extra: Partial<MysqlProxyOptions>,
  fn: (proxy: MysqlProxy, port: number) => Promise<T>,
): Promise<T> {
  const { proxy, port } = await listenMysqlProxy(backendSocket, identity, extra);
  try {
    return await fn(proxy, port);
  } finally {
    await proxy.close();
  }
}
