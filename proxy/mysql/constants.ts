/**
 * MySQL / MariaDB wire constants, named once.
 *
 * References:
 * - MySQL client/server protocol: https://dev.mysql.com/doc/dev/mysql-server/latest/PAGE_PROTOCOL.html
 *   (capability flags: group__group__cs__capabilities__flags; status flags: mysql_com.h SERVER_STATUS_*)
 * - MariaDB protocol: https://mariadb.com/kb/en/connection/ (initial handshake, extended capabilities),
 *   https://mariadb.com/kb/en/ok_packet/, https://mariadb.com/kb/en/err_packet/, https://mariadb.com/kb/en/result-set-packets/
 *
 * Capabilities are `bigint` because MariaDB places its own flags in bits 32..63 (sent in the four
 * "reserved" bytes of the handshake when the server clears CLIENT_MYSQL).
 */

/** Capability flags (MySQL: bits 0..31; MariaDB extended: bits 32..63). */
export const Cap = {
  /** Bit 0. MySQL: CLIENT_LONG_PASSWORD. MariaDB servers clear it to announce extended (MariaDB) capabilities. */
  CLIENT_MYSQL: 1n << 0n,
  CLIENT_FOUND_ROWS: 1n << 1n,
  CLIENT_LONG_FLAG: 1n << 2n,
  CLIENT_CONNECT_WITH_DB: 1n << 3n,
  CLIENT_NO_SCHEMA: 1n << 4n,
  CLIENT_COMPRESS: 1n << 5n,
  CLIENT_ODBC: 1n << 6n,
  CLIENT_LOCAL_FILES: 1n << 7n,
  CLIENT_IGNORE_SPACE: 1n << 8n,
  CLIENT_PROTOCOL_41: 1n << 9n,
  CLIENT_INTERACTIVE: 1n << 10n,
  /** Bit 11: the client asks to switch to TLS (SSLRequest). */
  CLIENT_SSL: 1n << 11n,
  CLIENT_IGNORE_SIGPIPE: 1n << 12n,
  CLIENT_TRANSACTIONS: 1n << 13n,
  CLIENT_RESERVED: 1n << 14n,
  CLIENT_SECURE_CONNECTION: 1n << 15n,
  CLIENT_MULTI_STATEMENTS: 1n << 16n,
  CLIENT_MULTI_RESULTS: 1n << 17n,
  CLIENT_PS_MULTI_RESULTS: 1n << 18n,
  CLIENT_PLUGIN_AUTH: 1n << 19n,
  CLIENT_CONNECT_ATTRS: 1n << 20n,
  CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA: 1n << 21n,
  CLIENT_CAN_HANDLE_EXPIRED_PASSWORDS: 1n << 22n,
  CLIENT_SESSION_TRACK: 1n << 23n,
  /** Bit 24: result sets end with an OK packet (header 0xFE) instead of EOF. */
  CLIENT_DEPRECATE_EOF: 1n << 24n,
  CLIENT_OPTIONAL_RESULTSET_METADATA: 1n << 25n,
  /** Bit 26 (MySQL 8): zstd compression. Never advertised by this proxy. */
  CLIENT_ZSTD_COMPRESSION_ALGORITHM: 1n << 26n,
  CLIENT_QUERY_ATTRIBUTES: 1n << 27n,
  CLIENT_MULTI_FACTOR_AUTHENTICATION: 1n << 28n,
  CLIENT_CAPABILITY_EXTENSION: 1n << 29n,
  CLIENT_SSL_VERIFY_SERVER_CERT: 1n << 30n,
  CLIENT_REMEMBER_OPTIONS: 1n << 31n,
  // MariaDB extended capabilities (https://mariadb.com/kb/en/connection/#capabilities)
  MARIADB_CLIENT_PROGRESS: 1n << 32n,
  MARIADB_CLIENT_COM_MULTI: 1n << 33n,
  MARIADB_CLIENT_STMT_BULK_OPERATIONS: 1n << 34n,
  MARIADB_CLIENT_EXTENDED_TYPE_INFO: 1n << 35n,
  /** Bit 36: column definitions may be skipped in result sets (a "metadata follows" byte after the column count). */
  MARIADB_CLIENT_CACHE_METADATA: 1n << 36n,
  MARIADB_CLIENT_BULK_UNIT_RESULTS: 1n << 37n,
} as const;

/** Compression: the byte pumps (JS and native) do not (de)compress. */
export const CAPS_COMPRESSION = Cap.CLIENT_COMPRESS | Cap.CLIENT_ZSTD_COMPRESSION_ALGORITHM;

/**
 * Capabilities this proxy never lets a client negotiate: compression, and MariaDB's COM_MULTI, which
 * bundles several commands into one packet; the change-user scanners (client-scanner.ts and its C twin)
 * read one command per packet, so a bundled COM_CHANGE_USER would pass them unseen.
 */
export const CAPS_NEVER_ADVERTISED = CAPS_COMPRESSION | Cap.MARIADB_CLIENT_COM_MULTI;

/** Command bytes: first payload byte of a client packet with sequence id 0 in the command phase. */
export const enum Command {
  COM_SLEEP = 0x00,
  COM_QUIT = 0x01,
  COM_INIT_DB = 0x02,
  COM_QUERY = 0x03,
  COM_FIELD_LIST = 0x04,
  COM_CREATE_DB = 0x05,
  COM_DROP_DB = 0x06,
  COM_REFRESH = 0x07,
  COM_SHUTDOWN = 0x08,
  COM_STATISTICS = 0x09,
  COM_PROCESS_INFO = 0x0a,
  COM_CONNECT = 0x0b,
  COM_PROCESS_KILL = 0x0c,
  COM_DEBUG = 0x0d,
  COM_PING = 0x0e,
  COM_TIME = 0x0f,
  COM_DELAYED_INSERT = 0x10,
  COM_CHANGE_USER = 0x11,
  COM_BINLOG_DUMP = 0x12,
  COM_TABLE_DUMP = 0x13,
  COM_CONNECT_OUT = 0x14,
  COM_REGISTER_SLAVE = 0x15,
  COM_STMT_PREPARE = 0x16,
  COM_STMT_EXECUTE = 0x17,
  COM_STMT_SEND_LONG_DATA = 0x18,
  COM_STMT_CLOSE = 0x19,
  COM_STMT_RESET = 0x1a,
  COM_SET_OPTION = 0x1b,
  COM_STMT_FETCH = 0x1c,
  COM_DAEMON = 0x1d,
  COM_BINLOG_DUMP_GTID = 0x1e,
  COM_RESET_CONNECTION = 0x1f,
  /** MariaDB: COM_STMT_BULK_EXECUTE (https://mariadb.com/kb/en/com_stmt_bulk_execute/). */
  COM_STMT_BULK_EXECUTE = 0xfa,
  /** MariaDB: COM_MULTI (deprecated, never sent by current connectors). */
  COM_MULTI = 0xfe,
}

/** Server status flags (mysql_com.h enum SERVER_STATUS_flags_enum), in OK/EOF packets. */
export const enum ServerStatus {
  IN_TRANS = 0x0001,
  AUTOCOMMIT = 0x0002,
  MORE_RESULTS_EXISTS = 0x0008,
  NO_GOOD_INDEX_USED = 0x0010,
  NO_INDEX_USED = 0x0020,
  CURSOR_EXISTS = 0x0040,
  LAST_ROW_SENT = 0x0080,
  DB_DROPPED = 0x0100,
  NO_BACKSLASH_ESCAPES = 0x0200,
  METADATA_CHANGED = 0x0400,
  QUERY_WAS_SLOW = 0x0800,
  PS_OUT_PARAMS = 0x1000,
  IN_TRANS_READONLY = 0x2000,
  SESSION_STATE_CHANGED = 0x4000,
}

/** First payload byte of server packets. */
export const enum Header {
  OK = 0x00,
  /** Auth phase: AuthMoreData. */
  AUTH_MORE_DATA = 0x01,
  /** Command phase: LOCAL INFILE request. */
  LOCAL_INFILE = 0xfb,
  /** EOF packet, or OK packet ending a result set with CLIENT_DEPRECATE_EOF; auth phase: AuthSwitchRequest. */
  EOF = 0xfe,
  ERR = 0xff,
}

/** Largest payload of one physical packet; a payload of exactly this size continues in the next packet. */
export const MAX_PACKET_PAYLOAD = 0xffffff;
export const PACKET_HEADER_SIZE = 4;

/** Error numbers the proxy itself sends (MariaDB/MySQL errno, with SQLSTATE). */
export const ProxyErrno = {
  /** ER_CON_COUNT_ERROR, SQLSTATE 08004. */
  TOO_MANY_CONNECTIONS: { errno: 1040, sqlState: '08004' },
  /** ER_HANDSHAKE_ERROR, SQLSTATE 08S01. */
  HANDSHAKE_ERROR: { errno: 1043, sqlState: '08S01' },
  /** ER_ACCESS_DENIED_ERROR, SQLSTATE 28000. */
  ACCESS_DENIED: { errno: 1045, sqlState: '28000' },
  /** ER_NET_PACKET_TOO_LARGE, SQLSTATE 08S01. */
  PACKET_TOO_LARGE: { errno: 1153, sqlState: '08S01' },
  /** ER_NET_READ_INTERRUPTED (timeout), SQLSTATE 08S01. */
  READ_TIMEOUT: { errno: 1159, sqlState: '08S01' },
  /** ER_NOT_SUPPORTED_AUTH_MODE-style refusal of an unsupported feature; SQLSTATE 08004. */
  FEATURE_REFUSED: { errno: 1251, sqlState: '08004' },
  /**
   * MySQL's ER_SECURE_TRANSPORT_REQUIRED (3159, HY000). MariaDB 10.11 has no dedicated errno: with
   * require_secure_transport=ON it answers 1045/28000 "Access denied", which hides the cause; the proxy
   * uses MySQL's number so the message names the problem.
   */
  SECURE_TRANSPORT_REQUIRED: { errno: 3159, sqlState: 'HY000' },
  /** ER_UNKNOWN_ERROR for proxy-side failures (backend unreachable, ack refused); SQLSTATE HY000. */
  PROXY_ERROR: { errno: 1105, sqlState: 'HY000' },
  /** ER_SERVER_SHUTDOWN while draining, SQLSTATE 08S01. */
  SHUTDOWN: { errno: 1053, sqlState: '08S01' },
} as const;
