/**
 * The proxy under test as its own OS process, so its RSS and CPU are its own (not the load generator's).
 * Driven over the IPC channel by bench/lib/proxy-process.ts:
 *   → {cmd:'start', config}   ← {ready:true, port}
 *   → {cmd:'stats'}           ← {rss, heapUsed, cpuUs, open}
 *   → {cmd:'stop'}            ← {stopped:true, cpuUs}  then exit
 * The config (throwaway bench certificate) travels over IPC, never through argv or the environment.
 */
import { createMysqlProxy, type MysqlProxy } from '../proxy/mysql/index.ts';
import { createPgProxy, type PgProxy } from '../proxy/pg/index.ts';
import { createLogger } from '../src/kernel/log.ts';

export interface RunnerConfig {
  engine: 'mysql' | 'pg';
  port: number;
  /** mysql: the MariaDB unix socket; pg: the PostgreSQL socket dir + port. */
  backend: { socket: string } | { socketDir: string; port: number };
  tls: { keyPem: string; certPem: string };
  maxConnections: number;
  /** mysql: which data plane terminates TLS and relays (default: the proxy's own choice, 'auto'). */
  dataPlane?: 'auto' | 'native' | 'node';
  /** mysql, native data plane: worker threads. */
  nativeWorkers?: number;
  /**
   * mysql: an ack gate that never holds (returns undefined). The response tracker and the hold round
   * trip to JS run as under strict freshness, without the seal itself: the data path's own cost of strict.
   */
  passThroughGate?: boolean;
}

type Msg = { cmd: 'start'; config: RunnerConfig } | { cmd: 'stats' } | { cmd: 'stop' };

let proxy: MysqlProxy | PgProxy | undefined;
const send = (m: unknown) => process.send?.(m);
const cpuUs = () => { const c = process.cpuUsage(); return c.user + c.system; };

process.on('message', (m: Msg) => {
  void handle(m).catch((e: Error) => send({ error: e.message }));
});
// The bench process is our parent: if it dies, so do we.
process.on('disconnect', () => process.exit(0));

async function handle(m: Msg): Promise<void> {
  if (m.cmd === 'start') {
    const c = m.config;
    const log = createLogger({ name: 'bench-proxy', level: 'error' });
    if (c.engine === 'mysql') {
      proxy = createMysqlProxy({
        listen: { host: '127.0.0.1', port: c.port }, backend: c.backend as { socket: string }, tls: c.tls, log,
        limits: { maxConnections: c.maxConnections, handshakeTimeoutMs: 60_000 },
        ...(c.dataPlane ? { dataPlane: c.dataPlane } : {}), ...(c.nativeWorkers ? { nativeWorkers: c.nativeWorkers } : {}),
        ...(c.passThroughGate ? { ackGate: { holdAck: () => undefined } } : {}),
      });
    } else {
      proxy = createPgProxy({
        listen: { host: '127.0.0.1', port: c.port }, backend: c.backend as { socketDir: string; port: number }, tls: c.tls, log,
        limits: { maxConnections: c.maxConnections },
      });
    }
    await proxy.listen();
    send({ ready: true, port: c.port });
  } else if (m.cmd === 'stats') {
    const mem = process.memoryUsage();
    send({ rss: mem.rss, heapUsed: mem.heapUsed, cpuUs: cpuUs(), open: proxy?.stats().open ?? 0 });
  } else if (m.cmd === 'stop') {
    const used = cpuUs();
    await proxy?.close();
    send({ stopped: true, cpuUs: used });
    process.exit(0);
  }
}
