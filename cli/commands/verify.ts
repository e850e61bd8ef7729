/**
 * `cdbp verify`: checks a running endpoint from the client's side, trusting only the CAS CA, the
 * platform's public key and the expected measurement:
 *
 *   1. TLS to the database port (MySQL SSLRequest or PostgreSQL SSLRequest, then a TLS handshake):
 *      the certificate must chain to --ca and name the host;
 *   2. GET <ops>/v1/attestation?nonce=<32 random bytes>: evidence whose report data must equal
 *      SHA-512("cdbp-endpoint-evidence-v1" ‖ nonce ‖ SPKI of the certificate step 1 saw), signed by
 *      the trusted platform key, with the expected measurement.
 *
 * Simulated evidence is never reported as plainly "verified": the verdict says SIMULATED loudly.
 * Exit 0 when every check passed, 1 otherwise.
 */
import net from 'node:net';
import tls from 'node:tls';
import { randomBytes, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { parseFlags } from '../../src/kernel/args.ts';
import { CdbpError, asCdbpError } from '../../src/kernel/errors.ts';
import { SimulatedVerifier } from '../../src/attestation/simulated.ts';
import { measureShippedCode } from '../../src/attestation/measurement.ts';
import { readPublicKeyFile } from '../../src/crypto/ed25519.ts';
import { isHex } from '../../src/crypto/hash.ts';
import type { Evidence, EvidenceVerifier } from '../../src/attestation/types.ts';
import { verifyEndpointEvidence } from '../../src/ops/evidence.ts';
import { checkEvidenceFile, formatEvidenceVerdict } from './verify-evidence.ts';
import { decodeErr, encodePacket, readPayloadLength, SSL_REQUEST_LENGTH } from '../../proxy/mysql/codec.ts';
import { Cap, Header, PACKET_HEADER_SIZE } from '../../proxy/mysql/constants.ts';
import { encodeSslRequest } from '../../proxy/pg/codec.ts';
import { SSL_ACCEPT } from '../../proxy/pg/constants.ts';

/** MySQL collation id 45 (utf8mb4_general_ci): what the SSLRequest announces; nothing is sent in it. */
const UTF8MB4_GENERAL_CI = 45;

const USAGE = `usage: cdbp verify --ops URL --ca FILE [--host 127.0.0.1] (--port N | --pg-port N)
                   --measurement HEX|local [--platform-public-key FILE] [--json]
       cdbp verify --evidence FILE [--certs PATH] [--collateral DIR] [--at ISO-TIME] [--policy FILE]
                   [--report-data HEX] [--policy-hash HEX] [--json]

--evidence: verifies a real SEV-SNP report (bare or Azure HCL) or TDX quote offline against the pinned AMD /
Intel roots and shows what it carries; without --policy the production default applies (debug refused).

Checks a running proxy: TLS to its database port chains to the CAS CA (--ca) and names --host; the
evidence on <ops>/v1/attestation binds a fresh nonce and the certificate the TLS endpoint presented;
the measurement is --measurement (or this checkout's code with 'local'). Simulated evidence needs the
simulated platform's public key (--platform-public-key) and is reported as SIMULATED. Exit 0 = verified.`;

export interface VerifyOptions {
  host: string;
  port: number;
  protocol: 'mysql' | 'postgres';
  opsUrl: string;
  caPem: string;
  expectedMeasurement: string;
  /** Trusted simulated platform public key (32 bytes); without it simulated evidence is refused. */
  platformPublicKey?: Buffer;
  timeoutMs?: number;
}

export interface VerifyResult {
  verified: boolean;
  simulated: boolean;
  checks: Array<{ name: string; ok: boolean; detail: string }>;
  certificate?: { subject: string; serial: string; notAfter: string; fingerprint256: string };
  measurement?: string;
  error?: { code: string; message: string };
}

export async function run(argv: string[]): Promise<number> {
  const { flags } = parseFlags(argv, ['json'], ['ops', 'ca', 'host', 'port', 'pg-port', 'measurement', 'platform-public-key',
    'evidence', 'certs', 'collateral', 'at', 'policy', 'report-data', 'policy-hash']);
  if (flags.help) {
    console.log(USAGE);
    return 0;
  }
  if (typeof flags.evidence === 'string') {
    const camel = (k: string) => k.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
    const str = (k: string) => (typeof flags[k] === 'string' ? { [camel(k)]: flags[k] as string } : {});
    const r = checkEvidenceFile({ evidence: flags.evidence, ...str('certs'), ...str('collateral'), ...str('at'), ...str('policy'), ...str('report-data'),
      ...str('policy-hash') });
    console.log(flags.json ? JSON.stringify(r, null, 2) : formatEvidenceVerdict(r));
    return r.verified ? 0 : 1;
  }
  const missing = ['ops', 'ca', 'measurement'].filter((f) => typeof flags[f] !== 'string');
  if (!flags.port && !flags['pg-port']) missing.push('port (or --pg-port)');
  if (missing.length > 0) throw new CdbpError('CONFIG_INVALID', `missing --${missing.join(', --')}\n${USAGE}`);
  const measurementFlag = String(flags.measurement);
  const expectedMeasurement = measurementFlag === 'local' ? measureShippedCode() : measurementFlag.toLowerCase();
  if (!isHex(expectedMeasurement, 32)) throw new CdbpError('CONFIG_INVALID', '--measurement must be 32 bytes of hex or \'local\'');
  const port = Number(flags.port ?? flags['pg-port']);
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new CdbpError('CONFIG_INVALID', '--port must be a TCP port');
  const result = await verifyEndpoint({
    host: String(flags.host ?? '127.0.0.1'), port, protocol: flags['pg-port'] ? 'postgres' : 'mysql',
    opsUrl: String(flags.ops), caPem: readFileSync(String(flags.ca), 'utf8'), expectedMeasurement,
    ...(typeof flags['platform-public-key'] === 'string' ? { platformPublicKey: readPublicKeyFile(flags['platform-public-key']) } : {}),
  });
  console.log(flags.json ? JSON.stringify(result, null, 2) : formatVerdict(result));
  return result.verified ? 0 : 1;
}

export async function verifyEndpoint(o: VerifyOptions): Promise<VerifyResult> {
  const checks: VerifyResult['checks'] = [];
  const result: VerifyResult = { verified: false, simulated: false, checks };
  // A renewal between the TLS handshake and the evidence request changes the key: try once more.
  for (let attempt = 1; attempt <= 2; attempt++) {
    checks.length = 0;
    try {
      const cert = await presentedCertificate(o);
      const spki = cert.publicKey.export({ type: 'spki', format: 'der' });
      result.certificate = { subject: cert.subject.replace(/\n/g, ', '), serial: cert.serialNumber, notAfter: new Date(cert.validTo).toISOString(), fingerprint256: cert.fingerprint256 };
      checks.push({ name: 'tls', ok: true, detail: `${o.protocol} endpoint ${o.host}:${o.port} presented a certificate that chains to the CAS CA and names ${o.host} (serial ${cert.serialNumber}, expires ${result.certificate.notAfter})` });

      const nonce = randomBytes(32);
      const doc = await fetchEvidence(o.opsUrl, nonce, o.timeoutMs ?? 10_000);
      const evidence = doc.evidence as Evidence;
      result.simulated = evidence?.mode === 'simulated';
      const verifier = verifierFor(evidence?.mode, o);
      const { measurement } = await verifyEndpointEvidence({ evidence, nonce, presentedSpki: spki, verifier, expectedMeasurement: o.expectedMeasurement });
      result.measurement = measurement;
      checks.push({ name: 'evidence', ok: true, detail: `${result.simulated ? 'SIMULATED report signed by the trusted software platform key' : `${evidence.mode} report verified`}; it binds our nonce and the public key of the certificate the TLS endpoint presented` });
      checks.push({ name: 'measurement', ok: true, detail: `${measurement} is the expected code` });
      result.verified = true;
      delete result.error;
      return result;
    } catch (e) {
      const err = asCdbpError(e);
      result.error = { code: err.code, message: err.message };
      const retryable = attempt === 1 && err.code === 'EVIDENCE_INVALID' && /does not bind/.test(err.message);
      if (!retryable) break;
    }
  }
  checks.push({ name: 'failed', ok: false, detail: `${result.error!.code}: ${result.error!.message}` });
  return result;
}

export function formatVerdict(r: VerifyResult): string {
  const lines = r.checks.map((c) => `  ${c.ok ? 'OK  ' : 'FAIL'}  ${c.name.padEnd(12)} ${c.detail}`);
  if (r.verified && r.simulated) {
    lines.push('VERIFIED — SIMULATED TEE: the evidence is signed by a SOFTWARE platform key, not by hardware. This proves',
      'NOTHING about a real TEE: anyone holding the platform key can produce it. Development and testing only.');
  } else if (r.verified) {
    lines.push('VERIFIED: TLS chains to the CAS, and the endpoint\'s evidence binds its TLS key and the expected measurement.');
  } else {
    lines.push(`NOT VERIFIED${r.simulated ? ' (SIMULATED TEE)' : ''}: ${r.error ? `${r.error.code}: ${r.error.message}` : 'unknown failure'}`);
  }
  return lines.join('\n');
}

function verifierFor(mode: unknown, o: VerifyOptions): EvidenceVerifier {
  if (mode === 'simulated') {
    if (!o.platformPublicKey) {
      throw new CdbpError('EVIDENCE_INVALID', 'the endpoint presents SIMULATED evidence; pass --platform-public-key FILE of the simulated platform you trust to check it');
    }
    return new SimulatedVerifier(o.platformPublicKey);
  }
  throw new CdbpError('EVIDENCE_INVALID', `no verifier for TEE mode '${String(mode)}' in this build`);
}

async function fetchEvidence(opsUrl: string, nonce: Buffer, timeoutMs: number): Promise<Record<string, unknown>> {
  const url = `${opsUrl.replace(/\/$/, '')}/v1/attestation?nonce=${nonce.toString('hex')}`;
  let res: Response;
  try {
    res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
  } catch (e) {
    throw new CdbpError('BACKEND_UNAVAILABLE', `cannot reach ${opsUrl}: ${(e as Error).message}`);
  }
  const body = (await res.json().catch(() => ({}))) as Record<string, any>;
  if (!res.ok) throw new CdbpError('ATTESTATION_UNAVAILABLE', `${url} answered ${res.status}: ${body?.error?.message ?? 'no evidence'}`);
  if (!body.evidence || typeof body.evidence !== 'object') throw new CdbpError('EVIDENCE_INVALID', 'the ops endpoint returned no evidence');
  return body;
}

/**
 * Opens the database protocol far enough to upgrade to TLS, completes a verified handshake and
 * returns the leaf certificate the endpoint presented; then hangs up (no credentials are sent).
 */
export async function presentedCertificate(o: Pick<VerifyOptions, 'host' | 'port' | 'protocol' | 'caPem' | 'timeoutMs'>): Promise<X509Certificate> {
  const timeoutMs = o.timeoutMs ?? 10_000;
  const raw = net.connect({ host: o.host, port: o.port });
  raw.setTimeout(timeoutMs, () => raw.destroy(new CdbpError('HANDSHAKE_TIMEOUT', `no TLS handshake with ${o.host}:${o.port} within ${timeoutMs} ms`)));
  try {
    await new Promise<void>((resolve, reject) => { raw.once('connect', resolve); raw.once('error', reject); });
    if (o.protocol === 'mysql') {
      const greeting = await readMysqlPacket(raw);
      if (greeting[0] === Header.ERR) throw new CdbpError('PROTOCOL_VIOLATION', `server refused: ${decodeErr(greeting).message}`);
      raw.write(mysqlSslRequest());
    } else {
      raw.write(encodeSslRequest());
      const answer = await readExactly(raw, 1);
      if (answer[0] !== SSL_ACCEPT) throw new CdbpError('INSECURE_TRANSPORT', 'the PostgreSQL endpoint does not offer TLS');
    }
    const servername = net.isIP(o.host) ? undefined : o.host;
    const sock = tls.connect({ socket: raw, host: o.host, ...(servername ? { servername } : {}), ca: o.caPem, rejectUnauthorized: true, minVersion: 'TLSv1.2' });
    try {
      await new Promise<void>((resolve, reject) => {
        sock.once('secureConnect', resolve);
        sock.once('error', (e) => reject(new CdbpError('PROTOCOL_VIOLATION', `TLS to ${o.host}:${o.port} failed verification against the CAS CA: ${e.message}`)));
      });
      const peer = sock.getPeerCertificate(false);
      if (!peer?.raw) throw new CdbpError('PROTOCOL_VIOLATION', 'the endpoint presented no certificate');
      return new X509Certificate(peer.raw);
    } finally {
      sock.destroy();
    }
  } finally {
    raw.destroy();
  }
}

/** HandshakeResponse41 truncated after the filler: the SSLRequest (CLIENT_SSL | PROTOCOL_41 | SECURE_CONNECTION). */
function mysqlSslRequest(): Buffer {
  const payload = Buffer.alloc(SSL_REQUEST_LENGTH);
  payload.writeUInt32LE(Number(Cap.CLIENT_SSL | Cap.CLIENT_PROTOCOL_41 | Cap.CLIENT_SECURE_CONNECTION), 0);
  payload.writeUInt32LE(16 * 1024 * 1024, 4); // max packet size
  payload[8] = UTF8MB4_GENERAL_CI;
  return encodePacket(1, payload);
}

async function readMysqlPacket(sock: net.Socket): Promise<Buffer> {
  const header = await readExactly(sock, PACKET_HEADER_SIZE);
  const len = readPayloadLength(header, 0);
  if (len > 64 * 1024) throw new CdbpError('FRAME_TOO_LARGE', 'server greeting too large');
  return readExactly(sock, len);
}

function readExactly(sock: net.Socket, n: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0);
    const onData = (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (buf.length >= n) {
        cleanup();
        sock.pause();
        if (buf.length > n) sock.unshift(buf.subarray(n));
        resolve(buf.subarray(0, n));
      }
    };
    const onEnd = () => { cleanup(); reject(new CdbpError('PROTOCOL_VIOLATION', 'connection closed during the handshake')); };
    const onError = (e: Error) => { cleanup(); reject(e); };
    const cleanup = () => { sock.off('data', onData); sock.off('end', onEnd); sock.off('error', onError); };
    sock.on('data', onData);
    sock.once('end', onEnd);
    sock.once('error', onError);
    sock.resume();
  });
}
