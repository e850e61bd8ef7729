/*
 * cdbp native data plane: TLS termination and the command-phase byte relay of the MySQL endpoint, off
 * the JavaScript event loop.
 *
 * Why this exists (docs/PERFORMANCE.md): in Node every query crosses TLSWrap, two JS stream layers and
 * four libuv operations, ~45 us of CPU per query on this class of machine, which caps the proxy at ~0.6x
 * of a direct TLS connection. A C relay does the same work with four syscalls and one AES-GCM record
 * each way, ~10 us. Everything that is not the hot path stays in TypeScript: accepting, limits, the
 * greeting, the SSLRequest check, authentication (seq-id rewriting, auth switch), the freshness gate's
 * decisions, logging, metrics.
 *
 * Life of a connection (proxy/mysql/session.ts drives it):
 *
 *   adopt(fd, prefix)     JS has sent the greeting and read the client's SSLRequest; it hands over the
 *                         client socket (we dup it) plus any bytes it read past the SSLRequest (the start
 *                         of the ClientHello). We return one end of a socketpair: JS reads and writes the
 *                         decrypted client stream through it as a plain net.Socket ("auth" phase).
 *   EV_SECURE             the TLS handshake finished (protocol, cipher).
 *   (JS ends its end)     after writing the final auth OK (or an ERR), JS half-closes the socketpair.
 *                         We forward what it wrote, stop reading the client, and half-close our end, so
 *                         JS reads every client byte we had decrypted for it ("switching" phase).
 *   bypass(id, fd, left)  JS hands over the backend socket and the client bytes it holds that are not
 *                         consumed yet (commands pipelined before the OK). From here on the relay is
 *                         direct: client TLS <-> backend ("direct" phase), with the client stream scanned
 *                         for COM_CHANGE_USER to a forbidden name (the same rules as client-scanner.ts).
 *   (strict freshness)    bypass(..., gate): both directions are also framed for the response tracker
 *                         (tracker.c, the twin of tracker.ts). A server packet that ends the ack of a
 *                         possible write is held, with everything after it, and JS hears EV_HOLD; it
 *                         answers release(id) once the write is counted, or refuseAck(id, err) (the
 *                         client gets that ERR in its place, then the end of the connection).
 *   finish(id, graceful)  instead of bypass: flush what JS wrote (an ERR), close_notify, close.
 *   EV_CLOSED             the connection is gone: outcome, error, bytes each way.
 *
 * TLS runs over memory BIOs: we own every read() and write(), so there is exactly one place that
 * touches each socket, bytes read ahead of the handshake can be fed in, and backpressure is explicit:
 * - client -> backend: we stop decrypting while bytes for the backend are pending, and stop reading the
 *   client while more than MAX_RBIO bytes of ciphertext wait to be decrypted;
 * - backend -> client: we stop reading the backend while ciphertext for the client is pending.
 * So a connection buffers at most ~64 KiB each way, however slow either side is.
 *
 * Threads: N workers, each an epoll loop owning its connections; JS talks to them through a command
 * queue (mutex + eventfd) and hears back through one napi_threadsafe_function. Connections are found by
 * id, never by pointer, so a late command for a closed connection is harmless.
 *
 * OpenSSL is Node's own (the node binary exports it; we compile against its headers).
 */
#define NAPI_VERSION 8
#define _GNU_SOURCE
#include <node_api.h>
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "tracker.h"

#define MAX_WORKERS 16
#define RECV_CHUNK (64 * 1024)
#define PLAIN_CHUNK (16 * 1024)
#define MAX_RBIO (64 * 1024)
/* Ciphertext owed to a client that is not reading (e.g. alerts answering a renegotiation flood). */
#define MAX_TLS_OUT (64 * 1024)
#define CLOSE_GRACE_MS 5000
#define SWEEP_MS 500
#define MAX_FORBIDDEN 16
#define FORBIDDEN_MAX_LEN 250
/* Bytes of a COM_CHANGE_USER payload (command byte included) that must be contiguous to read the
 * user name: forbidden-user.ts CHANGE_USER_INSPECT_BYTES. */
#define CHANGE_USER_INSPECT 256
#define MAX_PACKET_PAYLOAD 0xFFFFFFu
#define COM_SLEEP 0x00
#define COM_QUIT 0x01
#define COM_QUERY 0x03
#define COM_CHANGE_USER 0x11

#define NAPI_OK(call)                                                                  \
  do {                                                                                 \
    if ((call) != napi_ok) {                                                           \
      napi_throw_error(env, NULL, "cdbp dataplane: N-API call failed: " #call);        \
      return NULL;                                                                     \
    }                                                                                  \
  } while (0)

/* ------------------------------------------------------------------------------------------------ */
/* Small byte buffer (pending bytes towards the backend / the JS end). */

typedef struct {
  uint8_t *data;
  size_t len, off, cap;
} bytes_t;

static int bytes_append(bytes_t *b, const uint8_t *p, size_t n) {
  if (n == 0) return 0;
  if (b->off > 0 && b->off == b->len) b->off = b->len = 0;
  if (b->len + n > b->cap) {
    if (b->off > 0) {
      memmove(b->data, b->data + b->off, b->len - b->off);
      b->len -= b->off;
      b->off = 0;
    }
    if (b->len + n > b->cap) {
      size_t cap = b->cap ? b->cap : 4096;
      while (cap < b->len + n) cap *= 2;
      uint8_t *d = realloc(b->data, cap);
      if (!d) return -1;
      b->data = d;
      b->cap = cap;
    }
  }
  memcpy(b->data + b->len, p, n);
  b->len += n;
  return 0;
}
static size_t bytes_pending(const bytes_t *b) { return b->len - b->off; }
static void bytes_free(bytes_t *b) {
  free(b->data);
  memset(b, 0, sizeof *b);
}

/* ------------------------------------------------------------------------------------------------ */
/* Client stream scanner: the C twin of proxy/mysql/client-scanner.ts, with the response tracker
 * (tracker.c) as its command sink under strict freshness. See that file for the protocol reasoning;
 * test/integration/mysql-native.test.ts and the mysql-robustness suite run the same cases on both planes. */

typedef struct {
  uint32_t skip;
  bool continuation;
  bool infile;
  int last_command;
  tracker_t *tracker; /* strict freshness: every command start is reported to it (else NULL) */
  uint8_t held[CHANGE_USER_INSPECT + 8];
  size_t held_len;
} scanner_t;

typedef struct {
  char names[MAX_FORBIDDEN][FORBIDDEN_MAX_LEN + 1];
  size_t lens[MAX_FORBIDDEN];
  int count;
} forbidden_t;

static bool is_forbidden(const forbidden_t *f, const uint8_t *name, size_t len) {
  for (int i = 0; i < f->count; i++)
    if (f->lens[i] == len && memcmp(f->names[i], name, len) == 0) return true;
  return false;
}

typedef enum { SCAN_OK, SCAN_REFUSED, SCAN_TRACKER_FULL, SCAN_UNTRACKABLE } scan_result;

/* Scans buf[0..n). Sets *forward (bytes to pass on now) and *hold_from (start of bytes to keep for the
 * next call, == n when none). On SCAN_REFUSED the name is copied to user (NUL-terminated) and nothing at
 * or after the refused packet may be forwarded. On SCAN_TRACKER_FULL (TRACKER_MAX_PENDING commands
 * await their answers) *forward stops at the next command: the caller keeps the rest, unscanned, until
 * answers make room (backpressure, not an error). On SCAN_UNTRACKABLE (out of memory) the session must
 * end. */
static scan_result scan_client(scanner_t *s, const forbidden_t *f, const uint8_t *buf, size_t n,
                               size_t *forward, size_t *hold_from, char *user, size_t user_cap) {
  size_t pos = 0;
  while (pos < n) {
    if (s->skip > 0) {
      size_t k = n - pos < s->skip ? n - pos : s->skip;
      pos += k;
      s->skip -= (uint32_t)k;
      continue;
    }
    size_t avail = n - pos;
    if (avail < 4) goto hold;
    uint32_t length = (uint32_t)buf[pos] | ((uint32_t)buf[pos + 1] << 8) | ((uint32_t)buf[pos + 2] << 16);
    uint8_t seq = buf[pos + 3];
    if (s->continuation) {
      s->continuation = length == MAX_PACKET_PAYLOAD;
      pos += 4;
      s->skip = length;
      continue;
    }
    if (s->infile) {
      if (length == 0) s->infile = false;
    } else if (seq != 0) {
      if (s->last_command == COM_QUERY && length > 0) s->infile = true;
    } else {
      int command;
      if (length == 0) command = COM_SLEEP;
      else if (avail > 4) command = buf[pos + 4];
      else goto hold;
      /* What must be here before the packet may pass: a change-user's name; under a tracker, also the
       * start of a statement's text (classify_statement) or a statement id. */
      size_t need_max = command == COM_CHANGE_USER ? CHANGE_USER_INSPECT : s->tracker ? 1 + STATEMENT_PREFIX_BYTES : 1;
      size_t need = length < need_max ? length : need_max;
      if (avail < 4 + need) goto hold;
      const uint8_t *rest = buf + pos + 5;
      size_t rest_len = need > 0 ? need - 1 : 0;
      bool complete = need == length && length < MAX_PACKET_PAYLOAD;
      if (command == COM_CHANGE_USER) {
        const uint8_t *nul = memchr(rest, 0, rest_len);
        size_t name_len = nul ? (size_t)(nul - rest) : rest_len;
        if ((nul || complete) && is_forbidden(f, rest, name_len)) {
          size_t k = name_len < user_cap - 1 ? name_len : user_cap - 1;
          memcpy(user, rest, k);
          user[k] = 0;
          *forward = pos;
          *hold_from = n;
          return SCAN_REFUSED;
        }
      }
      if (s->tracker && tracker_pending(s->tracker) >= TRACKER_MAX_PENDING) {
        *forward = pos;
        *hold_from = n;
        return SCAN_TRACKER_FULL;
      }
      s->last_command = command;
      if (s->tracker && !tracker_command(s->tracker, command, rest, rest_len, complete)) {
        *forward = pos;
        *hold_from = n;
        return SCAN_UNTRACKABLE;
      }
    }
    s->continuation = length == MAX_PACKET_PAYLOAD;
    pos += 4;
    s->skip = length;
  }
  *forward = n;
  *hold_from = n;
  return SCAN_OK;
hold:
  *forward = pos;
  *hold_from = pos;
  return SCAN_OK;
}

/* ------------------------------------------------------------------------------------------------ */
/* Engine, workers, connections */

typedef enum { PH_HANDSHAKE, PH_AUTH, PH_SWITCHING, PH_WAIT, PH_DIRECT, PH_LINGER } phase_t;

typedef struct conn conn_t;
typedef struct worker worker_t;
typedef struct engine engine_t;

typedef struct {
  conn_t *c;
  bool client;
} endpoint_t;

struct conn {
  uint32_t id;
  worker_t *w;
  phase_t phase;
  int cfd, pfd;
  endpoint_t cep, pep;
  uint32_t cmask, pmask; /* registered epoll interest (0 = not registered) */
  SSL *ssl;
  BIO *rbio, *wbio;
  bytes_t pout;           /* plaintext waiting to be written to pfd */
  bool c_readable, p_readable;
  bool client_tcp_eof;    /* recv() returned 0 */
  bool client_eof;        /* no more plaintext will come from the client */
  bool peer_eof;          /* read() on pfd returned 0 */
  bool peer_wr_shut;      /* we half-closed pfd */
  bool close_notify_sent;
  bool client_wr_shut;
  bool refused;           /* a forbidden change-user: forward nothing more from the client */
  bool graceful_finish;   /* finish(id, graceful) in PH_WAIT */
  bool dead;
  scanner_t sc;
  /* Strict freshness (tracker != NULL): server packets are framed for the tracker; the one that ends
   * the acknowledgment of a possible write is held, with everything after it, until JS releases it. */
  tracker_t *tracker;
  uint32_t s_skip;        /* payload bytes of the current server packet still to pass */
  bool s_continuation;    /* the current server packet has length 0xFFFFFF */
  uint8_t s_carry[4 + TRACKER_INSPECT_BYTES]; /* a server packet start whose inspected bytes are not all here */
  size_t s_carry_len;
  bool holding;           /* an acknowledgment waits for the freshness gate (EV_HOLD sent) */
  bytes_t s_held;         /* server bytes from the held packet on (not sent to the client yet) */
  size_t s_held_scan;     /* where scanning resumes in s_held (after the held packet's header) */
  uint8_t s_held_seq;     /* the held packet's sequence id: a refusal's ERR takes its place */
  bytes_t c_unscanned;    /* decrypted client bytes waiting for the tracker to have room (SCAN_TRACKER_FULL) */
  bytes_t final_pkt;      /* sent to the client when the backend has ended (refused change-user, refused ack) */
  uint64_t bytes_in, bytes_out;
  size_t buffered; /* this connection's share of the engine's `buffered` as last reported */
  int64_t last_activity_ms, idle_ms, deadline_ms;
  char outcome[32];
  char error[400];
  char refused_user[FORBIDDEN_MAX_LEN + 8];
  conn_t *next_in_bucket;
  conn_t *next_dead;
};

typedef enum { CMD_ADD, CMD_BYPASS, CMD_FINISH, CMD_CLOSE, CMD_RELEASE, CMD_REFUSE_ACK, CMD_STOP } cmd_type;

typedef struct cmd {
  cmd_type type;
  uint32_t id;
  conn_t *conn; /* CMD_ADD */
  int fd;       /* CMD_BYPASS */
  tracker_t *tracker; /* CMD_BYPASS under strict freshness */
  uint8_t *data; /* CMD_BYPASS: leftover client bytes; CMD_REFUSE_ACK: the ERR packet */
  size_t len;
  char *text;   /* CMD_REFUSE_ACK: the error for the connection log */
  int64_t idle_ms;
  bool graceful;
  struct cmd *next;
} cmd_t;

#define BUCKETS 4096

struct worker {
  engine_t *e;
  pthread_t thread;
  int epfd, evfd;
  pthread_mutex_t qlock;
  cmd_t *qhead, *qtail;
  conn_t *buckets[BUCKETS];
  conn_t *dead;
  uint8_t recvbuf[RECV_CHUNK];
  uint8_t plainbuf[PLAIN_CHUNK + CHANGE_USER_INSPECT + 8];
  int64_t last_sweep;
  bool running;
};

typedef enum { EV_SECURE = 1, EV_CLOSED = 2, EV_HOLD = 3 } event_type;

typedef struct {
  event_type type;
  uint32_t id;
  char a[64];  /* EV_SECURE: protocol; EV_CLOSED: outcome */
  char b[400]; /* EV_SECURE: cipher; EV_CLOSED: error */
  char user[FORBIDDEN_MAX_LEN + 8];
  double bytes_in, bytes_out;
} event_t;

struct engine {
  int nworkers;
  worker_t *workers[MAX_WORKERS];
  atomic_uint next_id;
  pthread_mutex_t ctx_lock;
  SSL_CTX *ctx;
  forbidden_t forbidden;
  uint8_t err_prefix[512];
  size_t err_prefix_len;
  uint8_t err_suffix[512];
  size_t err_suffix_len;
  uint16_t err_errno;
  char err_sqlstate[6];
  napi_threadsafe_function tsfn;
  atomic_ullong bytes_in, bytes_out;
  /* Bytes held inside the relay across connections: ciphertext in and out, plaintext for the peer. */
  atomic_llong buffered;
  atomic_int open;
  bool destroyed;
};

/* Allocation failure is not a state this relay can serve in: stop, like Node does. */
static void *xcalloc(size_t n) {
  void *p = calloc(1, n);
  if (!p) abort();
  return p;
}
static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) abort();
  return p;
}

/* CDBP_DP_DEBUG=1: connection add/close lines on stderr (ids and outcomes only, never data). */
static int dbg_on = -1;
#define DBG(...) do { if (dbg_on < 0) dbg_on = getenv("CDBP_DP_DEBUG") != NULL; if (dbg_on) { fprintf(stderr, "dp: " __VA_ARGS__); fputc('\n', stderr); } } while (0)

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void set_nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

static void ssl_error_text(char *out, size_t cap, const char *what) {
  unsigned long e = ERR_get_error();
  if (e) {
    char buf[200];
    ERR_error_string_n(e, buf, sizeof buf);
    snprintf(out, cap, "%s: %s", what, buf);
  } else {
    snprintf(out, cap, "%s", what);
  }
  ERR_clear_error();
}

static void emit(engine_t *e, event_t *ev) {
  if (napi_call_threadsafe_function(e->tsfn, ev, napi_tsfn_nonblocking) != napi_ok) free(ev);
}

/* ---- connection table (worker-local) ---- */

static void table_put(worker_t *w, conn_t *c) {
  size_t b = c->id % BUCKETS;
  c->next_in_bucket = w->buckets[b];
  w->buckets[b] = c;
}
static conn_t *table_get(worker_t *w, uint32_t id) {
  for (conn_t *c = w->buckets[id % BUCKETS]; c; c = c->next_in_bucket)
    if (c->id == id) return c;
  return NULL;
}
static void table_del(worker_t *w, conn_t *c) {
  conn_t **p = &w->buckets[c->id % BUCKETS];
  while (*p && *p != c) p = &(*p)->next_in_bucket;
  if (*p) *p = c->next_in_bucket;
}

/* ---- closing ---- */

static void free_conn(conn_t *c) {
  if (c->ssl) SSL_free(c->ssl); /* frees both BIOs */
  bytes_free(&c->pout);
  bytes_free(&c->final_pkt);
  bytes_free(&c->s_held);
  bytes_free(&c->c_unscanned);
  tracker_free(c->tracker);
  free(c);
}

/* The single cleanup: deregister, close both fds, report, free after the current epoll batch. */
static void conn_close(conn_t *c, const char *outcome, const char *error) {
  if (c->dead) return;
  DBG("close id=%u phase=%d outcome=%s error=%s", c->id, c->phase, outcome, error ? error : "");
  c->dead = true;
  worker_t *w = c->w;
  if (c->cfd >= 0) {
    if (c->cmask) epoll_ctl(w->epfd, EPOLL_CTL_DEL, c->cfd, NULL);
    close(c->cfd);
    c->cfd = -1;
  }
  if (c->pfd >= 0) {
    if (c->pmask) epoll_ctl(w->epfd, EPOLL_CTL_DEL, c->pfd, NULL);
    close(c->pfd);
    c->pfd = -1;
  }
  table_del(w, c);
  atomic_fetch_sub(&w->e->open, 1);
  atomic_fetch_sub(&w->e->buffered, (long long)c->buffered);
  c->buffered = 0;
  event_t *ev = xcalloc(sizeof *ev);
  if (ev) {
    ev->type = EV_CLOSED;
    ev->id = c->id;
    snprintf(ev->a, sizeof ev->a, "%s", c->outcome[0] ? c->outcome : outcome);
    snprintf(ev->b, sizeof ev->b, "%s", c->error[0] ? c->error : (error ? error : ""));
    snprintf(ev->user, sizeof ev->user, "%s", c->refused_user);
    ev->bytes_in = (double)c->bytes_in;
    ev->bytes_out = (double)c->bytes_out;
    emit(w->e, ev);
  }
  c->next_dead = w->dead;
  w->dead = c;
}

/* A client that fails after its COM_QUIT has quit normally: the mariadb connector's end() resets the
 * socket right after sending it. Its session is over as it asked, so that is not a client error. */
static void client_failed(conn_t *c, const char *error) {
  if (c->sc.last_command == COM_QUIT) conn_close(c, "ok", NULL);
  else conn_close(c, "client_error", error);
}

/* ---- epoll interest ---- */

/* Registered interest is kept as (events | REGISTERED). An fd we want nothing from is removed from the
 * epoll set: epoll reports HUP/ERR even for an empty mask, which would spin a level-triggered loop. */
#define REGISTERED 0x80000000u
static void set_interest(conn_t *c, int fd, uint32_t *reg, uint32_t want, endpoint_t *ep) {
  if (fd < 0) return;
  if (want == 0) {
    if (*reg) epoll_ctl(c->w->epfd, EPOLL_CTL_DEL, fd, NULL);
    *reg = 0;
    return;
  }
  if (*reg == (want | REGISTERED)) return;
  struct epoll_event ev = {.events = want, .data.ptr = ep};
  if (epoll_ctl(c->w->epfd, *reg ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ev) == 0) *reg = want | REGISTERED;
}

static size_t tls_out_pending(conn_t *c) { return (size_t)BIO_ctrl_pending(c->wbio); }

static bool reads_client(conn_t *c) {
  switch (c->phase) {
  case PH_HANDSHAKE: return tls_out_pending(c) < MAX_TLS_OUT;
  case PH_AUTH:
  case PH_DIRECT:
    return !c->client_tcp_eof && (size_t)BIO_ctrl_pending(c->rbio) < MAX_RBIO && tls_out_pending(c) < MAX_TLS_OUT;
  case PH_LINGER: return !c->client_tcp_eof;
  default: return false;
  }
}

static bool reads_peer(conn_t *c) {
  if (c->pfd < 0 || c->peer_eof || c->holding || tls_out_pending(c) > 0) return false;
  return c->phase == PH_AUTH || c->phase == PH_SWITCHING || c->phase == PH_DIRECT;
}

static void update_interest(conn_t *c) {
  uint32_t cw = (reads_client(c) ? EPOLLIN : 0) | (tls_out_pending(c) ? EPOLLOUT : 0);
  uint32_t pw = (reads_peer(c) ? EPOLLIN : 0) | (bytes_pending(&c->pout) ? EPOLLOUT : 0);
  set_interest(c, c->cfd, &c->cmask, cw, &c->cep);
  set_interest(c, c->pfd, &c->pmask, pw, &c->pep);
}

/* ---- the relay steps; each returns true if it made progress ---- */

/* Send pending ciphertext to the client. */
static bool flush_client(conn_t *c) {
  bool progress = false;
  for (;;) {
    char *p;
    long n = BIO_get_mem_data(c->wbio, &p);
    if (n <= 0) return progress;
    ssize_t s = send(c->cfd, p, (size_t)n, MSG_NOSIGNAL);
    if (s < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return progress;
      client_failed(c, strerror(errno));
      return true;
    }
    /* consume s bytes from the memory BIO */
    size_t left = (size_t)s;
    while (left > 0) {
      int k = BIO_read(c->wbio, c->w->recvbuf, left > RECV_CHUNK ? RECV_CHUNK : (int)left);
      if (k <= 0) break;
      left -= (size_t)k;
    }
    progress = true;
    if (s < n) return progress;
  }
}

/* Write pending plaintext to the peer (backend or the JS end). */
static bool flush_peer(conn_t *c) {
  size_t n = bytes_pending(&c->pout);
  if (n == 0 || c->pfd < 0) return false;
  ssize_t s = send(c->pfd, c->pout.data + c->pout.off, n, MSG_NOSIGNAL);
  if (s < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return false;
    if (c->phase == PH_DIRECT) conn_close(c, "backend_error", strerror(errno));
    else conn_close(c, "protocol_error", "the session closed its end of the relay");
    return true;
  }
  c->pout.off += (size_t)s;
  if (c->pout.off == c->pout.len) c->pout.off = c->pout.len = 0;
  return s > 0;
}

static void write_peer(conn_t *c, const uint8_t *p, size_t n) {
  if (n == 0) return;
  if (bytes_pending(&c->pout) == 0) {
    ssize_t s = send(c->pfd, p, n, MSG_NOSIGNAL);
    if (s < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        if (c->phase == PH_DIRECT) conn_close(c, "backend_error", strerror(errno));
        else conn_close(c, "protocol_error", "the session closed its end of the relay");
        return;
      }
      s = 0;
    }
    p += s;
    n -= (size_t)s;
  }
  if (n > 0 && bytes_append(&c->pout, p, n) != 0) conn_close(c, "proxy_error", "out of memory");
}

/* Read ciphertext from the client into the TLS engine. */
static bool recv_client(conn_t *c) {
  if (!c->c_readable || !reads_client(c)) return false;
  ssize_t n = recv(c->cfd, c->w->recvbuf, RECV_CHUNK, 0);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
      c->c_readable = false;
      return false;
    }
    if (c->phase == PH_DIRECT || c->phase == PH_LINGER) client_failed(c, strerror(errno));
    else conn_close(c, "protocol_error", strerror(errno));
    return true;
  }
  if (n == 0) {
    c->client_tcp_eof = true;
    c->c_readable = false;
    return true;
  }
  if (n < RECV_CHUNK) c->c_readable = false;
  c->last_activity_ms = now_ms();
  if (c->phase == PH_LINGER) return true; /* discard: the session is over, we only wait for the FIN */
  BIO_write(c->rbio, c->w->recvbuf, (int)n);
  return true;
}

static void refuse_change_user(conn_t *c, const char *user) {
  engine_t *e = c->w->e;
  c->refused = true;
  snprintf(c->refused_user, sizeof c->refused_user, "%s", user);
  snprintf(c->outcome, sizeof c->outcome, "forbidden_user");
  snprintf(c->error, sizeof c->error, "COM_CHANGE_USER to '%s' refused (the proxy's own OS account)", user);
  /* ERR packet, seq 1 (the answer to a seq-0 command): 0xFF, errno, '#', sqlstate, message. */
  uint8_t msg[16 + sizeof e->err_prefix + FORBIDDEN_MAX_LEN + 8 + sizeof e->err_suffix];
  size_t ulen = strlen(user);
  size_t len = 0;
  msg[len++] = 0xFF;
  msg[len++] = (uint8_t)(e->err_errno & 0xFF);
  msg[len++] = (uint8_t)(e->err_errno >> 8);
  msg[len++] = '#';
  memcpy(msg + len, e->err_sqlstate, 5);
  len += 5;
  memcpy(msg + len, e->err_prefix, e->err_prefix_len);
  len += e->err_prefix_len;
  memcpy(msg + len, user, ulen);
  len += ulen;
  memcpy(msg + len, e->err_suffix, e->err_suffix_len);
  len += e->err_suffix_len;
  uint8_t hdr[4] = {(uint8_t)(len & 0xFF), (uint8_t)((len >> 8) & 0xFF), (uint8_t)(len >> 16), 1};
  bytes_append(&c->final_pkt, hdr, 4);
  bytes_append(&c->final_pkt, msg, len);
}

/* Scans client plaintext p[0..n) (which must sit at least sizeof sc.held into plainbuf) and forwards
 * what may pass. */
static void scan_and_forward(conn_t *c, uint8_t *p, size_t n) {
  if (c->refused) return;
  if (bytes_pending(&c->c_unscanned) > 0) {
    /* Older bytes wait for the tracker: these queue behind them, in order. */
    if (bytes_append(&c->c_unscanned, p, n) != 0) conn_close(c, "proxy_error", "out of memory");
    return;
  }
  uint8_t *buf = p;
  size_t len = n;
  if (c->sc.held_len > 0) {
    /* plainbuf has room for held + a full chunk: the chunk was read at offset sizeof(held). */
    buf = p - c->sc.held_len;
    memcpy(buf, c->sc.held, c->sc.held_len);
    len += c->sc.held_len;
    c->sc.held_len = 0;
  }
  size_t forward, hold_from;
  char user[FORBIDDEN_MAX_LEN + 8];
  scan_result r = scan_client(&c->sc, &c->w->e->forbidden, buf, len, &forward, &hold_from, user, sizeof user);
  write_peer(c, buf, forward);
  if (c->dead) return;
  if (r == SCAN_REFUSED) {
    refuse_change_user(c, user);
    return;
  }
  if (r == SCAN_TRACKER_FULL) {
    if (bytes_append(&c->c_unscanned, buf + forward, len - forward) != 0) conn_close(c, "proxy_error", "out of memory");
    return;
  }
  if (r == SCAN_UNTRACKABLE) {
    conn_close(c, "proxy_error", "out of memory for the response tracker");
    return;
  }
  if (hold_from < len) {
    c->sc.held_len = len - hold_from;
    memcpy(c->sc.held, buf + hold_from, c->sc.held_len);
  }
}

/* Client plaintext towards the peer: scanned in the direct phase. */
static void forward_client_plain(conn_t *c, uint8_t *p, size_t n) {
  if (c->phase != PH_DIRECT) {
    write_peer(c, p, n);
    return;
  }
  c->bytes_in += n;
  atomic_fetch_add(&c->w->e->bytes_in, n);
  scan_and_forward(c, p, n);
}

/* Client bytes held back by a full tracker go on once answers have made room (half of it, so a client
 * that keeps the queue full is served in batches, not one command per answer). */
static bool rescan_client(conn_t *c) {
  if (bytes_pending(&c->c_unscanned) == 0 || c->refused || bytes_pending(&c->pout) > 0) return false;
  if (tracker_pending(c->tracker) >= TRACKER_MAX_PENDING / 2) return false;
  bytes_t waiting = c->c_unscanned; /* scan_and_forward may queue part of it again, into a fresh buffer */
  memset(&c->c_unscanned, 0, sizeof c->c_unscanned);
  size_t off = waiting.off;
  while (off < waiting.len && !c->dead) {
    size_t k = waiting.len - off > PLAIN_CHUNK ? PLAIN_CHUNK : waiting.len - off;
    uint8_t *dst = c->w->plainbuf + CHANGE_USER_INSPECT + 8;
    memcpy(dst, waiting.data + off, k);
    scan_and_forward(c, dst, k);
    off += k;
  }
  bytes_free(&waiting);
  return true;
}

/* Handshake, or decrypt client records and forward them. */
static bool tls_step(conn_t *c) {
  ERR_clear_error(); /* the queue is per thread: never judge this connection by another one's error */
  if (c->phase == PH_HANDSHAKE) {
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) {
      c->phase = PH_AUTH;
      event_t *ev = xcalloc(sizeof *ev);
      if (ev) {
        ev->type = EV_SECURE;
        ev->id = c->id;
        snprintf(ev->a, sizeof ev->a, "%s", SSL_get_version(c->ssl));
        snprintf(ev->b, sizeof ev->b, "%s", SSL_get_cipher_name(c->ssl));
        emit(c->w->e, ev);
      }
      return true;
    }
    int err = SSL_get_error(c->ssl, r);
    if (err == SSL_ERROR_WANT_READ) {
      if (c->client_tcp_eof) {
        flush_client(c);
        conn_close(c, "tls_failed", "client closed the connection during the TLS handshake");
        return true;
      }
      return false;
    }
    char text[256];
    ssl_error_text(text, sizeof text, "TLS handshake failed");
    flush_client(c); /* the alert */
    conn_close(c, "tls_failed", text);
    return true;
  }
  if (c->phase != PH_AUTH && c->phase != PH_DIRECT) return false;
  if (c->client_eof || c->pfd < 0 || c->peer_wr_shut || c->graceful_finish) return false;
  bool progress = false;
  while (!c->dead && bytes_pending(&c->pout) == 0 && bytes_pending(&c->c_unscanned) == 0 && !c->refused &&
         tls_out_pending(c) < MAX_TLS_OUT) {
    uint8_t *dst = c->w->plainbuf + CHANGE_USER_INSPECT + 8;
    int n = SSL_read(c->ssl, dst, PLAIN_CHUNK);
    if (n > 0) {
      if (c->phase == PH_DIRECT) c->last_activity_ms = now_ms();
      forward_client_plain(c, dst, (size_t)n);
      progress = true;
      continue;
    }
    int err = SSL_get_error(c->ssl, n);
    if (err == SSL_ERROR_WANT_READ) {
      if (c->client_tcp_eof) {
        c->client_eof = true; /* FIN without close_notify: what most MySQL clients do */
        progress = true;
      }
      break;
    }
    if (err == SSL_ERROR_ZERO_RETURN) {
      c->client_eof = true;
      progress = true;
      break;
    }
    char text[256];
    ssl_error_text(text, sizeof text, "TLS record error");
    if (c->phase == PH_DIRECT) client_failed(c, text);
    else conn_close(c, "protocol_error", text);
    return true;
  }
  if (progress && (size_t)BIO_ctrl_pending(c->wbio) > 0) flush_client(c); /* e.g. a KeyUpdate answer */
  return progress;
}

/* Encrypts plaintext for the client (sent by the caller's flush). False when the connection closed. */
static bool tls_send(conn_t *c, const uint8_t *p, size_t n) {
  if (n == 0) return true;
  ERR_clear_error();
  if (SSL_write(c->ssl, p, (int)n) != (int)n) {
    char text[256];
    ssl_error_text(text, sizeof text, "TLS write failed");
    conn_close(c, "proxy_error", text);
    return false;
  }
  return true;
}

/* Strict freshness: server bytes buf[0..n), none sent yet, scanning resumes at `pos` (the same walk as
 * GatedPump.processServer in pump.ts). Sends them to the client up to the packet the tracker says ends
 * a possibly-written acknowledgment; that packet and everything after it are kept in s_held, reading
 * from the database stops (backpressure), and JS hears EV_HOLD. An incomplete packet start at the end
 * is carried into the next read. */
static void relay_server_tracked(conn_t *c, const uint8_t *buf, size_t n, size_t pos) {
  size_t flush_end = n;
  while (pos < n) {
    if (c->s_skip > 0) {
      size_t k = n - pos < c->s_skip ? n - pos : c->s_skip;
      pos += k;
      c->s_skip -= (uint32_t)k;
      continue;
    }
    size_t start = pos, avail = n - pos;
    if (avail < 4) {
      flush_end = start;
      break;
    }
    uint32_t length = (uint32_t)buf[start] | ((uint32_t)buf[start + 1] << 8) | ((uint32_t)buf[start + 2] << 16);
    bool continued = c->s_continuation;
    size_t need = length < TRACKER_INSPECT_BYTES ? length : TRACKER_INSPECT_BYTES;
    if (!continued && avail < 4 + need) {
      flush_end = start;
      break;
    }
    c->s_continuation = length == MAX_PACKET_PAYLOAD;
    pos = start + 4;
    c->s_skip = length;
    if (continued || !tracker_server_packet(c->tracker, buf + pos, need, length)) continue;
    if (!tls_send(c, buf, start)) return;
    c->s_held.off = c->s_held.len = 0;
    if (bytes_append(&c->s_held, buf + start, n - start) != 0) {
      conn_close(c, "proxy_error", "out of memory");
      return;
    }
    c->s_held_scan = pos - start;
    c->s_held_seq = buf[start + 3];
    c->holding = true;
    event_t *ev = xcalloc(sizeof *ev);
    ev->type = EV_HOLD;
    ev->id = c->id;
    emit(c->w->e, ev);
    return;
  }
  if (flush_end < n) {
    memcpy(c->s_carry, buf + flush_end, n - flush_end); /* < 4 + TRACKER_INSPECT_BYTES by the checks above */
    c->s_carry_len = n - flush_end;
  }
  tls_send(c, buf, flush_end);
}

/* JS released a held acknowledgment: send it and go on where the scan stopped. */
static void release_held(conn_t *c) {
  if (!c->holding) return;
  c->holding = false;
  if (c->deadline_ms) c->deadline_ms = now_ms() + CLOSE_GRACE_MS; /* a closing client still gets its answer */
  bytes_t held = c->s_held; /* relay_server_tracked may hold again, into a fresh s_held */
  memset(&c->s_held, 0, sizeof c->s_held);
  relay_server_tracked(c, held.data + held.off, held.len - held.off, c->s_held_scan);
  bytes_free(&held);
}

/* JS's gate refused a held acknowledgment: the client gets `err` in its place (the write may have been
 * applied but is not rollback-proof), then the end of the connection; the database leg closes now. */
static void refuse_held(conn_t *c, uint8_t *err, size_t len, const char *why) {
  c->holding = false;
  bytes_free(&c->s_held);
  if (len >= 4) err[3] = c->s_held_seq;
  c->final_pkt.off = c->final_pkt.len = 0;
  if (bytes_append(&c->final_pkt, err, len) != 0) {
    conn_close(c, "proxy_error", "out of memory");
    return;
  }
  snprintf(c->outcome, sizeof c->outcome, "ack_refused");
  snprintf(c->error, sizeof c->error, "%s", why);
  c->refused = true; /* nothing more from the client reaches the database */
  if (c->pfd >= 0) {
    if (c->pmask) epoll_ctl(c->w->epfd, EPOLL_CTL_DEL, c->pfd, NULL);
    c->pmask = 0;
    close(c->pfd);
    c->pfd = -1;
  }
  c->pout.off = c->pout.len = 0;
  c->peer_eof = true;      /* check_ends sends final_pkt, close_notify, and ends the client side */
  c->peer_wr_shut = true;
  c->deadline_ms = now_ms() + CLOSE_GRACE_MS;
}

/* Read plaintext from the peer and encrypt it for the client. */
static bool read_peer(conn_t *c) {
  if (!c->p_readable || !reads_peer(c)) return false;
  /* Room in front for a carried packet start (strict freshness). */
  uint8_t *buf = c->w->plainbuf + sizeof c->s_carry;
  ssize_t n = recv(c->pfd, buf, PLAIN_CHUNK, 0);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
      c->p_readable = false;
      return false;
    }
    if (c->phase == PH_DIRECT) conn_close(c, "backend_error", strerror(errno));
    else conn_close(c, "protocol_error", "the session's end of the relay failed");
    return true;
  }
  if (n == 0) {
    c->peer_eof = true;
    c->p_readable = false;
    return true;
  }
  if (n < PLAIN_CHUNK) c->p_readable = false;
  if (c->phase == PH_DIRECT) {
    /* Idle means no traffic either way (Node's socket timeout, the JS plane's rule): a result that
     * streams for longer than the idle limit is not idle. */
    c->last_activity_ms = now_ms();
    c->bytes_out += (uint64_t)n;
    atomic_fetch_add(&c->w->e->bytes_out, (unsigned long long)n);
    if (c->tracker) {
      size_t len = (size_t)n;
      if (c->s_carry_len > 0) {
        buf -= c->s_carry_len;
        memcpy(buf, c->s_carry, c->s_carry_len);
        len += c->s_carry_len;
        c->s_carry_len = 0;
      }
      relay_server_tracked(c, buf, len, 0);
      if (!c->dead) flush_client(c);
      return true;
    }
  }
  if (!tls_send(c, buf, (size_t)n)) return true;
  flush_client(c);
  return true;
}

static void send_close_notify(conn_t *c) {
  if (c->close_notify_sent) return;
  c->close_notify_sent = true;
  SSL_shutdown(c->ssl);
  ERR_clear_error();
}

/* Phase transitions driven by ends of stream. */
static bool check_ends(conn_t *c) {
  switch (c->phase) {
  case PH_AUTH:
    if (c->peer_eof) {
      /* JS ended its side: what it wrote has been encrypted; now give it every client byte we
       * decrypted for it and end ours, so it knows it has them all. */
      c->phase = PH_SWITCHING;
      return true;
    }
    if (c->client_eof) {
      /* The client left during authentication: the session is over (JS hears it as EV_CLOSED). */
      conn_close(c, "client_closed", NULL);
      return true;
    }
    return false;
  case PH_SWITCHING:
    if (c->graceful_finish) c->pout.off = c->pout.len = 0; /* the session is ending: no one will read them */
    if (bytes_pending(&c->pout) == 0 && tls_out_pending(c) == 0) {
      if (c->pfd >= 0) {
        if (c->pmask) epoll_ctl(c->w->epfd, EPOLL_CTL_DEL, c->pfd, NULL);
        c->pmask = 0;
        close(c->pfd); /* JS reads what is left, then EOF */
        c->pfd = -1;
      }
      c->phase = PH_WAIT;
      return true;
    }
    return false;
  case PH_WAIT:
    if (c->graceful_finish && tls_out_pending(c) == 0) {
      send_close_notify(c);
      flush_client(c);
      if (c->dead) return true;
      shutdown(c->cfd, SHUT_WR);
      c->client_wr_shut = true;
      c->phase = PH_LINGER;
      c->deadline_ms = now_ms() + CLOSE_GRACE_MS;
      return true;
    }
    return false;
  case PH_DIRECT: {
    bool progress = false;
    if ((c->client_eof || c->refused) && bytes_pending(&c->pout) == 0 &&
        (bytes_pending(&c->c_unscanned) == 0 || c->refused) && !c->peer_wr_shut) {
      /* The client's end (or a refused change-user): the database answers what came before, then ends. */
      shutdown(c->pfd, SHUT_WR);
      c->peer_wr_shut = true;
      if (!c->deadline_ms) c->deadline_ms = now_ms() + CLOSE_GRACE_MS;
      progress = true;
    }
    if (c->peer_eof && !c->holding && tls_out_pending(c) == 0 && !c->client_wr_shut) {
      if (c->s_carry_len > 0) {
        /* The database ended inside a packet start: the client gets those bytes as they are. */
        size_t k = c->s_carry_len;
        c->s_carry_len = 0;
        if (!tls_send(c, c->s_carry, k)) return true;
      }
      if (bytes_pending(&c->final_pkt) > 0) {
        size_t k = bytes_pending(&c->final_pkt);
        c->final_pkt.off = c->final_pkt.len;
        if (!tls_send(c, c->final_pkt.data + c->final_pkt.len - k, k)) return true;
      }
      send_close_notify(c);
      flush_client(c);
      if (c->dead) return true;
      if (tls_out_pending(c) > 0) return true; /* finish once flushed */
      shutdown(c->cfd, SHUT_WR);
      c->client_wr_shut = true;
      if (c->client_eof) {
        conn_close(c, "ok", NULL);
        return true;
      }
      c->phase = PH_LINGER;
      c->deadline_ms = now_ms() + CLOSE_GRACE_MS;
      return true;
    }
    return progress;
  }
  case PH_LINGER:
    if (c->client_tcp_eof) {
      conn_close(c, "ok", NULL);
      return true;
    }
    return false;
  default:
    return false;
  }
}

/* Keeps the engine-wide `buffered` gauge in step with this connection (stats().buffered). */
static void account_buffered(conn_t *c) {
  size_t now = c->dead ? 0
                        : tls_out_pending(c) + (size_t)BIO_ctrl_pending(c->rbio) + bytes_pending(&c->pout) +
                              bytes_pending(&c->s_held) + bytes_pending(&c->c_unscanned);
  if (now != c->buffered) {
    atomic_fetch_add(&c->w->e->buffered, (long long)now - (long long)c->buffered);
    c->buffered = now;
  }
}

static void advance(conn_t *c) {
  for (int guard = 0; guard < 64 && !c->dead; guard++) {
    bool progress = false;
    if (tls_out_pending(c) > 0) progress |= flush_client(c);
    if (c->dead) return;
    progress |= flush_peer(c);
    if (c->dead) return;
    progress |= recv_client(c);
    if (c->dead) return;
    progress |= tls_step(c);
    if (c->dead) return;
    progress |= read_peer(c);
    if (c->dead) return;
    progress |= rescan_client(c);
    if (c->dead) return;
    progress |= check_ends(c);
    if (!progress) break;
  }
  if (!c->dead) update_interest(c);
  account_buffered(c);
}

/* ---- commands from JS ---- */

static void enqueue(worker_t *w, cmd_t *cmd) {
  pthread_mutex_lock(&w->qlock);
  if (w->qtail) w->qtail->next = cmd;
  else w->qhead = cmd;
  w->qtail = cmd;
  pthread_mutex_unlock(&w->qlock);
  uint64_t one = 1;
  ssize_t r = write(w->evfd, &one, sizeof one);
  (void)r;
}

static void run_command(worker_t *w, cmd_t *cmd) {
  if (cmd->type == CMD_ADD) {
    conn_t *c = cmd->conn;
    DBG("add id=%u cfd=%d pfd=%d rbio=%d", c->id, c->cfd, c->pfd, (int)BIO_ctrl_pending(c->rbio));
    table_put(w, c);
    c->c_readable = true; /* the ClientHello may already be waiting */
    advance(c);
    return;
  }
  conn_t *c = table_get(w, cmd->id);
  if (cmd->type == CMD_BYPASS) {
    if (!c || c->dead || c->phase != PH_WAIT) {
      close(cmd->fd);
      tracker_free(cmd->tracker);
      if (c && !c->dead) conn_close(c, "proxy_error", "bypass in the wrong state");
      return;
    }
    c->tracker = cmd->tracker;
    c->sc.tracker = cmd->tracker;
    c->pfd = cmd->fd;
    c->pmask = 0;
    c->peer_eof = false;
    c->peer_wr_shut = false;
    c->p_readable = true;
    c->phase = PH_DIRECT;
    c->idle_ms = cmd->idle_ms;
    c->last_activity_ms = now_ms();
    c->client_eof = false;
    if (cmd->len > 0) {
      /* Commands the session held (pipelined before the OK) go through the scanner like later ones. */
      size_t off = 0;
      while (off < cmd->len && !c->dead) {
        size_t k = cmd->len - off > PLAIN_CHUNK ? PLAIN_CHUNK : cmd->len - off;
        uint8_t *dst = w->plainbuf + CHANGE_USER_INSPECT + 8;
        memcpy(dst, cmd->data + off, k);
        forward_client_plain(c, dst, k);
        off += k;
      }
    }
    if (!c->dead) {
      c->c_readable = true; /* records may have arrived while we were not reading */
      advance(c);
    }
    return;
  }
  if (!c || c->dead) return;
  if (cmd->type == CMD_FINISH) {
    /* The session wrote its last words (an ERR) and ended its end: deliver them once read, then close.
     * Bounded: the sweep closes the connection at the deadline whatever happens. */
    if (c->phase == PH_HANDSHAKE || c->phase == PH_DIRECT || c->phase == PH_LINGER) {
      conn_close(c, "closed", NULL);
      return;
    }
    c->graceful_finish = true;
    c->deadline_ms = now_ms() + CLOSE_GRACE_MS;
    advance(c);
  } else if (cmd->type == CMD_CLOSE) {
    conn_close(c, "closed", NULL);
  } else if (cmd->type == CMD_RELEASE) {
    release_held(c);
    if (!c->dead) advance(c);
  } else if (cmd->type == CMD_REFUSE_ACK) {
    if (!c->holding) {
      conn_close(c, "proxy_error", "acknowledgment refused while none was held");
      return;
    }
    refuse_held(c, cmd->data, cmd->len, cmd->text ? cmd->text : "acknowledgment refused");
    if (!c->dead) advance(c);
  }
}

static void drain_commands(worker_t *w) {
  uint64_t v;
  ssize_t r = read(w->evfd, &v, sizeof v);
  (void)r;
  pthread_mutex_lock(&w->qlock);
  cmd_t *cmd = w->qhead;
  w->qhead = w->qtail = NULL;
  pthread_mutex_unlock(&w->qlock);
  while (cmd) {
    cmd_t *next = cmd->next;
    if (cmd->type == CMD_STOP) w->running = false;
    else run_command(w, cmd);
    free(cmd->data);
    free(cmd->text);
    free(cmd);
    cmd = next;
  }
}

static void sweep(worker_t *w) {
  int64_t now = now_ms();
  for (size_t b = 0; b < BUCKETS; b++) {
    conn_t *c = w->buckets[b];
    while (c) {
      conn_t *next = c->next_in_bucket;
      if (c->deadline_ms && now >= c->deadline_ms && !c->holding) {
        /* (A held acknowledgment is answered by the gate within its hold timeout; release re-arms.) */
        conn_close(c, "ok", NULL);
      } else if (c->phase == PH_DIRECT && c->idle_ms > 0 && now - c->last_activity_ms >= c->idle_ms) {
        snprintf(c->outcome, sizeof c->outcome, "idle_timeout");
        conn_close(c, "idle_timeout", "idle timeout");
      }
      c = next;
    }
  }
}

static void *worker_main(void *arg) {
  worker_t *w = arg;
  struct epoll_event evs[128];
  w->last_sweep = now_ms();
  while (w->running) {
    int n = epoll_wait(w->epfd, evs, 128, SWEEP_MS);
    for (int i = 0; i < n; i++) {
      endpoint_t *ep = evs[i].data.ptr;
      if (!ep) {
        drain_commands(w);
        continue;
      }
      conn_t *c = ep->c;
      if (c->dead) continue;
      uint32_t e = evs[i].events;
      if (ep->client) {
        if (e & (EPOLLIN | EPOLLHUP | EPOLLERR)) c->c_readable = true;
      } else {
        if (e & (EPOLLIN | EPOLLHUP | EPOLLERR)) c->p_readable = true;
      }
      advance(c);
    }
    int64_t now = now_ms();
    if (now - w->last_sweep >= SWEEP_MS) {
      w->last_sweep = now;
      sweep(w);
    }
    while (w->dead) {
      conn_t *c = w->dead;
      w->dead = c->next_dead;
      free_conn(c);
    }
  }
  /* stopping: close everything */
  for (size_t b = 0; b < BUCKETS; b++)
    while (w->buckets[b]) conn_close(w->buckets[b], "drained", NULL);
  while (w->dead) {
    conn_t *c = w->dead;
    w->dead = c->next_dead;
    free_conn(c);
  }
  return NULL;
}

/* ------------------------------------------------------------------------------------------------ */
/* N-API surface */

static void call_js(napi_env env, napi_value js_cb, void *context, void *data) {
  (void)context;
  event_t *ev = data;
  if (env && js_cb) {
    napi_value obj, v, undef;
    napi_create_object(env, &obj);
    napi_create_uint32(env, ev->id, &v);
    napi_set_named_property(env, obj, "id", v);
    if (ev->type == EV_HOLD) {
      napi_create_string_utf8(env, "hold", NAPI_AUTO_LENGTH, &v);
      napi_set_named_property(env, obj, "type", v);
    } else if (ev->type == EV_SECURE) {
      napi_create_string_utf8(env, "secure", NAPI_AUTO_LENGTH, &v);
      napi_set_named_property(env, obj, "type", v);
      napi_create_string_utf8(env, ev->a, NAPI_AUTO_LENGTH, &v);
      napi_set_named_property(env, obj, "protocol", v);
      napi_create_string_utf8(env, ev->b, NAPI_AUTO_LENGTH, &v);
      napi_set_named_property(env, obj, "cipher", v);
    } else {
      napi_create_string_utf8(env, "closed", NAPI_AUTO_LENGTH, &v);
      napi_set_named_property(env, obj, "type", v);
      napi_create_string_utf8(env, ev->a, NAPI_AUTO_LENGTH, &v);
      napi_set_named_property(env, obj, "outcome", v);
      if (ev->b[0]) {
        napi_create_string_utf8(env, ev->b, NAPI_AUTO_LENGTH, &v);
        napi_set_named_property(env, obj, "error", v);
      }
      if (ev->user[0]) {
        napi_create_string_utf8(env, ev->user, NAPI_AUTO_LENGTH, &v);
        napi_set_named_property(env, obj, "refusedUser", v);
      }
      napi_create_double(env, ev->bytes_in, &v);
      napi_set_named_property(env, obj, "bytesIn", v);
      napi_create_double(env, ev->bytes_out, &v);
      napi_set_named_property(env, obj, "bytesOut", v);
    }
    napi_get_undefined(env, &undef);
    napi_call_function(env, undef, js_cb, 1, &obj, NULL);
  }
  free(ev);
}

static engine_t *get_engine(napi_env env, napi_value v) {
  engine_t *e = NULL;
  if (napi_get_value_external(env, v, (void **)&e) != napi_ok || !e || e->destroyed) {
    napi_throw_error(env, NULL, "cdbp dataplane: engine is destroyed");
    return NULL;
  }
  return e;
}

static bool get_string(napi_env env, napi_value v, char *out, size_t cap, size_t *len) {
  size_t n = 0;
  if (napi_get_value_string_utf8(env, v, out, cap, &n) != napi_ok) return false;
  if (n >= cap - 1) return false;
  if (len) *len = n;
  return true;
}

static char *get_string_alloc(napi_env env, napi_value v, size_t *len) {
  size_t n = 0;
  if (napi_get_value_string_utf8(env, v, NULL, 0, &n) != napi_ok) return NULL;
  char *s = malloc(n + 1);
  if (!s) return NULL;
  napi_get_value_string_utf8(env, v, s, n + 1, &n);
  if (len) *len = n;
  return s;
}

/* Builds a server SSL_CTX from PEM text held in memory (the CAS-issued chain and key never touch disk). */
static SSL_CTX *build_ctx(const char *cert, size_t cert_len, const char *key, size_t key_len,
                          const char *ciphers, const char *suites, const char *groups, char *err, size_t err_cap) {
  SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
  BIO *bio = NULL;
  X509 *leaf = NULL;
  EVP_PKEY *pkey = NULL;
  if (!ctx) goto fail;
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_TICKET |
                               SSL_OP_NO_COMPRESSION);
  SSL_CTX_set_num_tickets(ctx, 0);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  /* Idle connections give their record buffers back: 5,000 idle clients must stay cheap. */
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  if (ciphers[0] && SSL_CTX_set_cipher_list(ctx, ciphers) != 1) goto fail;
  if (suites[0] && SSL_CTX_set_ciphersuites(ctx, suites) != 1) goto fail;
  if (groups[0] && SSL_CTX_set1_groups_list(ctx, groups) != 1) goto fail;
  bio = BIO_new_mem_buf(cert, (int)cert_len);
  if (!bio) goto fail;
  leaf = PEM_read_bio_X509(bio, NULL, NULL, NULL);
  if (!leaf || SSL_CTX_use_certificate(ctx, leaf) != 1) goto fail;
  for (;;) {
    X509 *ca = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    if (!ca) break;
    if (SSL_CTX_add0_chain_cert(ctx, ca) != 1) {
      X509_free(ca);
      goto fail;
    }
  }
  ERR_clear_error(); /* end of the chain */
  BIO_free(bio);
  bio = BIO_new_mem_buf(key, (int)key_len);
  if (!bio) goto fail;
  pkey = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
  if (!pkey || SSL_CTX_use_PrivateKey(ctx, pkey) != 1 || SSL_CTX_check_private_key(ctx) != 1) goto fail;
  EVP_PKEY_free(pkey);
  X509_free(leaf);
  BIO_free(bio);
  return ctx;
fail:
  ssl_error_text(err, err_cap, "TLS identity rejected");
  if (pkey) EVP_PKEY_free(pkey);
  if (leaf) X509_free(leaf);
  if (bio) BIO_free(bio);
  if (ctx) SSL_CTX_free(ctx);
  return NULL;
}

/* A connection lives on worker (id % n) for its whole life: commands are routed by id alone. */
static worker_t *worker_of(engine_t *e, uint32_t id) { return e->workers[id % (uint32_t)e->nworkers]; }

/* setIdentity(engine, certPem, keyPem, ciphers, suites, groups) */
static napi_value js_set_identity(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  NAPI_OK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  engine_t *e = get_engine(env, argv[0]);
  if (!e) return NULL;
  size_t cert_len = 0, key_len = 0;
  char *cert = get_string_alloc(env, argv[1], &cert_len);
  char *key = get_string_alloc(env, argv[2], &key_len);
  char ciphers[2048], suites[512], groups[256];
  if (argc < 6 || !cert || !key || !get_string(env, argv[3], ciphers, sizeof ciphers, NULL) ||
      !get_string(env, argv[4], suites, sizeof suites, NULL) || !get_string(env, argv[5], groups, sizeof groups, NULL)) {
    free(cert);
    if (key) OPENSSL_cleanse(key, key_len);
    free(key);
    napi_throw_error(env, NULL, "cdbp dataplane: setIdentity(engine, certPem, keyPem, ciphers, suites, groups)");
    return NULL;
  }
  char err[300] = "";
  SSL_CTX *ctx = build_ctx(cert, cert_len, key, key_len, ciphers, suites, groups, err, sizeof err);
  OPENSSL_cleanse(key, key_len);
  free(key);
  free(cert);
  if (!ctx) {
    napi_throw_error(env, NULL, err);
    return NULL;
  }
  pthread_mutex_lock(&e->ctx_lock);
  SSL_CTX *old = e->ctx;
  e->ctx = ctx;
  pthread_mutex_unlock(&e->ctx_lock);
  if (old) SSL_CTX_free(old); /* connections hold their own reference */
  return NULL;
}

/* create({ workers, forbidden: string[], errPrefix, errSuffix, errno, sqlState }, onEvent) */
static napi_value js_create(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], v;
  NAPI_OK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  engine_t *e = calloc(1, sizeof *e);
  if (!e) {
    napi_throw_error(env, NULL, "cdbp dataplane: out of memory");
    return NULL;
  }
  uint32_t workers = 1, errnum = 1045;
  NAPI_OK(napi_get_named_property(env, argv[0], "workers", &v));
  napi_get_value_uint32(env, v, &workers);
  if (workers < 1) workers = 1;
  if (workers > MAX_WORKERS) workers = MAX_WORKERS;
  NAPI_OK(napi_get_named_property(env, argv[0], "errno", &v));
  napi_get_value_uint32(env, v, &errnum);
  e->err_errno = (uint16_t)errnum;
  NAPI_OK(napi_get_named_property(env, argv[0], "sqlState", &v));
  char sqlstate[16];
  if (!get_string(env, v, sqlstate, sizeof sqlstate, NULL) || strlen(sqlstate) != 5) goto bad;
  memcpy(e->err_sqlstate, sqlstate, 6);
  NAPI_OK(napi_get_named_property(env, argv[0], "errPrefix", &v));
  if (!get_string(env, v, (char *)e->err_prefix, sizeof e->err_prefix, &e->err_prefix_len)) goto bad;
  NAPI_OK(napi_get_named_property(env, argv[0], "errSuffix", &v));
  if (!get_string(env, v, (char *)e->err_suffix, sizeof e->err_suffix, &e->err_suffix_len)) goto bad;
  NAPI_OK(napi_get_named_property(env, argv[0], "forbidden", &v));
  uint32_t nf = 0;
  NAPI_OK(napi_get_array_length(env, v, &nf));
  if (nf > MAX_FORBIDDEN) goto bad;
  for (uint32_t i = 0; i < nf; i++) {
    napi_value s;
    NAPI_OK(napi_get_element(env, v, i, &s));
    if (!get_string(env, s, e->forbidden.names[i], sizeof e->forbidden.names[i], &e->forbidden.lens[i])) goto bad;
  }
  e->forbidden.count = (int)nf;
  napi_value name;
  NAPI_OK(napi_create_string_utf8(env, "cdbp-dataplane", NAPI_AUTO_LENGTH, &name));
  NAPI_OK(napi_create_threadsafe_function(env, argv[1], NULL, name, 0, 1, NULL, NULL, NULL, call_js, &e->tsfn));
  napi_unref_threadsafe_function(env, e->tsfn);
  pthread_mutex_init(&e->ctx_lock, NULL);
  e->nworkers = (int)workers;
  for (int i = 0; i < e->nworkers; i++) {
    worker_t *w = calloc(1, sizeof *w);
    if (!w) goto bad;
    w->e = e;
    w->running = true;
    w->epfd = epoll_create1(EPOLL_CLOEXEC);
    w->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    pthread_mutex_init(&w->qlock, NULL);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (w->epfd < 0 || w->evfd < 0 || epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->evfd, &ev) != 0 ||
        pthread_create(&w->thread, NULL, worker_main, w) != 0) {
      /* Not started: nothing to join. Workers already running stay (the engine is unusable and tiny). */
      if (w->epfd >= 0) close(w->epfd);
      if (w->evfd >= 0) close(w->evfd);
      free(w);
      napi_throw_error(env, NULL, "cdbp dataplane: cannot start a worker (epoll/eventfd/thread)");
      return NULL;
    }
    e->workers[i] = w;
  }
  napi_value out;
  NAPI_OK(napi_create_external(env, e, NULL, NULL, &out));
  return out;
bad:
  napi_throw_error(env, NULL, "cdbp dataplane: bad create() options");
  return NULL;
}

/* adopt(engine, clientFd, prefix: Buffer) -> [id, jsFd] */
static napi_value js_adopt(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  NAPI_OK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  engine_t *e = get_engine(env, argv[0]);
  if (!e) return NULL;
  int32_t fd = -1;
  NAPI_OK(napi_get_value_int32(env, argv[1], &fd));
  void *prefix = NULL;
  size_t prefix_len = 0;
  NAPI_OK(napi_get_buffer_info(env, argv[2], &prefix, &prefix_len));
  pthread_mutex_lock(&e->ctx_lock);
  SSL *ssl = e->ctx ? SSL_new(e->ctx) : NULL;
  pthread_mutex_unlock(&e->ctx_lock);
  if (!ssl) {
    napi_throw_error(env, NULL, "cdbp dataplane: no TLS identity");
    return NULL;
  }
  int cfd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  int sv[2];
  if (cfd < 0 || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    if (cfd >= 0) close(cfd);
    SSL_free(ssl);
    napi_throw_error(env, NULL, "cdbp dataplane: dup/socketpair failed");
    return NULL;
  }
  set_nonblock(cfd);
  set_nonblock(sv[0]);
  conn_t *c = xcalloc(sizeof *c);
  c->id = atomic_fetch_add(&e->next_id, 1) + 1;
  worker_t *w = worker_of(e, c->id);
  c->ssl = ssl;
  c->rbio = BIO_new(BIO_s_mem());
  c->wbio = BIO_new(BIO_s_mem());
  BIO_set_mem_eof_return(c->rbio, -1);
  SSL_set_bio(ssl, c->rbio, c->wbio);
  SSL_set_accept_state(ssl);
  if (prefix_len > 0) BIO_write(c->rbio, prefix, (int)prefix_len);
  c->cfd = cfd;
  c->pfd = sv[0];
  c->cep.c = c;
  c->cep.client = true;
  c->pep.c = c;
  c->pep.client = false;
  c->phase = PH_HANDSHAKE;
  c->sc.last_command = -1;
  c->p_readable = true;
  c->w = w;
  atomic_fetch_add(&e->open, 1);
  uint32_t id = c->id;
  cmd_t *cmd = xcalloc(sizeof *cmd);
  cmd->type = CMD_ADD;
  cmd->conn = c;
  enqueue(w, cmd); /* the worker owns c from here: it may already be closed and freed */
  napi_value out, a, b;
  NAPI_OK(napi_create_array_with_length(env, 2, &out));
  NAPI_OK(napi_create_uint32(env, id, &a));
  NAPI_OK(napi_create_int32(env, sv[1], &b));
  napi_set_element(env, out, 0, a);
  napi_set_element(env, out, 1, b);
  return out;
}

/* bypass(engine, id, backendFd, leftover: Buffer, idleMs, gate?: { deprecateEof, cacheMetadata }) */
static napi_value js_bypass(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  NAPI_OK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  engine_t *e = get_engine(env, argv[0]);
  if (!e) return NULL;
  uint32_t id;
  int32_t fd;
  double idle;
  void *data;
  size_t len;
  NAPI_OK(napi_get_value_uint32(env, argv[1], &id));
  NAPI_OK(napi_get_value_int32(env, argv[2], &fd));
  NAPI_OK(napi_get_buffer_info(env, argv[3], &data, &len));
  NAPI_OK(napi_get_value_double(env, argv[4], &idle));
  tracker_t *tracker = NULL;
  napi_valuetype gate_type = napi_undefined;
  if (argc > 5) NAPI_OK(napi_typeof(env, argv[5], &gate_type));
  if (gate_type == napi_object) {
    napi_value v;
    bool deprecate_eof = false, cache_metadata = false;
    NAPI_OK(napi_get_named_property(env, argv[5], "deprecateEof", &v));
    NAPI_OK(napi_get_value_bool(env, v, &deprecate_eof));
    NAPI_OK(napi_get_named_property(env, argv[5], "cacheMetadata", &v));
    NAPI_OK(napi_get_value_bool(env, v, &cache_metadata));
    tracker = tracker_new(deprecate_eof, cache_metadata);
    if (!tracker) {
      napi_throw_error(env, NULL, "cdbp dataplane: out of memory for the response tracker");
      return NULL;
    }
  }
  int dfd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (dfd < 0) {
    tracker_free(tracker);
    napi_throw_error(env, NULL, "cdbp dataplane: dup failed");
    return NULL;
  }
  set_nonblock(dfd);
  cmd_t *cmd = xcalloc(sizeof *cmd);
  cmd->type = CMD_BYPASS;
  cmd->id = id;
  cmd->fd = dfd;
  cmd->tracker = tracker;
  cmd->idle_ms = (int64_t)idle;
  if (len > 0) {
    cmd->data = xmalloc(len);
    memcpy(cmd->data, data, len);
    cmd->len = len;
  }
  enqueue(worker_of(e, id), cmd);
  return NULL;
}

static napi_value simple_cmd(napi_env env, napi_callback_info info, cmd_type type) {
  size_t argc = 3;
  napi_value argv[3];
  NAPI_OK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  engine_t *e = get_engine(env, argv[0]);
  if (!e) return NULL;
  cmd_t *cmd = xcalloc(sizeof *cmd);
  cmd->type = type;
  NAPI_OK(napi_get_value_uint32(env, argv[1], &cmd->id));
  enqueue(worker_of(e, cmd->id), cmd);
  return NULL;
}
static napi_value js_finish(napi_env env, napi_callback_info info) { return simple_cmd(env, info, CMD_FINISH); }
static napi_value js_close(napi_env env, napi_callback_info info) { return simple_cmd(env, info, CMD_CLOSE); }
static napi_value js_release(napi_env env, napi_callback_info info) { return simple_cmd(env, info, CMD_RELEASE); }

/* refuseAck(engine, id, errPacket: Buffer, why: string): the ERR replaces the held acknowledgment. */
static napi_value js_refuse_ack(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  NAPI_OK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  engine_t *e = get_engine(env, argv[0]);
  if (!e) return NULL;
  uint32_t id;
  void *data;
  size_t len;
  NAPI_OK(napi_get_value_uint32(env, argv[1], &id));
  NAPI_OK(napi_get_buffer_info(env, argv[2], &data, &len));
  size_t why_len = 0;
  char *why = get_string_alloc(env, argv[3], &why_len);
  if (!why) {
    napi_throw_type_error(env, NULL, "cdbp dataplane: refuseAck needs the reason as a string");
    return NULL;
  }
  cmd_t *cmd = xcalloc(sizeof *cmd);
  cmd->type = CMD_REFUSE_ACK;
  cmd->id = id;
  cmd->data = xmalloc(len > 0 ? len : 1);
  memcpy(cmd->data, data, len);
  cmd->len = len;
  cmd->text = why;
  enqueue(worker_of(e, id), cmd);
  return NULL;
}

/* stats(engine) -> { open, bytesIn, bytesOut, buffered } */
static napi_value js_stats(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], out, v;
  NAPI_OK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  engine_t *e = get_engine(env, argv[0]);
  if (!e) return NULL;
  NAPI_OK(napi_create_object(env, &out));
  napi_create_int32(env, atomic_load(&e->open), &v);
  napi_set_named_property(env, out, "open", v);
  napi_create_double(env, (double)atomic_load(&e->bytes_in), &v);
  napi_set_named_property(env, out, "bytesIn", v);
  napi_create_double(env, (double)atomic_load(&e->bytes_out), &v);
  napi_set_named_property(env, out, "bytesOut", v);
  napi_create_double(env, (double)atomic_load(&e->buffered), &v);
  napi_set_named_property(env, out, "buffered", v);
  return out;
}

/* destroy(engine): closes every connection, joins the workers. The engine memory is kept (tiny) so a
 * late call gets a clean "destroyed" error instead of a use-after-free. */
static napi_value js_destroy(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  NAPI_OK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  engine_t *e = get_engine(env, argv[0]);
  if (!e) return NULL;
  for (int i = 0; i < e->nworkers; i++) {
    cmd_t *cmd = xcalloc(sizeof *cmd);
    cmd->type = CMD_STOP;
    enqueue(e->workers[i], cmd);
  }
  for (int i = 0; i < e->nworkers; i++) {
    worker_t *w = e->workers[i];
    pthread_join(w->thread, NULL);
    close(w->epfd);
    close(w->evfd);
    cmd_t *cmd = w->qhead;
    while (cmd) {
      cmd_t *next = cmd->next;
      if (cmd->type == CMD_ADD) free_conn(cmd->conn);
      if (cmd->type == CMD_BYPASS) {
        close(cmd->fd);
        tracker_free(cmd->tracker);
      }
      free(cmd->data);
      free(cmd->text);
      free(cmd);
      cmd = next;
    }
    free(w);
    e->workers[i] = NULL;
  }
  e->destroyed = true;
  if (e->ctx) SSL_CTX_free(e->ctx);
  e->ctx = NULL;
  napi_release_threadsafe_function(e->tsfn, napi_tsfn_release);
  return NULL;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"create", NULL, js_create, NULL, NULL, NULL, napi_default, NULL},
      {"setIdentity", NULL, js_set_identity, NULL, NULL, NULL, napi_default, NULL},
      {"adopt", NULL, js_adopt, NULL, NULL, NULL, napi_default, NULL},
      {"bypass", NULL, js_bypass, NULL, NULL, NULL, napi_default, NULL},
      {"finish", NULL, js_finish, NULL, NULL, NULL, napi_default, NULL},
      {"close", NULL, js_close, NULL, NULL, NULL, napi_default, NULL},
      {"release", NULL, js_release, NULL, NULL, NULL, napi_default, NULL},
      {"refuseAck", NULL, js_refuse_ack, NULL, NULL, NULL, napi_default, NULL},
      {"stats", NULL, js_stats, NULL, NULL, NULL, napi_default, NULL},
      {"destroy", NULL, js_destroy, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  tracker_register_test_api(env, exports);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
