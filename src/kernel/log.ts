import { pino, type Logger, type LoggerOptions, type DestinationStream } from 'pino';

export type { Logger };

/**
 * Paths that must never reach a log line. pino replaces them with "[redacted]" wherever they appear
 * in a logged object. The list is generous on purpose: a key name that looks secret is redacted even
 * if today it carries nothing secret.
 */
export const REDACTED_PATHS = [
  'password', '*.password', 'token', '*.token', 'key', '*.key', 'keys', '*.keys', 'secret', '*.secret',
  'secrets', '*.secrets', 'privateKey', '*.privateKey', 'authorization', '*.authorization',
  'headers.authorization', 'headers["x-vault-token"]', '*.headers["x-vault-token"]', 'sql', '*.sql',
  'params', '*.params', 'sealedSecrets', '*.sealedSecrets',
];

export interface LogOptions {
  level?: string;
  /** Component name: cas, proxy, keyring, up, ... */
  name: string;
  /** Tests pass a stream to capture lines. */
  destination?: DestinationStream;
  /** Static fields added to every line, e.g. { mode: 'simulated' }. */
  base?: Record<string, unknown>;
}

export function createLogger(opts: LogOptions): Logger {
  const options: LoggerOptions = {
    name: opts.name,
    level: opts.level ?? process.env.CDBP_LOG_LEVEL ?? 'info',
    redact: { paths: REDACTED_PATHS, censor: '[redacted]' },
    base: { pid: process.pid, ...opts.base },
    timestamp: pino.stdTimeFunctions.isoTime,
  };
  return opts.destination ? pino(options, opts.destination) : pino(options);
}

/** A logger that drops everything, for unit tests that do not look at logs. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
