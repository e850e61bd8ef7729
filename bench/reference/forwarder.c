/*
 * The "physics" reference for the MySQL benchmark: the cheapest user-space hop we can build, so the
 * proxy's cost can be read against it. A TCP listener on 127.0.0.1 that relays every connection, byte for
 * byte, to a unix socket (MariaDB's), with no TLS, no protocol knowledge and no logic at all.
 *
 *   forwarder <backend-unix-socket>      prints "port N" on stdout once listening; exits when stdin closes
 *
 * One thread, level-triggered epoll, non-blocking sockets. Each connection is a pair of ends; each end
 * owns a buffer of bytes read from it and not yet written to its peer. Backpressure is the classic rule:
 * an end is read only while its buffer is empty, and a partial write parks the rest and waits for
 * EPOLLOUT on the peer, so a slow reader stalls its writer instead of growing memory.
 * Built on demand by bench/lib/c-forwarder.ts (cc -O2); never part of the product.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define BUF 65536

struct pair;
struct end {
  int fd;
  int eof;              /* read() returned 0: the peer's write side has been shut down */
  size_t off, len;      /* buf[off, len) was read from this end and still has to reach the peer */
  unsigned registered;  /* the epoll interest currently set, to skip redundant epoll_ctl calls */
  struct end *peer;
  struct pair *pair;
  char buf[BUF];
};
struct pair { struct end e[2]; int dead; struct pair *next_dead; };

static int ep;
static struct pair *graveyard; /* closed pairs, freed after the current epoll batch (events may still point at them) */

static void kill_pair(struct pair *p) {
  if (p->dead) return;
  p->dead = 1;
  close(p->e[0].fd); /* closing removes the fd from the epoll set */
  close(p->e[1].fd);
  p->next_dead = graveyard;
  graveyard = p;
}

/* Level-triggered interest follows state: read while our buffer is empty, write while the peer has bytes for us. */
static void update(struct end *e) {
  unsigned want = (!e->eof && e->len == 0 ? EPOLLIN : 0) | (e->peer->len > 0 ? EPOLLOUT : 0);
  if (want == e->registered) return;
  struct epoll_event ev = { .events = want, .data.ptr = e };
  epoll_ctl(ep, EPOLL_CTL_MOD, e->fd, &ev);
  e->registered = want;
}

/* Writes what `src` read to its peer; a partial write leaves the rest for EPOLLOUT. Returns -1 on a dead socket. */
static int flush(struct end *src) {
  while (src->off < src->len) {
    ssize_t w = write(src->peer->fd, src->buf + src->off, src->len - src->off);
    if (w < 0) return errno == EAGAIN || errno == EINTR ? 0 : -1;
    src->off += (size_t)w;
  }
  src->off = src->len = 0;
  if (src->eof) shutdown(src->peer->fd, SHUT_WR); /* pass the half-close on once everything before it arrived */
  return 0;
}

static void on_event(struct end *e, unsigned events) {
  struct pair *p = e->pair;
  if (events & EPOLLERR) goto end_pair;
  if ((events & EPOLLOUT) && flush(e->peer) < 0) goto end_pair; /* the peer's parked bytes can move on */
  if ((events & (EPOLLIN | EPOLLHUP)) && !e->eof && e->len == 0) {
    ssize_t n = read(e->fd, e->buf, BUF);
    if (n > 0) e->len = (size_t)n;
    else if (n == 0) e->eof = 1;
    else if (errno != EAGAIN && errno != EINTR) goto end_pair;
    if (flush(e) < 0) goto end_pair;
  } else if ((events & EPOLLHUP) && !(events & EPOLLOUT)) {
    goto end_pair; /* hung up while we were not reading from it (level-triggered: it would fire forever) */
  }
  if (p->e[0].eof && p->e[1].eof && p->e[0].len == 0 && p->e[1].len == 0) goto end_pair; /* both halves closed */
  update(e);
  update(e->peer);
  return;
end_pair:
  kill_pair(p);
}

static void accept_all(int lfd, const struct sockaddr_un *backend) {
  for (;;) {
    int c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (c < 0) return; /* EAGAIN: backlog drained (or a transient error; level-triggered epoll retries) */
    int one = 1;
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* as MariaDB and the proxy do: no Nagle delay */
    /* A blocking connect to a local unix socket completes at once (or fails); only then go non-blocking. */
    int b = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (b < 0 || connect(b, (const struct sockaddr *)backend, sizeof *backend) < 0
        || fcntl(b, F_SETFL, O_NONBLOCK) < 0) {
      if (b >= 0) close(b);
      close(c);
      continue;
    }
    struct pair *p = calloc(1, sizeof *p);
    if (!p) { close(b); close(c); continue; }
    int fds[2] = { c, b };
    for (int i = 0; i < 2; i++) {
      struct end *e = &p->e[i];
      e->fd = fds[i];
      e->peer = &p->e[1 - i];
      e->pair = p;
      e->registered = EPOLLIN;
      struct epoll_event ev = { .events = EPOLLIN, .data.ptr = e };
      epoll_ctl(ep, EPOLL_CTL_ADD, e->fd, &ev);
    }
  }
}

int main(int argc, char **argv) {
  if (argc != 2 || strlen(argv[1]) >= sizeof ((struct sockaddr_un *)0)->sun_path) {
    fprintf(stderr, "usage: forwarder <backend-unix-socket>\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN); /* a peer that went away shows up as EPIPE from write(), not as a signal */
  struct sockaddr_un backend = { .sun_family = AF_UNIX };
  strcpy(backend.sun_path, argv[1]);

  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in addr = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK), .sin_port = 0 };
  socklen_t alen = sizeof addr;
  if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(lfd, 4096) < 0
      || getsockname(lfd, (struct sockaddr *)&addr, &alen) < 0) {
    perror("forwarder: listen");
    return 1;
  }
  ep = epoll_create1(EPOLL_CLOEXEC);
  /* data.ptr NULL marks the listener, &ep marks stdin (our parent's pipe: its EOF means "stop"). */
  struct epoll_event lev = { .events = EPOLLIN, .data.ptr = NULL }, sev = { .events = EPOLLIN, .data.ptr = &ep };
  epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev);
  epoll_ctl(ep, EPOLL_CTL_ADD, 0, &sev);
  printf("port %d\n", ntohs(addr.sin_port));
  fflush(stdout);

  struct epoll_event evs[256];
  for (;;) {
    int n = epoll_wait(ep, evs, 256, -1);
    if (n < 0 && errno != EINTR) return 1;
    for (int i = 0; i < n; i++) {
      if (evs[i].data.ptr == NULL) accept_all(lfd, &backend);
      else if (evs[i].data.ptr == &ep) {
        char c;
        if (read(0, &c, 1) <= 0) return 0;
      } else {
        struct end *e = evs[i].data.ptr;
        if (!e->pair->dead) on_event(e, evs[i].events);
      }
    }
    while (graveyard) { struct pair *p = graveyard; graveyard = p->next_dead; free(p); }
  }
}
