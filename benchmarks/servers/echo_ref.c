/*
 * echo_ref.c -- reference TCP echo server in C: the ceiling for the Python servers.
 *
 * Build (echo_compare.py does this into benchmarks/build/):
 *     cc -O2 -Wall -Wextra -o benchmarks/build/echo_ref benchmarks/servers/echo_ref.c
 * Usage:
 *     echo_ref --host 127.0.0.1 --port N        (port 0: any free port)
 *
 * Prints "listening on HOST:PORT" (flushed) once the listener is bound, serves until
 * SIGINT or SIGTERM, then closes everything and exits with status 0.
 *
 * What it is: one thread, one edge-triggered epoll set, one shared 64 KiB buffer. Each
 * socket is registered once for EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET and never
 * modified, so the steady state costs one epoll_wait per batch plus one read() and one write() per message,
 * which is the least any readiness-based server can do. Accepted sockets get TCP_NODELAY.
 *
 * Edge-triggered means a readiness edge is reported once, so every handler must leave its
 * socket in a state where the next edge is guaranteed to come:
 *
 *  - Reading stops at EAGAIN or at a short read. A short read from a TCP socket means the
 *    receive queue was empty when read() returned; any byte queued later wakes the epoll
 *    set again, so skipping the read() that would return EAGAIN is safe and saves a
 *    syscall per message. Not so for the peer's FIN: one that came in with the last bytes
 *    (a request, then close) was reported by the same edge, and a short read leaves it
 *    unread with no edge to come. So once an event says EPOLLRDHUP/EPOLLHUP/EPOLLERR
 *    (sticky, c->hung_up), reading goes on to the 0 or the error.
 *  - Writing: what the kernel does not take is copied into the connection's own pending
 *    buffer (the shared buffer is reused for the next read), and reading from that
 *    connection stops until the pending bytes are sent after an EPOLLOUT edge. No data is
 *    ever dropped, and a client that sends without reading holds at most one buffer here.
 *    Once the pending bytes are out we read again at once: the EPOLLIN edge for data that
 *    arrived while reading was suspended has already been consumed.
 *  - Accepting loops until EAGAIN for the same reason.
 *
 * Connections live in a table indexed by fd and the epoll data is the fd, not a pointer, so
 * closing a connection (which also removes it from the epoll set) leaves nothing dangling.
 * Signals arrive through a signalfd in the same epoll set: no handler races epoll_wait.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF_SIZE 65536
#define MAX_EVENTS 256
/* Kernel clamps this to net.core.somaxconn; ask for plenty so connection bursts (the idle
 * scenario opens thousands) are not dropped by a short accept queue. */
#define LISTEN_BACKLOG 65535

struct conn {
    int open;
    int hung_up; /* an event said the peer closed (EPOLLRDHUP, EPOLLHUP, EPOLLERR) */
    char *pending; /* bytes the kernel did not take yet (malloc'd), or NULL */
    size_t pending_len, pending_off;
};

static char buf[BUF_SIZE];
static struct conn *conns;
static size_t nconns;

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static struct conn *conn_slot(int fd)
{
    if ((size_t)fd >= nconns) {
        size_t n = nconns ? nconns : 1024;
        while (n <= (size_t)fd)
            n *= 2;
        struct conn *grown = realloc(conns, n * sizeof *conns);
        if (grown == NULL)
            die("realloc");
        memset(grown + nconns, 0, (n - nconns) * sizeof *conns);
        conns = grown;
        nconns = n;
    }
    return &conns[fd];
}

static void close_conn(int fd)
{
    struct conn *c = &conns[fd];
    free(c->pending);
    memset(c, 0, sizeof *c);
    close(fd); /* also removes fd from the epoll set (it is never dup'd) */
}

/* Send p[0..n); keep what the kernel does not take. 1: all sent, 0: kept, -1: error. */
static int send_or_keep(int fd, struct conn *c, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
        } else if (w < 0 && errno == EINTR) {
            continue;
        } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            c->pending = malloc(n);
            if (c->pending == NULL)
                return -1;
            memcpy(c->pending, p, n);
            c->pending_len = n;
            c->pending_off = 0;
            return 0;
        } else {
            return -1;
        }
    }
    return 1;
}

/* Send pending bytes. 1: all sent (pending freed), 0: still pending, -1: error. */
static int flush_pending(int fd, struct conn *c)
{
    while (c->pending_off < c->pending_len) {
        ssize_t w = send(fd, c->pending + c->pending_off, c->pending_len - c->pending_off,
                         MSG_NOSIGNAL);
        if (w > 0)
            c->pending_off += (size_t)w;
        else if (w < 0 && errno == EINTR)
            continue;
        else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        else
            return -1;
    }
    free(c->pending);
    c->pending = NULL;
    c->pending_len = c->pending_off = 0;
    return 1;
}

static void on_conn_event(int fd, uint32_t events)
{
    struct conn *c = &conns[fd];
    int readable = (events & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP)) != 0;
    if (events & (EPOLLRDHUP | EPOLLERR | EPOLLHUP))
        c->hung_up = 1;
    if (c->pending != NULL) {
        int r = flush_pending(fd, c);
        if (r < 0) {
            close_conn(fd);
            return;
        }
        if (r == 0)
            return; /* reading stays suspended until the next EPOLLOUT edge */
        readable = 1; /* see the header: data may have arrived while we were not reading */
    }
    if (!readable)
        return; /* e.g. the EPOLLOUT edge right after registration */
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n > 0) {
            int r = send_or_keep(fd, c, buf, (size_t)n);
            if (r < 0) {
                close_conn(fd);
                return;
            }
            if (r == 0 || ((size_t)n < sizeof buf && !c->hung_up))
                return; /* waiting for EPOLLOUT, or the receive queue is empty */
        } else if (n == 0) {
            close_conn(fd);
            return;
        } else if (errno == EINTR) {
            continue;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            return;
        } else {
            close_conn(fd);
            return;
        }
    }
}

static void accept_all(int ep, int lfd)
{
    static int warned_fd_limit;
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
                continue;
            if ((errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) &&
                !warned_fd_limit) {
                /* Left in the accept queue; retried on the next incoming connection. */
                perror("accept4 (connections wait in the queue)");
                warned_fd_limit = 1;
            }
            return; /* EAGAIN: queue drained */
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = conn_slot(fd);
        c->open = 1;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                                 .data.fd = fd};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
            perror("epoll_ctl");
            close_conn(fd);
        }
    }
}

static int open_listener(const char *host, const char *port)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        fprintf(stderr, "getaddrinfo %s:%s: %s\n", host, port, gai_strerror(rc));
        exit(1);
    }
    int lfd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0)
        die("socket");
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, res->ai_addr, res->ai_addrlen) < 0)
        die("bind");
    freeaddrinfo(res);
    if (listen(lfd, LISTEN_BACKLOG) < 0)
        die("listen");

    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    char h[NI_MAXHOST], p[NI_MAXSERV];
    if (getsockname(lfd, (struct sockaddr *)&ss, &len) < 0)
        die("getsockname");
    rc = getnameinfo((struct sockaddr *)&ss, len, h, sizeof h, p, sizeof p,
                     NI_NUMERICHOST | NI_NUMERICSERV);
    if (rc != 0) {
        fprintf(stderr, "getnameinfo: %s\n", gai_strerror(rc));
        exit(1);
    }
    printf("listening on %s:%s\n", h, p);
    fflush(stdout);
    return lfd;
}

static int usage(const char *argv0)
{
    fprintf(stderr, "usage: %s --host HOST --port PORT\n", argv0);
    return 2;
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1", *port = "0";
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--host") == 0 && i + 1 < argc)
            host = argv[++i];
        else if (strcmp(argv[i], "--port") == 0 && i + 1 < argc)
            port = argv[++i];
        else
            return usage(argv[0]);
    }

    /* Block SIGINT/SIGTERM and receive them through a signalfd in the epoll set. */
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGTERM);
    if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
        die("sigprocmask");
    int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sfd < 0)
        die("signalfd");
    signal(SIGPIPE, SIG_IGN); /* send() uses MSG_NOSIGNAL; this is belt and braces */

    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1");
    int lfd = open_listener(host, port);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.fd = lfd};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) < 0)
        die("epoll_ctl listener");
    ev = (struct epoll_event){.events = EPOLLIN, .data.fd = sfd};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &ev) < 0)
        die("epoll_ctl signalfd");

    struct epoll_event events[MAX_EVENTS];
    for (int running = 1; running;) {
        int n = epoll_wait(ep, events, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == lfd)
                accept_all(ep, lfd);
            else if (fd == sfd)
                running = 0;
            else
                on_conn_event(fd, events[i].events);
        }
    }

    for (size_t fd = 0; fd < nconns; fd++)
        if (conns[fd].open)
            close_conn((int)fd);
    free(conns);
    close(lfd);
    close(sfd);
    close(ep);
    return 0;
}
