// Container health probe: `node healthcheck.mjs URL [CA_FILE]` exits 0 only on HTTP 200. Plain JS (no tsx)
// so it starts in ~50 ms; the images have no curl. CA_FILE pins the CA for an https URL (the CAS).
import http from 'node:http';
import https from 'node:https';
import { readFileSync } from 'node:fs';

const [url, caFile] = process.argv.slice(2);
if (!url) {
  console.error('usage: healthcheck.mjs URL [CA_FILE]');
  process.exit(2);
}
const u = new URL(url);
const mod = u.protocol === 'https:' ? https : http;
const opts = { timeout: 3000, ...(caFile ? { ca: readFileSync(caFile) } : {}) };
const req = mod.get(u, opts, (res) => {
  let body = '';
  res.setEncoding('utf8');
  res.on('data', (c) => { if (body.length < 2048) body += c; });
  res.on('end', () => {
    if (res.statusCode !== 200) console.log(`${res.statusCode} ${body}`);
    process.exit(res.statusCode === 200 ? 0 : 1);
  });
});
req.on('timeout', () => req.destroy(new Error('timeout')));
req.on('error', (e) => {
  console.log(`unreachable: ${e.message}`);
  process.exit(1);
});
