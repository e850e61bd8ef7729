/**
 * Per-file freshness cost (issue 22): how long the start-up check of the data files against the sealed
 * inventory takes for a 1 GiB and a 5 GiB data directory, and how long a full sweep (the clean-stop sweep,
 * and a background sweep's worst case: every file changed) takes — per GiB, all in the same run.
 *
 *   npx tsx bench/scenarios/inventory.ts [--gib 1,5] [--tables 8] [--engines mariadb,postgres] [--out bench/results]
 *
 * Each data directory is made by a private MariaDB (stock 10.11, file-per-table) by writing rows
 * (~1 KiB each, INSERT … SELECT in batches) into `tables` tables, then shut down cleanly; the scanner runs
 * on the stopped directory as it does after a clean stop. `--engines postgres` does the same for a
 * private PostgreSQL inside a gocryptfs mount, as the proxy runs it (the scanner reads through FUSE). Page-cache state: warm (the rows were just
 * written; the machine is shared, so caches are not dropped). The run-time cost on oltp_write_only against
 * freshness-off is the `freshness` scenario of bench/run.ts (strict carries the inventory, off does not).
 */
import { chmodSync, mkdirSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import mariadb from 'mariadb';
import pg from 'pg';
import { PostgresServer, lookupOsUser } from '../../src/db/postgres-server.ts';
import { postgresStorage } from '../../src/storage/postgres-storage.ts';
import { freePort } from '../../src/kernel/net.ts';
import { PostgresInventory } from '../../proxy/freshness/inventory/postgres-inventory.ts';
import { observePgDatadir } from '../../proxy/freshness/inventory/postgres-files.ts';
import { MariadbServer } from '../../src/db/mariadb-server.ts';
import { silentLogger } from '../../src/kernel/log.ts';
import { MariadbInventory } from '../../proxy/freshness/inventory/mariadb-inventory.ts';
import { InventoryStore } from '../../proxy/freshness/inventory/store.ts';
import { listInnodbFiles } from '../../proxy/freshness/inventory/innodb-files.ts';
import { tempDir } from '../../test/support/tmp.ts';
import { scenario, round, REPO, machine, type ScenarioResult } from '../lib/common.ts';

export interface InventoryRow {
  engine: 'mariadb' | 'postgres';
  gib: number;
  files: number;
  /** Bytes of InnoDB data files. */
  dataGiB: number;
  fillSeconds: number;
  /** Full sweep of the stopped directory (fsync + read every page): the clean-stop sweep. */
  sweepSeconds: number;
  sweepSecondsPerGiB: number;
  /** Start-up check: page 0 and the witness pages of every file. */
  verifyMs: number;
  verifyMsPerGiB: number;
  /** Clean-stop sweep when no file changed since the last one (cache hits only). */
  unchangedSweepMs: number;
}

async function fill(server: MariadbServer, gib: number, tables: number): Promise<void> {
  const conn = await mariadb.createConnection({ socketPath: server.socket, user: 'root' });
  try {
    await conn.query('CREATE DATABASE IF NOT EXISTS bench');
    const rowsPerTable = Math.ceil((gib * 2 ** 30) / 1100 / tables);
    const batch = 50_000;
    for (let t = 0; t < tables; t++) {
      await conn.query(`CREATE TABLE bench.t${t} (id BIGINT PRIMARY KEY, pad VARCHAR(1024)) ENGINE=InnoDB`);
      for (let done = 0; done < rowsPerTable; done += batch) {
        const n = Math.min(batch, rowsPerTable - done);
        await conn.query(`INSERT INTO bench.t${t} SELECT ${done} + seq, REPEAT(MD5(seq), 31) FROM bench.seq_1_to_${n}`);
      }
    }
  } finally {
    await conn.end();
  }
}

export async function runInventory(opts: { gib: number[]; tables: number; engines?: Array<'mariadb' | 'postgres'>; log?: (l: string) => void }): Promise<ScenarioResult<InventoryRow[], InventoryRow>> {
  const log = opts.log ?? (() => undefined);
  const engines = opts.engines ?? ['mariadb'];
  return scenario('inventory', { ...opts, log: undefined }, async ({ notes }) => {
    const runs: InventoryRow[] = [];
    if (engines.includes('postgres')) {
      for (const gib of opts.gib) runs.push(await runPostgres(gib, opts.tables, log));
      notes.push('PostgreSQL: a private PostgreSQL 15 inside a gocryptfs mount (as the proxy runs it; the scanner reads plaintext through FUSE), filled with wal_level=minimal and no fsync (fill speed only), stopped cleanly; the data files are every relation main fork and pg_xact segment the inventory covers.');
    }
    if (!engines.includes('mariadb')) return { summary: runs, runs };
    for (const gib of opts.gib) {
      const dir = tempDir('bench-inventory');
      try {
        const server = new MariadbServer({ dir: dir.path, extraConfig: ['innodb_flush_log_at_trx_commit=2'] });
        await server.initialize();
        await server.start();
        log(`inventory: writing ${gib} GiB of rows`);
        const t0 = Date.now();
        await fill(server, gib, opts.tables);
        const fillSeconds = (Date.now() - t0) / 1000;
        await server.stop();
        const untrusted = path.join(dir.path, 'untrusted');
        mkdirSync(untrusted);
        const store = new InventoryStore(untrusted, 'bench', randomBytes(32), 'bench-db');
        const inv = new MariadbInventory({ datadir: server.datadir, store, log: silentLogger(), sweepIntervalMs: 60_000, sweepBytesPerSecond: 0 });
        const s0 = Date.now();
        const ref = await inv.sweep(true);
        const sweepSeconds = (Date.now() - s0) / 1000;
        if (!ref) throw new Error('no redo checkpoint: the sweep found no data directory');
        const u0 = Date.now();
        await inv.sweep(true);
        const unchangedSweepMs = Date.now() - u0;
        const fresh = new MariadbInventory({ datadir: server.datadir, store, log: silentLogger(), sweepIntervalMs: 60_000, sweepBytesPerSecond: 0 });
        const v0 = Date.now();
        const violations = await fresh.verifyOffline(ref);
        const verifyMs = Date.now() - v0;
        if (violations.length) throw new Error(`false alarm on an untouched directory: ${violations[0]!.message}`);
        const dataGiB = dataBytes(server.datadir) / 2 ** 30;
        const row: InventoryRow = {
          engine: 'mariadb', gib, files: ref.files, dataGiB: round(dataGiB, 2), fillSeconds: round(fillSeconds, 1),
          sweepSeconds: round(sweepSeconds, 2), sweepSecondsPerGiB: round(sweepSeconds / dataGiB, 2),
          verifyMs, verifyMsPerGiB: round(verifyMs / dataGiB, 1), unchangedSweepMs,
        };
        log(`inventory: ${JSON.stringify(row)}`);
        runs.push(row);
      } finally {
        dir.remove();
      }
    }
    notes.push('Start-up verification reads page 0 and ≤ 3 witness pages per file: it grows with the number of files, not their size.');
    notes.push('The full sweep is the clean-stop sweep of changed files (fsync, then every page read); the background sweep does the same for changed files, capped by CDBP_INVENTORY_SWEEP_MIB_PER_SECOND.');
    return { summary: runs, runs };
  });
}

/** One PostgreSQL data directory of `gib` GiB in a gocryptfs mount: fill, clean stop, sweep, verify. */
async function runPostgres(gib: number, tables: number, log: (l: string) => void): Promise<InventoryRow> {
  const dir = tempDir('bench-inventory-pg');
  chmodSync(dir.path, 0o711);
  const owner = process.getuid?.() === 0 ? lookupOsUser('postgres') : undefined;
  const prepared = postgresStorage({ runDir: path.join(dir.path, 'run'), encryptedDir: path.join(dir.path, 'cipher'), owner, log: silentLogger() });
  try {
    const layout = await prepared.open({ dbKeys: [{ id: 1, version: 1, key: randomBytes(32) }], sealedWalLsn: undefined, rekey: false });
    const port = await freePort();
    const server = new PostgresServer({ ...layout, port, extraConfig: ['wal_level = minimal', 'max_wal_senders = 0', 'fsync = off', 'synchronous_commit = off', 'max_wal_size = 4GB'] });
    await server.initialize();
    await server.start();
    log(`inventory (postgres): writing ${gib} GiB of rows`);
    const t0 = Date.now();
    const c = new pg.Client({ host: layout.socketDir, port, user: 'postgres', database: 'postgres' });
    await c.connect();
    try {
      const rowsPerTable = Math.ceil((gib * 2 ** 30) / 1100 / tables);
      for (let t = 0; t < tables; t++) {
        await c.query(`CREATE TABLE t${t} (id bigint PRIMARY KEY, pad text)`);
        for (let done = 0; done < rowsPerTable; done += 200_000) {
          const n = Math.min(200_000, rowsPerTable - done);
          await c.query(`INSERT INTO t${t} SELECT g, repeat(md5(g::text), 31) FROM generate_series(${done + 1}, ${done + n}) g`);
        }
      }
    } finally {
      await c.end();
    }
    const fillSeconds = (Date.now() - t0) / 1000;
    await server.stop();
    const untrusted = path.join(dir.path, 'untrusted');
    mkdirSync(untrusted);
    const store = new InventoryStore(untrusted, 'bench', randomBytes(32), 'bench-db');
    const make = () => new PostgresInventory({ datadir: layout.datadir, store, log: silentLogger(), sweepIntervalMs: 60_000, sweepBytesPerSecond: 0,
      connection: () => ({ socketDir: layout.socketDir, port, user: 'postgres' }) });
    const inv = make();
    const s0 = Date.now();
    const ref = await inv.sweep(true);
    const sweepSeconds = (Date.now() - s0) / 1000;
    if (!ref) throw new Error('PostgreSQL did not stop cleanly: no exact sweep');
    const u0 = Date.now();
    await inv.sweep(true);
    const unchangedSweepMs = Date.now() - u0;
    const v0 = Date.now();
    const violations = await make().verifyOffline(ref);
    const verifyMs = Date.now() - v0;
    if (violations.length) throw new Error(`false alarm on an untouched directory: ${violations[0]!.message}`);
    const dataGiB = observePgDatadir(layout.datadir).reduce((sum, f) => sum + f.pages * 8192, 0) / 2 ** 30;
    const row: InventoryRow = {
      engine: 'postgres', gib, files: ref.files, dataGiB: round(dataGiB, 2), fillSeconds: round(fillSeconds, 1),
      sweepSeconds: round(sweepSeconds, 2), sweepSecondsPerGiB: round(sweepSeconds / dataGiB, 2),
      verifyMs, verifyMsPerGiB: round(verifyMs / dataGiB, 1), unchangedSweepMs,
    };
    log(`inventory (postgres): ${JSON.stringify(row)}`);
    return row;
  } finally {
    await prepared.storage.unmount().catch(() => undefined);
    dir.remove();
  }
}

function dataBytes(datadir: string): number {
  return listInnodbFiles(datadir).reduce((s, f) => s + statSync(path.join(datadir, f)).size, 0);
}

export function renderInventory(r: ScenarioResult<InventoryRow[], InventoryRow>): string {
  const lines = [
    '## Per-file freshness: start-up verification and sweep time',
    '',
    '| engine | data dir | data files | data GiB | start-up verification | per GiB | full sweep (clean stop, all changed) | per GiB | sweep, nothing changed |',
    '|---|---|---|---|---|---|---|---|---|',
    ...r.runs.map((x) => `| ${x.engine} | ${x.gib} GiB | ${x.files} | ${x.dataGiB} | ${x.verifyMs} ms | ${x.verifyMsPerGiB} ms | ${x.sweepSeconds} s | ${x.sweepSecondsPerGiB} s | ${x.unchangedSweepMs} ms |`),
    '',
    ...r.notes.map((n) => `- ${n}`),
  ];
  return lines.join('\n');
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values } = parseArgs({ options: { gib: { type: 'string', default: '1,5' }, tables: { type: 'string', default: '8' }, engines: { type: 'string', default: 'mariadb,postgres' }, out: { type: 'string', default: path.join(REPO, 'bench', 'results') } } });
  const gib = values.gib!.split(',').map(Number);
  const engines = values.engines!.split(',') as Array<'mariadb' | 'postgres'>;
  const r = await runInventory({ gib, tables: Number(values.tables), engines, log: (l) => console.log(l) });
  const m = machine();
  const md = `${renderInventory(r)}\n\nMachine: ${m.cores} cores, ${m.cpuModel}, ${m.memGiB} GiB; load ${r.loadBefore.load1} → ${r.loadAfter.load1}; ${r.startedAt}\n`;
  mkdirSync(values.out!, { recursive: true });
  const stamp = r.startedAt.slice(0, 10);
  writeFileSync(path.join(values.out!, `inventory-${stamp}.md`), md);
  writeFileSync(path.join(values.out!, `inventory-${stamp}.json`), JSON.stringify(r, null, 2));
  console.log(md);
}
