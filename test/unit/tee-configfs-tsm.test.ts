/**
 * The configfs-tsm provider against a double of the kernel's report objects: a real directory laid out
 * like /sys/kernel/config/tsm/report, whose `generation` is bumped by every write (ours or a racing
 * writer's) and whose `outblob` is regenerated from the last `inblob`, as the kernel does.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import path from 'node:path';
import { ConfigfsTsmProvider, detectTee, parseSnpCertTable, type TsmFs } from '../../src/attestation/configfs-tsm.ts';
import { TeeEvidenceVerifier } from '../../src/attestation/tee-verifier.ts';
import { isCdbpError } from '../../src/kernel/errors.ts';
import { snpVector, tdxQuote } from '../support/tee-vectors.ts';
import { tempDir } from '../support/tmp.ts';

const GUID = { VCEK: '63da758d-e664-4564-adc5-f4b93be8accd', ASK: '4ab7b379-bbac-4fe4-a02f-05aef327c782', ARK: 'c0b406a4-a803-4952-9743-3fb6014cd0ae' };

function guidBytes(g: string): Buffer {
  return Buffer.from(g.replace(/-/g, ''), 'hex');
}

function certTable(entries: Array<[string, Buffer]>): Buffer {
  const header = 24 * (entries.length + 1);
  let off = header;
  const heads: Buffer[] = [];
  for (const [g, der] of entries) {
    const e = Buffer.alloc(24);
    guidBytes(g).copy(e, 0);
    e.writeUInt32LE(off, 16);
    e.writeUInt32LE(der.length, 20);
    heads.push(e);
    off += der.length;
  }
  return Buffer.concat([...heads, Buffer.alloc(24), ...entries.map(([, d]) => d)]);
}

/** The kernel double. `blob(reportData)` is what the "firmware" returns; `onRead` lets a racer act between our write and our read. */
class TsmDouble implements TsmFs {
  onRead: ((file: string, dir: string) => void) | undefined;
  constructor(readonly root: string, private readonly provider: string, private readonly blob: (rd: Buffer) => { out: Buffer; aux?: Buffer }) {
    mkdirSync(root, { recursive: true });
  }
  mkdir(p: string): void {
    mkdirSync(p);
    writeFileSync(path.join(p, 'provider'), this.provider + '\n');
    writeFileSync(path.join(p, 'generation'), '0\n');
  }
  rmdir(p: string): void {
    rmSync(p, { recursive: true });
  }
  exists(p: string): boolean {
    return existsSync(p);
  }
  read(p: string): Buffer {
    this.onRead?.(path.basename(p), path.dirname(p));
    return readFileSync(p);
  }
  write(p: string, d: Buffer | string): void {
    const dir = path.dirname(p);
    writeFileSync(p, d);
    const gen = Number(readFileSync(path.join(dir, 'generation'), 'latin1'));
    writeFileSync(path.join(dir, 'generation'), `${gen + 1}\n`);
    if (path.basename(p) === 'inblob') {
      const { out, aux } = this.blob(Buffer.from(d));
      writeFileSync(path.join(dir, 'outblob'), out);
      if (aux) writeFileSync(path.join(dir, 'auxblob'), aux);
    }
  }
  /** Another process writing its own report data into the same object. */
  race(dir: string): void {
    this.onRead = undefined;
    this.write(path.join(dir, 'inblob'), Buffer.alloc(64, 0xee));
  }
}

/** The firmware of the double: the real milan-vcek-2 report when asked for its report data, else the report with other data. */
function snpFirmware() {
  const v = snpVector('milan-vcek-2');
  const real = v.evidence.bytes;
  const aux = certTable([[GUID.VCEK, v.certs[0]!.raw], [GUID.ASK, v.certs[1]!.raw], [GUID.ARK, v.certs[2]!.raw]]);
  return {
    realReportData: Buffer.from(real.subarray(0x50, 0x90)),
    blob: (rd: Buffer) => {
      const out = Buffer.from(real);
      rd.copy(out, 0x50);
      return { out, aux };
    },
  };
}

test('configfs-tsm, SEV-SNP: the flow yields the report and the certificate table, and the CAS verifier accepts what it produced', async (t) => {
  const d = tempDir('tsm');
  t.after(() => d.remove());
  const fw = snpFirmware();
  const fs = new TsmDouble(path.join(d.path, 'report'), 'sev_guest', fw.blob);
  const p = new ConfigfsTsmProvider('sev-snp', { root: fs.root, fs, privlevel: 0 });
  const ev = await p.collect(fw.realReportData);
  assert.equal(ev.mode, 'sev-snp');
  assert.equal(ev.certs?.length, 3);
  assert.equal(p.measurement(), ev.measurement);
  const verified = await new TeeEvidenceVerifier('sev-snp', undefined, () => new Date('2026-01-01T00:00:00Z'))
    .verify(ev, fw.realReportData, { snp: { measurements: [ev.measurement] } });
  assert.equal(verified.measurement, ev.measurement);
  // The report object is removed after use.
  assert.deepEqual((await import('node:fs')).readdirSync(fs.root), []);
  assert.deepEqual(parseSnpCertTable(certTable([[GUID.VCEK, Buffer.from('x')]])).map((c) => c.kind), ['VCEK']);
});

test('configfs-tsm: a writer racing between our inblob write and our outblob read is detected; the provider retries, then gives up', async (t) => {
  const d = tempDir('tsm');
  t.after(() => d.remove());
  const fw = snpFirmware();
  const fs = new TsmDouble(path.join(d.path, 'report'), 'sev_guest', fw.blob);
  const p = new ConfigfsTsmProvider('sev-snp', { root: fs.root, fs, attempts: 3 });

  // Races once: the first object's generation moves 0 → 2 (ours + theirs); the retry succeeds with our data.
  let races = 0;
  fs.onRead = (file, dir) => { if (file === 'outblob') { races++; fs.race(dir); } };
  const ev = await p.collect(fw.realReportData);
  assert.equal(races, 1);
  assert.equal(ev.reportData, fw.realReportData.toString('hex'));
  assert.equal(Buffer.from(ev.report, 'base64').subarray(0x50, 0x90).toString('hex'), fw.realReportData.toString('hex'));

  // Races every time: refused, never evidence carrying someone else's report data.
  let always = 0;
  const arm = () => { fs.onRead = (file, dir) => { if (file === 'outblob') { always++; fs.race(dir); arm(); } }; };
  arm();
  await assert.rejects(p.collect(fw.realReportData), (e: unknown) => isCdbpError(e, 'ATTESTATION_UNAVAILABLE') && /3 attempts/.test(e.message));
  assert.equal(always, 3);
  fs.onRead = undefined;
});

test('configfs-tsm: a blob with other report data (a writer that kept the generation) is not taken; wrong provider fails closed', async (t) => {
  const d = tempDir('tsm');
  t.after(() => d.remove());
  const fw = snpFirmware();
  const liar = new TsmDouble(path.join(d.path, 'liar'), 'sev_guest', (rd) => fw.blob(Buffer.alloc(64, rd[0]! ^ 0xff)));
  await assert.rejects(new ConfigfsTsmProvider('sev-snp', { root: liar.root, fs: liar, attempts: 2 }).collect(fw.realReportData),
    (e: unknown) => isCdbpError(e, 'ATTESTATION_UNAVAILABLE') && /other report data/.test(e.message));
  const tdxBox = new TsmDouble(path.join(d.path, 'tdx'), 'tdx_guest', () => ({ out: tdxQuote('quote-5') }));
  await assert.rejects(new ConfigfsTsmProvider('sev-snp', { root: tdxBox.root, fs: tdxBox }).collect(Buffer.alloc(64)),
    (e: unknown) => isCdbpError(e, 'ATTESTATION_UNAVAILABLE') && /tdx_guest/.test(e.message));
  await assert.rejects(new ConfigfsTsmProvider('tdx', { root: path.join(d.path, 'absent') }).collect(Buffer.alloc(64)),
    (e: unknown) => isCdbpError(e, 'ATTESTATION_UNAVAILABLE'));
});

test('configfs-tsm, TDX: the quote comes back with its MRTD as the measurement', async (t) => {
  const d = tempDir('tsm');
  t.after(() => d.remove());
  const quote = tdxQuote('quote-5');
  const rd = quote.subarray(48 + 6 + 520, 48 + 6 + 584);
  const fs = new TsmDouble(path.join(d.path, 'report'), 'tdx_guest', () => ({ out: quote }));
  const ev = await new ConfigfsTsmProvider('tdx', { root: fs.root, fs }).collect(Buffer.from(rd));
  assert.equal(ev.mode, 'tdx');
  assert.equal(ev.measurement, quote.subarray(48 + 6 + 136, 48 + 6 + 184).toString('hex'));
});

test('CDBP_TEE_MODE=auto detection says what it found and never picks simulated', (t) => {
  const d = tempDir('tsm');
  t.after(() => d.remove());
  const snp = new TsmDouble(path.join(d.path, 'snp'), 'sev_guest', snpFirmware().blob);
  assert.deepEqual(detectTee({ root: snp.root, fs: snp }), { mode: 'sev-snp', found: `configfs-tsm at ${snp.root}, provider sev_guest` });
  const tdx = new TsmDouble(path.join(d.path, 'tdx'), 'tdx_guest', () => ({ out: Buffer.alloc(0) }));
  assert.equal(detectTee({ root: tdx.root, fs: tdx }).mode, 'tdx');
  const none = detectTee({ root: path.join(d.path, 'absent'), devices: () => false });
  assert.equal(none.mode, 'none');
  assert.match(none.found, /no TEE interface/);
  assert.match(detectTee({ root: path.join(d.path, 'absent'), devices: (p) => p === '/dev/sev-guest' }).found, /\/dev\/sev-guest.*not supported/);
});
