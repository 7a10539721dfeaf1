/*
 * A light WebSocket load client: one process, one epoll loop, many connections.
 *
 * It does the opening handshake by hand, reads the first frame ("connected") in full, and
 * from then on counts bytes without parsing frames: every benchmark event has the same frame
 * length, so bytes / frame length = frames.  In latency mode it cuts the stream into frames
 * of that known length and reads the "sent" field of each (a time.monotonic() value of the
 * driver: CLOCK_MONOTONIC is one clock for every process of the machine).
 *
 * Driven by benchmarks/run.py through stdin/stdout, one command a line:
 *   connect PORT N CONCURRENCY TOKENFILE|-  -> connected OK FAILED T0 T1
 *   count BYTES_PER_CONN TIMEOUT            -> armed, then: counted GOT TARGET T_DONE|none
 *   latency FRAME_LEN SENT_OFFSET COUNT TIMEOUT
 *                                           -> armed, then: latencies MISSING US US US ...
 *   quit
 * Only loopback (127.0.0.1) is ever connected to.  Every wait is bounded by a timeout.
 *
 * Build: cc -O2 -o loadclient loadclient.c   (benchmarks/run.py does it)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { CONNECTING, HANDSHAKE, FIRST_FRAME, STREAM, DEAD };
#define HS_BUF 4096
#define MAX_FRAME 512

typedef struct {
    int fd;
    int state;
    int hs_len;
    char *hs;          /* handshake buffer, freed once streaming */
    const char *token;
    int fpos;          /* latency mode: position in the current frame */
    int frames;
    char fbuf[MAX_FRAME];
} conn_t;

static conn_t *conns;
static int nconns, port, epfd;
static int started, finished, ok, failed, inflight, concurrency;
static double t0, t1;
static char **tokens;

static int mode;  /* 0 idle, 1 count, 2 latency */
static long long total, target;
static double deadline;
static int frame_len, sent_offset, lat_count, lat_done;
static int *lat_us;
static long lat_n, lat_cap;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void reply(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
#include <stdarg.h>
static void reply(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    fflush(stdout);
}

static void kill_conn(conn_t *c) {
    if (c->fd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
    free(c->hs);
    c->hs = NULL;
}

static void start_more(void);

static void connect_done(conn_t *c, int success) {
    if (c->state == DEAD) return;
    if (success) {
        ok++;
    } else {
        failed++;
        kill_conn(c);
        c->state = DEAD;
    }
    inflight--;
    finished++;
    if (finished == nconns) {
        t1 = now();
        reply("connected %d %d %.6f %.6f\n", ok, failed, t0, t1);
    }
    start_more();
}

static void start_one(conn_t *c) {
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    c->hs = malloc(HS_BUF);
    c->hs_len = 0;
    c->state = CONNECTING;
    inflight++;
    if (c->fd < 0) { connect_done(c, 0); return; }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        connect_done(c, 0);
        return;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
}

static void start_more(void) {
    while (started < nconns && inflight < concurrency)
        start_one(&conns[started++]);
}

static void counted(double when) {
    mode = 0;
    if (when > 0)
        reply("counted %lld %lld %.6f\n", total, target, when);
    else
        reply("counted %lld %lld none\n", total, target);
}

static void latency_done(void) {
    mode = 0;
    long missing = 0;
    for (int i = 0; i < nconns; i++)
        if (conns[i].state == STREAM && conns[i].frames < lat_count)
            missing += lat_count - conns[i].frames;
    printf("latencies %ld", missing);
    for (long i = 0; i < lat_n; i++) printf(" %d", lat_us[i]);
    printf("\n");
    fflush(stdout);
    lat_n = 0;
}

static void on_stream(conn_t *c, const char *data, long n) {
    if (mode == 1) {
        total += n;
        if (total >= target) counted(now());
    } else if (mode == 2) {
        double t = now();
        for (long i = 0; i < n;) {
            long take = frame_len - c->fpos;
            if (take > n - i) take = n - i;
            memcpy(c->fbuf + c->fpos, data + i, take);
            c->fpos += take;
            i += take;
            if (c->fpos == frame_len) {
                c->fpos = 0;
                c->fbuf[frame_len - 1] = 0;
                double sent = strtod(c->fbuf + sent_offset, NULL);
                if (lat_n == lat_cap) {
                    lat_cap = lat_cap ? lat_cap * 2 : 65536;
                    lat_us = realloc(lat_us, lat_cap * sizeof *lat_us);
                }
                lat_us[lat_n++] = (int)((t - sent) * 1e6);
                if (++c->frames == lat_count && ++lat_done == ok) {
                    latency_done();
                    return;
                }
            }
        }
    }
}

/* handshake bytes arrived: returns 1 while still in handshake, 0 when streaming, -1 on error */
static int on_handshake(conn_t *c) {
    if (c->state == HANDSHAKE) {
        char *end = memmem(c->hs, c->hs_len, "\r\n\r\n", 4);
        if (!end) return c->hs_len >= HS_BUF ? -1 : 1;
        if (c->hs_len < 12 || memcmp(c->hs + 9, "101", 3) != 0) return -1;
        int used = end + 4 - c->hs;
        memmove(c->hs, c->hs + used, c->hs_len - used);
        c->hs_len -= used;
        c->state = FIRST_FRAME;
    }
    if (c->hs_len < 2) return 1;
    unsigned char *b = (unsigned char *)c->hs;
    long len = b[1] & 0x7f, start = 2;
    if (len == 126) {
        if (c->hs_len < 4) return 1;
        len = (b[2] << 8) | b[3];
        start = 4;
    } else if (len == 127) {
        return -1;
    }
    if (c->hs_len < start + len) return c->hs_len >= HS_BUF ? -1 : 1;
    if (!memmem(c->hs + start, len, "\"connected\"", 11)) return -1;
    long rest = c->hs_len - start - len;
    c->state = STREAM;
    connect_done(c, 1);
    if (rest > 0) on_stream(c, c->hs + start + len, rest);
    free(c->hs);
    c->hs = NULL;
    return 0;
}

static void on_event(conn_t *c, unsigned events) {
    static char scratch[1 << 16];
    if (c->state == CONNECTING) {
        if (events & (EPOLLERR | EPOLLHUP)) { connect_done(c, 0); return; }
        if (events & EPOLLOUT) {
            char req[2048];
            int n = snprintf(req, sizeof req,
                             "GET /ws%s%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                             "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                             "Sec-WebSocket-Version: 13\r\n\r\n",
                             c->token ? "?token=" : "", c->token ? c->token : "", port);
            if (write(c->fd, req, n) != n) { connect_done(c, 0); return; }
            c->state = HANDSHAKE;
            struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
            epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
        }
        return;
    }
    if (c->state == HANDSHAKE || c->state == FIRST_FRAME) {
        long n = read(c->fd, c->hs + c->hs_len, HS_BUF - c->hs_len);
        if (n <= 0) {
            if (n < 0 && errno == EAGAIN) return;
            connect_done(c, 0);
            return;
        }
        c->hs_len += n;
        if (on_handshake(c) < 0) connect_done(c, 0);
        return;
    }
    if (c->state == STREAM) {
        long n = read(c->fd, scratch, sizeof scratch);
        if (n > 0) {
            on_stream(c, scratch, n);
        } else if (n == 0 || errno != EAGAIN) {
            kill_conn(c);
            c->state = DEAD;
        }
    }
}

static char *load_tokens(const char *path, int n) {
    if (strcmp(path, "-") == 0) return NULL;
    FILE *f = fopen(path, "r");
    if (!f) { perror(path); exit(2); }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *all = malloc(size + 1);
    if (fread(all, 1, size, f) != (size_t)size) exit(2);
    all[size] = 0;
    fclose(f);
    tokens = calloc(n, sizeof *tokens);
    char *p = all;
    for (int i = 0; i < n && p && *p; i++) {
        tokens[i] = p;
        p = strchr(p, '\n');
        if (p) *p++ = 0;
    }
    return all;
}

static void command(char *line) {
    char path[4096];
    if (sscanf(line, "connect %d %d %d %4095s", &port, &nconns, &concurrency, path) == 4) {
        load_tokens(path, nconns);
        conns = calloc(nconns, sizeof *conns);
        for (int i = 0; i < nconns; i++) {
            conns[i].fd = -1;
            conns[i].token = tokens ? tokens[i] : NULL;
        }
        t0 = now();
        if (nconns == 0) reply("connected 0 0 %.6f %.6f\n", t0, t0);
        start_more();
    } else if (strncmp(line, "count ", 6) == 0) {
        long long per;
        double timeout;
        sscanf(line + 6, "%lld %lf", &per, &timeout);
        total = 0;
        target = per * ok;
        deadline = now() + timeout;
        mode = 1;
        reply("armed\n");
        if (target == 0) counted(now());
    } else if (strncmp(line, "latency ", 8) == 0) {
        double timeout;
        sscanf(line + 8, "%d %d %d %lf", &frame_len, &sent_offset, &lat_count, &timeout);
        if (frame_len > MAX_FRAME) frame_len = MAX_FRAME;
        for (int i = 0; i < nconns; i++) conns[i].fpos = conns[i].frames = 0;
        lat_done = 0;
        lat_n = 0;
        deadline = now() + timeout;
        mode = 2;
        reply("armed\n");
    } else if (strncmp(line, "quit", 4) == 0) {
        exit(0);
    }
}

int main(void) {
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    epfd = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &ev);
    static char line[8192];
    int line_len = 0;
    struct epoll_event events[512];
    for (;;) {
        int n = epoll_wait(epfd, events, 512, 50);
        for (int i = 0; i < n; i++) {
            if (events[i].data.ptr == NULL) {
                long r = read(0, line + line_len, sizeof line - 1 - line_len);
                if (r <= 0) exit(0);
                line_len += r;
                line[line_len] = 0;
                char *nl;
                while ((nl = strchr(line, '\n'))) {
                    *nl = 0;
                    command(line);
                    line_len -= nl + 1 - line;
                    memmove(line, nl + 1, line_len + 1);
                }
            } else {
                on_event(events[i].data.ptr, events[i].events);
            }
        }
        if (nconns && finished < nconns && now() > t0 + 60) {  /* bounded connect phase */
            int was_started = started, unstarted = nconns - started;
            started = nconns;  /* start no more */
            failed += unstarted;
            finished += unstarted;
            for (int i = 0; i < was_started; i++)
                if (conns[i].state < STREAM) connect_done(&conns[i], 0);
        }
        if (mode && now() > deadline) {
            if (mode == 1) counted(0);
            else latency_done();
        }
    }
}
