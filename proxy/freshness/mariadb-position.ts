/**
 * Reads MariaDB's durable position: online through the proxy's own monitoring connection (the
 * `mariadb` connector over the unix socket), offline from ib_logfile0's checkpoint blocks.
 */
import mariadb, { type Connection } from 'mariadb';
import { openSync, readSync, closeSync } from 'node:fs';
import path from 'node:path';
import type { DurablePosition } from './record.ts';
import { parseRedoCheckpoint } from './position.ts';

export interface PositionSource {
  read(): Promise<DurablePosition>;
  close(): Promise<void>;
}

export interface MariadbMonitorOptions {
  socket: string;
  user?: string;
  password?: string;
}

const POSITION_SQL = "SELECT VARIABLE_NAME AS n, VARIABLE_VALUE AS v FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME IN ('INNODB_LSN_FLUSHED','INNODB_LSN_LAST_CHECKPOINT')"
  + " UNION ALL SELECT 'GTID_BINLOG_POS', @@gtid_binlog_pos";

/** One long-lived connection; reconnects lazily after an error. */
export class MariadbPositionSource implements PositionSource {
  private conn: Connection | undefined;
  /** Reads that find no connection share one opening (each opening its own would leak all but one). */
  private connecting: Promise<Connection> | undefined;
  constructor(private readonly opts: MariadbMonitorOptions) {}

  async read(): Promise<DurablePosition> {
    const conn = await this.connection();
    try {
      // One statement, one round trip (the seal waits for it).
      const rows = (await conn.query(POSITION_SQL)) as Array<{ n: string; v: string | null }>;
      const get = (name: string) => rows.find((r) => r.n.toUpperCase() === name)?.v;
      return {
        engine: 'mariadb',
        lsnFlushed: String(get('INNODB_LSN_FLUSHED') ?? '0'),
        lsnCheckpoint: String(get('INNODB_LSN_LAST_CHECKPOINT') ?? '0'),
        gtid: get('GTID_BINLOG_POS') ?? '',
      };
    } catch (e) {
      if (this.conn === conn) this.conn = undefined;
      await conn.destroy();
      throw e;
    }
  }

  async close(): Promise<void> {
    const c = this.conn;
    this.conn = undefined;
    if (c) await c.end().catch(() => c.destroy());
  }

  private connection(): Promise<Connection> {
    if (this.conn) return Promise.resolve(this.conn);
    this.connecting ??= this.connect().finally(() => { this.connecting = undefined; });
    return this.connecting;
  }

  private async connect(): Promise<Connection> {
    const conn = await mariadb.createConnection({
      socketPath: this.opts.socket,
      user: this.opts.user ?? 'root',
      password: this.opts.password,
      connectTimeout: 5000,
    });
    // A server restart or crash closes the socket between reads: forget the connection (the next read
    // reconnects) instead of letting the connector's 'error' event take the whole proxy down.
    conn.on('error', () => {
      if (this.conn === conn) this.conn = undefined;
    });
    this.conn = conn;
    return conn;
  }
}

/** The checkpoint LSN an adversary cannot hide without also editing the redo log (CRC only). */
export function readOfflineCheckpoint(datadir: string): bigint | undefined {
  let fd: number;
  try {
    fd = openSync(path.join(datadir, 'ib_logfile0'), 'r');
  } catch {
    return undefined;
  }
  try {
    const head = Buffer.alloc(0x3000);
    const n = readSync(fd, head, 0, head.length, 0);
    return parseRedoCheckpoint(head.subarray(0, n));
  } finally {
    closeSync(fd);
  }
}
