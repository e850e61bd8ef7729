/**
 * A replicated CAS member's answer key, from its certificate under the deployment CA: which instance,
 * slot and generation signs its answers (the proxy's quorum client and the owner's re-anchoring count
 * members by it, never by URL).
 */
import { X509Certificate, type KeyObject } from 'node:crypto';
import type https from 'node:https';
import { CdbpError } from '../kernel/errors.ts';
import { sanUris, verifyCasSigningCert } from '../crypto/x509.ts';
import { casRequest } from './http.ts';
import { CAS_INSTANCE_URN, CAS_SLOT_URN, parseSlotUrn, type Incarnation } from './quorum.ts';

export interface MemberKey { key: KeyObject; instance: string; incarnation: Incarnation }

export async function fetchMemberKey(url: string, o: { caPem: string; agent?: https.Agent; timeoutMs?: number }): Promise<MemberKey> {
  const r = await casRequest<{ signingCertPem?: string }>(url, 'GET', '/v1/ca', undefined, { ...(o.agent ? { agent: o.agent } : { caPem: o.caPem }), timeoutMs: o.timeoutMs ?? 2000 });
  if (typeof r?.signingCertPem !== 'string') throw new CdbpError('CAS_IDENTITY_INVALID', `${url} published no signing certificate`);
  const key = verifyCasSigningCert(r.signingCertPem, o.caPem);
  const uris = sanUris(new X509Certificate(r.signingCertPem).subjectAltName);
  const uri = uris.find((u) => u.startsWith(CAS_INSTANCE_URN));
  const incarnation = parseSlotUrn(uris.find((u) => u.startsWith(CAS_SLOT_URN)) ?? '');
  if (!uri || !incarnation) throw new CdbpError('CAS_IDENTITY_INVALID', `${url} is not a member of a replicated CAS (its answer key names no instance and slot)`);
  return { key, instance: uri.slice(CAS_INSTANCE_URN.length), incarnation };
}
