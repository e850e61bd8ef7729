/**
 * The counter channel's wire format (proxy ↔ CAS, issue 17): pure codecs over Buffers, shared by both
 * ends (cas/counter-channel.ts serves it, src/cas-client/counter-channel.ts speaks it). No sockets here.
 *
 * Opening (HTTP/1.1 Upgrade, RFC 9110 §7.8, on the CAS's HTTPS port, mutual TLS 1.3 with the certificate
 * the CAS issued on attestation):
 *
 *   GET /v1/services/<s>/counter-channel?nonce=<32 bytes hex>   Upgrade: cdbp-counter/1
 *   → 101, header Cdbp-Channel-Signature: Ed25519(CAS answer key, openMessage(service, nonce, binding))
 *
 * `binding` and the session's MAC key are TLS exporter values (RFC 8446 §7.5, RFC 5705) of *this* TLS
 * session, with the client's nonce as context. The one signature at open proves the peer of this session
 * holds the CAS answer key (a man in the middle terminating TLS has a different exporter on each leg and
 * cannot obtain a signature over its own); after that every frame carries a truncated HMAC under the
 * exporter-derived key, over its direction and its implicit sequence number, in place of an Ed25519
 * signature per answer (docs/FRESHNESS.md "Counter channel").
 *
 * Frames, both directions:  len u32be ‖ body ‖ mac(16)         (len = |body| + 16, capped)
 *                           mac = HMAC-SHA256(macKey, dir ‖ seq u64be ‖ body)[0..16]
 *   client → CAS   body = kind u8 ‖ id u32be ‖ …
 *     0x01 READ
 *     0x02 ADVANCE   expected u64 ‖ next u64 ‖ expectedDigest (u8 len ‖ raw, 0xff = none) ‖ digest (u8 len ‖ raw)
 *                    ‖ record (u16 len ‖ bytes, 0 = none)
 *   CAS → client   body = kind u8 ‖ id u32be ‖ value u64 ‖ digest (u8 len ‖ raw) ‖ …
 *     0x81 STATE     ‖ record (u16 len ‖ bytes)
 *     0x82 ERROR     ‖ code (u8 len ‖ ascii) ‖ message (u16 len ‖ utf8)   value/digest = the CAS's durable
 *                    counter on COUNTER_CONFLICT, 0/'' otherwise
 * Answers come in request order; `id` lets each end check it.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { CdbpError } from '../kernel/errors.ts';
import { canonicalJson } from '../crypto/hash.ts';

export const CHANNEL_PROTOCOL = 'cdbp-counter/1';
export const CHANNEL_SIGNATURE_HEADER = 'cdbp-channel-signature';
/** A replicated CAS member's signed membership view (formatMembership), sent with the opening. */
export const CHANNEL_MEMBERSHIP_HEADER = 'cdbp-channel-membership';
export const CHANNEL_PATH_SUFFIX = '/counter-channel';
/** RFC 5705 exporter labels (distinct labels give independent keys). */
export const EXPORTER_BINDING_LABEL = 'EXPORTER-cdbp-counter-channel/1 binding';
export const EXPORTER_MAC_LABEL = 'EXPORTER-cdbp-counter-channel/1 mac';
export const MAC_BYTES = 16;
/** Largest frame either end accepts (a record is ≤ 4096 bytes; everything else is small). */
export const MAX_FRAME = 16 * 1024;

export const enum Kind {
  Read = 0x01,
  Advance = 0x02,
  State = 0x81,
  Error = 0x82,
}

export const enum Dir {
  ToCas = 0x43, // 'C'
  ToClient = 0x53, // 'S'
}

export type Request =
  | { kind: Kind.Read; id: number }
  | { kind: Kind.Advance; id: number; expected: number; next: number; expectedDigest?: string; digest: string; record?: Buffer };

export type Answer =
  | { kind: Kind.State; id: number; value: number; digest: string; record?: Buffer }
  | { kind: Kind.Error; id: number; value: number; digest: string; code: string; message: string };

/**
 * The bytes the CAS signs at channel open. A replicated CAS member also signs its membership view
 * (src/cas-client/quorum.ts): it holds for every answer on the channel, because a member closes its
 * channels whenever that view changes.
 */
export function openMessage(service: string, nonce: string, binding: Buffer, membership?: string): Buffer {
  return Buffer.from(`cdbp-counter-channel/1\0${canonicalJson({ service, nonce, binding: binding.toString('hex'), membership })}`);
}

// --- encoding -------------------------------------------------------------------------------------

class Writer {
  private parts: Buffer[] = [];
  u8(n: number): this { const b = Buffer.alloc(1); b.writeUInt8(n); this.parts.push(b); return this; }
  u16(n: number): this { const b = Buffer.alloc(2); b.writeUInt16BE(n); this.parts.push(b); return this; }
  u32(n: number): this { const b = Buffer.alloc(4); b.writeUInt32BE(n); this.parts.push(b); return this; }
  u64(n: number): this {
    if (!Number.isSafeInteger(n) || n < 0) throw new CdbpError('BAD_REQUEST', `counter value ${n} is not a safe non-negative integer`);
    const b = Buffer.alloc(8); b.writeBigUInt64BE(BigInt(n)); this.parts.push(b); return this;
  }
  bytes8(b: Buffer): this { if (b.length > 0xfe) throw new CdbpError('BAD_REQUEST', 'field too long'); return this.u8(b.length).raw(b); }
  bytes16(b: Buffer): this { if (b.length > 0xffff) throw new CdbpError('BAD_REQUEST', 'field too long'); return this.u16(b.length).raw(b); }
  raw(b: Buffer): this { this.parts.push(b); return this; }
  done(): Buffer { return Buffer.concat(this.parts); }
}

const hexBytes = (hex: string): Buffer => Buffer.from(hex, 'hex');

export function encodeRequest(r: Request): Buffer {
  const w = new Writer().u8(r.kind).u32(r.id);
  switch (r.kind) {
    case Kind.Read:
      return w.done();
    case Kind.Advance:
      w.u64(r.expected).u64(r.next);
      if (r.expectedDigest === undefined) w.u8(0xff);
      else w.bytes8(hexBytes(r.expectedDigest));
      return w.bytes8(hexBytes(r.digest)).bytes16(r.record ?? Buffer.alloc(0)).done();
    default: {
      const never: never = r;
      throw new Error(`unknown request ${JSON.stringify(never)}`);
    }
  }
}

export function encodeAnswer(a: Answer): Buffer {
  const w = new Writer().u8(a.kind).u32(a.id).u64(a.value).bytes8(hexBytes(a.digest));
  switch (a.kind) {
    case Kind.State:
      return w.bytes16(a.record ?? Buffer.alloc(0)).done();
    case Kind.Error:
      return w.bytes8(Buffer.from(a.code.slice(0, 64), 'ascii')).bytes16(Buffer.from(a.message.slice(0, 2000), 'utf8')).done();
    default: {
      const never: never = a;
      throw new Error(`unknown answer ${JSON.stringify(never)}`);
    }
  }
}

// --- decoding -------------------------------------------------------------------------------------

class Reader {
  private at = 0;
  constructor(private readonly b: Buffer) {}
  private need(n: number): void {
    if (this.at + n > this.b.length) throw violation('frame ends inside a field');
  }
  u8(): number { this.need(1); return this.b.readUInt8(this.at++); }
  u16(): number { this.need(2); const v = this.b.readUInt16BE(this.at); this.at += 2; return v; }
  u32(): number { this.need(4); const v = this.b.readUInt32BE(this.at); this.at += 4; return v; }
  u64(): number {
    this.need(8);
    const v = this.b.readBigUInt64BE(this.at);
    this.at += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw violation('counter value beyond 2^53');
    return Number(v);
  }
  raw(n: number): Buffer { this.need(n); const v = this.b.subarray(this.at, this.at + n); this.at += n; return Buffer.from(v); }
  end(): void {
    if (this.at !== this.b.length) throw violation('trailing bytes after the frame');
  }
}

const violation = (why: string) => new CdbpError('PROTOCOL_VIOLATION', `counter channel: ${why}`);

/** A digest field: empty (counter 0) or a raw SHA-256 / SHA-512. */
function digestField(r: Reader, allowNone: boolean): string | undefined {
  const n = r.u8();
  if (n === 0xff && allowNone) return undefined;
  if (n !== 0 && n !== 32 && n !== 64) throw violation(`digest of ${n} bytes`);
  return r.raw(n).toString('hex');
}

export function decodeRequest(body: Buffer): Request {
  const r = new Reader(body);
  const kind = r.u8();
  const id = r.u32();
  switch (kind) {
    case Kind.Read:
      r.end();
      return { kind, id };
    case Kind.Advance: {
      const expected = r.u64();
      const next = r.u64();
      const expectedDigest = digestField(r, true);
      const digest = digestField(r, false)!;
      const rec = r.raw(r.u16());
      r.end();
      return { kind, id, expected, next, ...(expectedDigest !== undefined ? { expectedDigest } : {}), digest, ...(rec.length ? { record: rec } : {}) };
    }
    default:
      throw violation(`unknown request kind 0x${kind.toString(16)}`);
  }
}

export function decodeAnswer(body: Buffer): Answer {
  const r = new Reader(body);
  const kind = r.u8();
  const id = r.u32();
  const value = r.u64();
  const digest = digestField(r, false)!;
  switch (kind) {
    case Kind.State: {
      const rec = r.raw(r.u16());
      r.end();
      return { kind, id, value, digest, ...(rec.length ? { record: rec } : {}) };
    }
    case Kind.Error: {
      const code = r.raw(r.u8()).toString('ascii');
      const message = r.raw(r.u16()).toString('utf8');
      r.end();
      return { kind, id, value, digest, code, message };
    }
    default:
      throw violation(`unknown answer kind 0x${kind.toString(16)}`);
  }
}

// --- framing and MAC ------------------------------------------------------------------------------

function mac(key: Buffer, dir: Dir, seq: number, body: Buffer): Buffer {
  const head = Buffer.alloc(9);
  head.writeUInt8(dir, 0);
  head.writeBigUInt64BE(BigInt(seq), 1);
  return createHmac('sha256', key).update(head).update(body).digest().subarray(0, MAC_BYTES);
}

/** One frame: length, body, MAC over (direction, sequence number, body). */
export function sealFrame(key: Buffer, dir: Dir, seq: number, body: Buffer): Buffer {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(body.length + MAC_BYTES);
  return Buffer.concat([len, body, mac(key, dir, seq, body)]);
}

/**
 * Incremental, split-safe, size-capped frame reader that checks each frame's MAC against the next
 * expected sequence number of its direction (so a dropped, replayed or reordered frame fails).
 */
export class FrameReader {
  private buf: Buffer = Buffer.alloc(0);
  private seq = 0;

  constructor(private readonly key: Buffer, private readonly dir: Dir) {}

  /** Feeds bytes; returns the verified bodies of every complete frame. Throws PROTOCOL_VIOLATION. */
  push(chunk: Buffer): Buffer[] {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    const out: Buffer[] = [];
    while (this.buf.length >= 4) {
      const len = this.buf.readUInt32BE(0);
      if (len < MAC_BYTES + 1 || len > MAX_FRAME) throw violation(`frame length ${len} outside 17..${MAX_FRAME}`);
      if (this.buf.length < 4 + len) break;
      const body = this.buf.subarray(4, 4 + len - MAC_BYTES);
      const tag = this.buf.subarray(4 + len - MAC_BYTES, 4 + len);
      if (!timingSafeEqual(mac(this.key, this.dir, this.seq, body), tag)) throw violation(`frame ${this.seq} fails its MAC (altered, replayed, dropped or reordered)`);
      this.seq++;
      out.push(Buffer.from(body));
      this.buf = this.buf.subarray(4 + len);
    }
    return out;
  }
}
