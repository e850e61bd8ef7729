/**
 * The native data plane (dataplane.c) as a typed object: TLS termination and the command-phase relay
 * of the MySQL endpoint on C worker threads. See dataplane.c for the connection life cycle.
 *
 *   const loaded = loadNativeDataPlane();            // { plane } or { unavailable: reason }
 *   const plane = loaded.plane;                       // one per proxy
 *   plane.setIdentity({ keyPem, certPem });           // new handshakes only; throws (keeping the old) if bad
 *   const { id, fd } = plane.adopt(clientFd, prefix, handlers);  // fd: the decrypted stream, for JS
 *   plane.bypass(id, backendFd, leftover, idleMs, gate?);  // direct relay from here on
 *   plane.release(id) / plane.refuseAck(id, err, why);    // strict freshness: answer onHold
 *   plane.finish(id) / plane.close(id); plane.stats(); plane.destroy();
 *
 * The build (scripts/build-native.js) runs from `npm test` / `npm run up`; where it cannot (no C
 * compiler), the proxy falls back to its Node data plane and says so (log, /v1/status, metrics).
 */
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { TLS_SERVER_DEFAULTS, type TlsIdentityPem } from '../../src/crypto/tls-identity.ts';
import { CdbpError } from '../../src/kernel/errors.ts';

export const NATIVE_ADDON_PATH = path.join(path.dirname(fileURLToPath(import.meta.url)), 'build', 'cdbp_dataplane.node');

/** What the C side reports when a connection is gone. */
export interface NativeClosed {
  /** ok, closed (by JS), tls_failed, client_error, backend_error, protocol_error, idle_timeout, forbidden_user, proxy_error, drained */
  outcome: string;
  error?: string;
  /** Set when a COM_CHANGE_USER to a forbidden name ended the session. */
  refusedUser?: string;
  /** Command-phase bytes, client → database and database → client. */
  bytesIn: number;
  bytesOut: number;
}

export interface NativeConnectionHandlers {
  onSecure(protocol: string, cipher: string): void;
  onClosed(info: NativeClosed): void;
  /**
   * Strict freshness (bypass with a gate): the relay holds a server packet that ends the acknowledgment
   * of a possible write, and reads nothing more from the database, until release() or refuseAck().
   */
  onHold(): void;
}

/** The two negotiated capabilities the response tracker reads (tracker.ts's constructor). */
export interface NativeTrackerCaps {
  deprecateEof: boolean;
  cacheMetadata: boolean;
}

export interface NativeDataPlaneOptions {
  workers: number;
  /** Names a COM_CHANGE_USER may not switch to (forbidden-user.ts), and the ERR sent when one is tried. */
  forbiddenUsers: ReadonlySet<string>;
  changeUserErr: (user: string) => { errno: number; sqlState: string; message: string };
}

interface Addon {
  create(opts: { workers: number; forbidden: string[]; errPrefix: string; errSuffix: string; errno: number; sqlState: string },
    onEvent: (ev: { id: number; type: 'secure' | 'closed' | 'hold' } & Record<string, unknown>) => void): unknown;
  setIdentity(engine: unknown, certPem: string, keyPem: string, ciphers: string, suites: string, groups: string): void;
  adopt(engine: unknown, fd: number, prefix: Buffer): [number, number];
  bypass(engine: unknown, id: number, fd: number, leftover: Buffer, idleMs: number, gate?: NativeTrackerCaps): void;
  finish(engine: unknown, id: number): void;
  close(engine: unknown, id: number): void;
  release(engine: unknown, id: number): void;
  refuseAck(engine: unknown, id: number, errPacket: Buffer, why: string): void;
  stats(engine: unknown): { open: number; bytesIn: number; bytesOut: number; buffered: number };
  destroy(engine: unknown): void;
}

let addon: Addon | undefined;
let loadError: string | undefined;

/** Loads the addon once; the reason it is unavailable otherwise (missing build, wrong platform). */
export function nativeAddon(): { addon: Addon } | { unavailable: string } {
  if (addon) return { addon };
  if (loadError) return { unavailable: loadError };
  if (!existsSync(NATIVE_ADDON_PATH)) {
    loadError = `${path.relative(process.cwd(), NATIVE_ADDON_PATH)} is not built (node scripts/build-native.js; needs a C compiler)`;
    return { unavailable: loadError };
  }
  try {
    addon = createRequire(import.meta.url)(NATIVE_ADDON_PATH) as Addon;
    return { addon };
  } catch (e) {
    loadError = `cannot load ${NATIVE_ADDON_PATH}: ${(e as Error).message}`;
    return { unavailable: loadError };
  }
}

export class NativeDataPlane {
  private readonly engine: unknown;
  private readonly handlers = new Map<number, NativeConnectionHandlers>();
  private destroyed = false;

  constructor(private readonly lib: Addon, readonly options: NativeDataPlaneOptions) {
    // The ERR text comes from the one rule in forbidden-user.ts; C splices the user name in.
    const marker = '\u0001USER\u0001';
    const err = options.changeUserErr(marker);
    const at = err.message.indexOf(marker);
    if (at < 0) throw new CdbpError('INTERNAL', 'change-user ERR message must contain the user name');
    this.engine = lib.create({
      workers: options.workers,
      forbidden: [...options.forbiddenUsers],
      errPrefix: err.message.slice(0, at),
      errSuffix: err.message.slice(at + marker.length),
      errno: err.errno,
      sqlState: err.sqlState,
    }, (ev) => this.dispatch(ev));
  }

  setIdentity(identity: TlsIdentityPem): void {
    const all = TLS_SERVER_DEFAULTS.ciphers.split(':');
    const suites = all.filter((c) => c.startsWith('TLS_')).join(':');
    const ciphers = all.filter((c) => !c.startsWith('TLS_')).join(':');
    try {
      this.lib.setIdentity(this.engine, identity.certPem, identity.keyPem, ciphers, suites, TLS_SERVER_DEFAULTS.ecdhCurve);
    } catch (e) {
      throw new CdbpError('CONFIG_INVALID', (e as Error).message, { cause: e });
    }
  }

  /**
   * Takes over a client socket right after its SSLRequest (the caller keeps no use of `fd` afterwards
   * and closes its own handle). `prefix`: bytes already read past the SSLRequest. Returns the id and
   * the fd of the decrypted stream for JS (wrap it in `new net.Socket({ fd })`).
   */
  adopt(fd: number, prefix: Buffer, handlers: NativeConnectionHandlers): { id: number; fd: number } {
    const [id, jsFd] = this.lib.adopt(this.engine, fd, prefix);
    this.handlers.set(id, handlers);
    return { id, fd: jsFd };
  }

  /**
   * Direct relay between the client's TLS and `backendFd` (duplicated; the caller closes its own).
   * With `gate` (strict freshness) the relay tracks responses and calls onHold for each acknowledgment
   * of a possible write outside a transaction.
   */
  bypass(id: number, backendFd: number, leftover: Buffer, idleTimeoutMs: number, gate?: NativeTrackerCaps): void {
    if (!Number.isFinite(idleTimeoutMs) || idleTimeoutMs < 0) throw new CdbpError('CONFIG_INVALID', `idle timeout ${idleTimeoutMs} is not a duration`);
    this.lib.bypass(this.engine, id, backendFd, leftover, idleTimeoutMs, gate);
  }

  /** The held acknowledgment may go to the client (it is covered by a counted epoch). */
  release(id: number): void {
    if (!this.destroyed) this.lib.release(this.engine, id);
  }

  /**
   * The held acknowledgment must not reach the client: it gets `errPacket` instead (its sequence id is
   * set to the held packet's), then the connection ends; `why` goes to the connection log.
   */
  refuseAck(id: number, errPacket: Buffer, why: string): void {
    if (!this.destroyed) this.lib.refuseAck(this.engine, id, errPacket, why);
  }

  /** Before bypass: send what the session wrote (e.g. an ERR), close_notify, then close. */
  finish(id: number): void {
    if (!this.destroyed) this.lib.finish(this.engine, id);
  }

  /** Close now. */
  close(id: number): void {
    if (!this.destroyed) this.lib.close(this.engine, id);
  }

  /**
   * Live counters: open native connections, command-phase bytes relayed so far, and bytes held inside
   * the relay right now (all connections; backpressure health).
   */
  stats(): { open: number; bytesIn: number; bytesOut: number; buffered: number } {
    return this.destroyed ? { open: 0, bytesIn: 0, bytesOut: 0, buffered: 0 } : this.lib.stats(this.engine);
  }

  /** Closes every connection (their onClosed handlers run) and stops the workers. */
  destroy(): void {
    if (this.destroyed) return;
    this.lib.destroy(this.engine);
    this.destroyed = true;
  }

  private dispatch(ev: { id: number; type: 'secure' | 'closed' | 'hold' } & Record<string, unknown>): void {
    const h = this.handlers.get(ev.id);
    if (!h) return;
    if (ev.type === 'hold') {
      h.onHold();
    } else if (ev.type === 'secure') {
      h.onSecure(String(ev.protocol), String(ev.cipher));
    } else {
      this.handlers.delete(ev.id);
      h.onClosed({
        outcome: String(ev.outcome),
        ...(typeof ev.error === 'string' ? { error: ev.error } : {}),
        ...(typeof ev.refusedUser === 'string' ? { refusedUser: ev.refusedUser } : {}),
        bytesIn: Number(ev.bytesIn), bytesOut: Number(ev.bytesOut),
      });
    }
  }
}

/** A data plane for a proxy, or why there is none. */
export function loadNativeDataPlane(options: NativeDataPlaneOptions): { plane: NativeDataPlane } | { unavailable: string } {
  const r = nativeAddon();
  if ('unavailable' in r) return r;
  try {
    return { plane: new NativeDataPlane(r.addon, options) };
  } catch (e) {
    return { unavailable: `cannot start the native data plane: ${(e as Error).message}` };
  }
}
