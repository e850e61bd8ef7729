/**
 * The one TCP (or unix-socket) listener both protocol endpoints stand on: accept, the connection cap,
 * the pending-handshake cap, bounded refusals, stop/drain/close, the per-connection open line, and one
 * stats shape. It knows no protocol: an engine plugs in what a connection *says* (cloud-sql-proxy's one
 * listener for every engine; the count is checked before anything is dialed).
 *
 *   const l = createListener({ protocol: 'mysql', listen, limits, log, metrics, engine: { converse, refuse } });
 *   await l.listen();  …  await l.stopAccepting(); const { forced } = await l.drain(30_000); await l.close();
 *
 * One meaning of the limits, for both engines (docs/OPERATIONS.md "Connection limits"):
 * - `maxConnections`: client connections open at once. A connection takes its slot at accept and keeps it
 *   until its single cleanup, whether it is handshaking or in session.
 * - `maxPendingHandshakes`: of those, how many may still be before their login completes (handshakes are
 *   cheap to start and costly to finish: TLS, a database connection).
 * - Over either cap (or while draining) the client is refused in its protocol's own terms by the engine's
 *   refusal writer (MySQL ERR 1040/1053 before the greeting; PostgreSQL 53300/57P03 after TLS if it asked
 *   for TLS), without taking a slot or dialing the database. At most `maxRefusalHandshakes` refusals are
 *   delivered at once; past those a flood is dropped at accept unanswered (answering may cost a TLS
 *   handshake each), counted in `unanswered`.
 * Idle and handshake time-outs are the conversation's: only it knows when its handshake ends and, on the
 * native data plane, the socket is C's (proxy/mysql/native-plane.ts). Their one default lives in limits.ts.
 */
import net from 'node:net';
import { existsSync, lstatSync, unlinkSync } from 'node:fs';
import type { Logger } from '../../src/kernel/log.ts';
import { CdbpError } from '../../src/kernel/errors.ts';
import { ConnectionRecord } from './connection-log.ts';
import type { EndpointMetrics } from './metrics.ts';

export interface ListenerLimits {
  /** Client connections open at once, handshaking or in session (slot taken at accept). */
  maxConnections: number;
  /** Of those, connections still before their login completes. */
  maxPendingHandshakes: number;
  /** Refusals being delivered at once; beyond, a refused client is dropped unanswered. */
  maxRefusalHandshakes: number;
}

export const DEFAULT_LISTENER_LIMITS: ListenerLimits = {
  maxConnections: 1000,
  maxPendingHandshakes: 256,
  maxRefusalHandshakes: 64,
};

/** Why the listener refused a client (metric label `reason`, shared vocabulary in metrics.ts). */
export type ListenerRefusal = 'max_connections' | 'overload' | 'draining';

export type ListenAddress = { host: string; port: number } | { path: string };

/** What the listener hands a conversation: its identity, its log record and its two milestones. */
export interface ListenerConnection {
  readonly id: number;
  readonly peer: string;
  /** The connection's open line is already written; the conversation fills in and closes it. */
  readonly record: ConnectionRecord;
  /** The handshake is over (login OK): the connection stops counting as a pending handshake. Idempotent. */
  established(): void;
  /** The single cleanup happened: frees the slot (or the refusal's place). Idempotent. */
  closed(): void;
}

/** A running conversation, as the listener sees it. */
export interface Conversation {
  /**
   * End it now. `drain_deadline`: the drain's time is up (a protocol may say so, e.g. PG 57P01);
   * `close`: the endpoint is closing. Either way it must call `closed()` (at once or soon).
   */
  stop(why: 'drain_deadline' | 'close'): void;
}

/** What a protocol plugs in. Neither may throw (a failure ends that connection only). */
export interface ListenerEngine {
  /** A client that got a slot: run its handshake and session. */
  converse(socket: net.Socket, conn: ListenerConnection): Conversation;
  /** A client refused for `reason`: tell it in the protocol's terms, then `conn.closed()`. */
  refuse(socket: net.Socket, reason: ListenerRefusal, conn: ListenerConnection): Conversation;
}

/** One shape for both endpoints (/v1/status `connections.*`, metrics in metrics.ts). */
export interface ListenerStats {
  accepting: boolean;
  /** Connections holding a slot (handshaking or in session). */
  open: number;
  /** Of `open`, those before their login completed. */
  pendingHandshakes: number;
  /** Connections accepted since start (refused ones included). */
  total: number;
  /** Clients refused by the listener (sum of `refusedBy`). */
  refused: number;
  refusedBy: Record<ListenerRefusal, number>;
  /** Refused clients dropped unanswered (more than maxRefusalHandshakes refusals in flight). */
  unanswered: number;
  /** Conversations (sessions, and refusals still being delivered) ended by a drain deadline or close(). */
  drained: number;
}

export interface ListenerOptions {
  /** Log/metric label and the ConnectionRecord protocol ("mysql", "pg"). */
  protocol: string;
  listen: ListenAddress;
  limits: ListenerLimits;
  log: Logger;
  metrics: EndpointMetrics;
  engine: ListenerEngine;
}

export interface Listener {
  listen(): Promise<ListenAddress>;
  /** Stops accepting now; open conversations continue. */
  stopAccepting(): Promise<void>;
  /** Stops accepting, waits up to timeoutMs for every conversation to end, then stops the rest. */
  drain(timeoutMs: number): Promise<{ forced: number }>;
  /** Stops accepting and every conversation; resolves once they reported closed (bounded). */
  close(): Promise<void>;
  stats(): ListenerStats;
}

/** How long close() waits for stopped conversations to report their cleanup. */
const CLOSE_WAIT_MS = 5_000;

/** Connection ids are unique in the process (across endpoints), so log lines of one process never collide. */
let nextConnectionId = 1;

export function checkListenerLimits(l: ListenerLimits): void {
  for (const k of ['maxConnections', 'maxPendingHandshakes', 'maxRefusalHandshakes'] as const) {
    const min = k === 'maxRefusalHandshakes' ? 0 : 1;
    if (!Number.isInteger(l[k]) || l[k] < min) throw new CdbpError('CONFIG_INVALID', `${k} must be an integer ≥ ${min}, got ${l[k]}`);
  }
}

export function createListener(opts: ListenerOptions): Listener {
  const { limits, metrics, engine } = opts;
  checkListenerLimits(limits);
  const log = opts.log;
  const conversations = new Set<Conversation>();
  const emptyWaiters = new Set<() => void>();
  let open = 0;
  let pending = 0;
  let refusing = 0;
  let total = 0;
  let unanswered = 0;
  let drained = 0;
  let accepting = false;
  const refusedBy: Record<ListenerRefusal, number> = { max_connections: 0, overload: 0, draining: 0 };
  let server: net.Server | undefined;

  function forget(c: Conversation | undefined): void {
    if (!c || !conversations.delete(c)) return;
    if (conversations.size === 0) for (const w of [...emptyWaiters]) w();
  }

  /** The connection handle: one slot (or refusal place), released exactly once. */
  function connection(socket: net.Socket, refusal: boolean): { conn: ListenerConnection; bind(c: Conversation): void } {
    const id = nextConnectionId++;
    const peer = socket.remoteAddress ? `${socket.remoteAddress}:${socket.remotePort}` : 'local';
    const record = new ConnectionRecord(log, { protocol: opts.protocol, id, peer });
    let conversation: Conversation | undefined;
    let isPending = !refusal;
    let isClosed = false;
    const endPending = () => {
      if (!isPending) return;
      isPending = false;
      pending--;
      metrics.pendingHandshakes(pending);
    };
    const conn: ListenerConnection = {
      id, peer, record,
      established: endPending,
      closed() {
        if (isClosed) return;
        isClosed = true;
        if (refusal) {
          refusing--;
        } else {
          endPending();
          open--;
          metrics.closed();
        }
        forget(conversation);
        conversation = undefined;
      },
    };
    return {
      conn,
      bind(c) {
        if (isClosed) return; // closed while starting: nothing to track
        conversation = c;
        conversations.add(c);
      },
    };
  }

  function onConnection(socket: net.Socket): void {
    total++;
    socket.on('error', () => undefined); // errors before a conversation owns the socket (ECONNRESET on refuse)
    const reason: ListenerRefusal | undefined = !accepting ? 'draining'
      : open >= limits.maxConnections ? 'max_connections'
        : pending >= limits.maxPendingHandshakes ? 'overload'
          : undefined;
    if (reason) {
      refusedBy[reason]++;
      metrics.refused(reason);
      if (refusing >= limits.maxRefusalHandshakes) {
        unanswered++;
        socket.destroy();
        return;
      }
      refusing++;
      const { conn, bind } = connection(socket, true);
      bind(start(() => engine.refuse(socket, reason, conn), conn, socket));
      return;
    }
    open++;
    pending++;
    metrics.opened();
    metrics.pendingHandshakes(pending);
    const { conn, bind } = connection(socket, false);
    bind(start(() => engine.converse(socket, conn), conn, socket));
  }

  /** Starts a conversation; an engine that throws ends only this connection. */
  function start(run: () => Conversation, conn: ListenerConnection, socket: net.Socket): Conversation {
    try {
      return run();
    } catch (e) {
      log.error({ event: 'listener_conversation_failed', protocol: opts.protocol, id: conn.id, err: (e as Error).message }, 'conversation failed to start');
      socket.destroy();
      conn.record.close({ outcome: 'protocol_error', bytesIn: 0, bytesOut: 0, error: 'internal error' });
      conn.closed();
      return { stop: () => undefined };
    }
  }

  function whenEmpty(timeoutMs: number): Promise<boolean> {
    if (conversations.size === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const done = (ok: boolean) => {
        clearTimeout(timer);
        emptyWaiters.delete(onEmpty);
        resolve(ok);
      };
      const onEmpty = () => done(true);
      const timer = setTimeout(() => done(false), timeoutMs);
      emptyWaiters.add(onEmpty);
    });
  }

  function stopAll(why: 'drain_deadline' | 'close'): number {
    const rest = [...conversations];
    for (const c of rest) {
      try {
        c.stop(why);
      } catch (e) {
        log.error({ event: 'listener_stop_failed', protocol: opts.protocol, err: (e as Error).message }, 'stopping a conversation failed');
      }
    }
    drained += rest.length;
    metrics.drained(rest.length);
    return rest.length;
  }

  return {
    listen() {
      if (server) return Promise.reject(new CdbpError('LIFECYCLE_INVALID_TRANSITION', `${opts.protocol} endpoint already listening`));
      // Half-open: a client that sends its last bytes and FIN still reads the answer (a refusal, a result).
      const srv = net.createServer({ allowHalfOpen: true, noDelay: true }, onConnection);
      server = srv;
      accepting = true;
      return new Promise((resolve, reject) => {
        srv.once('error', reject);
        const onListening = () => {
          srv.off('error', reject);
          srv.on('error', (e) => log.error({ event: 'listener_error', protocol: opts.protocol, err: e.message }, `${opts.protocol} listener error`));
          const addr = srv.address();
          if ('path' in opts.listen) resolve({ path: opts.listen.path });
          else if (addr && typeof addr === 'object') resolve({ host: addr.address, port: addr.port });
          else reject(new CdbpError('INTERNAL', 'listener has no address'));
        };
        if ('path' in opts.listen) {
          removeStaleSocket(opts.listen.path);
          srv.listen({ path: opts.listen.path, backlog: 1024 }, onListening);
        } else {
          srv.listen({ host: opts.listen.host, port: opts.listen.port, backlog: 1024 }, onListening);
        }
      });
    },

    stopAccepting() {
      accepting = false;
      // close() stops accepting at once; its callback would wait for every connection, which is drain()'s job.
      if (server?.listening) server.close();
      return Promise.resolve();
    },

    async drain(timeoutMs) {
      await this.stopAccepting();
      if (await whenEmpty(timeoutMs)) return { forced: 0 };
      return { forced: stopAll('drain_deadline') };
    },

    async close() {
      await this.stopAccepting();
      if (conversations.size === 0) return;
      stopAll('close');
      await whenEmpty(CLOSE_WAIT_MS);
    },

    stats() {
      return {
        accepting, open, pendingHandshakes: pending, total,
        refused: refusedBy.max_connections + refusedBy.overload + refusedBy.draining,
        refusedBy: { ...refusedBy }, unanswered, drained,
      };
    },
  };
}

function removeStaleSocket(path: string): void {
  if (!existsSync(path)) return;
  if (!lstatSync(path).isSocket()) throw new CdbpError('CONFIG_INVALID', `listen path ${path} exists and is not a socket`);
  unlinkSync(path);
}
