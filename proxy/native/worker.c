/*
 * The native data plane's worker threads (relay.h lists the layers): each an epoll loop owning its
 * connections; JS talks to them through a command queue (mutex + eventfd) and hears back through the
 * engine's threadsafe function. Connections are found by id, never by pointer, so a late command for
 * a closed connection is harmless.
 */
#include "relay.h"

#include <sys/epoll.h>
#include <unistd.h>

void enqueue(worker_t *w, cmd_t *cmd) {
  pthread_mutex_lock(&w->qlock);
  if (w->qtail) w->qtail->next = cmd;
  else w->qhead = cmd;
  w->qtail = cmd;
  pthread_mutex_unlock(&w->qlock);
  uint64_t one = 1;
  ssize_t r = write(w->evfd, &one, sizeof one);
  (void)r;
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

void *worker_main(void *arg) {
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
