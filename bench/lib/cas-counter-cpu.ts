/**
 * CAS CPU per counter advance and advances per fdatasync, in isolation: a real `cdbp cas`, S services
 * each advancing its counter in a closed loop (one client per service, as one proxy each), for a few
 * seconds. CPU from /proc/<cas pid>/stat (user+system), batches from the CAS's counter-log stats.
 *
 *   npx tsx bench/lib/cas-counter-cpu.ts [services=8] [seconds=5]
 */
import { readFileSync } from 'node:fs';
import https from 'node:https';
import { createHash } from 'node:crypto';
import { startTestCas, applyTestPolicy } from '../../test/support/cas.ts';
import { tempDir } from '../../test/support/tmp.ts';
import { attestAndProvision } from '../../src/cas-client/index.ts';
import { SimulatedProvider } from '../../src/attestation/simulated.ts';

function cpuMs(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(f[11]) + Number(f[12])) * 10;
}

const services = Number(process.argv[2] ?? 8);
const seconds = Number(process.argv[3] ?? 5);
const tmp = tempDir('cas-ctr-cpu');
const cas = await startTestCas({ root: tmp.path });
try {
  const clients = [];
  for (let i = 0; i < services; i++) {
    await applyTestPolicy(cas, { service: `s${i}` });
    clients.push((await attestAndProvision({ casUrl: cas.url, caPem: cas.caPem, service: `s${i}`, provider: new SimulatedProvider(cas.platformKeyFile), tls: {} })).counter);
  }
  const gauge = (name: string) => new Promise<number>((resolve, reject) => {
    https.get(`${cas.url}/metrics`, { ca: cas.caPem, checkServerIdentity: () => undefined }, (res) => {
      let text = '';
      res.on('data', (d: Buffer) => { text += d.toString(); });
      res.on('end', () => resolve(Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1] ?? NaN)));
    }).on('error', reject);
  });
  const batches0 = await gauge('cdbp_cas_counter_batches');
  const record = Buffer.alloc(180, 7);
  const lat: number[] = [];
  let advances = 0;
  const cpu0 = cpuMs(cas.proc.pid!);
  const t0 = performance.now();
  await Promise.all(clients.map(async (c) => {
    let n = (await c.read()).value;
    while (performance.now() - t0 < seconds * 1000) {
      record.writeUInt32BE(n + 1, 0);
      const s = performance.now();
      await c.advance(n, n + 1, createHash('sha256').update(record).digest('hex'), record);
      lat.push(performance.now() - s);
      n++;
      advances++;
    }
  }));
  const wall = (performance.now() - t0) / 1000;
  const cpu = cpuMs(cas.proc.pid!) - cpu0;
  const batches = (await gauge('cdbp_cas_counter_batches')) - batches0;
  lat.sort((a, b) => a - b);
  const log = readFileSync(`${cas.dir}/state/counters.log`, 'utf8').trim().split('\n').length;
  console.log(JSON.stringify({
    services, seconds: Number(wall.toFixed(1)), advances, advancesPerSecond: Math.round(advances / wall),
    casCpuMsPerAdvance: Number((cpu / advances).toFixed(3)),
    advanceP50Ms: Number(lat[Math.floor(lat.length / 2)]!.toFixed(2)), advanceP99Ms: Number(lat[Math.floor(lat.length * 0.99)]!.toFixed(2)),
    logEntries: log, fdatasyncBatches: batches, advancesPerBatch: Number((advances / batches).toFixed(2)), load: readFileSync('/proc/loadavg', 'utf8').split(' ')[0],
  }));
  for (const c of clients) (c as { close?: () => void }).close?.();
} finally {
  await cas.stop();
  tmp.remove();
}
