/*
 * The relay of one connection (relay.h lists the layers): buffers, the client scanner, the steps that
 * move bytes between the client's TLS and the peer (the session's socketpair, then the database), the
 * ends of stream, and the commands JS sends. No threads and no N-API here: a worker (worker.c) or the
 * test harness drives it; TLS records and events go through the engine's relay_io_t.
 */
#include "relay.h"

#include <openssl/err.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int bytes_append(bytes_t *b, const uint8_t *p, size_t n) {
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
size_t bytes_pending(const bytes_t *b) { return b->len - b->off; }
void bytes_free(bytes_t *b) {
  free(b->data);
  memset(b, 0, sizeof *b);
}
/* ------------------------------------------------------------------------------------------------ */
/* Client stream scanner: the C twin of proxy/mysql/client-scanner.ts, with the response tracker
 * (tracker.c) as its command sink under strict freshness. See that file for the protocol reasoning;
 * test/integration/mysql-native.test.ts and the mysql-robustness suite run the same cases on both planes. */

static bool is_forbidden(const forbidden_t *f, const uint8_t *name, size_t len) {
  for (int i = 0; i < f->count; i++)
    if (f->lens[i] == len && memcmp(f->names[i], name, len) == 0) return true;
  return false;
}


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

/* Allocation failure is not a state this relay can serve in: stop, like Node does. */
void *xcalloc(size_t n) {
  void *p = calloc(1, n);
  if (!p) abort();
  return p;
}
void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) abort();
  return p;
}

int dbg_on = -1;

int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void set_nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

void ssl_error_text(char *out, size_t cap, const char *what) {
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

static void emit(engine_t *e, event_t *ev) { e->io->emit(e, ev); }

/* ---- connection table (worker-local) ---- */

void table_put(worker_t *w, conn_t *c) {
  size_t b = c->id % BUCKETS;
  c->next_in_bucket = w->buckets[b];
  w->buckets[b] = c;
}
conn_t *table_get(worker_t *w, uint32_t id) {
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

void free_conn(conn_t *c) {
  if (c->ssl) SSL_free(c->ssl); /* frees both BIOs */
  bytes_free(&c->pout);
  bytes_free(&c->final_pkt);
  bytes_free(&c->s_held);
  bytes_free(&c->c_unscanned);
  tracker_free(c->tracker);
  free(c);
}

/* The single cleanup: deregister, close both fds, report, free after the current epoll batch. */
void conn_close(conn_t *c, const char *outcome, const char *error) {
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
    int err = c->w->e->io->ssl_get_error(c->ssl, r);
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
    int n = c->w->e->io->ssl_read(c->ssl, dst, PLAIN_CHUNK);
    if (n > 0) {
      if (c->phase == PH_DIRECT) c->last_activity_ms = now_ms();
      forward_client_plain(c, dst, (size_t)n);
      progress = true;
      continue;
    }
    int err = c->w->e->io->ssl_get_error(c->ssl, n);
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
  if (c->w->e->io->ssl_write(c->ssl, p, (int)n) != (int)n) {
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

void advance(conn_t *c) {
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

void run_command(worker_t *w, cmd_t *cmd) {
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

void sweep(worker_t *w) {
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


