/**
 * The one place the MySQL endpoint's data plane is chosen (data-plane.ts has the contract).
 */
import type { Logger } from '../../src/kernel/log.ts';
import { CdbpError } from '../../src/kernel/errors.ts';
import type { TlsIdentityHolder } from '../../src/crypto/tls-identity.ts';
import type { BackendTarget } from './session.ts';
import type { DataPlane } from './data-plane.ts';
import { forbiddenUserErr } from './forbidden-user.ts';
import { loadNativeDataPlane } from '../native/dataplane.ts';
import { NodePlane } from './node-plane.ts';
import { NativePlane } from './native-plane.ts';

export interface DataPlaneChoice {
  wanted: 'auto' | 'native' | 'node';
  backend: BackendTarget;
  identity: TlsIdentityHolder;
  forbiddenUsers: ReadonlySet<string>;
  nativeWorkers: number;
  log: Logger;
}

/**
 * The one place the plane is chosen: native when wanted or available, except in front of a TLS
 * backend leg on TCP (the relay speaks plaintext to the database); 'native' fails if it cannot be used.
 */
export function chooseDataPlane(c: DataPlaneChoice): DataPlane {
  if (c.wanted === 'node') return new NodePlane(c.identity, { kind: 'node', reason: 'configured' });
  if ('host' in c.backend && c.backend.tls) {
    if (c.wanted === 'native') throw new CdbpError('CONFIG_INVALID', 'the native data plane relays plaintext to the database: it cannot serve a TLS backend leg');
    return new NodePlane(c.identity, { kind: 'node', reason: 'TLS backend leg (the native relay speaks plaintext to the database)' });
  }
  const loaded = loadNativeDataPlane({
    workers: c.nativeWorkers, forbiddenUsers: c.forbiddenUsers,
    changeUserErr: (user) => forbiddenUserErr(user, 'change_user'),
  });
  if ('unavailable' in loaded) {
    if (c.wanted === 'native') throw new CdbpError('CONFIG_INVALID', `native data plane unavailable: ${loaded.unavailable}`);
    return new NodePlane(c.identity, { kind: 'node', reason: loaded.unavailable });
  }
  return new NativePlane(loaded.plane, c.identity, c.log, { kind: 'native', reason: c.wanted === 'native' ? 'configured' : 'available' });
}
