/**
 * Write load for crash tests, in its own process: N connections INSERT unique values through the proxy
 * and print each value on stdout once its OK arrived (the parent counts exactly those as acknowledged).
 * Runs until stdin closes. Lives outside the test process because the MariaDB connector can surface a
 * TLS socket reset during a kill -9 as an uncaught exception, which is expected here and ignored.
 *
 *   node --import tsx test/support/crash-writer.ts PORT USER PASSWORD CA_FILE CONNECTIONS
 */
import { readFileSync } from 'node:fs';
import mariadb, { type Connection } from 'mariadb';

const [port, user, password, caFile, n] = process.argv.slice(2);
const ca = readFileSync(caFile!, 'utf8');
let stop = false;
process.on('uncaughtException', () => undefined);
process.stdin.on('end', () => { stop = true; });
process.stdin.resume();
let failures = 0;

async function writer(w: number): Promise<void> {
  let conn: Connection | undefined;
  for (let i = 0; !stop; i++) {
    try {
      conn ??= await mariadb.createConnection({ host: '127.0.0.1', port: Number(port), user, password, connectTimeout: 2000, ssl: { ca, rejectUnauthorized: true } });
      conn.on('error', () => undefined);
      const v = `w${w}-${i}`;
      await conn.query('INSERT INTO app.t (v) VALUES (?)', [v]);
      process.stdout.write(`${v}\n`); // the OK reached this client
    } catch {
      failures++;
      conn?.destroy();
      conn = undefined;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
  conn?.destroy();
}

await Promise.all(Array.from({ length: Number(n) }, (_, w) => writer(w)));
process.stderr.write(`failures ${failures}\n`);
process.exit(0);
