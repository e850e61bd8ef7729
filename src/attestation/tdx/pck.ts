/**
 * The SGX extension of an Intel PCK certificate (Intel "SGX PCK Certificate and Certificate Revocation
 * List Profile Specification", section 1.5): the platform's TCB (16 component SVNs, PCESVN, CPUSVN),
 * PCE-ID and FMSPC, which select and evaluate the TCB info collateral.
 *
 *   1.2.840.113741.1.13.1          SEQUENCE of SEQUENCE { OID, value }
 *     .1 PPID        OCTET STRING (16)
 *     .2 TCB         SEQUENCE of SEQUENCE { .2.1-.2.16 INTEGER comp SVN, .2.17 INTEGER PCESVN, .2.18 OCTET STRING CPUSVN }
 *     .3 PCE-ID      OCTET STRING (2)
 *     .4 FMSPC       OCTET STRING (6)
 *     .5 SGX Type    ENUMERATED
 */
import type { X509Certificate } from 'node:crypto';
import { derChildren, readDer } from '../../crypto/der.ts';
import { certificateExtensions, decodeOid, decodeSmallUint, derRead, expectTag, TAG } from '../asn1.ts';

const SGX_EXT = '1.2.840.113741.1.13.1';

export interface PckTcb {
  /** The 16 SGX TCB component SVNs. */
  components: number[];
  pceSvn: number;
  cpuSvn: Buffer;
}

export interface PckExtension {
  fmspc: string;
  pceId: string;
  tcb: PckTcb;
}

export function readPckExtension(cert: X509Certificate): PckExtension {
  return derRead('TEE_CERT_CHAIN_INVALID', 'PCK certificate SGX extension', () => {
    const value = certificateExtensions(cert.raw).get(SGX_EXT);
    if (!value) throw new Error('missing (this is not a PCK certificate)');
    const fields = new Map<string, ReturnType<typeof readDer>>();
    for (const entry of derChildren(expectTag(readDer(value), TAG.SEQUENCE, 'SGX extension'))) {
      const [oid, v] = derChildren(expectTag(entry, TAG.SEQUENCE, 'SGX extension entry'));
      fields.set(decodeOid(expectTag(oid, TAG.OID, 'entry id').content), v!);
    }
    const fmspc = expectTag(fields.get(`${SGX_EXT}.4`), TAG.OCTET_STRING, 'FMSPC').content;
    const pceId = expectTag(fields.get(`${SGX_EXT}.3`), TAG.OCTET_STRING, 'PCE-ID').content;
    if (fmspc.length !== 6 || pceId.length !== 2) throw new Error('FMSPC must be 6 bytes and PCE-ID 2');
    const tcbFields = new Map<string, ReturnType<typeof readDer>>();
    for (const entry of derChildren(expectTag(fields.get(`${SGX_EXT}.2`), TAG.SEQUENCE, 'TCB'))) {
      const [oid, v] = derChildren(expectTag(entry, TAG.SEQUENCE, 'TCB entry'));
      tcbFields.set(decodeOid(expectTag(oid, TAG.OID, 'TCB entry id').content), v!);
    }
    const components: number[] = [];
    for (let i = 1; i <= 16; i++) {
      const el = tcbFields.get(`${SGX_EXT}.2.${i}`);
      if (!el) throw new Error(`TCB component ${i} missing`);
      components.push(decodeSmallUint(el));
    }
    const pce = tcbFields.get(`${SGX_EXT}.2.17`);
    const cpu = tcbFields.get(`${SGX_EXT}.2.18`);
    if (!pce || !cpu) throw new Error('PCESVN or CPUSVN missing');
    return {
      fmspc: fmspc.toString('hex'), pceId: pceId.toString('hex'),
      tcb: { components, pceSvn: decodeSmallUint(pce), cpuSvn: Buffer.from(expectTag(cpu, TAG.OCTET_STRING, 'CPUSVN').content) },
    };
  });
}
