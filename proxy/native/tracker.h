/*
 * The C twin of proxy/mysql/tracker.ts (ResponseTracker) and proxy/mysql/statement-class.ts
 * (classifyStatement), for the native data plane under strict freshness. Pure: no I/O, no threads, no
 * OpenSSL; one tracker per connection, used only by the worker thread that owns it.
 *
 * The TypeScript files are the reference: their doc comments give the protocol reasoning, and
 * test/unit/native-tracker.test.ts feeds both implementations the same inputs (the unit suites' cases
 * and seeded random streams) and requires identical answers, packet by packet.
 */
#ifndef CDBP_TRACKER_H
#define CDBP_TRACKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Payload bytes the tracker needs to see contiguously at the start of a server packet (INSPECT_BYTES). */
#define TRACKER_INSPECT_BYTES 32
/* Bytes of statement text the classifier looks at (STATEMENT_PREFIX_BYTES). */
#define STATEMENT_PREFIX_BYTES 64
/* Commands awaiting their response. The relay checks tracker_pending() before each command and pauses a
 * client that pipelines more (dataplane.c, SCAN_TRACKER_FULL): backpressure, not an error. */
#define TRACKER_MAX_PENDING 65536

typedef enum { CLS_READ = 0, CLS_BEGIN = 1, CLS_DML = 2, CLS_WRITE = 3 } stmt_class_t;

/* classifyStatement(text, complete). */
stmt_class_t classify_statement(const uint8_t *text, size_t len, bool complete);

typedef struct tracker tracker_t;

/* new ResponseTracker(capabilities): the two capability bits it reads. NULL when out of memory. */
tracker_t *tracker_new(bool deprecate_eof, bool cache_metadata);
void tracker_free(tracker_t *t);

/* commandStarted(command, rest, complete). Returns false when the command cannot be recorded (more than
 * TRACKER_MAX_PENDING pending, which the relay avoids by checking first, or out of memory): the caller
 * must end the session. Once untracked (replication), commands are ignored. */
bool tracker_command(tracker_t *t, int command, const uint8_t *rest, size_t rest_len, bool complete);

/* onServerPacket(prefix, length): prefix holds min(length, TRACKER_INSPECT_BYTES) payload bytes.
 * True when this packet ends a gated response (hold it until the gate opens). Where the TS throws
 * (readLenEnc on a 0xFB/0xFF length inside an OK), the field is read as missing: see tracker.c. */
bool tracker_server_packet(tracker_t *t, const uint8_t *prefix, size_t prefix_len, uint32_t length);

bool tracker_untracked(const tracker_t *t);
size_t tracker_pending(const tracker_t *t);
size_t tracker_prepared_count(const tracker_t *t);

#endif
