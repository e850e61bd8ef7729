/*
 * The native data plane's relay (see dataplane.c for the connection life cycle): its types and the
 * functions its files share. Layers, one file each:
 *   relay.c      buffers, the client scanner, the relay steps of one connection, commands from JS
 *   worker.c     worker threads: epoll loop and command queue
 *   dataplane.c  the N-API module: engine, TLS identity, adopt/bypass/..., the production I/O table
 *   tracker.c    the response tracker (strict freshness), pure
 * The relay reaches TLS records and JS only through relay_io_t, so the test harness
 * (test/support/native-relay-harness.c) links relay.c against fakes.
 */
#ifndef CDBP_RELAY_H
#define CDBP_RELAY_H

#define _GNU_SOURCE
/* The N-API level the module builds against (dataplane.c and the harness define it first too). */
#ifndef NAPI_VERSION
#define NAPI_VERSION 8
#endif
#include <node_api.h>
#include <openssl/ssl.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <pthread.h>

#include "tracker.h"
#include "wire.h"

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

/* Small byte buffer (pending bytes towards the backend / the JS end). */
typedef struct {
  uint8_t *data;
  size_t len, off, cap;
} bytes_t;


/* Client stream scanner state: see relay.c. */
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


typedef enum { SCAN_OK, SCAN_REFUSED, SCAN_TRACKER_FULL, SCAN_UNTRACKABLE } scan_result;

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

/* What the relay does through a table instead of calling directly: decrypting and encrypting client
 * records, and handing an event to JS. The module (dataplane.c) fills it with OpenSSL's functions and
 * the threadsafe function; the test harness (test/support/native-relay-harness.c) with fakes. */
typedef struct {
  int (*ssl_read)(SSL *ssl, void *buf, int num);
  int (*ssl_write)(SSL *ssl, const void *buf, int num);
  int (*ssl_get_error)(const SSL *ssl, int ret);
  /* Takes ownership of ev. */
  void (*emit)(engine_t *e, event_t *ev);
} relay_io_t;

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
  const relay_io_t *io;
};


/* CDBP_DP_DEBUG=1: connection add/close lines on stderr (ids and outcomes only, never data). */
extern int dbg_on;
#define DBG(...) do { if (dbg_on < 0) dbg_on = getenv("CDBP_DP_DEBUG") != NULL; if (dbg_on) { fprintf(stderr, "dp: " __VA_ARGS__); fputc('\n', stderr); } } while (0)

/* ---- relay.c ---- */

int bytes_append(bytes_t *b, const uint8_t *p, size_t n);
size_t bytes_pending(const bytes_t *b);
void bytes_free(bytes_t *b);

void *xcalloc(size_t n);
void *xmalloc(size_t n);
int64_t now_ms(void);
void set_nonblock(int fd);
/* The OpenSSL error queue as text, prefixed by `what`; clears the queue. */
void ssl_error_text(char *out, size_t cap, const char *what);

/* The worker's connection table (id -> connection). */
void table_put(worker_t *w, conn_t *c);
conn_t *table_get(worker_t *w, uint32_t id);

/* The single cleanup: deregister, close both fds, report EV_CLOSED, free after the current epoll batch. */
void conn_close(conn_t *c, const char *outcome, const char *error);
void free_conn(conn_t *c);
/* Runs every relay step until none makes progress, then updates the epoll interest. */
void advance(conn_t *c);
/* A command from JS, on the worker that owns the connection. */
void run_command(worker_t *w, cmd_t *cmd);
/* Closes connections past their deadline or idle limit. */
void sweep(worker_t *w);

/* ---- worker.c ---- */

/* Queues a command for the worker (any thread) and wakes it. */
void enqueue(worker_t *w, cmd_t *cmd);
/* The worker thread: epoll loop over its connections and its command queue. */
void *worker_main(void *arg);

#endif
