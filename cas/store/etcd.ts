/**
 * A minimal etcd v3 client over etcd's JSON gRPC-gateway (HTTP POST /v3/kv/range and /v3/kv/txn,
 * keys and values base64, int64 as decimal strings; https://etcd.io/docs/v3.4/dev-guide/api_grpc_gateway/).
 * No dependency: Node's http. Several endpoints (the members of one cluster) are tried in turn.
 *
 * etcd is untrusted storage here: it gives durability and availability, never trust. Everything the
 * CAS puts in it is sealed by the CAS state key, and its freshness is checked against the instances'
 * memory (cas/replication/state-sync.ts).
 */
import http from 'node:http';
import { CdbpError } from '../../src/kernel/errors.ts';

export interface EtcdKv {
  key: string;
  value: Buffer;
  modRevision: number;
}

export interface EtcdPut {
  key: string;
  value: Buffer;
  /** The key's mod_revision this write expects (0 = the key must not exist): a revision-checked write. */
  expectModRevision: number;
}

const b64 = (s: string | Buffer): string => Buffer.from(s).toString('base64');

/** The first key after every key starting with `prefix` (etcd's range_end for a prefix scan). */
export function prefixEnd(prefix: string): string {
  const b = Buffer.from(prefix);
  for (let i = b.length - 1; i >= 0; i--) {
    if (b[i]! < 0xff) {
      const out = Buffer.from(b.subarray(0, i + 1));
      out[i]!++;
      return out.toString('latin1');
    }
  }
  return '\0';
}

export class EtcdClient {
  constructor(private readonly endpoints: string[], private readonly timeoutMs = 3000) {
    if (endpoints.length === 0) throw new CdbpError('CONFIG_INVALID', 'etcd needs at least one endpoint');
  }

  private async call<T>(path: string, body: unknown): Promise<T> {
    const errors: string[] = [];
    for (const ep of this.endpoints) {
      try {
        return await post<T>(new URL(path, ep), body, this.timeoutMs);
      } catch (e) {
        errors.push(`${ep}: ${(e as Error).message}`);
      }
    }
    throw new CdbpError('STATE_STORE_UNAVAILABLE', `etcd unreachable (${errors.join('; ')})`);
  }

  /** Every key under `prefix` and the store's current revision. */
  async range(prefix: string): Promise<{ revision: number; kvs: EtcdKv[] }> {
    const r = await this.call<{ header?: { revision?: string }; kvs?: Array<{ key: string; value?: string; mod_revision?: string }> }>(
      '/v3/kv/range', { key: b64(prefix), range_end: b64(Buffer.from(prefixEnd(prefix), 'latin1')) });
    return {
      revision: Number(r.header?.revision ?? 0),
      kvs: (r.kvs ?? []).map((kv) => ({ key: Buffer.from(kv.key, 'base64').toString('utf8'), value: Buffer.from(kv.value ?? '', 'base64'), modRevision: Number(kv.mod_revision ?? 0) })),
    };
  }

  /** Every key under `prefix` with its mod_revision, without the values (a cheap "did anything change?"). */
  async rangeKeys(prefix: string): Promise<Map<string, number>> {
    const r = await this.call<{ kvs?: Array<{ key: string; mod_revision?: string }> }>(
      '/v3/kv/range', { key: b64(prefix), range_end: b64(Buffer.from(prefixEnd(prefix), 'latin1')), keys_only: true });
    return new Map((r.kvs ?? []).map((kv) => [Buffer.from(kv.key, 'base64').toString('utf8'), Number(kv.mod_revision ?? 0)]));
  }

  /**
   * Writes all `puts` atomically iff each key still has the mod_revision it expects; returns whether
   * it did and the revision after it. Two CAS instances therefore never overwrite each other blindly.
   */
  async txn(puts: EtcdPut[]): Promise<{ succeeded: boolean; revision: number }> {
    const r = await this.call<{ header?: { revision?: string }; succeeded?: boolean }>('/v3/kv/txn', {
      compare: puts.map((p) => ({ key: b64(p.key), target: 'MOD', result: 'EQUAL', mod_revision: String(p.expectModRevision) })),
      success: puts.map((p) => ({ request_put: { key: b64(p.key), value: b64(p.value) } })),
      failure: [],
    });
    return { succeeded: r.succeeded === true, revision: Number(r.header?.revision ?? 0) };
  }
}

function post<T>(url: URL, body: unknown, timeoutMs: number): Promise<T> {
  const payload = Buffer.from(JSON.stringify(body));
  return new Promise<T>((resolve, reject) => {
    const req = http.request(url, { method: 'POST', headers: { 'content-type': 'application/json', 'content-length': payload.length }, timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        if ((res.statusCode ?? 0) !== 200) { reject(new Error(`HTTP ${res.statusCode}: ${text.slice(0, 200)}`)); return; }
        try { resolve(JSON.parse(text) as T); } catch { reject(new Error('answer is not JSON')); }
      });
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', reject);
    req.end(payload);
  });
}
