/*
 * Test harness for the native relay's strict-freshness framing: test/unit/native-relay.test.ts builds
 * it (cc, with tracker.c) and drives it against the JS reference, GatedPump (proxy/mysql/pump.ts).
 *
 * Why: the hold guarantee (the packet ending a write's acknowledgment, and everything after it, reaches
 * the client only once the gate releases it; nothing before it waits) lives in dataplane.c's framing code:
 * relay_server_tracked with its carry of split packet starts, release_held, refuse_held, and on the other
 * side scan_and_forward with the tracker, SCAN_TRACKER_FULL and rescan_client. The integration suites
 * reach that code only through real TLS sockets and timing, so they cannot choose where reads split or
 * when a release comes. Here the test chooses both, byte for byte, identically for both implementations.
 *
 * How (white box): this file is linked with relay.c and tracker.c (the production relay, unchanged)
 * and runs it on one connection in the direct phase (as CMD_BYPASS leaves it, with a tracker), through
 * an I/O table of fakes (relay_io_t, relay.h) instead of the module's:
 *   - TLS: ssl_read hands out the client plaintext the test queued, one queued chunk (at most
 *     PLAIN_CHUNK) per call like one record; ssl_write captures what would be encrypted for the client.
 *     There is no SSL object, no handshake, no ciphertext (the BIOs exist, and stay empty).
 *   - emit: the events (EV_HOLD, EV_CLOSED) are recorded here instead of queued for the JS thread.
 *   - the worker thread: run() is the body of worker_main on the test's thread: advance(), then
 *     advance() again for every epoll event on the database socket, until nothing is ready.
 *   - the database: the other end of a socketpair, written and read by the test.
 * Release and refusal go through run_command, like JS's release()/refuseAck().
 * Observed: the bytes for the client, the bytes the database received (and its end of stream), the
 * EV_HOLD count, and the connection state the test compares or checks (holding, carry, bytes the
 * scanner or the tracker's backpressure keep back, pending commands, the client side's end, the
 * outcome).
 *
 * One connection at a time: the replaced functions get no context that leads back to a connection.
 * Not a production file: the module it builds exports only the relay* functions below.
 */
#define NAPI_VERSION 8
#include "../../proxy/native/relay.h"

#include <errno.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define NAPI_OK(call)                                                                  \
  do {                                                                                 \
    if ((call) != napi_ok) {                                                           \
      napi_throw_error(env, NULL, "native relay harness: N-API call failed: " #call);  \
      return NULL;                                                                     \
    }                                                                                  \
  } while (0)

/* Client plaintext queued by the test, not read by the relay yet. */
typedef struct chunk {
  struct chunk *next;
  size_t len, off;
  uint8_t data[];
} chunk_t;

static struct {
  bool open;
  engine_t engine;
  worker_t *w;
  conn_t *c;
  int db_fd;            /* the database's end of the socketpair */
  chunk_t *in_head, *in_tail;
  bool client_ended;    /* the client sent close_notify after the queued chunks */
  bytes_t to_client;    /* plaintext for the client, not taken by the test yet */
  uint32_t holds;       /* EV_HOLD events */
  bool db_saw_end;      /* the database read the end of the stream */
  char outcome[64];     /* EV_CLOSED, when the connection closed */
  char error[400];
} h;

/* ---- the replaced functions ---- */

static int harness_ssl_read(SSL *ssl, void *buf, int num) {
  (void)ssl;
  chunk_t *k = h.in_head;
  if (!k) return h.client_ended ? 0 : -1;
  size_t n = k->len - k->off < (size_t)num ? k->len - k->off : (size_t)num;
  memcpy(buf, k->data + k->off, n);
  k->off += n;
  if (k->off == k->len) {
    h.in_head = k->next;
    if (!h.in_head) h.in_tail = NULL;
    free(k);
  }
  return (int)n;
}

/* Only asked after SSL_read returned <= 0: no record yet, or the client's close_notify. */
static int harness_ssl_get_error(const SSL *ssl, int ret) {
  (void)ssl;
  return ret == 0 ? SSL_ERROR_ZERO_RETURN : SSL_ERROR_WANT_READ;
}

static int harness_ssl_write(SSL *ssl, const void *buf, int num) {
  (void)ssl;
  if (bytes_append(&h.to_client, buf, (size_t)num) != 0) abort();
  return num;
}

static void harness_emit(engine_t *e, event_t *ev) {
  (void)e;
  if (ev->type == EV_HOLD) h.holds++;
  if (ev->type == EV_CLOSED) {
    snprintf(h.outcome, sizeof h.outcome, "%s", ev->a);
    snprintf(h.error, sizeof h.error, "%s", ev->b);
  }
  free(ev);
}

static const relay_io_t HARNESS_IO = {
    .ssl_read = harness_ssl_read, .ssl_write = harness_ssl_write, .ssl_get_error = harness_ssl_get_error, .emit = harness_emit};

/* ---- the worker loop, on this thread ---- */

/* Rounds of epoll events before run() gives up: far more than any test step needs (a step moves at
 * most a few MiB); reaching it means the relay keeps reporting interest it never acts on. */
#define MAX_ROUNDS 100000

static bool run(napi_env env) {
  advance(h.c);
  for (int round = 0; !h.c->dead; round++) {
    struct epoll_event evs[4];
    int n = epoll_wait(h.w->epfd, evs, 4, 0);
    if (n <= 0) return true;
    if (round == MAX_ROUNDS) {
      napi_throw_error(env, NULL, "native relay harness: the relay does not settle (a busy loop)");
      return false;
    }
    for (int i = 0; i < n && !h.c->dead; i++) {
      endpoint_t *ep = evs[i].data.ptr;
      if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) ep->c->p_readable = true;
      advance(ep->c);
    }
  }
  return true;
}

/* ---- N-API ---- */

static bool require_open(napi_env env) {
  if (!h.open) napi_throw_error(env, NULL, "native relay harness: no connection (relayOpen first)");
  return h.open;
}

static bool buffer_arg(napi_env env, napi_callback_info info, void **data, size_t *len) {
  size_t argc = 1;
  napi_value arg;
  bool is_buffer = false;
  if (napi_get_cb_info(env, info, &argc, &arg, NULL, NULL) != napi_ok || argc < 1 ||
      napi_is_buffer(env, arg, &is_buffer) != napi_ok || !is_buffer ||
      napi_get_buffer_info(env, arg, data, len) != napi_ok) {
    napi_throw_type_error(env, NULL, "native relay harness: expected a Buffer");
    return false;
  }
  return true;
}

static napi_value take(napi_env env, bytes_t *b) {
  napi_value out;
  void *copy;
  NAPI_OK(napi_create_buffer_copy(env, bytes_pending(b), b->len > b->off ? b->data + b->off : (void *)"", &copy, &out));
  b->off = b->len = 0;
  return out;
}

/* relayOpen(deprecateEof, cacheMetadata): a connection in the direct phase under strict freshness. */
static napi_value relay_open(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  bool deprecate_eof = false, cache_metadata = false;
  NAPI_OK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 2 || napi_get_value_bool(env, argv[0], &deprecate_eof) != napi_ok ||
      napi_get_value_bool(env, argv[1], &cache_metadata) != napi_ok) {
    napi_throw_type_error(env, NULL, "native relay harness: relayOpen(deprecateEof, cacheMetadata)");
    return NULL;
  }
  if (h.open) {
    napi_throw_error(env, NULL, "native relay harness: a connection is already open (relayClose first)");
    return NULL;
  }
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    napi_throw_error(env, NULL, "native relay harness: socketpair failed");
    return NULL;
  }
  int epfd = epoll_create1(EPOLL_CLOEXEC);
  if (epfd < 0) {
    close(sv[0]);
    close(sv[1]);
    napi_throw_error(env, NULL, "native relay harness: epoll_create1 failed");
    return NULL;
  }
  /* Small socket buffers, smaller than many test steps, so both directions meet backpressure: the
   * relay's pending bytes for the database (and its pause of the client), and server bytes the socket
   * takes only once the relay reads again (after a release). */
  int small = 32 << 10;
  setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
  setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
  set_nonblock(sv[0]);
  set_nonblock(sv[1]);
  memset(&h, 0, sizeof h);
  h.engine.io = &HARNESS_IO;
  h.w = xcalloc(sizeof *h.w);
  h.w->e = &h.engine;
  h.w->epfd = epfd;
  conn_t *c = xcalloc(sizeof *c);
  c->id = 1;
  c->w = h.w;
  c->phase = PH_DIRECT;
  c->cfd = -1; /* the client is the SSL_read/SSL_write pair above */
  c->pfd = sv[0];
  c->cep = (endpoint_t){.c = c, .client = true};
  c->pep = (endpoint_t){.c = c, .client = false};
  c->rbio = BIO_new(BIO_s_mem());
  c->wbio = BIO_new(BIO_s_mem());
  c->close_notify_sent = true; /* no SSL object to shut down */
  c->sc.last_command = -1;
  c->tracker = tracker_new(deprecate_eof, cache_metadata);
  c->sc.tracker = c->tracker;
  c->p_readable = true;
  table_put(h.w, c);
  atomic_fetch_add(&h.engine.open, 1);
  h.c = c;
  h.db_fd = sv[1];
  h.open = true;
  return NULL;
}

/* relayClient(bytes): decrypted client bytes (one record's worth per PLAIN_CHUNK). */
static napi_value relay_client(napi_env env, napi_callback_info info) {
  void *data;
  size_t len;
  if (!buffer_arg(env, info, &data, &len) || !require_open(env)) return NULL;
  if (len > 0) {
    chunk_t *k = xmalloc(sizeof *k + len);
    k->next = NULL;
    k->len = len;
    k->off = 0;
    memcpy(k->data, data, len);
    if (h.in_tail) h.in_tail->next = k;
    else h.in_head = k;
    h.in_tail = k;
  }
  run(env);
  return NULL;
}

/* relayClientEnd(): the client's close_notify, after the bytes queued so far. */
static napi_value relay_client_end(napi_env env, napi_callback_info info) {
  (void)info;
  if (!require_open(env)) return NULL;
  h.client_ended = true;
  run(env);
  return NULL;
}

/* relayServer(bytes) -> how many the database socket accepted (the test retries the rest later). */
static napi_value relay_server(napi_env env, napi_callback_info info) {
  void *data;
  size_t len;
  if (!buffer_arg(env, info, &data, &len) || !require_open(env)) return NULL;
  ssize_t n = len > 0 ? send(h.db_fd, data, len, MSG_NOSIGNAL) : 0;
  if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
    napi_throw_error(env, NULL, "native relay harness: the relay's database socket is closed");
    return NULL;
  }
  if (!run(env)) return NULL;
  napi_value out;
  NAPI_OK(napi_create_uint32(env, n > 0 ? (uint32_t)n : 0, &out));
  return out;
}

/* relayServerEnd(): the database ends its side. */
static napi_value relay_server_end(napi_env env, napi_callback_info info) {
  (void)info;
  if (!require_open(env)) return NULL;
  shutdown(h.db_fd, SHUT_WR);
  run(env);
  return NULL;
}

/* relayRelease() / relayRefuse(errPacket): JS's answer to EV_HOLD. */
static napi_value relay_release(napi_env env, napi_callback_info info) {
  (void)info;
  if (!require_open(env)) return NULL;
  cmd_t cmd = {.type = CMD_RELEASE, .id = h.c->id};
  run_command(h.w, &cmd);
  run(env);
  return NULL;
}

static napi_value relay_refuse(napi_env env, napi_callback_info info) {
  void *data;
  size_t len;
  if (!buffer_arg(env, info, &data, &len) || !require_open(env)) return NULL;
  char why[] = "refused by the test";
  cmd_t cmd = {.type = CMD_REFUSE_ACK, .id = h.c->id, .data = xmalloc(len), .len = len, .text = why};
  memcpy(cmd.data, data, len);
  run_command(h.w, &cmd);
  free(cmd.data);
  run(env);
  return NULL;
}

/* relayTakeClient() -> Buffer: the bytes for the client since the last call. */
static napi_value relay_take_client(napi_env env, napi_callback_info info) {
  (void)info;
  if (!require_open(env)) return NULL;
  return take(env, &h.to_client);
}

/* relayTakeDatabase() -> Buffer: what the database received since the last call. Reading makes room in
 * the socket, so the relay runs again until it has nothing more to write. */
static napi_value relay_take_database(napi_env env, napi_callback_info info) {
  (void)info;
  if (!require_open(env)) return NULL;
  bytes_t got = {0};
  for (;;) {
    uint8_t buf[65536];
    ssize_t n;
    while ((n = recv(h.db_fd, buf, sizeof buf, 0)) > 0)
      if (bytes_append(&got, buf, (size_t)n) != 0) abort();
    if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
      h.db_saw_end = true; /* FIN, or a reset: the relay closed its end */
      break;
    }
    if (h.c->dead || bytes_pending(&h.c->pout) == 0) break;
    if (!run(env)) { /* advance() flushes into the room just made */
      bytes_free(&got);
      return NULL;
    }
  }
  napi_value out = take(env, &got);
  bytes_free(&got);
  return out;
}

static bool set_number(napi_env env, napi_value o, const char *name, double value) {
  napi_value v;
  return napi_create_double(env, value, &v) == napi_ok && napi_set_named_property(env, o, name, v) == napi_ok;
}
static bool set_bool(napi_env env, napi_value o, const char *name, bool value) {
  napi_value v;
  return napi_get_boolean(env, value, &v) == napi_ok && napi_set_named_property(env, o, name, v) == napi_ok;
}
static bool set_string(napi_env env, napi_value o, const char *name, const char *value) {
  napi_value v;
  return napi_create_string_utf8(env, value, NAPI_AUTO_LENGTH, &v) == napi_ok && napi_set_named_property(env, o, name, v) == napi_ok;
}

/* relayState() -> RelayState (see the test). The connection stays allocated until relayClose, so its
 * state is readable after it closed too. */
static napi_value relay_state(napi_env env, napi_callback_info info) {
  (void)info;
  if (!require_open(env)) return NULL;
  const conn_t *c = h.c;
  napi_value o;
  NAPI_OK(napi_create_object(env, &o));
  if (!set_number(env, o, "holds", h.holds) || !set_bool(env, o, "holding", c->holding) ||
      !set_number(env, o, "carry", (double)c->s_carry_len) || !set_number(env, o, "scanHeld", (double)c->sc.held_len) ||
      !set_number(env, o, "unscanned", (double)bytes_pending(&c->c_unscanned)) ||
      !set_number(env, o, "pending", (double)tracker_pending(c->tracker)) ||
      !set_bool(env, o, "clientEnded", c->client_wr_shut) || !set_bool(env, o, "databaseEnded", h.db_saw_end) ||
      !set_bool(env, o, "closed", c->dead) || !set_string(env, o, "outcome", h.outcome) ||
      !set_string(env, o, "error", h.error)) {
    napi_throw_error(env, NULL, "native relay harness: cannot build the state object");
    return NULL;
  }
  return o;
}

/* relayClose(): closes the connection if it is open (as CMD_CLOSE would) and frees everything. */
static napi_value relay_close(napi_env env, napi_callback_info info) {
  (void)info;
  (void)env;
  if (!h.open) return NULL;
  conn_t *c = h.c;
  if (!c->dead) conn_close(c, "closed", NULL);
  /* free_conn frees the BIOs through the SSL object, which does not exist here. */
  BIO_free(c->rbio);
  BIO_free(c->wbio);
  free_conn(c);
  close(h.db_fd);
  close(h.w->epfd);
  free(h.w);
  while (h.in_head) {
    chunk_t *next = h.in_head->next;
    free(h.in_head);
    h.in_head = next;
  }
  bytes_free(&h.to_client);
  memset(&h, 0, sizeof h);
  return NULL;
}

static napi_value harness_exports(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"relayOpen", NULL, relay_open, NULL, NULL, NULL, napi_default, NULL},
      {"relayClient", NULL, relay_client, NULL, NULL, NULL, napi_default, NULL},
      {"relayClientEnd", NULL, relay_client_end, NULL, NULL, NULL, napi_default, NULL},
      {"relayServer", NULL, relay_server, NULL, NULL, NULL, napi_default, NULL},
      {"relayServerEnd", NULL, relay_server_end, NULL, NULL, NULL, napi_default, NULL},
      {"relayRelease", NULL, relay_release, NULL, NULL, NULL, napi_default, NULL},
      {"relayRefuse", NULL, relay_refuse, NULL, NULL, NULL, napi_default, NULL},
      {"relayTakeClient", NULL, relay_take_client, NULL, NULL, NULL, napi_default, NULL},
      {"relayTakeDatabase", NULL, relay_take_database, NULL, NULL, NULL, napi_default, NULL},
      {"relayState", NULL, relay_state, NULL, NULL, NULL, napi_default, NULL},
      {"relayClose", NULL, relay_close, NULL, NULL, NULL, napi_default, NULL},
  };
  NAPI_OK(napi_define_properties(env, exports, sizeof props / sizeof props[0], props));
  return exports;
}

NAPI_MODULE_INIT() { return harness_exports(env, exports); }
