/**
 * Connection limits both endpoints share, named once.
 *
 * The idle timeout closes a session after this long without a byte either way (0 = never). One default
 * for the library endpoints and the CLI (cli/settings.ts): never, like PostgreSQL's
 * idle_session_timeout; the database's own timeouts (MariaDB wait_timeout) still apply behind the proxy.
 */
export const DEFAULT_IDLE_TIMEOUT_MS = 0;
