/*
 * Response boundary tracking and statement classification for the native data plane: the C port of
 * proxy/mysql/tracker.ts (ResponseTracker) and proxy/mysql/statement-class.ts (classifyStatement), with
 * the helpers of proxy/mysql/codec.ts they use (readLenEnc, okStatusFlags, eofStatusFlags).
 *
 * The TypeScript is the reference: the protocol reasoning lives in its comments, and
 * test/unit/native-tracker.test.ts requires both to give the same answer for the same input. Functions
 * here keep the TS names (snake_case) so the two can be read side by side.
 *
 * Where the C differs, it says so at the spot:
 * - readLenEnc throws on a 0xFB/0xFF prefix; read_lenenc returns false instead. The one place such a
 *   byte can reach it is an OK's length fields, where okStatusFlags checks for it first and reads the
 *   status as absent, so an OK with such a field ends its response with status 0 (not in a transaction:
 *   the holding direction) in both;
 * - the pending queue and the prepared-statement map are bounded (TRACKER_MAX_PENDING,
 *   MAX_PREPARED_STATEMENTS) and never abort on allocation failure.
 *
 * Every read of `prefix` and `text` is bounded by its length: the bytes come from the network.
 */
#include "tracker.h"
#include "wire.h"

#include <stdlib.h>
#include <string.h>

/* Wire constants: wire.h (shared with the relay). */
#define LAST_PREPARED_ID 0xffffffffu

/* A server may hold at most max_prepared_stmt_count statements (MariaDB caps that setting at 1048576,
 * for all sessions together), so no honest session needs more. Beyond it nothing is stored, and an
 * unknown id resolves to 'write', the class that holds the most. */
#define MAX_PREPARED_STATEMENTS (1u << 20)

/* ---------------------------------------------------------------------------------------------- */
/* codec.ts                                                                                       */

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static uint32_t rd32(const uint8_t *p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* readLenEnc(buf, offset, end): false where the TS returns undefined, and where it throws (0xFB, 0xFF;
 * see the header comment). The 8-byte form is kept exact; the TS rounds it to a double above 2^53,
 * which only matters after 2^53 packets. */
static bool read_lenenc(const uint8_t *buf, size_t offset, size_t end, uint64_t *value, size_t *next) {
  if (offset >= end) return false;
  uint8_t first = buf[offset];
  if (first < 0xfb) {
    *value = first;
    *next = offset + 1;
    return true;
  }
  size_t n;
  if (first == 0xfc) n = 2;
  else if (first == 0xfd) n = 3;
  else if (first == 0xfe) n = 8;
  else return false;
  if (end - offset - 1 < n) return false;
  uint64_t v = 0;
  for (size_t k = n; k > 0; k--) v = (v << 8) | buf[offset + k];
  *value = v;
  *next = offset + 1 + n;
  return true;
}

/* okStatusFlags(buf, 0, len): the status, or -1 for undefined. */
static int ok_status_flags(const uint8_t *buf, size_t len) {
  uint64_t v;
  size_t affected_next, insert_next;
  if (!read_lenenc(buf, 1, len, &v, &affected_next)) return -1;
  if (!read_lenenc(buf, affected_next, len, &v, &insert_next) || insert_next + 2 > len) return -1;
  return rd16(buf + insert_next);
}

/* eofStatusFlags(buf, 0, len): the status, or -1 for undefined. */
static int eof_status_flags(const uint8_t *buf, size_t len) { return len >= 5 ? rd16(buf + 3) : -1; }

/* ---------------------------------------------------------------------------------------------- */
/* statement-class.ts                                                                             */

static bool is_space(uint8_t b) { return b == 0x20 || b == 0x09 || b == 0x0a || b == 0x0d; }

static bool is_letter(uint8_t b) { return (b | 0x20) >= 0x61 && (b | 0x20) <= 0x7a; }

/* text.indexOf('\n', from, 'latin1'): a byte search; -1 when absent. */
static ptrdiff_t index_of_newline(const uint8_t *text, size_t n, size_t from) {
  const uint8_t *p = from < n ? memchr(text + from, '\n', n - from) : NULL;
  return p ? p - text : -1;
}

/* text.indexOf(end of comment, from, 'latin1'), the two bytes star and slash: a byte search; -1 when absent. */
static ptrdiff_t index_of_comment_end(const uint8_t *text, size_t n, size_t from) {
  for (size_t i = from; i + 1 < n; i++)
    if (text[i] == '*' && text[i + 1] == '/') return (ptrdiff_t)i;
  return -1;
}

/* skipBlanks: offset of the first token after whitespace and plain comments, or -1. */
static ptrdiff_t skip_blanks(const uint8_t *text, size_t n, size_t from) {
  size_t i = from;
  for (;;) {
    while (i < n && is_space(text[i])) i++;
    if (i + 1 < n && text[i] == 0x2f && text[i + 1] == 0x2a) { /* slash-star */
      if (i + 2 < n && (text[i + 2] == 0x21 || text[i + 2] == 0x4d)) return -1; /* executable comment */
      ptrdiff_t end = index_of_comment_end(text, n, i + 2);
      if (end < 0) return -1;
      i = (size_t)end + 2;
      continue;
    }
    if ((i < n && text[i] == 0x23) || (i + 2 < n && text[i] == 0x2d && text[i + 1] == 0x2d && is_space(text[i + 2]))) {
      ptrdiff_t end = index_of_newline(text, n, i);
      if (end < 0) return -1;
      i = (size_t)end + 1;
      continue;
    }
    return (ptrdiff_t)i;
  }
}

/* wordAt: the letters starting at i, upper-cased into word (NUL-terminated; "" when none or more than
 * 12, as in the TS); returns where they end. */
static size_t word_at(const uint8_t *text, size_t n, size_t i, char word[13]) {
  size_t j = i;
  while (j < n && is_letter(text[j])) j++;
  size_t len = j - i;
  if (len == 0 || len > 12) len = 0;
  for (size_t k = 0; k < len; k++) word[k] = (char)(text[i + k] & ~0x20); /* ASCII letters only */
  word[len] = '\0';
  return j;
}

static bool word_in(const char *word, const char *const *list) {
  for (; *list; list++)
    if (strcmp(word, *list) == 0) return true;
  return false;
}

/* The JS regex classes, for latin1 code points (0..255). \w without the u flag is ASCII only. */
static bool js_word_char(uint8_t c) {
  return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
}

/* \s in JS (WhiteSpace and LineTerminator) within latin1: TAB LF VT FF CR SPACE NBSP. Not 0x85. */
static bool js_space(uint8_t c) { return (c >= 0x09 && c <= 0x0d) || c == 0x20 || c == 0xa0; }

/* Case-insensitive match of a lower-case ASCII word at s[p..]. Under the i flag (no u flag), no latin1
 * character outside ASCII folds to an ASCII letter, so ASCII folding is exact. */
static bool match_ci(const uint8_t *s, size_t n, size_t p, const char *w) {
  for (; *w; w++, p++)
    if (p >= n || (s[p] | 0x20) != (uint8_t)*w) return false; /* (c | 0x20) == letter only for its 2 cases */
  return true;
}

/* \b at p, where the subject string is s[from..n). */
static bool js_boundary(const uint8_t *s, size_t n, size_t from, size_t p) {
  bool left = p > from && js_word_char(s[p - 1]);
  bool right = p < n && js_word_char(s[p]);
  return left != right;
}

/* SET_WRITES.test(text.toString('latin1', from)):
 * /\b(password|statement|global|autocommit|next)\b|default\s+role|\/\*|\(/i, matched by hand. */
static bool set_writes_test(const uint8_t *s, size_t n, size_t from) {
  static const char *const words[] = {"password", "statement", "global", "autocommit", "next", NULL};
  for (size_t p = from; p < n; p++) {
    if (s[p] == '(') return true;
    if (s[p] == '/' && p + 1 < n && s[p + 1] == '*') return true;
    if (js_boundary(s, n, from, p)) {
      for (const char *const *w = words; *w; w++) {
        if (match_ci(s, n, p, *w) && js_boundary(s, n, from, p + strlen(*w))) return true;
      }
    }
    if (match_ci(s, n, p, "default")) {
      size_t q = p + 7;
      if (q < n && js_space(s[q])) {
        while (q < n && js_space(s[q])) q++;
        if (match_ci(s, n, q, "role")) return true;
      }
    }
  }
  return false;
}

/* isSessionOnlySet */
static bool is_session_only_set(const uint8_t *text, size_t n, size_t from, bool complete) {
  if (!complete) return false;
  return !set_writes_test(text, n, from);
}

/* transactionStart; `begin` is keyword === 'BEGIN' (otherwise START). */
static bool transaction_start(const uint8_t *text, size_t n, bool begin, size_t from, bool complete) {
  ptrdiff_t i = skip_blanks(text, n, from);
  if (i < 0) return false;
  if ((size_t)i >= n) return complete && begin;
  if (begin && text[i] == 0x3b) return true;
  char next[13];
  size_t end = word_at(text, n, (size_t)i, next);
  if (end == n && !complete) return false;
  return strcmp(next, begin ? "WORK" : "TRANSACTION") == 0;
}

stmt_class_t classify_statement(const uint8_t *text, size_t len, bool complete) {
  static const char *const read_keywords[] = {"SELECT", "SHOW", "USE", "DESCRIBE", "DESC", "EXPLAIN", "ROLLBACK", "HELP", NULL};
  static const char *const dml_keywords[] = {"INSERT", "UPDATE", "DELETE", "REPLACE", NULL};
  if (!text) len = 0;
  ptrdiff_t i = skip_blanks(text, len, 0);
  if (i < 0) return CLS_WRITE;
  char word[13];
  size_t end = word_at(text, len, (size_t)i, word);
  if (word[0] == '\0' || (end == len && !complete)) return CLS_WRITE;
  if (end < len) {
    uint8_t after = text[end];
    if (is_letter(after) || after == 0x5f || after == 0x24 || (after >= 0x30 && after <= 0x39)) return CLS_WRITE;
  }
  if (strcmp(word, "SET") == 0) return is_session_only_set(text, len, end, complete) ? CLS_READ : CLS_WRITE;
  if (word_in(word, read_keywords)) return CLS_READ;
  if (word_in(word, dml_keywords)) return CLS_DML;
  bool begin = strcmp(word, "BEGIN") == 0;
  if (begin || strcmp(word, "START") == 0) return transaction_start(text, len, begin, end, complete) ? CLS_BEGIN : CLS_WRITE;
  return CLS_WRITE;
}

/* ---------------------------------------------------------------------------------------------- */
/* Prepared statements: id -> class. Open addressing, linear probing, backward-shift deletion (no
 * tombstones), load factor at most 1/2. The hash is keyed per table so a server cannot choose ids that
 * all collide.                                                                                   */

typedef struct {
  uint32_t key;
  int8_t cls; /* stmt_class_t, or -1: empty slot */
} slot_t;

typedef struct {
  slot_t *slots;
  size_t cap; /* 0 or a power of two */
  size_t count;
  uint32_t seed;
} stmt_map_t;

static size_t map_index(const stmt_map_t *m, uint32_t key) {
  uint32_t h = key ^ m->seed; /* murmur3 fmix32 */
  h ^= h >> 16;
  h *= 0x85ebca6bu;
  h ^= h >> 13;
  h *= 0xc2b2ae35u;
  h ^= h >> 16;
  return h & (m->cap - 1);
}

/* The slot holding key, or NULL. */
static slot_t *map_find(const stmt_map_t *m, uint32_t key) {
  if (m->count == 0) return NULL;
  for (size_t i = map_index(m, key);; i = (i + 1) & (m->cap - 1)) {
    slot_t *s = &m->slots[i];
    if (s->cls < 0) return NULL;
    if (s->key == key) return s;
  }
}

static void map_put_new(stmt_map_t *m, uint32_t key, int8_t cls) {
  size_t i = map_index(m, key);
  while (m->slots[i].cls >= 0) i = (i + 1) & (m->cap - 1);
  m->slots[i].key = key;
  m->slots[i].cls = cls;
  m->count++;
}

static bool map_grow(stmt_map_t *m) {
  size_t cap = m->cap ? m->cap * 2 : 16;
  slot_t *slots = malloc(cap * sizeof *slots);
  if (!slots) return false;
  for (size_t i = 0; i < cap; i++) slots[i].cls = -1;
  slot_t *old = m->slots;
  size_t old_cap = m->cap;
  m->slots = slots;
  m->cap = cap;
  m->count = 0;
  for (size_t i = 0; i < old_cap; i++)
    if (old[i].cls >= 0) map_put_new(m, old[i].key, old[i].cls);
  free(old);
  return true;
}

/* statements.set: an existing id is updated in place; a new one is stored unless the map is full or
 * memory is short (then the id stays unknown, i.e. 'write'). */
static void map_set(stmt_map_t *m, uint32_t key, stmt_class_t cls) {
  slot_t *s = map_find(m, key);
  if (s) {
    s->cls = (int8_t)cls;
    return;
  }
  if (m->count >= MAX_PREPARED_STATEMENTS) return;
  if ((m->count + 1) * 2 > m->cap && !map_grow(m)) return;
  map_put_new(m, key, (int8_t)cls);
}

static void map_delete(stmt_map_t *m, uint32_t key) {
  slot_t *s = map_find(m, key);
  if (!s) return;
  size_t mask = m->cap - 1;
  size_t hole = (size_t)(s - m->slots);
  /* Shift back every following entry of the run whose home is not in (hole, j]. */
  for (size_t j = (hole + 1) & mask; m->slots[j].cls >= 0; j = (j + 1) & mask) {
    size_t home = map_index(m, m->slots[j].key);
    bool stays = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
    if (stays) continue;
    m->slots[hole] = m->slots[j];
    hole = j;
  }
  m->slots[hole].cls = -1;
  m->count--;
}

/* statements.clear: also gives the memory back (a reset session starts small again). */
static void map_clear(stmt_map_t *m) {
  free(m->slots);
  m->slots = NULL;
  m->cap = 0;
  m->count = 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* tracker.ts                                                                                     */

typedef enum { K_SIMPLE, K_GATED, K_PREPARE, K_CHANGE_USER, K_FIELD_LIST, K_STATISTICS, K_FETCH, K_NONE, K_UNTRACKED } kind_t;

typedef enum { S_FIRST, S_COLUMN_DEFS, S_EOF_AFTER_COLUMNS, S_ROWS, S_PREPARE_DEFS, S_AUTH_EXCHANGE } state_t;

#define CLS_UNRESOLVED (-1)

typedef struct {
  uint8_t kind;     /* kind_t */
  int8_t cls;       /* stmt_class_t, or CLS_UNRESOLVED (TS: undefined) */
  bool atomic;
  uint32_t stmt_id; /* meaningful only when cls is CLS_UNRESOLVED */
} pending_t;

struct tracker {
  /* queue: ring buffer, capacity a power of two */
  pending_t *ring;
  size_t ring_cap, head, count;
  state_t state;
  uint64_t remaining_defs;
  bool saw_ok;
  int last_status;
  bool multi_result;
  int session_status;
  stmt_map_t statements;
  bool has_last_prepared;
  uint32_t last_prepared;
  bool deprecate_eof;
  bool cache_metadata;
  bool untracked;
};

static kind_t kind_of(int command) {
  switch (command) {
    case COM_QUERY:
    case COM_STMT_EXECUTE:
    case COM_STMT_BULK_EXECUTE:
    case COM_CREATE_DB:
    case COM_DROP_DB:
      return K_GATED;
    case COM_STMT_PREPARE: return K_PREPARE;
    case COM_CHANGE_USER: return K_CHANGE_USER;
    case COM_FIELD_LIST: return K_FIELD_LIST;
    case COM_STATISTICS: return K_STATISTICS;
    case COM_STMT_FETCH: return K_FETCH;
    case COM_QUIT:
    case COM_STMT_CLOSE:
    case COM_STMT_SEND_LONG_DATA:
      return K_NONE;
    case COM_BINLOG_DUMP:
    case COM_BINLOG_DUMP_GTID:
    case COM_REGISTER_SLAVE:
    case COM_MULTI:
      return K_UNTRACKED;
    default:
      return K_SIMPLE;
  }
}

tracker_t *tracker_new(bool deprecate_eof, bool cache_metadata) {
  tracker_t *t = calloc(1, sizeof *t);
  if (!t) return NULL;
  t->state = S_FIRST;
  t->deprecate_eof = deprecate_eof;
  t->cache_metadata = cache_metadata;
  /* Hash key: the allocation's address, mixed (splitmix64). Not observable by the server. */
  uint64_t z = (uint64_t)(uintptr_t)t + 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  t->statements.seed = (uint32_t)(z ^ (z >> 31));
  return t;
}

void tracker_free(tracker_t *t) {
  if (!t) return;
  free(t->ring);
  free(t->statements.slots);
  free(t);
}

bool tracker_untracked(const tracker_t *t) { return t->untracked; }
size_t tracker_pending(const tracker_t *t) { return t->count; }
size_t tracker_prepared_count(const tracker_t *t) { return t->statements.count; }

static bool queue_push(tracker_t *t, pending_t p) {
  if (t->count >= TRACKER_MAX_PENDING) return false;
  if (t->count == t->ring_cap) {
    size_t cap = t->ring_cap ? t->ring_cap * 2 : 8;
    pending_t *ring = malloc(cap * sizeof *ring);
    if (!ring) return false;
    for (size_t k = 0; k < t->count; k++) ring[k] = t->ring[(t->head + k) & (t->ring_cap - 1)];
    free(t->ring);
    t->ring = ring;
    t->ring_cap = cap;
    t->head = 0;
  }
  t->ring[(t->head + t->count) & (t->ring_cap - 1)] = p;
  t->count++;
  return true;
}

/* commandStarted */
bool tracker_command(tracker_t *t, int command, const uint8_t *rest, size_t rest_len, bool complete) {
  if (!rest) rest_len = 0;
  kind_t kind = kind_of(command);
  if (t->untracked) return true; /* final: nothing reads the queue or the statements again */
  if (kind == K_NONE) {
    if (command == COM_STMT_CLOSE && rest_len >= 4) {
      /* -1 closes the statement prepared last (the server's LAST_STMT_ID); either way "last" no
       * longer names a live statement when it is the one closed. */
      uint32_t id = rd32(rest);
      if (id == LAST_PREPARED_ID) {
        if (t->has_last_prepared) map_delete(&t->statements, t->last_prepared);
        t->has_last_prepared = false;
      } else {
        map_delete(&t->statements, id);
        if (t->has_last_prepared && t->last_prepared == id) t->has_last_prepared = false;
      }
    }
    return true;
  }
  if (kind == K_UNTRACKED) {
    t->untracked = true;
    return true;
  }
  if (command == COM_RESET_CONNECTION || command == COM_CHANGE_USER) {
    map_clear(&t->statements);
    t->has_last_prepared = false;
  }
  int cls = CLS_WRITE;
  uint32_t stmt_id = 0;
  if (command == COM_QUERY || command == COM_STMT_PREPARE) {
    cls = classify_statement(rest, rest_len, complete);
  } else if (command == COM_STMT_EXECUTE || command == COM_STMT_BULK_EXECUTE) {
    if (rest_len >= 4) {
      stmt_id = rd32(rest);
      const slot_t *s = stmt_id == LAST_PREPARED_ID ? NULL : map_find(&t->statements, stmt_id);
      cls = s ? s->cls : CLS_UNRESOLVED;
    }
  }
  pending_t p = {.kind = (uint8_t)kind, .cls = (int8_t)cls, .atomic = command != COM_STMT_BULK_EXECUTE, .stmt_id = stmt_id};
  return queue_push(t, p);
}

/* resolvePrepared */
static int resolve_prepared(const tracker_t *t, uint32_t stmt_id) {
  const slot_t *s = NULL;
  if (stmt_id != LAST_PREPARED_ID) s = map_find(&t->statements, stmt_id);
  else if (t->has_last_prepared) s = map_find(&t->statements, t->last_prepared);
  return s ? s->cls : CLS_WRITE;
}

/* holds; status -1 is undefined. */
static bool holds(const tracker_t *t, const pending_t *cur, int status, bool was_in_trans) {
  int cls = cur->cls != CLS_UNRESOLVED ? cur->cls : resolve_prepared(t, cur->stmt_id);
  if (t->multi_result && (cls == CLS_READ || cls == CLS_BEGIN)) cls = CLS_WRITE;
  if (cls == CLS_READ) return false;
  bool failed_alone = status < 0 && !t->saw_ok && !t->multi_result;
  if (failed_alone && cls == CLS_DML && cur->atomic) return false;
  bool ends_in_trans = status >= 0 ? (status & STATUS_IN_TRANS) != 0
                                   : (t->saw_ok || t->multi_result ? (t->last_status & STATUS_IN_TRANS) != 0 : was_in_trans);
  return !ends_in_trans || (was_in_trans && cls != CLS_DML);
}

/* end; status -1 is undefined. */
static bool end_response(tracker_t *t, const pending_t *cur, int status) {
  bool was_in_trans = (t->session_status & STATUS_IN_TRANS) != 0;
  bool gate = false;
  if (cur->kind == K_GATED) gate = holds(t, cur, status, was_in_trans);
  if (status >= 0) t->session_status = status;
  else if (t->saw_ok || t->multi_result) t->session_status = t->last_status;
  t->head = (t->head + 1) & (t->ring_cap - 1);
  t->count--;
  t->state = S_FIRST;
  t->saw_ok = false;
  t->multi_result = false;
  t->last_status = 0;
  t->remaining_defs = 0;
  return gate;
}

static bool is_progress(const uint8_t *prefix, size_t prefix_len, uint32_t length) {
  return length >= 3 && prefix_len >= 3 && rd16(prefix + 1) == 0xffff;
}

/* The status of an EOF, or of the OK(0xFE) replacing it under DEPRECATE_EOF; 0 when unreadable. */
static int eof_or_ok_status(const tracker_t *t, const uint8_t *prefix, size_t prefix_len) {
  int status = t->deprecate_eof ? ok_status_flags(prefix, prefix_len) : eof_status_flags(prefix, prefix_len);
  return status < 0 ? 0 : status;
}

/* onRow */
static bool on_row(tracker_t *t, const pending_t *cur, const uint8_t *prefix, size_t prefix_len, uint32_t length, int first) {
  if (first == HDR_EOF && length < MAX_PACKET_PAYLOAD) {
    int status = eof_or_ok_status(t, prefix, prefix_len);
    if (status & STATUS_MORE_RESULTS_EXISTS) {
      t->last_status = status;
      t->multi_result = true;
      t->state = S_FIRST;
      return false;
    }
    return end_response(t, cur, status);
  }
  if (first == HDR_ERR && !is_progress(prefix, prefix_len, length)) return end_response(t, cur, -1);
  return false;
}

static bool on_server_packet(tracker_t *t, const uint8_t *prefix, size_t prefix_len, uint32_t length);

/* onFirst */
static bool on_first(tracker_t *t, const pending_t *cur, const uint8_t *prefix, size_t prefix_len, uint32_t length, int first) {
  if (cur->kind == K_STATISTICS) return end_response(t, cur, -1);
  if (cur->kind == K_CHANGE_USER) {
    t->state = S_AUTH_EXCHANGE;
    return on_server_packet(t, prefix, prefix_len, length);
  }
  if (cur->kind == K_FETCH) {
    t->state = S_ROWS;
    return on_row(t, cur, prefix, prefix_len, length, first);
  }
  if (first == HDR_OK) {
    if (cur->kind == K_PREPARE) {
      if (prefix_len >= 5) {
        uint32_t id = rd32(prefix + 1);
        map_set(&t->statements, id, cur->cls != CLS_UNRESOLVED ? (stmt_class_t)cur->cls : CLS_WRITE);
        t->last_prepared = id;
        t->has_last_prepared = true;
      } else {
        t->has_last_prepared = false; /* no id: an execute of -1 must not reach an older statement */
      }
      uint64_t columns = prefix_len >= 7 ? rd16(prefix + 5) : 0;
      uint64_t params = prefix_len >= 9 ? rd16(prefix + 7) : 0;
      uint64_t eofs = t->deprecate_eof ? 0 : (uint64_t)(params > 0) + (uint64_t)(columns > 0);
      t->remaining_defs = params + columns + eofs;
      if (t->remaining_defs == 0) return end_response(t, cur, -1);
      t->state = S_PREPARE_DEFS;
      return false;
    }
    int status = ok_status_flags(prefix, prefix_len);
    if (status < 0) status = 0;
    t->saw_ok = true;
    t->last_status = status;
    if (status & STATUS_MORE_RESULTS_EXISTS) {
      t->multi_result = true;
      return false;
    }
    return end_response(t, cur, status);
  }
  if (first == HDR_ERR) {
    if (is_progress(prefix, prefix_len, length)) return false;
    if (cur->kind == K_PREPARE) t->has_last_prepared = false;
    return end_response(t, cur, -1);
  }
  if (first == HDR_EOF && length < MAX_PACKET_PAYLOAD) return end_response(t, cur, eof_or_ok_status(t, prefix, prefix_len));
  if (first == HDR_LOCAL_INFILE) return false;
  if (cur->kind == K_FIELD_LIST) {
    t->state = S_ROWS;
    return false;
  }
  uint64_t columns = 0;
  size_t next = 0;
  bool have_count = read_lenenc(prefix, 0, prefix_len, &columns, &next);
  if (!have_count) columns = 0;
  bool metadata_follows = !t->cache_metadata || (have_count && next < prefix_len && prefix[next] == 1);
  if (columns > 0 && metadata_follows) {
    t->remaining_defs = columns;
    t->state = S_COLUMN_DEFS;
  } else {
    t->state = t->deprecate_eof || !metadata_follows ? S_ROWS : S_EOF_AFTER_COLUMNS;
  }
  return false;
}

/* onServerPacket */
static bool on_server_packet(tracker_t *t, const uint8_t *prefix, size_t prefix_len, uint32_t length) {
  if (t->untracked) return false;
  if (t->count == 0) return false;
  const pending_t *cur = &t->ring[t->head];
  /* TS: prefix[0] is undefined for an empty prefix, which equals no header byte either. */
  int first = length > 0 && prefix_len > 0 ? prefix[0] : -1;
  switch (t->state) {
    case S_FIRST:
      return on_first(t, cur, prefix, prefix_len, length, first);
    case S_COLUMN_DEFS:
      if (--t->remaining_defs == 0) t->state = t->deprecate_eof ? S_ROWS : S_EOF_AFTER_COLUMNS;
      return false;
    case S_EOF_AFTER_COLUMNS: {
      int status = eof_status_flags(prefix, prefix_len);
      if (status < 0) status = 0;
      if (status & STATUS_CURSOR_EXISTS) return end_response(t, cur, status);
      t->state = S_ROWS;
      return false;
    }
    case S_ROWS:
      return on_row(t, cur, prefix, prefix_len, length, first);
    case S_PREPARE_DEFS:
      return --t->remaining_defs == 0 ? end_response(t, cur, -1) : false;
    case S_AUTH_EXCHANGE:
      if (first == HDR_OK) {
        int status = ok_status_flags(prefix, prefix_len);
        return end_response(t, cur, status < 0 ? 0 : status);
      }
      if (first == HDR_ERR && !is_progress(prefix, prefix_len, length)) return end_response(t, cur, -1);
      return false;
  }
  return false;
}

bool tracker_server_packet(tracker_t *t, const uint8_t *prefix, size_t prefix_len, uint32_t length) {
  if (!prefix) prefix_len = 0;
  return on_server_packet(t, prefix, prefix_len, length);
}
