/*
 * loadgen.c -- small single-threaded epoll load generator for millpond benchmarks.
 *
 * Build:  cc -O2 -Wall -Wextra -o benchmarks/build/loadgen benchmarks/loadgen.c
 *
 * Modes:
 *   loadgen echo HOST PORT CONNS SIZE DURATION_S [WARMUP_S [INFLIGHT]]
 *       CONNS TCP connections (TCP_NODELAY), each keeping exactly one SIZE-byte message
 *       in flight: send it, read back exactly SIZE bytes, verify every byte, repeat.
 *       Every message has a pattern derived from (connection id, message sequence number),
 *       so stale, duplicated, truncated, misordered or cross-connection echoes are detected.
 *       INFLIGHT (default 1, at most 64) > 1 keeps that many messages in flight per
 *       connection: sending and receiving are decoupled (the next message goes out while
 *       earlier echoes are still being read).  Then, and for any SIZE > 4096 (where filling
 *       each message would cost the client more than the syscalls), each message is a
 *       SIZE-byte window of a
 *       pseudo-random pool (SIZE + 64 KiB, made once), at an offset derived from
 *       (connection id, sequence number): sent from the pool and compared against it byte
 *       for byte, with no per-message fill, so large messages cost the client only the
 *       syscalls and a memcmp.  Latency is from the first send() of a message to the last
 *       byte of its echo.
 *       Round trips completing during the DURATION_S window that follows WARMUP_S
 *       (default 1) are counted.  Prints "# measure start" and "# measure end" marker lines
 *       on stdout (flushed) at the window boundaries, then one JSON line with the results.
 *       Exit status: 0 ok, 1 setup/usage failure, 2 echo mismatch, 3 a connection failed
 *       (reset/closed by the server) during the run.
 *
 *   loadgen idle HOST PORT CONNS HOLD_S [RATE]
 *   loadgen flood HOST PORT CONNS HOLD_S [RATE]
 *       Like idle, but once all CONNS are up every connection writes 64 KiB chunks
 *       whenever it can and never reads: the client that costs a server the most.
 *       The JSON line adds bytes_written (what send() took, all connections) and its
 *       minimum, median and maximum per connection (conn_bytes_min/_p50/_max).
 *       Opens CONNS connections, paced at RATE new connections per second (default 5000)
 *       with a bounded number of connects in progress, retrying with backoff on
 *       ECONNREFUSED/EAGAIN/ETIMEDOUT.  Sends nothing.  Prints "connected N" (flushed) when
 *       all are up, then holds them for HOLD_S seconds, or until stdin (if it is a pipe)
 *       is closed, or until SIGTERM/SIGINT.  Finally prints one JSON line and exits.
 *
 *   loadgen churn HOST PORT PARALLEL DURATION_S [WARMUP_S]
 *       PARALLEL slots, each repeatedly: non-blocking connect, send one 64-byte message,
 *       read back and verify the 64 bytes, close, start again.  Counts completed
 *       connections (and the connect-to-echo time of each) in the DURATION_S window after
 *       WARMUP_S (default 1), with the same "# measure start"/"# measure end" markers as
 *       echo.  Failures (refused/reset/closed connections, connect errors such as
 *       EADDRNOTAVAIL, mismatches) are counted, the slot backs off 1 ms and reconnects;
 *       the run goes on.  Exit status 0, or 1 on usage/setup failure.
 *
 *   loadgen --proxy v1|v2 MODE ...
 *       Every connection starts with a PROXY protocol header (HAProxy's send-proxy /
 *       send-proxy-v2), naming the connection's own source and destination as TCP4, as
 *       a balancer would for its client: 45-ish bytes of text (v1) or 28 binary (v2).
 *       echo: sent alone right after connecting, then 100 ms before the first messages
 *       (the header of a long connection, before the client speaks); churn: in the same
 *       send() as the 64-byte message (a balancer forwarding a client that spoke first).
 *       The echo checks are unchanged: the server must consume the header.
 *       idle and flood send no header.
 *
 * Only IPv4 literal addresses are accepted (the benchmarks use 127.0.0.1).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 1024

/* ------------------------------------------------------------------ utilities */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double cpu_seconds(double *user, double *sys)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    *user = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6;
    *sys = (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    return *user + *sys;
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static int set_nonblocking(int fd)
{
    int fl = fcntl(fd, F_GETFL, 0);
    if (fl < 0)
        return -1;
    return fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static void die(const char *what)
{
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* ------------------------------------------------------------------ PROXY header */

static int g_proxy = 0; /* 0: none, 1: v1, 2: v2 (--proxy) */

#define PROXY_MAX 108 /* a v1 line is at most 107 bytes; a TCP4 v2 header 28 */

/* The PROXY header for a TCP4 connection from src to dst, into out; its length. */
static size_t proxy_header(uint8_t *out, const struct sockaddr_in *src,
                           const struct sockaddr_in *dst)
{
    if (g_proxy == 1) {
        char a[INET_ADDRSTRLEN], b[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &src->sin_addr, a, sizeof a);
        inet_ntop(AF_INET, &dst->sin_addr, b, sizeof b);
        int n = snprintf((char *)out, PROXY_MAX, "PROXY TCP4 %s %s %u %u\r\n", a, b,
                         ntohs(src->sin_port), ntohs(dst->sin_port));
        return (size_t)n;
    }
    static const uint8_t signature[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                          0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
    memcpy(out, signature, sizeof signature);
    out[12] = 0x21; /* version 2, PROXY */
    out[13] = 0x11; /* TCP over IPv4 */
    out[14] = 0;
    out[15] = 12; /* the address block: two addresses, two ports */
    memcpy(out + 16, &src->sin_addr, 4);
    memcpy(out + 20, &dst->sin_addr, 4);
    memcpy(out + 24, &src->sin_port, 2);
    memcpy(out + 26, &dst->sin_port, 2);
    return 28;
}

/* The header for connected (or connecting) socket fd to dst; its length. */
static size_t proxy_header_for(int fd, const struct sockaddr_in *dst, uint8_t *out)
{
    struct sockaddr_in src;
    socklen_t len = sizeof src;
    if (getsockname(fd, (struct sockaddr *)&src, &len) < 0)
        die("getsockname");
    return proxy_header(out, &src, dst);
}

static long parse_long(const char *s, const char *name, long min, long max)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end != '\0' || v < min || v > max) {
        fprintf(stderr, "loadgen: invalid %s: %s (expected %ld..%ld)\n", name, s, min, max);
        exit(1);
    }
    return v;
}

static double parse_double(const char *s, const char *name, double min, double max)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end != '\0' || !(v >= min && v <= max)) {
        fprintf(stderr, "loadgen: invalid %s: %s (expected %g..%g)\n", name, s, min, max);
        exit(1);
    }
    return v;
}

static struct sockaddr_in parse_addr(const char *host, const char *port)
{
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)parse_long(port, "PORT", 1, 65535));
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        fprintf(stderr, "loadgen: HOST must be an IPv4 address literal: %s\n", host);
        exit(1);
    }
    return sa;
}

static volatile sig_atomic_t g_stop = 0;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

static void install_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

/* ------------------------------------------------------------------ histogram
 * Log-linear histogram of nanosecond values: exact below 128 ns, then 64 sub-buckets per
 * power of two (relative error < 1/64).  Covers up to 2^40 ns (~18 minutes).
 */
#define HIST_SUB_BITS 6
#define HIST_SUB (1u << HIST_SUB_BITS)
#define HIST_MAX_SHIFT 34
#define HIST_BUCKETS (2 * HIST_SUB + HIST_MAX_SHIFT * HIST_SUB)

static uint64_t hist[HIST_BUCKETS];

static unsigned hist_index(uint64_t v)
{
    if (v < 2 * HIST_SUB)
        return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = msb - HIST_SUB_BITS; /* >= 1 */
    if (shift > HIST_MAX_SHIFT)
        return HIST_BUCKETS - 1;
    return 2 * HIST_SUB + (shift - 1) * HIST_SUB + (unsigned)((v >> shift) - HIST_SUB);
}

/* Midpoint of a bucket, in ns. */
static double hist_value(unsigned idx)
{
    if (idx < 2 * HIST_SUB)
        return (double)idx;
    unsigned shift = (idx - 2 * HIST_SUB) / HIST_SUB + 1;
    uint64_t sub = (idx - 2 * HIST_SUB) % HIST_SUB + HIST_SUB;
    uint64_t lo = sub << shift;
    return (double)lo + (double)(1ull << shift) / 2.0;
}

static double hist_percentile(uint64_t total, double q)
{
    if (total == 0)
        return 0.0;
    uint64_t rank = (uint64_t)(q * (double)total);
    if (rank >= total)
        rank = total - 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        seen += hist[i];
        if (seen > rank)
            return hist_value(i);
    }
    return hist_value(HIST_BUCKETS - 1);
}

/* ------------------------------------------------------------------ payload pattern */

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* Fill buf with the pattern of message `seq` on connection `conn`. */
static void fill_pattern(uint8_t *buf, size_t size, uint32_t conn, uint64_t seq)
{
    uint64_t state = splitmix64(((uint64_t)conn << 40) ^ seq);
    size_t i = 0;
    while (i < size) {
        state = splitmix64(state);
        for (int b = 0; b < 8 && i < size; b++, i++)
            buf[i] = (uint8_t)(state >> (8 * b));
    }
}

/* ------------------------------------------------------------------ echo mode */

enum { ST_SEND, ST_RECV, ST_DEAD };

struct econn {
    int fd;
    int state;
    uint32_t id;
    uint64_t seq;
    size_t off; /* bytes sent (ST_SEND) or received (ST_RECV) of the current message */
    uint64_t t0;
    uint8_t *expect; /* the message being sent / expected back */
    uint8_t *rbuf;
    int want_out; /* EPOLLOUT currently registered */
    /* INFLIGHT > 1 only: messages [rseq, sseq) are in flight; slots indexed seq % inflight */
    uint64_t sseq, rseq;
    size_t soff, roff;
    uint64_t t0s[64];
    size_t offs[64]; /* pattern-pool offset of each message in flight */
};

#define MAX_INFLIGHT 64
#define POOL_SLACK 65536
#define POOL_MIN_SIZE 4097 /* messages this large use the pool even with INFLIGHT 1 */

static int connect_blocking(const struct sockaddr_in *sa, uint64_t deadline)
{
    uint64_t backoff_us = 1000;
    for (;;) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            die("socket");
        if (connect(fd, (const struct sockaddr *)sa, sizeof *sa) == 0)
            return fd;
        int err = errno;
        close(fd);
        if ((err == ECONNREFUSED || err == EAGAIN || err == ETIMEDOUT || err == EINTR) &&
            now_ns() < deadline && !g_stop) {
            usleep((useconds_t)backoff_us);
            if (backoff_us < 200000)
                backoff_us *= 2;
            continue;
        }
        errno = err;
        die("connect");
    }
}

/* Echo-mode context shared by all connections. */
struct echo_ctx {
    int ep;
    size_t size;
    unsigned inflight;
    uint8_t *pool; /* INFLIGHT > 1: SIZE + POOL_SLACK pseudo-random bytes */
    int counting;
    uint64_t msgs;
    uint64_t lat_sum;
};

static int econn_want_out(struct echo_ctx *x, struct econn *c, int want)
{
    if (c->want_out == want)
        return 0;
    struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = c};
    c->want_out = want;
    return epoll_ctl(x->ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/*
 * Advance one connection as far as possible without blocking.  The socket is registered
 * level-triggered for EPOLLIN (plus EPOLLOUT only while a send is stuck), so this never
 * needs to drive a syscall into EAGAIN: after a send completes it simply waits for the
 * echo, and after a partial read it waits for the next readiness report.  That keeps the
 * client at about one send + one recv per message (plus a shared epoll_wait).
 * Returns 0 normally, -1 on connection failure (counted as an error), -2 on mismatch.
 */
static int econn_progress(struct echo_ctx *x, struct econn *c, uint64_t *now)
{
    const size_t size = x->size;
    for (;;) {
        if (c->state == ST_SEND) {
            if (c->off == 0) {
                fill_pattern(c->expect, size, c->id, c->seq);
                *now = now_ns();
                c->t0 = *now;
            }
            ssize_t n = send(c->fd, c->expect + c->off, size - c->off, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    return econn_want_out(x, c, 1) < 0 ? -1 : 0;
                fprintf(stderr, "loadgen: conn %u send: %s\n", c->id, strerror(errno));
                return -1;
            }
            c->off += (size_t)n;
            if (c->off < size)
                return econn_want_out(x, c, 1) < 0 ? -1 : 0; /* socket buffer full */
            c->state = ST_RECV;
            c->off = 0;
            return econn_want_out(x, c, 0) < 0 ? -1 : 0; /* wait for the echo */
        } else if (c->state == ST_RECV) {
            /* Never read past the end of this message: extra bytes belong to the next one
             * and would show up there as a mismatch. */
            ssize_t n = recv(c->fd, c->rbuf + c->off, size - c->off, 0);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    return 0; /* e.g. an EPOLLOUT report while waiting for the echo */
                fprintf(stderr, "loadgen: conn %u recv: %s\n", c->id, strerror(errno));
                return -1;
            }
            if (n == 0) {
                fprintf(stderr, "loadgen: conn %u closed by server (%zu/%zu bytes of msg %llu)\n",
                        c->id, c->off, size, (unsigned long long)c->seq);
                return -1;
            }
            if (memcmp(c->rbuf + c->off, c->expect + c->off, (size_t)n) != 0) {
                size_t i = c->off;
                while (c->rbuf[i] == c->expect[i])
                    i++;
                fprintf(stderr,
                        "loadgen: MISMATCH on conn %u msg %llu at byte %zu: got 0x%02x, "
                        "expected 0x%02x\n",
                        c->id, (unsigned long long)c->seq, i, c->rbuf[i], c->expect[i]);
                return -2;
            }
            c->off += (size_t)n;
            if (c->off < size)
                return 0; /* level-triggered: we'll hear about the rest */
            *now = now_ns();
            if (x->counting) {
                uint64_t lat = *now - c->t0;
                hist[hist_index(lat)]++;
                x->lat_sum += lat;
                x->msgs++;
            }
            c->seq++;
            c->state = ST_SEND;
            c->off = 0;
            if (g_stop)
                return 0;
            /* loop: send the next message right away */
        } else {
            return 0;
        }
    }
}

static size_t pool_offset(uint32_t conn, uint64_t seq)
{
    return (size_t)(splitmix64(((uint64_t)conn << 40) ^ seq) % POOL_SLACK);
}

/*
 * INFLIGHT > 1 or SIZE > 4096: read whatever echo bytes are there and send while fewer than INFLIGHT
 * messages are outstanding, until both directions would block (or the window is full).
 * Same return values as econn_progress.
 */
static int econn_progress_multi(struct echo_ctx *x, struct econn *c, uint64_t *now)
{
    const size_t size = x->size;
    const unsigned inflight = x->inflight;
    for (;;) {
        int progressed = 0;
        while (c->rseq < c->sseq) {
            unsigned slot = (unsigned)(c->rseq % inflight);
            const uint8_t *expect = x->pool + c->offs[slot];
            ssize_t n = recv(c->fd, c->rbuf, size - c->roff, 0);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    break;
                fprintf(stderr, "loadgen: conn %u recv: %s\n", c->id, strerror(errno));
                return -1;
            }
            if (n == 0) {
                fprintf(stderr, "loadgen: conn %u closed by server (%zu/%zu bytes of msg %llu)\n",
                        c->id, c->roff, size, (unsigned long long)c->rseq);
                return -1;
            }
            if (memcmp(c->rbuf, expect + c->roff, (size_t)n) != 0) {
                size_t i = 0;
                while (c->rbuf[i] == expect[c->roff + i])
                    i++;
                fprintf(stderr,
                        "loadgen: MISMATCH on conn %u msg %llu at byte %zu: got 0x%02x, "
                        "expected 0x%02x\n",
                        c->id, (unsigned long long)c->rseq, c->roff + i, c->rbuf[i],
                        expect[c->roff + i]);
                return -2;
            }
            progressed = 1;
            c->roff += (size_t)n;
            if (c->roff == size) {
                *now = now_ns();
                if (x->counting) {
                    uint64_t lat = *now - c->t0s[slot];
                    hist[hist_index(lat)]++;
                    x->lat_sum += lat;
                    x->msgs++;
                }
                c->rseq++;
                c->roff = 0;
            }
        }
        int blocked = 0;
        while (!g_stop && c->sseq - c->rseq < inflight) {
            unsigned slot = (unsigned)(c->sseq % inflight);
            if (c->soff == 0) {
                c->offs[slot] = pool_offset(c->id, c->sseq);
                *now = now_ns();
                c->t0s[slot] = *now;
            }
            ssize_t n = send(c->fd, x->pool + c->offs[slot] + c->soff, size - c->soff,
                             MSG_NOSIGNAL);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK) {
                    blocked = 1;
                    break;
                }
                fprintf(stderr, "loadgen: conn %u send: %s\n", c->id, strerror(errno));
                return -1;
            }
            progressed = 1;
            c->soff += (size_t)n;
            if (c->soff == size) {
                c->sseq++;
                c->soff = 0;
            }
        }
        if (econn_want_out(x, c, blocked) < 0)
            return -1;
        if (!progressed)
            return 0;
    }
}

static int run_echo(int argc, char **argv)
{
    if (argc < 7 || argc > 9) {
        fprintf(stderr,
                "usage: loadgen echo HOST PORT CONNS SIZE DURATION_S [WARMUP_S [INFLIGHT]]\n");
        return 1;
    }
    struct sockaddr_in sa = parse_addr(argv[2], argv[3]);
    long conns = parse_long(argv[4], "CONNS", 1, 1000000);
    size_t size = (size_t)parse_long(argv[5], "SIZE", 1, 64L * 1024 * 1024);
    double duration = parse_double(argv[6], "DURATION_S", 0.001, 86400);
    double warmup = argc >= 8 ? parse_double(argv[7], "WARMUP_S", 0, 86400) : 1.0;
    unsigned inflight =
        argc == 9 ? (unsigned)parse_long(argv[8], "INFLIGHT", 1, MAX_INFLIGHT) : 1u;
    int use_pool = inflight > 1 || size >= POOL_MIN_SIZE;

    raise_nofile();
    install_signals();

    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1");
    struct econn *cs = calloc((size_t)conns, sizeof *cs);
    if (!cs)
        die("calloc");

    uint64_t connect_deadline = now_ns() + 30ull * 1000000000ull;
    for (long i = 0; i < conns; i++) {
        struct econn *c = &cs[i];
        c->fd = connect_blocking(&sa, connect_deadline);
        if (g_proxy) {
            uint8_t header[PROXY_MAX];
            size_t len = proxy_header_for(c->fd, &sa, header);
            if (send(c->fd, header, len, MSG_NOSIGNAL) != (ssize_t)len)
                die("send PROXY header");
        }
        int one = 1;
        if (setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0)
            die("setsockopt TCP_NODELAY");
        if (set_nonblocking(c->fd) < 0)
            die("fcntl O_NONBLOCK");
        c->id = (uint32_t)i;
        c->state = ST_SEND;
        c->expect = use_pool ? NULL : malloc(size);
        c->rbuf = malloc(size);
        if ((!use_pool && !c->expect) || !c->rbuf)
            die("malloc");
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
            die("epoll_ctl");
    }

    struct echo_ctx x = {.ep = ep, .size = size, .inflight = inflight};
    if (use_pool) {
        x.pool = malloc(size + POOL_SLACK);
        if (!x.pool)
            die("malloc");
        fill_pattern(x.pool, size + POOL_SLACK, 0xFFFFFFFFu, 0);
    }
    int (*progress)(struct echo_ctx *, struct econn *, uint64_t *) =
        use_pool ? econn_progress_multi : econn_progress;
    uint64_t errors = 0;
    long alive = conns;
    int mismatch = 0;
    double u0 = 0, s0 = 0, u1 = 0, s1 = 0;
    uint64_t t_start = now_ns();
    uint64_t t_measure = t_start + (uint64_t)(warmup * 1e9);
    uint64_t t_end = t_measure + (uint64_t)(duration * 1e9);
    uint64_t t_measure_real = 0, t_end_real = 0;
    uint64_t now = t_start;

    if (g_proxy)
        usleep(100000); /* the headers arrive alone, before the first messages */

    if (warmup == 0) {
        x.counting = 1;
        t_measure_real = now;
        cpu_seconds(&u0, &s0);
        printf("# measure start\n");
        fflush(stdout);
    }

    /* Kick off the first message on every connection. */
    for (long i = 0; i < conns; i++) {
        int r = progress(&x, &cs[i], &now);
        if (r == -2) {
            mismatch = 1;
            break;
        }
        if (r == -1) {
            errors++;
            cs[i].state = ST_DEAD;
            close(cs[i].fd);
            alive--;
        }
    }

    struct epoll_event evs[MAX_EVENTS];
    while (!mismatch && alive > 0 && !g_stop) {
        now = now_ns();
        if (!x.counting && now >= t_measure) {
            x.counting = 1;
            t_measure_real = now;
            cpu_seconds(&u0, &s0);
            printf("# measure start\n");
            fflush(stdout);
        }
        if (now >= t_end)
            break;
        uint64_t next = x.counting ? t_end : t_measure;
        int timeout_ms = (int)((next - now) / 1000000ull) + 1;
        if (timeout_ms > 100)
            timeout_ms = 100;
        int n = epoll_wait(ep, evs, MAX_EVENTS, timeout_ms);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int k = 0; k < n; k++) {
            struct econn *c = evs[k].data.ptr;
            if (c->state == ST_DEAD)
                continue;
            int r = progress(&x, c, &now);
            if (r == -2) {
                mismatch = 1;
                break;
            }
            if (r == -1) {
                errors++;
                c->state = ST_DEAD;
                close(c->fd);
                alive--;
            }
        }
    }
    t_end_real = now_ns();
    if (!x.counting) {
        /* Stopped (signal or all connections lost) before the window started. */
        t_measure_real = t_end_real;
        cpu_seconds(&u0, &s0);
    }
    cpu_seconds(&u1, &s1);
    printf("# measure end\n");
    fflush(stdout);

    double wall = (double)(t_end_real - t_measure_real) / 1e9;
    double cpu = (u1 - u0) + (s1 - s0);
    double mps = wall > 0 ? (double)x.msgs / wall : 0.0;
    printf("{\"mode\": \"echo\", \"conns\": %ld, \"size\": %zu, \"inflight\": %u, "
           "\"warmup_s\": %.3f, "
           "\"duration_s\": %.6f, \"msgs\": %llu, \"msgs_per_s\": %.1f, \"mb_per_s\": %.3f, "
           "\"lat_mean_us\": %.2f, \"p50_us\": %.2f, \"p99_us\": %.2f, \"p999_us\": %.2f, "
           "\"max_us\": %.2f, \"errors\": %llu, \"mismatch\": %s, \"cpu_user_s\": %.3f, "
           "\"cpu_sys_s\": %.3f, \"cpu_s\": %.3f, \"cpu_pct\": %.1f}\n",
           conns, size, inflight, warmup, wall, (unsigned long long)x.msgs, mps,
           mps * (double)size / 1e6, x.msgs ? (double)x.lat_sum / (double)x.msgs / 1e3 : 0.0,
           hist_percentile(x.msgs, 0.50) / 1e3, hist_percentile(x.msgs, 0.99) / 1e3,
           hist_percentile(x.msgs, 0.999) / 1e3, hist_percentile(x.msgs, 1.0) / 1e3,
           (unsigned long long)errors, mismatch ? "true" : "false", u1 - u0, s1 - s0, cpu,
           wall > 0 ? 100.0 * cpu / wall : 0.0);
    fflush(stdout);

    for (long i = 0; i < conns; i++) {
        if (cs[i].state != ST_DEAD)
            close(cs[i].fd);
        free(cs[i].expect);
        free(cs[i].rbuf);
    }
    free(cs);
    free(x.pool);
    close(ep);
    if (mismatch)
        return 2;
    return errors ? 3 : 0;
}

/* ------------------------------------------------------------------ idle mode */

enum { IC_FREE, IC_CONNECTING, IC_UP, IC_CLOSED };

struct iconn {
    int fd;
    int state;
    uint64_t written; /* flood: bytes send() took on this connection */
};

#define STDIN_TAG ((void *)-1)

static char flood_chunk[65536];
static uint64_t flood_bytes;

/* Write until the kernel says EAGAIN; returns -1 when the connection is gone. */
static int flood_write(struct iconn *c)
{
    for (;;) {
        ssize_t w = send(c->fd, flood_chunk, sizeof flood_chunk, MSG_NOSIGNAL);
        if (w > 0) {
            flood_bytes += (uint64_t)w;
            c->written += (uint64_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN)
            return 0;
        return -1;
    }
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static int run_idle(int argc, char **argv, int flood)
{
    if (argc < 6 || argc > 7) {
        fprintf(stderr, "usage: loadgen %s HOST PORT CONNS HOLD_S [RATE]\n", argv[1]);
        return 1;
    }
    memset(flood_chunk, 'f', sizeof flood_chunk);
    struct sockaddr_in sa = parse_addr(argv[2], argv[3]);
    long conns = parse_long(argv[4], "CONNS", 1, 1000000);
    double hold = parse_double(argv[5], "HOLD_S", 0, 86400);
    double rate = argc == 7 ? parse_double(argv[6], "RATE", 1, 1e7) : 5000.0;
    const long max_pending = 128;
    const uint64_t connect_timeout_ns = 60ull * 1000000000ull;

    raise_nofile();
    install_signals();

    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1");
    struct iconn *cs = calloc((size_t)conns, sizeof *cs);
    if (!cs)
        die("calloc");
    for (long i = 0; i < conns; i++)
        cs[i].fd = -1;

    /* Watch stdin only if it is a pipe or socket: EOF there means "stop holding". */
    struct stat st;
    int watch_stdin = fstat(0, &st) == 0 && (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode));
    if (watch_stdin) {
        struct epoll_event ev = {.events = EPOLLIN | EPOLLHUP, .data.ptr = STDIN_TAG};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev) < 0)
            watch_stdin = 0;
    }

    uint64_t t_start = now_ns();
    uint64_t deadline = t_start + connect_timeout_ns;
    long next = 0, pending = 0, up = 0, closed_by_peer = 0, retries = 0, started = 0;
    uint64_t backoff_until = 0, backoff_ns = 1000000;
    int stdin_closed = 0, failed = 0;
    uint64_t t_connected = 0, hold_until = 0;
    struct epoll_event evs[MAX_EVENTS];

    for (;;) {
        uint64_t now = now_ns();
        if (g_stop || stdin_closed)
            break;
        if (t_connected == 0) {
            if (up == conns) {
                t_connected = now;
                hold_until = now + (uint64_t)(hold * 1e9);
                printf("connected %ld\n", up);
                fflush(stdout);
                if (flood) {
                    /* From now on: write whenever writable (edge-triggered), never read. */
                    for (long i = 0; i < conns; i++) {
                        if (cs[i].state != IC_UP)
                            continue;
                        struct epoll_event ev = {.events = EPOLLOUT | EPOLLET | EPOLLRDHUP,
                                                 .data.ptr = &cs[i]};
                        epoll_ctl(ep, EPOLL_CTL_MOD, cs[i].fd, &ev);
                        if (flood_write(&cs[i]) < 0) {
                            epoll_ctl(ep, EPOLL_CTL_DEL, cs[i].fd, NULL);
                            close(cs[i].fd);
                            cs[i].fd = -1;
                            cs[i].state = IC_CLOSED;
                            closed_by_peer++;
                        }
                    }
                }
                fprintf(stderr, "loadgen: %ld connections up in %.3f s (%ld retries)\n", up,
                        (double)(now - t_start) / 1e9, retries);
                continue;
            }
            if (now > deadline) {
                fprintf(stderr, "loadgen: only %ld/%ld connections up after %.0f s\n", up, conns,
                        (double)connect_timeout_ns / 1e9);
                failed = 1;
                break;
            }
            /* Start new connects: paced by RATE, bounded by max_pending. */
            uint64_t allowed = (uint64_t)((double)(now - t_start) / 1e9 * rate) + 1;
            while (next < conns && pending < max_pending && (uint64_t)started < allowed &&
                   now >= backoff_until) {
                /* find the next slot that needs a connection */
                while (next < conns && cs[next].state != IC_FREE)
                    next++;
                if (next >= conns)
                    break;
                struct iconn *c = &cs[next];
                int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
                if (fd < 0)
                    die("socket");
                started++;
                int r = connect(fd, (const struct sockaddr *)&sa, sizeof sa);
                if (r < 0 && errno != EINPROGRESS) {
                    int err = errno;
                    close(fd);
                    if (err == ECONNREFUSED || err == EAGAIN || err == ETIMEDOUT ||
                        err == EINTR) {
                        retries++;
                        backoff_until = now + backoff_ns;
                        if (backoff_ns < 200000000ull)
                            backoff_ns *= 2;
                        break;
                    }
                    errno = err;
                    die("connect");
                }
                c->fd = fd;
                struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN | EPOLLRDHUP,
                                         .data.ptr = c};
                if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
                    die("epoll_ctl");
                if (r == 0) {
                    c->state = IC_UP;
                    up++;
                    ev.events = EPOLLIN | EPOLLRDHUP;
                    epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
                } else {
                    c->state = IC_CONNECTING;
                    pending++;
                }
                next++;
            }
        } else if (now >= hold_until) {
            break;
        }

        int timeout_ms = 1;
        if (t_connected != 0) {
            uint64_t left = hold_until > now ? hold_until - now : 0;
            timeout_ms = (int)(left / 1000000ull) + 1;
            if (timeout_ms > 100)
                timeout_ms = 100;
        }
        int n = epoll_wait(ep, evs, MAX_EVENTS, timeout_ms);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        now = now_ns();
        for (int k = 0; k < n; k++) {
            if (evs[k].data.ptr == STDIN_TAG) {
                char buf[256];
                ssize_t r = read(0, buf, sizeof buf);
                if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
                    stdin_closed = 1;
                    epoll_ctl(ep, EPOLL_CTL_DEL, 0, NULL);
                }
                continue;
            }
            struct iconn *c = evs[k].data.ptr;
            if (c->state == IC_CONNECTING) {
                int err = 0;
                socklen_t len = sizeof err;
                if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
                    err = errno;
                pending--;
                if (err == 0) {
                    c->state = IC_UP;
                    up++;
                    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                } else {
                    /* refused / timed out: retry this slot later, with backoff */
                    close(c->fd);
                    c->fd = -1;
                    c->state = IC_FREE;
                    retries++;
                    long idx = (long)(c - cs);
                    if (idx < next)
                        next = idx;
                    if (err != ECONNREFUSED && err != EAGAIN && err != ETIMEDOUT) {
                        errno = err;
                        die("connect (async)");
                    }
                    backoff_until = now + backoff_ns;
                    if (backoff_ns < 200000000ull)
                        backoff_ns *= 2;
                }
            } else if (c->state == IC_UP && flood && t_connected != 0) {
                /* Never read: write if there is room, drop the connection if it is gone. */
                if ((evs[k].events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) == 0 &&
                    flood_write(c) == 0)
                    continue;
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                c->fd = -1;
                c->state = IC_CLOSED;
                closed_by_peer++;
            } else if (c->state == IC_UP) {
                /* The server sent data or closed: an idle client never expects either. */
                char buf[4096];
                ssize_t r = recv(c->fd, buf, sizeof buf, 0);
                if (r > 0)
                    continue; /* unexpected data: discard */
                if (r < 0 && (errno == EAGAIN || errno == EINTR))
                    continue;
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                c->fd = -1;
                c->state = IC_CLOSED;
                closed_by_peer++;
            }
        }
    }

    uint64_t t_done = now_ns();
    const char *reason = failed ? "connect_timeout"
                         : g_stop ? "signal"
                         : stdin_closed ? "stdin_closed"
                                        : "hold_elapsed";
    double u, s;
    double cpu = cpu_seconds(&u, &s);
    /* Flood: how evenly the server took the flooders' bytes (per connection). */
    uint64_t *per_conn = malloc((size_t)conns * sizeof *per_conn);
    if (!per_conn)
        die("malloc");
    for (long i = 0; i < conns; i++)
        per_conn[i] = cs[i].written;
    qsort(per_conn, (size_t)conns, sizeof *per_conn, cmp_u64);
    printf("{\"mode\": \"%s\", \"conns\": %ld, \"connected\": %ld, \"connect_s\": %.3f, "
           "\"held_s\": %.3f, \"retries\": %ld, \"closed_by_peer\": %ld, \"stop\": \"%s\", "
           "\"cpu_s\": %.3f, \"bytes_written\": %llu, \"conn_bytes_min\": %llu, "
           "\"conn_bytes_p50\": %llu, \"conn_bytes_max\": %llu}\n",
           flood ? "flood" : "idle", conns, up, t_connected ? (double)(t_connected - t_start) / 1e9 : -1.0,
           t_connected ? (double)(t_done - t_connected) / 1e9 : 0.0, retries, closed_by_peer,
           reason, cpu, (unsigned long long)flood_bytes, (unsigned long long)per_conn[0],
           (unsigned long long)per_conn[conns / 2], (unsigned long long)per_conn[conns - 1]);
    free(per_conn);
    fflush(stdout);

    for (long i = 0; i < conns; i++)
        if (cs[i].fd >= 0)
            close(cs[i].fd);
    free(cs);
    close(ep);
    return (failed || t_connected == 0) ? 1 : 0; /* 1: never had all CONNS up */
}

/* ------------------------------------------------------------------ churn mode */

#define CHURN_SIZE 64

enum { CH_BACKOFF, CH_CONNECTING, CH_SENDING, CH_RECEIVING };

struct cconn {
    int fd;
    int state;
    uint32_t id;
    uint64_t seq;
    size_t off;
    uint64_t t0;
    uint64_t retry_at;
    uint8_t out[PROXY_MAX + CHURN_SIZE]; /* the PROXY header (--proxy), then expect */
    size_t out_len;
    uint8_t *expect; /* the message: inside out, after the header */
    uint8_t rbuf[CHURN_SIZE];
};

struct churn_ctx {
    int ep;
    const struct sockaddr_in *sa;
    int counting;
    uint64_t done, failures, lat_sum;
    uint64_t fail_connect, fail_io, fail_mismatch;
};

/* Open a new connection for slot c (non-blocking); on immediate failure back off. */
static void churn_start(struct churn_ctx *x, struct cconn *c, uint64_t now)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->t0 = now;
    c->off = 0;
    int r = connect(fd, (const struct sockaddr *)x->sa, sizeof *x->sa);
    if (r < 0 && errno != EINPROGRESS) {
        close(fd);
        if (x->counting) {
            x->failures++;
            x->fail_connect++;
        }
        c->fd = -1;
        c->state = CH_BACKOFF;
        c->retry_at = now + 1000000ull;
        return;
    }
    c->fd = fd;
    c->state = CH_CONNECTING;
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(x->ep, EPOLL_CTL_ADD, fd, &ev) < 0)
        die("epoll_ctl");
}

static void churn_fail(struct churn_ctx *x, struct cconn *c, uint64_t now, uint64_t *kind)
{
    if (x->counting) {
        x->failures++;
        (*kind)++;
    }
    close(c->fd); /* also removes it from the epoll set */
    c->fd = -1;
    c->state = CH_BACKOFF;
    c->retry_at = now + 1000000ull;
}

static void churn_event(struct churn_ctx *x, struct cconn *c)
{
    uint64_t now = now_ns();
    if (c->state == CH_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err != 0) {
            churn_fail(x, c, now, &x->fail_connect);
            return;
        }
        size_t header = g_proxy ? proxy_header_for(c->fd, x->sa, c->out) : 0;
        c->expect = c->out + header;
        c->out_len = header + CHURN_SIZE;
        fill_pattern(c->expect, CHURN_SIZE, c->id, c->seq);
        c->state = CH_SENDING;
    }
    if (c->state == CH_SENDING) {
        ssize_t n = send(c->fd, c->out + c->off, c->out_len - c->off, MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        if (n <= 0) {
            churn_fail(x, c, now, &x->fail_io);
            return;
        }
        c->off += (size_t)n;
        if (c->off < c->out_len)
            return;
        c->off = 0;
        c->state = CH_RECEIVING;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(x->ep, EPOLL_CTL_MOD, c->fd, &ev);
        return; /* wait for the echo */
    }
    if (c->state == CH_RECEIVING) {
        ssize_t n = recv(c->fd, c->rbuf + c->off, CHURN_SIZE - c->off, 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        if (n <= 0) {
            churn_fail(x, c, now, &x->fail_io);
            return;
        }
        if (memcmp(c->rbuf + c->off, c->expect + c->off, (size_t)n) != 0) {
            fprintf(stderr, "loadgen: churn MISMATCH on slot %u connection %llu\n", c->id,
                    (unsigned long long)c->seq);
            churn_fail(x, c, now, &x->fail_mismatch);
            return;
        }
        c->off += (size_t)n;
        if (c->off < CHURN_SIZE)
            return;
        if (x->counting) {
            uint64_t lat = now - c->t0;
            hist[hist_index(lat)]++;
            x->lat_sum += lat;
            x->done++;
        }
        close(c->fd);
        c->seq++;
        churn_start(x, c, now);
    }
}

static int run_churn(int argc, char **argv)
{
    if (argc < 6 || argc > 7) {
        fprintf(stderr, "usage: loadgen churn HOST PORT PARALLEL DURATION_S [WARMUP_S]\n");
        return 1;
    }
    struct sockaddr_in sa = parse_addr(argv[2], argv[3]);
    long parallel = parse_long(argv[4], "PARALLEL", 1, 100000);
    double duration = parse_double(argv[5], "DURATION_S", 0.001, 86400);
    double warmup = argc == 7 ? parse_double(argv[6], "WARMUP_S", 0, 86400) : 1.0;

    raise_nofile();
    install_signals();
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1");
    struct cconn *cs = calloc((size_t)parallel, sizeof *cs);
    if (!cs)
        die("calloc");
    struct churn_ctx x = {.ep = ep, .sa = &sa};

    uint64_t t_start = now_ns();
    uint64_t t_measure = t_start + (uint64_t)(warmup * 1e9);
    uint64_t t_end = t_measure + (uint64_t)(duration * 1e9);
    uint64_t t_measure_real = 0;
    double u0 = 0, s0 = 0, u1 = 0, s1 = 0;
    for (long i = 0; i < parallel; i++) {
        cs[i].id = (uint32_t)i;
        churn_start(&x, &cs[i], t_start);
    }
    struct epoll_event evs[MAX_EVENTS];
    while (!g_stop) {
        uint64_t now = now_ns();
        if (!x.counting && now >= t_measure) {
            x.counting = 1;
            t_measure_real = now;
            cpu_seconds(&u0, &s0);
            printf("# measure start\n");
            fflush(stdout);
        }
        if (now >= t_end)
            break;
        int timeout_ms = 1; /* slots in back-off are polled every millisecond */
        int n = epoll_wait(ep, evs, MAX_EVENTS, timeout_ms);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int k = 0; k < n; k++)
            churn_event(&x, evs[k].data.ptr);
        now = now_ns();
        for (long i = 0; i < parallel; i++)
            if (cs[i].state == CH_BACKOFF && now >= cs[i].retry_at)
                churn_start(&x, &cs[i], now);
    }
    uint64_t t_end_real = now_ns();
    if (!x.counting) {
        t_measure_real = t_end_real;
        cpu_seconds(&u0, &s0);
    }
    cpu_seconds(&u1, &s1);
    printf("# measure end\n");
    fflush(stdout);
    double wall = (double)(t_end_real - t_measure_real) / 1e9;
    double cpu = (u1 - u0) + (s1 - s0);
    double cps = wall > 0 ? (double)x.done / wall : 0.0;
    printf("{\"mode\": \"churn\", \"parallel\": %ld, \"size\": %d, \"warmup_s\": %.3f, "
           "\"duration_s\": %.6f, \"conns\": %llu, \"conns_per_s\": %.1f, "
           "\"msgs_per_s\": %.1f, \"mb_per_s\": %.3f, \"failures\": %llu, "
           "\"fail_connect\": %llu, \"fail_io\": %llu, \"fail_mismatch\": %llu, "
           "\"lat_mean_us\": %.2f, \"p50_us\": %.2f, \"p99_us\": %.2f, \"p999_us\": %.2f, "
           "\"max_us\": %.2f, \"cpu_user_s\": %.3f, \"cpu_sys_s\": %.3f, \"cpu_s\": %.3f, "
           "\"cpu_pct\": %.1f}\n",
           parallel, CHURN_SIZE, warmup, wall, (unsigned long long)x.done, cps, cps,
           cps * CHURN_SIZE / 1e6, (unsigned long long)x.failures,
           (unsigned long long)x.fail_connect, (unsigned long long)x.fail_io,
           (unsigned long long)x.fail_mismatch,
           x.done ? (double)x.lat_sum / (double)x.done / 1e3 : 0.0,
           hist_percentile(x.done, 0.50) / 1e3, hist_percentile(x.done, 0.99) / 1e3,
           hist_percentile(x.done, 0.999) / 1e3, hist_percentile(x.done, 1.0) / 1e3, u1 - u0,
           s1 - s0, cpu, wall > 0 ? 100.0 * cpu / wall : 0.0);
    fflush(stdout);
    for (long i = 0; i < parallel; i++)
        if (cs[i].fd > 0)
            close(cs[i].fd);
    free(cs);
    close(ep);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 3 && strcmp(argv[1], "--proxy") == 0) {
        if (strcmp(argv[2], "v1") == 0)
            g_proxy = 1;
        else if (strcmp(argv[2], "v2") == 0)
            g_proxy = 2;
        else {
            fprintf(stderr, "loadgen: --proxy takes v1 or v2, not %s\n", argv[2]);
            return 1;
        }
        argv[2] = argv[0];
        argv += 2;
        argc -= 2;
    }
    if (argc >= 2 && strcmp(argv[1], "echo") == 0)
        return run_echo(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "idle") == 0)
        return run_idle(argc, argv, 0);
    if (argc >= 2 && strcmp(argv[1], "flood") == 0)
        return run_idle(argc, argv, 1);
    if (argc >= 2 && strcmp(argv[1], "churn") == 0)
        return run_churn(argc, argv);
    fprintf(stderr,
            "usage: loadgen [--proxy v1|v2] echo HOST PORT CONNS SIZE DURATION_S [WARMUP_S "
            "[INFLIGHT]]\n"
            "       loadgen [--proxy v1|v2] churn HOST PORT PARALLEL DURATION_S [WARMUP_S]\n"
            "       loadgen idle HOST PORT CONNS HOLD_S [RATE]\n"
            "       loadgen flood HOST PORT CONNS HOLD_S [RATE]\n");
    return 1;
}
