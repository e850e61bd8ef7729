/**
 * PostgreSQL wire constants, named once. Reference: PostgreSQL docs, chapter 55 "Frontend/Backend
 * Protocol" (55.2 Message Flow, 55.7 Message Formats), and src/include/libpq/pqcomm.h.
 */

/** Startup-packet "protocol codes" (pqcomm.h): 1234 in the high 16 bits, a magic in the low 16. */
export const enum StartupCode {
  /** SSLRequest: 1234 << 16 | 5679 */
  SslRequest = 80877103,
  /** GSSENCRequest: 1234 << 16 | 5680 */
  GssEncRequest = 80877104,
  /** CancelRequest: 1234 << 16 | 5678 */
  CancelRequest = 80877102,
}

/** Protocol 3.x: major 3 in the high 16 bits. */
export const PROTOCOL_MAJOR_3 = 3;

/** First byte of a TLS record carrying a handshake (ClientHello): direct TLS (PG 17 semantics). */
export const TLS_HANDSHAKE_RECORD = 0x16;

/** ALPN protocol id PostgreSQL registered for direct TLS. */
export const ALPN_POSTGRESQL = 'postgresql';

/** Single-byte answers to SSLRequest / GSSENCRequest. */
export const SSL_ACCEPT = 0x53; // 'S'
export const ENCRYPTION_REFUSED = 0x4e; // 'N'

/** Backend (server → client) message types. */
export const enum BackendType {
  Authentication = 0x52, // 'R'
  BackendKeyData = 0x4b, // 'K'
  ParameterStatus = 0x53, // 'S'
  ReadyForQuery = 0x5a, // 'Z'
  ErrorResponse = 0x45, // 'E'
  NoticeResponse = 0x4e, // 'N'
  NegotiateProtocolVersion = 0x76, // 'v'
  CommandComplete = 0x43, // 'C'
  ParseComplete = 0x31, // '1'
  BindComplete = 0x32, // '2'
  CloseComplete = 0x33, // '3'
  ParameterDescription = 0x74, // 't'
  RowDescription = 0x54, // 'T'
  NoData = 0x6e, // 'n'
  DataRow = 0x44, // 'D'
  PortalSuspended = 0x73, // 's'
  EmptyQueryResponse = 0x49, // 'I'
  CopyInResponse = 0x47, // 'G'
  CopyOutResponse = 0x48, // 'H'
  CopyBothResponse = 0x57, // 'W'
  CopyData = 0x64, // 'd'
  CopyDone = 0x63, // 'c'
  FunctionCallResponse = 0x56, // 'V'
  NotificationResponse = 0x41, // 'A'
}

/** Frontend (client → server) message types. */
export const enum FrontendType {
  /** PasswordMessage, SASLInitialResponse, SASLResponse, GSSResponse all use 'p'. */
  Password = 0x70, // 'p'
  Terminate = 0x58, // 'X'
  Query = 0x51, // 'Q'
  Parse = 0x50, // 'P'
  Bind = 0x42, // 'B'
  Describe = 0x44, // 'D'
  Execute = 0x45, // 'E'
  Close = 0x43, // 'C'
  Sync = 0x53, // 'S'
  Flush = 0x48, // 'H'
  FunctionCall = 0x46, // 'F'
  CopyData = 0x64, // 'd'
  CopyDone = 0x63, // 'c'
  CopyFail = 0x66, // 'f'
}

/** AuthenticationXXX sub-codes (the int32 after the length of an 'R' message). */
export const enum AuthCode {
  Ok = 0,
  KerberosV5 = 2,
  CleartextPassword = 3,
  Md5Password = 5,
  Gss = 7,
  GssContinue = 8,
  Sspi = 9,
  Sasl = 10,
  SaslContinue = 11,
  SaslFinal = 12,
}

/** ReadyForQuery transaction status byte. */
export const enum TxStatus {
  Idle = 0x49, // 'I'
  InTransaction = 0x54, // 'T'
  Failed = 0x45, // 'E'
}

/** SASL mechanism that binds the TLS channel; it cannot survive a terminating hop. */
export const SCRAM_PLUS = 'SCRAM-SHA-256-PLUS';

/** SQLSTATE codes we send ourselves (Appendix A). */
export const SqlState = {
  invalidAuthorizationSpecification: '28000',
  protocolViolation: '08P01',
  tooManyConnections: '53300',
  cannotConnectNow: '57P03',
  featureNotSupported: '0A000',
  programLimitExceeded: '54000',
  statementCompletionUnknown: '40003',
  adminShutdown: '57P01',
  idleSessionTimeout: '57P05',
} as const;
export type SqlStateCode = (typeof SqlState)[keyof typeof SqlState];

/** Header sizes: startup packets have a 4-byte length; regular messages 1 type byte + 4. */
export const STARTUP_HEADER = 4;
export const MESSAGE_HEADER = 5;
/** CancelRequest is exactly 16 bytes in protocol 3.0 (length, code, pid, secret). */
export const CANCEL_REQUEST_LENGTH = 16;
