/**
 * The one rule for user names the proxy refuses on a unix-socket backend leg, used both at the first
 * handshake (session.ts) and for COM_CHANGE_USER in the command phase (client-scanner.ts).
 *
 * Why: MariaDB's unix_socket plugin authenticates a socket peer by its OS user. Through the proxy the
 * peer is the proxy process, so a client naming the DB user that matches the proxy's OS account (e.g.
 * `root@localhost`, unix_socket by default) would be logged in without a password.
 *
 * The comparison is exact on the UTF-8 name, like the server's (user names are case-sensitive).
 */
import { ProxyErrno } from './constants.ts';
import type { ErrPacket } from './codec.ts';

/**
 * Bytes of a COM_CHANGE_USER payload (command byte included) that must be contiguous to read the user
 * name. A name whose NUL terminator is not among them is longer than any forbidden name (checked below).
 */
export const CHANGE_USER_INSPECT_BYTES = 256;

export function isForbiddenUser(forbidden: ReadonlySet<string>, user: string | undefined): boolean {
  return user !== undefined && forbidden.has(user);
}

/** Throws if a forbidden name could not be recognised inside CHANGE_USER_INSPECT_BYTES. */
export function assertForbiddenNamesCheckable(forbidden: ReadonlySet<string>): void {
  for (const name of forbidden) {
    if (Buffer.byteLength(name, 'utf8') >= CHANGE_USER_INSPECT_BYTES - 2) {
      throw new Error(`forbidden user name of ${Buffer.byteLength(name, 'utf8')} bytes is too long to check`);
    }
  }
}

/** ERR 1045/28000 for a refused name; `where` says whether it came at login or in COM_CHANGE_USER. */
export function forbiddenUserErr(user: string, where: 'login' | 'change_user'): ErrPacket {
  const via = where === 'login' ? 'through this proxy' : 'through this proxy (COM_CHANGE_USER); the connection is closed';
  return {
    ...ProxyErrno.ACCESS_DENIED,
    message: `Access denied for user '${user}' ${via}: the name matches the proxy's own OS account, which unix_socket authentication would accept without a password`,
  };
}

/**
 * The user name of a COM_CHANGE_USER payload: `prefix` starts after the command byte and holds the first
 * bytes of the rest; `complete` says whether it is the whole rest. Returns undefined for a name too long
 * to be inspected (it is then longer than every forbidden name). The server reads the name up to its
 * NUL, or to the end of the packet.
 */
export function changeUserName(prefix: Buffer, complete: boolean): string | undefined {
  const nul = prefix.indexOf(0);
  if (nul >= 0) return prefix.toString('utf8', 0, nul);
  return complete ? prefix.toString('utf8') : undefined;
}
