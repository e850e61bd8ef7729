import net from 'node:net';

/** A TCP port that was free a moment ago on `host`. Racy by nature; callers bind it soon after. */
export function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, host, () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === 'object' && addr ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

export function isLoopbackHost(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\./.test(host);
}

/** Resolves when something accepts connections on host:port or the unix socket path. */
export async function waitForListen(target: { host?: string; port?: number; path?: string },
  timeoutMs: number, isAlive: () => boolean = () => true): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const sock = target.path ? net.connect(target.path) : net.connect(target.port ?? 0, target.host ?? '127.0.0.1');
      sock.once('connect', () => { sock.destroy(); resolve(true); });
      sock.once('error', () => resolve(false));
    });
    if (ok) return;
    if (!isAlive()) throw new Error('process exited before it listened');
    if (Date.now() > deadline) throw new Error(`nothing listening on ${target.path ?? `${target.host}:${target.port}`} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
