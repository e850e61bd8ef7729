/**
 * A minimal DER reader/writer for the few places where we must handle bytes exactly as they were
 * signed (CSR info, SubjectPublicKeyInfo): re-encoding a parsed structure could change bytes and break
 * signatures, so we slice instead. Definite lengths only (DER); anything else is rejected.
 */
import { CdbpError } from '../kernel/errors.ts';

export interface DerElement {
  tag: number;
  /** The whole element: tag, length and content. */
  raw: Buffer;
  content: Buffer;
}

/** Reads one element at `offset`. */
export function readDer(buf: Buffer, offset = 0): DerElement {
  const fail = (why: string): never => { throw new CdbpError('BAD_REQUEST', `malformed DER: ${why}`); };
  if (offset + 2 > buf.length) fail('truncated header');
  const tag = buf[offset]!;
  if ((tag & 0x1f) === 0x1f) fail('multi-byte tags not supported');
  let len = buf[offset + 1]!;
  let pos = offset + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0 || n > 4) fail('unsupported length form');
    if (pos + n > buf.length) fail('truncated length');
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + buf[pos + i]!;
    pos += n;
  }
  if (pos + len > buf.length) fail('element runs past the end');
  return { tag, raw: buf.subarray(offset, pos + len), content: buf.subarray(pos, pos + len) };
}

/** The children of a constructed element. */
export function derChildren(el: DerElement): DerElement[] {
  const out: DerElement[] = [];
  let off = 0;
  while (off < el.content.length) {
    const child = readDer(el.content, off);
    out.push(child);
    off += child.raw.length;
  }
  return out;
}

export function derTlv(tag: number, content: Buffer): Buffer {
  const n = content.length;
  let len: Buffer;
  if (n < 0x80) len = Buffer.from([n]);
  else if (n < 0x100) len = Buffer.from([0x81, n]);
  else if (n < 0x10000) len = Buffer.from([0x82, n >> 8, n & 0xff]);
  else len = Buffer.from([0x83, (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff]);
  return Buffer.concat([Buffer.from([tag]), len, content]);
}

export const derSequence = (...parts: Buffer[]): Buffer => derTlv(0x30, Buffer.concat(parts));
export const derBitString = (bytes: Buffer): Buffer => derTlv(0x03, Buffer.concat([Buffer.from([0]), bytes]));
