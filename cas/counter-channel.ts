/**
 * The CAS end of the counter channel (issue 17): one long-lived mutual-TLS connection per proxy, opened
 * by an HTTP/1.1 Upgrade on the CAS's HTTPS port, then length-prefixed binary frames answered in order
 * (wire format and its authentication: src/cas-client/counter-channel-wire.ts). Every request calls the
 * same CasCore compare-and-advance as the HTTP route, so the group-committed counter log, the unsynced
 * ordering that lets a proxy pipeline advances, and the audit of refusals are the same.
 *
 * Who may open it: exactly who may use the counter routes (cas/server.ts requireHolder): a client
 * certificate from this CAS naming the service, a measurement and TEE mode the current policy still
 * allows. Re-checked on every request, so removing a measurement from the policy cuts a running
 * channel at once, and a channel ends when its certificate expires.
 */
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import { CdbpError, asCdbpError, httpStatusFor } from '../src/kernel/errors.ts';
import type { Logger } from '../src/kernel/log.ts';
import type { MetricsRegistry } from '../src/kernel/metrics.ts';
import { isHex } from '../src/crypto/hash.ts';
import {
  CHANNEL_MEMBERSHIP_HEADER, CHANNEL_PATH_SUFFIX, CHANNEL_PROTOCOL, CHANNEL_SIGNATURE_HEADER, Dir, EXPORTER_BINDING_LABEL, EXPORTER_MAC_LABEL, FrameReader, Kind,
  decodeRequest, encodeAnswer, sealFrame, type Answer, type Request,
} from '../src/cas-client/counter-channel-wire.ts';
import type { AuditLog } from './audit.ts';
import { isAudited, type CasCore } from './core.ts';

const SERVICE_RE = /^[a-z0-9][a-z0-9._-]{0,62}$/;
/** Answers a proxy may have outstanding before the CAS stops reading its socket (backpressure). */
const MAX_OUTSTANDING = 256;

export interface CounterChannelOptions {
  core: CasCore;
  audit: AuditLog;
  log: Logger;
  metrics: MetricsRegistry;
}

interface Holder {
  service: string;
  measurement: string;
  mode: string;
  notAfter: number;
}

export interface CounterChannelEndpoint {
  /** The upgrade listener to put on the CAS's HTTPS server (cas/server.ts). */
  onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void;
  /**
   * Ends every open channel. The HTTPS server's close waits for its connections, and an upgraded one
   * never ends by itself: call this before closing it (proxies reconnect to the next CAS).
   */
  closeAll(): void;
}

export function counterChannelEndpoint(o: CounterChannelOptions): CounterChannelEndpoint {
  const sessions = new Set<Duplex>();
  o.metrics.gauge('cdbp_cas_counter_channels', 'Counter channels (persistent proxy connections) open', (g) => g.set(sessions.size));
  const frames = o.metrics.counter('cdbp_cas_counter_channel_requests_total', 'Counter channel requests by kind and outcome');
  const onUpgrade = (req: IncomingMessage, socket: Duplex, head: Buffer): void => {
    const refuse = (e: CdbpError, service?: string): void => {
      const status = httpStatusFor(e.code);
      const body = JSON.stringify({ error: { code: e.code, message: status >= 500 ? 'internal error' : e.message } });
      socket.end(`HTTP/1.1 ${status} Refused\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
      if (e.code !== 'NOT_FOUND') {
        void o.audit.append({ event: 'counter.read', outcome: 'refused', code: e.code, service, details: { remote: req.socket.remoteAddress ?? null, channel: true } })
          .catch((ae: unknown) => o.log.error({ err: ae }, 'audit append failed'));
      }
    };
    let service: string | undefined;
    try {
      const url = new URL(req.url ?? '/', 'https://cas.invalid');
      const m = /^\/v1\/services\/([^/]+)(\/[^/]+)$/.exec(url.pathname);
      if (!m || m[2] !== CHANNEL_PATH_SUFFIX || req.method !== 'GET') throw new CdbpError('NOT_FOUND', `no upgrade route ${req.method} ${url.pathname}`);
      service = decodeURIComponent(m[1]!);
      if (!SERVICE_RE.test(service)) throw new CdbpError('BAD_REQUEST', 'malformed service name');
      if ((req.headers.upgrade ?? '').toLowerCase() !== CHANNEL_PROTOCOL) throw new CdbpError('BAD_REQUEST', `Upgrade must be ${CHANNEL_PROTOCOL}`);
      const nonce = url.searchParams.get('nonce');
      if (!isHex(nonce, 32)) throw new CdbpError('BAD_REQUEST', 'nonce must be 32 bytes hex');
      const tls = socket as TLSSocket;
      // The exporter binds the open signature to this session only if the handshake cannot be
      // steered into a shared master secret; TLS 1.3's exporter always is (RFC 8446 §7.5).
      if (tls.getProtocol?.() !== 'TLSv1.3') throw new CdbpError('FORBIDDEN', 'the counter channel needs TLS 1.3');
      const holder = holderOf(tls, service);
      checkHolder(o.core, holder);
      const binding = tls.exportKeyingMaterial(32, EXPORTER_BINDING_LABEL, Buffer.from(nonce, 'hex'));
      const macKey = tls.exportKeyingMaterial(32, EXPORTER_MAC_LABEL, Buffer.from(nonce, 'hex'));
      const { signature, membership } = o.core.signCounterChannelOpen(service, nonce, binding);
      const view = membership === undefined ? '' : `${CHANNEL_MEMBERSHIP_HEADER}: ${membership}\r\n`;
      socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: ${CHANNEL_PROTOCOL}\r\nConnection: Upgrade\r\n${CHANNEL_SIGNATURE_HEADER}: ${signature}\r\n${view}\r\n`);
      sessions.add(socket);
      socket.once('close', () => sessions.delete(socket));
      serve(o, tls, holder, macKey, head, frames);
    } catch (e) {
      refuse(asCdbpError(e), service);
    }
  };
  return { onUpgrade, closeAll: () => { for (const s of sessions) s.destroy(); } };
}

/** The URI SANs of a client certificate this CAS issued (cas/server.ts reads the same ones). */
function holderOf(tls: TLSSocket, service: string): Holder {
  if (!tls.authorized) throw new CdbpError('FORBIDDEN', 'counter access needs the client certificate this CAS issued on attestation');
  const cert = tls.getPeerCertificate();
  const h: Partial<Holder> = { notAfter: cert?.valid_to ? Date.parse(cert.valid_to) : 0 };
  for (const part of (cert?.subjectaltname ?? '').split(', ')) {
    if (part.startsWith('URI:urn:cdbp:service:')) h.service = part.slice('URI:urn:cdbp:service:'.length);
    else if (part.startsWith('URI:urn:cdbp:measurement:')) h.measurement = part.slice('URI:urn:cdbp:measurement:'.length);
    else if (part.startsWith('URI:urn:cdbp:tee:')) h.mode = part.slice('URI:urn:cdbp:tee:'.length);
  }
  if (!h.service) throw new CdbpError('FORBIDDEN', 'counter access needs the client certificate this CAS issued on attestation');
  if (h.service !== service) throw new CdbpError('FORBIDDEN', `the client certificate belongs to ${h.service}, not ${service}`);
  return { service, measurement: h.measurement ?? '', mode: h.mode ?? '', notAfter: h.notAfter ?? 0 };
}

/** Per request: the measurement and mode must still be in the policy, the certificate still valid. */
function checkHolder(core: CasCore, h: Holder): void {
  const policy = core.getPolicy(h.service).signed.policy;
  if (!h.measurement || !policy.measurements.includes(h.measurement) || !(policy.teeModes as string[]).includes(h.mode)) {
    throw new CdbpError('FORBIDDEN', 'the client certificate was issued for a measurement or TEE mode the current policy no longer allows');
  }
  if (!(Date.now() < h.notAfter)) throw new CdbpError('FORBIDDEN', 'the client certificate has expired');
}

function serve(o: CounterChannelOptions, tls: TLSSocket, holder: Holder, macKey: Buffer, head: Buffer,
  frames: { inc(l: Record<string, string>): void }): void {
  const reader = new FrameReader(macKey, Dir.ToCas);
  let sendSeq = 0;
  let outstanding = 0;
  // Answers leave in request order: each waits for the one before it.
  let tail: Promise<void> = Promise.resolve();
  const remote = tls.remoteAddress ?? undefined;

  const answer = async (r: Request): Promise<Answer> => {
    try {
      checkHolder(o.core, holder);
      switch (r.kind) {
        case Kind.Read: {
          const v = o.core.readCounter(holder.service);
          return { kind: Kind.State, id: r.id, value: v.value, digest: v.digest, ...(v.record ? { record: Buffer.from(v.record, 'base64') } : {}) };
        }
        case Kind.Advance: {
          const v = await o.core.advanceCounter(holder.service, r.expected, r.next, r.digest, remote, r.record?.toString('base64'), r.expectedDigest);
          return { kind: Kind.State, id: r.id, value: v.value, digest: v.digest };
        }
        default: {
          const never: never = r;
          throw new Error(`unhandled ${JSON.stringify(never)}`);
        }
      }
    } catch (e) {
      const err = asCdbpError(e);
      if (!isAudited(e) && r.kind === Kind.Advance) {
        await o.audit.append({ event: 'counter.advance', outcome: 'refused', code: err.code, service: holder.service, details: { remote: remote ?? null, channel: true } })
          .catch((ae: unknown) => o.log.error({ err: ae }, 'audit append failed'));
      }
      const d = err.code === 'COUNTER_CONFLICT' ? err.details as { value?: number; digest?: string } | undefined : undefined;
      const internal = httpStatusFor(err.code) >= 500 && err.code !== 'CAS_UNREACHABLE';
      if (internal) o.log.error({ err: e, service: holder.service }, 'counter channel request failed');
      return {
        kind: Kind.Error, id: r.id, value: typeof d?.value === 'number' ? d.value : 0, digest: typeof d?.digest === 'string' ? d.digest : '',
        code: err.code, message: internal ? 'internal error' : err.message,
      };
    }
  };

  const onData = (chunk: Buffer): void => {
    let bodies: Buffer[];
    try {
      bodies = reader.push(chunk);
    } catch (e) {
      // A frame that fails its MAC or its framing ends the session: nothing after it can be trusted.
      o.log.warn({ service: holder.service, reason: asCdbpError(e).message }, 'counter channel closed: protocol violation');
      void o.audit.append({ event: 'counter.advance', outcome: 'refused', code: 'PROTOCOL_VIOLATION', service: holder.service, details: { remote: remote ?? null, channel: true } })
        .catch(() => {});
      tls.destroy();
      return;
    }
    for (const body of bodies) {
      let req: Request;
      try {
        req = decodeRequest(body);
      } catch (e) {
        o.log.warn({ service: holder.service, reason: asCdbpError(e).message }, 'counter channel closed: malformed request');
        tls.destroy();
        return;
      }
      // Started now, in arrival order (the core compares against accepted-but-unsynced values, so a
      // pipelined n+1→n+2 sees n→n+1); answered in the same order.
      const pending = answer(req);
      outstanding++;
      if (outstanding >= MAX_OUTSTANDING) tls.pause();
      tail = tail.then(() => pending).then((a) => {
        frames.inc({ kind: req.kind === Kind.Read ? 'read' : 'advance', outcome: a.kind === Kind.State ? 'ok' : (a as { code: string }).code });
        if (!tls.destroyed) tls.write(sealFrame(macKey, Dir.ToClient, sendSeq++, encodeAnswer(a)));
        if (--outstanding < MAX_OUTSTANDING) tls.resume();
      });
    }
  };

  tls.on('data', onData);
  tls.on('error', () => tls.destroy());
  tls.setNoDelay(true);
  // Long-lived by design: the HTTP server's idle time-out does not apply after the upgrade.
  tls.setTimeout(0);
  // The channel ends with the certificate it was opened with (the proxy renews and reopens).
  const expiry = setTimeout(() => tls.destroy(), Math.max(0, Math.min(holder.notAfter - Date.now(), 2 ** 31 - 1)));
  expiry.unref();
  tls.once('close', () => clearTimeout(expiry));
  if (head.length > 0) onData(head);
}
