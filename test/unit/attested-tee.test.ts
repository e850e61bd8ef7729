import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createCa, generateTlsKeyPair, issueLeafCertificate, spkiDer } from '../../src/crypto/x509.ts';
import { attestedTeeFromCertificate, attestedTeeFromUris, attestedTeeOf } from '../../src/attestation/attested-tee.ts';

function leaf(uris: string[]): string {
  const ca = createCa({ commonName: 'test root', lifetimeDays: 1 });
  return issueLeafCertificate(ca, {
    spki: spkiDer(generateTlsKeyPair().publicKey), subject: { commonName: 'svc', organization: 'o', organizationalUnit: 'x' },
    dnsNames: ['localhost'], ipAddresses: [], uris, notAfter: new Date(Date.now() + 3600_000),
  });
}

test('attested TEE from a CAS certificate: TDX status and collateral age; SEV-SNP reported TCB', () => {
  assert.deepEqual(attestedTeeFromCertificate(leaf(['urn:cdbp:service:svc', 'urn:cdbp:tee:tdx', 'urn:cdbp:measurement:ab',
    'urn:cdbp:tcb:UpToDate', 'urn:cdbp:collateral-age:86400'])),
  { tee: 'tdx', tcbStatus: 'UpToDate', measurement: 'ab', collateralAgeAtIssueSeconds: 86400, simulated: false });
  assert.deepEqual(attestedTeeFromCertificate(leaf(['urn:cdbp:service:svc', 'urn:cdbp:tee:sev-snp', 'urn:cdbp:tcb:snp-0300000000000873'])),
    { tee: 'sev-snp', tcbStatus: 'snp-0300000000000873', simulated: false });
});

test('attested TEE: simulated says simulated everywhere; missing or malformed facts are unknown, never invented', () => {
  assert.deepEqual(attestedTeeFromCertificate(leaf(['urn:cdbp:service:svc', 'urn:cdbp:tee:simulated', 'urn:cdbp:tcb:UpToDate'])),
    { tee: 'simulated', tcbStatus: 'simulated', simulated: true });
  assert.deepEqual(attestedTeeFromUris([]), { tee: 'unknown', tcbStatus: 'unknown', simulated: false });
  assert.deepEqual(attestedTeeFromUris(['urn:cdbp:tee:tdx', 'urn:cdbp:collateral-age:-5']), { tee: 'tdx', tcbStatus: 'unknown', simulated: false });
});

test('attested TEE before the CAS answered: only the provider mode, TCB unknown; simulated stays simulated', () => {
  assert.deepEqual(attestedTeeOf(undefined, 'tdx'), { tee: 'tdx', tcbStatus: 'unknown', simulated: false });
  assert.deepEqual(attestedTeeOf(undefined, 'simulated'), { tee: 'simulated', tcbStatus: 'simulated', simulated: true });
  assert.equal(attestedTeeOf(leaf(['urn:cdbp:tee:sev-snp', 'urn:cdbp:tcb:snp-01']), 'sev-snp').tcbStatus, 'snp-01');
});
