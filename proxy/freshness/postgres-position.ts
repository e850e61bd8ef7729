/**
 * PostgreSQL's durable position for the freshness guard: the WAL flush LSN (what survives a crash),
 * read through the proxy's own monitoring connection over the unix socket.
 */
import pg from 'pg';
import { CURRENT_WAL_FLUSH_LSN_SQL, parseLsn } from '../../src/db/postgres-server.ts';
import type { DurablePosition } from './record.ts';
import type { PositionSource } from './mariadb-position.ts';

export interface PostgresMonitorOptions {
  socketDir: string;
  port: number;
  user: string;
  password?: string;
  database?: string;
}

export class PostgresPositionSource implements PositionSource {
  private client: pg.Client | undefined;
  /** Reads that find no connection share one opening (each opening its own would leak all but one). */
  private connecting: Promise<pg.Client> | undefined;
  constructor(private readonly opts: PostgresMonitorOptions) {}

  async read(): Promise<DurablePosition> {
    const client = await this.connection();
    try {
      const res = await client.query<{ lsn: string }>(CURRENT_WAL_FLUSH_LSN_SQL);
      return { engine: 'postgres', walLsn: parseLsn(res.rows[0]!.lsn).toString() };
    } catch (e) {
      if (this.client === client) this.client = undefined;
      await client.end().catch(() => undefined);
      throw e;
    }
  }

  async close(): Promise<void> {
    const c = this.client;
    this.client = undefined;
    await c?.end().catch(() => undefined);
  }

  private connection(): Promise<pg.Client> {
    if (this.client) return Promise.resolve(this.client);
    this.connecting ??= this.connect().finally(() => { this.connecting = undefined; });
    return this.connecting;
  }

  private async connect(): Promise<pg.Client> {
    const client = new pg.Client({
      host: this.opts.socketDir, port: this.opts.port, user: this.opts.user, password: this.opts.password,
      database: this.opts.database ?? 'postgres', connectionTimeoutMillis: 5000, application_name: 'cdbp-freshness',
    });
    client.on('error', () => { if (this.client === client) this.client = undefined; });
    await client.connect();
    this.client = client;
    return client;
  }
}
