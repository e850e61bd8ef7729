import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, statSync } from 'node:fs';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { once } from 'node:events';
import { startProxyUnderTest, type ProxyUnderTest } from './pg-support.ts';
import { tempDir } from '../support/tmp.ts';

let t: ProxyUnderTest;
const work = tempDir('pg-copy');
before(async () => {
  t = await startProxyUnderTest({}, { extraConfig: ['fsync = off', 'max_wal_size = 1GB'] });
});
after(async () => {
  await t?.stop();
  work.remove();
});

const ROWS = 1_000_000;

async function writeInput(file: string): Promise<string> {
  const hash = createHash('sha256');
  const out = createWriteStream(file);
  const filler = 'x'.repeat(96);
  for (let i = 1; i <= ROWS; i += 1000) {
    let block = '';
    for (let j = i; j < i + 1000; j++) block += `${j}\t${filler}${String(j).padStart(8, '0')}\n`;
    hash.update(block);
    if (!out.write(block)) await once(out, 'drain');
  }
  out.end();
  await once(out, 'finish');
  return hash.digest('hex');
}

function psqlCopy(sql: string, io: { stdinFile?: string; stdoutFile?: string }): Promise<{ code: number | null; stderr: string }> {
  const conninfo = `host=localhost port=${t.port} user=app dbname=test sslmode=verify-full sslrootcert=${t.files.caFile}`;
  const child = spawn('psql', [conninfo, '-X', '-v', 'ON_ERROR_STOP=1', '-c', sql], {
    env: { ...process.env, PGPASSWORD: t.db.accounts.scram.password }, stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  if (io.stdinFile) createReadStream(io.stdinFile).pipe(child.stdin);
  else child.stdin.end();
  if (io.stdoutFile) child.stdout.pipe(createWriteStream(io.stdoutFile));
  else child.stdout.resume();
  return new Promise((resolve) => child.on('close', (code) => resolve({ code, stderr })));
}

test('COPY FROM STDIN and COPY TO STDOUT of 100 MB pass through the proxy byte for byte', async () => {
  const input = path.join(work.path, 'in.tsv');
  const inputHash = await writeInput(input);
  assert.ok(statSync(input).size > 100 * 1024 * 1024);
  await t.db.query('CREATE TABLE big (id int PRIMARY KEY, v text)', [], 'test');
  await t.db.query('ALTER TABLE big OWNER TO app', [], 'test');

  const load = await psqlCopy('COPY big FROM STDIN', { stdinFile: input });
  assert.equal(load.code, 0, load.stderr);
  const counted = await t.db.query('SELECT count(*)::int AS n, sum(length(v))::bigint AS len FROM big', [], 'test');
  assert.equal(counted.rows[0].n, ROWS);
  assert.equal(Number(counted.rows[0].len), ROWS * 104);

  const output = path.join(work.path, 'out.tsv');
  const dump = await psqlCopy('COPY (SELECT * FROM big ORDER BY id) TO STDOUT', { stdoutFile: output });
  assert.equal(dump.code, 0, dump.stderr);
  await new Promise((r) => setTimeout(r, 100)); // let the write stream flush
  const outHash = createHash('sha256');
  for await (const chunk of createReadStream(output)) outHash.update(chunk as Buffer);
  assert.equal(outHash.digest('hex'), inputHash);
  const bytes = t.metrics.render();
  assert.match(bytes, /cdbp_bytes_total\{direction="in",protocol="pg"\} \d{9}/);
  assert.match(bytes, /cdbp_bytes_total\{direction="out",protocol="pg"\} \d{9}/);
});
