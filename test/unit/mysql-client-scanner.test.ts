import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ClientScanner, type CommandSink } from '../../proxy/mysql/client-scanner.ts';
import { Command } from '../../proxy/mysql/constants.ts';
import { encodePacket } from '../../proxy/mysql/codec.ts';

const forbidden = new Set(['root']);
const changeUser = (user: string) => encodePacket(0, Buffer.concat([Buffer.from([Command.COM_CHANGE_USER]), Buffer.from(user), Buffer.from([0, 0]), Buffer.from('test\0')]));
const query = (sql: string) => encodePacket(0, Buffer.concat([Buffer.from([Command.COM_QUERY]), Buffer.from(sql)]));

class Recorder implements CommandSink {
  commands: number[] = [];
  commandStarted(command: number): void { this.commands.push(command); }
}

/** Feeds bytes in chunks of `size`, returns what was forwarded and the refusal. */
function run(scanner: ClientScanner, bytes: Buffer, size: number): { forwarded: Buffer; refused?: string } {
  const out: Buffer[] = [];
  let refused: string | undefined;
  for (let i = 0; i < bytes.length; i += size) {
    const r = scanner.push(bytes.subarray(i, i + size));
    out.push(r.forward);
    if (r.forbiddenUser !== undefined) refused = r.forbiddenUser;
  }
  return { forwarded: Buffer.concat(out), ...(refused !== undefined ? { refused } : {}) };
}

test('a COM_CHANGE_USER to a forbidden user is refused at any chunking; nothing of it (or after it) is forwarded', () => {
  const before = query('SELECT 1');
  const stream = Buffer.concat([before, changeUser('root'), query('SELECT 2')]);
  for (const size of [1, 2, 3, 5, 7, 64, stream.length]) {
    const rec = new Recorder();
    const r = run(new ClientScanner(forbidden, rec), stream, size);
    assert.equal(r.refused, 'root', `chunk size ${size}`);
    assert.deepEqual(r.forwarded, before, `only the command before it went out (chunk size ${size})`);
    assert.deepEqual(rec.commands, [Command.COM_QUERY]);
  }
});

test('other users, and names longer than the inspected window, pass; so does a forbidden name as a prefix', () => {
  for (const user of ['app', 'rootx', 'Root', 'x'.repeat(400)]) {
    const stream = changeUser(user);
    const r = run(new ClientScanner(forbidden), stream, 9);
    assert.equal(r.refused, undefined, user.slice(0, 10));
    assert.deepEqual(r.forwarded, stream);
  }
});

test('LOCAL INFILE data (sequence ids wrapping through 0) is never read as commands; the command after the empty packet is', () => {
  const rec = new Recorder();
  const scanner = new ClientScanner(forbidden, rec);
  const parts: Buffer[] = [query("LOAD DATA LOCAL INFILE 'f' INTO TABLE t")];
  // File packets numbered from 2, wrapping: every seq-0 one looks like a command (binlog dump, change user to root).
  for (let i = 0; i < 600; i++) {
    const seq = (2 + i) & 0xff;
    const payload = i % 3 === 0 ? Buffer.concat([Buffer.from([Command.COM_CHANGE_USER]), Buffer.from('root\0')])
      : Buffer.from([Command.COM_BINLOG_DUMP, 1, 2, 3]);
    parts.push(encodePacket(seq, payload));
  }
  parts.push(encodePacket((2 + 600) & 0xff, Buffer.alloc(0)));
  parts.push(query('INSERT INTO t VALUES (1)'));
  const stream = Buffer.concat(parts);
  const r = run(scanner, stream, 1000);
  assert.equal(r.refused, undefined);
  assert.deepEqual(r.forwarded, stream);
  assert.deepEqual(rec.commands, [Command.COM_QUERY, Command.COM_QUERY]);
  assert.equal(scanner.inInfileUpload, false);
  // A client that declines the file answers with an empty packet at once.
  const s2 = new Recorder();
  run(new ClientScanner(forbidden, s2), Buffer.concat([query("LOAD DATA LOCAL INFILE 'f' INTO TABLE t"), encodePacket(2, Buffer.alloc(0)), changeUser('root')]), 4);
  assert.deepEqual(s2.commands, [Command.COM_QUERY]);
});

test('continuation packets (payload of 0xFFFFFF) are one command', () => {
  const rec = new Recorder();
  const scanner = new ClientScanner(forbidden, rec);
  const big = Buffer.alloc(0xffffff, 0x20);
  big[0] = Command.COM_QUERY;
  const parts = [encodePacket(0, Buffer.from([Command.COM_PING]))];
  // Hand-made header for the max-size packet (encodePacket refuses it).
  const h = Buffer.from([0xff, 0xff, 0xff, 0]);
  parts.push(h, big, encodePacket(1, Buffer.from('x')));
  const r = run(scanner, Buffer.concat(parts), 1 << 20);
  assert.equal(r.refused, undefined);
  assert.deepEqual(rec.commands, [Command.COM_PING, Command.COM_QUERY]);
});
