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
 *
 * Files (relay.h lists them): this one is the N-API module (engine, TLS identity, the calls above, the
 * production I/O table); relay.c the relay of one connection; worker.c the threads; tracker.c the
 * response tracker; wire.h the wire constants.
 */
#define NAPI_VERSION 8
#include "relay.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define NAPI_OK(call)                                                                  \
  do {                                                                                 \
    if ((call) != napi_ok) {                                                           \
      napi_throw_error(env, NULL, "cdbp dataplane: N-API call failed: " #call);        \
      return NULL;                                                                     \
    }                                                                                  \
  } while (0)

/* The relay's I/O in production: OpenSSL's record layer, and events to JS on its thread. */
static void emit_to_js(engine_t *e, event_t *ev) {
  if (napi_call_threadsafe_function(e->tsfn, ev, napi_tsfn_nonblocking) != napi_ok) free(ev);
}
static const relay_io_t PRODUCTION_IO = {
    .ssl_read = SSL_read, .ssl_write = SSL_write, .ssl_get_error = SSL_get_error, .emit = emit_to_js};

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
  e->io = &PRODUCTION_IO;
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
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
