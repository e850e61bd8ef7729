/**
 * How long the freshness guard's position read takes (proxy/freshness/mariadb-position.ts: the status
 * query every strict seal makes), against a private idle MariaDB on this machine: 200 sequential reads.
 *
 *   npx tsx bench/lib/position-read-latency.ts
 */
import { readFileSync } from 'node:fs';
import { startPrivateMariadb } from '../../test/support/mariadb.ts';
import { MariadbPositionSource } from '../../proxy/freshness/mariadb-position.ts';

const db = await startPrivateMariadb({});
try {
  const src = new MariadbPositionSource({ socket: db.server.socket, user: db.user, password: db.password });
  await src.read();
  const lat: number[] = [];
  for (let i = 0; i < 200; i++) {
    const t = performance.now();
    await src.read();
    lat.push(performance.now() - t);
  }
  lat.sort((a, b) => a - b);
  console.log(JSON.stringify({ p50Ms: Number(lat[100]!.toFixed(2)), p90Ms: Number(lat[180]!.toFixed(2)), p99Ms: Number(lat[198]!.toFixed(2)),
    load: readFileSync('/proc/loadavg', 'utf8').split(' ')[0] }));
  await src.close();
} finally {
  await db.stop();
}
