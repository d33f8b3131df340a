/* An open-loop HTTP/1.1 load client in C: the same job and the same JSON as openloop.py,
 * at a small fraction of its CPU.
 *
 * Request i is sent at start + i / rate whatever the answers do, so a slow server shows
 * up as latency, not as a lower rate. Latency runs from the moment a request is handed
 * to a connection (a new connection's connect included) to the last byte of its answer;
 * how late sends were against the schedule is reported as "lag". In-flight requests are
 * capped; a send over the cap is counted as dropped. The Python client cost about as
 * much CPU per request as the servers it measured, on the same two cores, and its own
 * event loop's stalls were part of every latency it reported.
 *
 *   openloop --url http://127.0.0.1:8000/v1/chat/completions --body-file F \
 *            --rate 1000 --duration 10 [--warmup 1] [--header 'Name: value']...
 *            [--rotate-file F]  (one header line per request, in turn)
 *            [--max-inflight 256] [--timeout 10] [--trace FILE]
 *
 * One thread, epoll, a timerfd for the schedule; keep-alive connections reused
 * last-in first-out. Answers are read by Content-Length, by chunked framing, or to the
 * connection's close. ``--trace FILE`` writes one line per counted answer (seconds from
 * the first counted send, latency in seconds, status) after a "# origin S" line (the first
 * counted send on CLOCK_MONOTONIC): where in time a tail came from.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define MAX_HEADERS 32
#define HEAD_MAX 16384

enum body_kind { BODY_LENGTH, BODY_CHUNKED, BODY_CLOSE };
enum chunk_state { CH_SIZE, CH_DATA, CH_DATA_END, CH_TRAILER };

typedef struct conn {
    int fd;
    int connected;
    int busy;
    int record;           /* the answer counts (not the warm-up) */
    double t0;            /* when the request was handed to this connection */
    double deadline;
    size_t sent;          /* bytes of the request written so far */
    const char *req;      /* the request being sent (one of ``requests``) */
    size_t req_len;
    char head[HEAD_MAX];  /* the answer's head, until it is complete */
    size_t head_len;
    int head_done;
    int status;
    int close_after;
    enum body_kind kind;
    long long remaining;  /* BODY_LENGTH: bytes left; chunked: bytes left in the chunk */
    enum chunk_state ch;
    char line[64];        /* a chunk-size or trailer line being read */
    size_t line_len;
    struct conn *next_idle;
} conn_t;

/* Error names, counted in the JSON's "errors". */
enum { E_CONNECT, E_RESET, E_CLOSED, E_TIMEOUT, E_PROTOCOL, E_COUNT };
static const char *ERROR_NAMES[E_COUNT] = {
    "ConnectError", "ConnectionReset", "ServerDisconnected", "Timeout", "ProtocolError"};

static struct sockaddr_in target;
/* One request per --rotate-file line (one in all without it), sent in turn. */
static char **requests;
static size_t *request_lens;
static size_t n_requests = 1;
static size_t next_request;
static int epfd;
static conn_t *idle_head;
static int inflight;
static double *latencies;
static size_t n_latencies;
static double *sends; /* with --trace: each timed answer's send, from the schedule's start */
static int *trace_status;
static double trace_origin;
static double *lags;
static size_t n_lags;
static long long statuses[600];
static long long errors[E_COUNT];
static conn_t **all_conns;
static int n_all;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *msg) {
    fprintf(stderr, "openloop: %s\n", msg);
    exit(2);
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) die("cannot open the body file");
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) die("cannot read the body file");
    fclose(f);
    *len = (size_t)n;
    return buf;
}

/* http://127.x.x.x:port/path or http://localhost:port/path, loopback only. */
static void parse_url(const char *url, char *host, size_t host_cap, int *port, const char **path) {
    if (strncmp(url, "http://", 7) != 0) die("only http:// URLs");
    const char *h = url + 7;
    const char *colon = strchr(h, ':');
    const char *slash = strchr(h, '/');
    if (!slash) slash = h + strlen(h);
    const char *host_end = (colon && colon < slash) ? colon : slash;
    size_t n = (size_t)(host_end - h);
    if (n == 0 || n >= host_cap) die("bad host in URL");
    memcpy(host, h, n);
    host[n] = 0;
    *port = (colon && colon < slash) ? atoi(colon + 1) : 80;
    *path = *slash ? slash : "/";
    const char *ip = strcmp(host, "localhost") == 0 ? "127.0.0.1" : host;
    if (strncmp(ip, "127.", 4) != 0) die("only loopback targets are allowed");
    memset(&target, 0, sizeof target);
    target.sin_family = AF_INET;
    target.sin_port = htons((uint16_t)*port);
    if (inet_pton(AF_INET, ip, &target.sin_addr) != 1) die("bad address in URL");
}

static void drop_conn(conn_t *c) {
    if (c->fd < 0) return;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    c->connected = 0;
}

/* The request on ``c`` ended: an answer with ``ok_status`` (err < 0), or error ``err``. */
static void finish(conn_t *c, int ok_status, int err) {
    inflight--;
    c->busy = 0;
    if (c->record) {
        if (err >= 0) {
            errors[err]++;
        } else {
            if (ok_status >= 0 && ok_status < 600) statuses[ok_status]++;
            if (sends) {
                sends[n_latencies] = c->t0 - trace_origin;
                trace_status[n_latencies] = ok_status;
            }
            if (ok_status == 200 || sends) latencies[n_latencies++] = now_s() - c->t0;
        }
    }
    if (err >= 0 || c->close_after) {
        drop_conn(c);
        return;
    }
    c->next_idle = idle_head;
    idle_head = c;
}

static int open_conn(conn_t *c) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&target, sizeof target) < 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
    c->fd = fd;
    c->connected = 0;
    return 0;
}

static void try_send(conn_t *c) {
    while (c->sent < c->req_len) {
        ssize_t n = send(c->fd, c->req + c->sent, c->req_len - c->sent, MSG_NOSIGNAL);
        if (n > 0) {
            c->sent += (size_t)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP, .data.ptr = c};
            epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
            return;
        }
        finish(c, -1, E_RESET);
        return;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void start_request(conn_t *c, int record, double t0, double timeout) {
    c->busy = 1;
    c->record = record;
    c->t0 = t0;
    c->deadline = t0 + timeout;
    c->sent = 0;
    c->req = requests[next_request];
    c->req_len = request_lens[next_request];
    next_request = (next_request + 1) % n_requests;
    c->head_len = 0;
    c->head_done = 0;
    c->status = 0;
    c->close_after = 0;
    c->line_len = 0;
    inflight++;
    if (c->fd < 0) {
        if (open_conn(c) < 0) {
            finish(c, -1, E_CONNECT);
        }
        return; /* sent once the connection is writable */
    }
    try_send(c);
}

/* The head is complete: status, framing, keep-alive. 0 on success. */
static int parse_head(conn_t *c) {
    char *p = c->head;
    if (c->head_len < 12 || strncmp(p, "HTTP/1.", 7) != 0) return -1;
    c->status = atoi(p + 9);
    int http10 = p[7] == '0';
    c->close_after = http10;
    c->kind = BODY_CLOSE;
    int have_length = 0;
    char *line = strstr(p, "\r\n");
    while (line && line[2] != '\r') {
        line += 2;
        char *end = strstr(line, "\r\n");
        if (!end) break;
        char *colon = memchr(line, ':', (size_t)(end - line));
        if (colon) {
            size_t nlen = (size_t)(colon - line);
            char *v = colon + 1;
            while (*v == ' ' || *v == '\t') v++;
            size_t vlen = (size_t)(end - v);
            if (nlen == 14 && strncasecmp(line, "content-length", 14) == 0) {
                c->remaining = atoll(v);
                have_length = 1;
            } else if (nlen == 17 && strncasecmp(line, "transfer-encoding", 17) == 0) {
                if (vlen >= 7 && strncasecmp(v + vlen - 7, "chunked", 7) == 0) c->kind = BODY_CHUNKED;
            } else if (nlen == 10 && strncasecmp(line, "connection", 10) == 0) {
                if (vlen >= 5 && strncasecmp(v, "close", 5) == 0) c->close_after = 1;
                if (vlen >= 10 && strncasecmp(v, "keep-alive", 10) == 0) c->close_after = 0;
            }
        }
        line = end;
    }
    if (c->kind != BODY_CHUNKED && have_length) c->kind = BODY_LENGTH;
    if (c->kind == BODY_CLOSE) c->close_after = 1;
    if (c->status == 204 || c->status == 304 || c->status / 100 == 1) {
        c->kind = BODY_LENGTH;
        c->remaining = 0;
    }
    c->ch = CH_SIZE;
    return 0;
}

/* Consume body bytes; 1 when the answer is complete, -1 on a framing error. */
static int feed_body(conn_t *c, const char *d, size_t n) {
    if (c->kind == BODY_CLOSE) return 0;
    if (c->kind == BODY_LENGTH) {
        c->remaining -= (long long)n;
        if (c->remaining < 0) return -1; /* bytes past the answer: no pipelining here */
        return c->remaining == 0;
    }
    size_t i = 0;
    while (i < n) {
        switch (c->ch) {
        case CH_SIZE:
        case CH_TRAILER:
            while (i < n) {
                char ch = d[i++];
                if (c->line_len >= sizeof c->line - 1) {
                    if (c->ch == CH_TRAILER) { /* a long trailer line: skip it */
                        if (ch == '\n') c->line_len = 0;
                        continue;
                    }
                    return -1;
                }
                c->line[c->line_len++] = ch;
                if (ch == '\n') break;
            }
            if (c->line_len == 0 || c->line[c->line_len - 1] != '\n') return 0;
            c->line[c->line_len] = 0;
            if (c->ch == CH_TRAILER) {
                int blank = c->line_len <= 2;
                c->line_len = 0;
                if (blank) return i == n ? 1 : -1;
                break;
            }
            {
                char *end;
                long long size = strtoll(c->line, &end, 16);
                if (end == c->line || size < 0) return -1;
                c->line_len = 0;
                if (size == 0) {
                    c->ch = CH_TRAILER;
                } else {
                    c->remaining = size;
                    c->ch = CH_DATA;
                }
            }
            break;
        case CH_DATA: {
            size_t take = n - i < (size_t)c->remaining ? n - i : (size_t)c->remaining;
            i += take;
            c->remaining -= (long long)take;
            if (c->remaining == 0) {
                c->ch = CH_DATA_END;
                c->remaining = 2;
            }
            break;
        }
        case CH_DATA_END:
            i++;
            if (--c->remaining == 0) c->ch = CH_SIZE;
            break;
        }
    }
    return 0;
}

static void on_readable(conn_t *c) {
    char buf[65536];
    while (c->fd >= 0) {
        ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            if (c->busy) finish(c, -1, E_RESET);
            return;
        }
        if (n == 0) {
            if (!c->busy) { /* an idle keep-alive connection closed by the server */
                conn_t **pp = &idle_head;
                while (*pp && *pp != c) pp = &(*pp)->next_idle;
                if (*pp) *pp = c->next_idle;
                drop_conn(c);
                return;
            }
            if (c->head_done && c->kind == BODY_CLOSE) {
                finish(c, c->status, -1);
            } else {
                finish(c, -1, E_CLOSED);
            }
            return;
        }
        if (!c->busy) continue; /* unexpected bytes on an idle connection: ignored */
        const char *d = buf;
        size_t len = (size_t)n;
        if (!c->head_done) {
            size_t room = sizeof c->head - 1 - c->head_len;
            size_t take = len < room ? len : room;
            memcpy(c->head + c->head_len, d, take);
            c->head_len += take;
            c->head[c->head_len] = 0;
            char *end = strstr(c->head, "\r\n\r\n");
            if (!end) {
                if (c->head_len >= sizeof c->head - 1) finish(c, -1, E_PROTOCOL);
                continue;
            }
            size_t head_bytes = (size_t)(end + 4 - c->head);
            size_t before = c->head_len - take; /* head bytes from earlier reads */
            d += head_bytes - before;
            len -= head_bytes - before;
            c->head_done = 1;
            if (parse_head(c) < 0) {
                finish(c, -1, E_PROTOCOL);
                return;
            }
            if (c->kind == BODY_LENGTH && c->remaining == 0 && len == 0) {
                finish(c, c->status, -1);
                continue;
            }
        }
        int r = feed_body(c, d, len);
        if (r < 0) {
            finish(c, -1, E_PROTOCOL);
            return;
        }
        if (r == 1) finish(c, c->status, -1);
    }
}

typedef struct {
    double send, latency;
    int status;
} traced_t;

static int cmp_send(const void *a, const void *b) {
    double x = ((const traced_t *)a)->send, y = ((const traced_t *)b)->send;
    return (x > y) - (x < y);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Nearest rank, as openloop.py: index round(q/100 * n) - 1, clamped. */
static double pct(const double *v, size_t n, double q) {
    if (n == 0) return NAN;
    long i = lround(q / 100.0 * (double)n) - 1;
    if (i < 0) i = 0;
    if ((size_t)i > n - 1) i = (long)n - 1;
    return v[i];
}

static void print_ms(const char *name, double seconds, int comma) {
    if (isnan(seconds)) {
        printf("\"%s\":null%s", name, comma ? "," : "");
    } else {
        printf("\"%s\":%.6f%s", name, seconds * 1000.0, comma ? "," : "");
    }
}

int main(int argc, char **argv) {
    const char *url = NULL, *body_file = NULL, *trace = NULL, *rotate_file = NULL;
    double rate = 0, duration = 0, warmup = 1.0, timeout = 10.0;
    int max_inflight = 256;
    const char *headers[MAX_HEADERS];
    int n_headers = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) die("every option takes a value");
        if (strcmp(a, "--url") == 0) url = v;
        else if (strcmp(a, "--body-file") == 0) body_file = v;
        else if (strcmp(a, "--rate") == 0) rate = atof(v);
        else if (strcmp(a, "--duration") == 0) duration = atof(v);
        else if (strcmp(a, "--warmup") == 0) warmup = atof(v);
        else if (strcmp(a, "--timeout") == 0) timeout = atof(v);
        else if (strcmp(a, "--max-inflight") == 0) max_inflight = atoi(v);
        else if (strcmp(a, "--trace") == 0) trace = v;
        else if (strcmp(a, "--rotate-file") == 0) rotate_file = v;
        else if (strcmp(a, "--header") == 0) {
            if (n_headers == MAX_HEADERS) die("too many headers");
            headers[n_headers++] = v;
        } else die("unknown option");
        i++;
    }
    if (!url || !body_file || rate <= 0 || duration <= 0 || max_inflight < 1)
        die("usage: openloop --url URL --body-file F --rate R --duration S [--warmup S] "
            "[--header 'N: v']... [--rotate-file F] [--max-inflight N] [--timeout S]");

    char host[256];
    int port;
    const char *path;
    parse_url(url, host, sizeof host, &port, &path);
    size_t body_len;
    char *body = read_file(body_file, &body_len);

    /* --rotate-file: one header line per request in turn (a key per tenant, say). */
    char *rotate = NULL;
    size_t rotate_len = 0;
    char *lines[65536];
    if (rotate_file) {
        rotate = read_file(rotate_file, &rotate_len);
        n_requests = 0;
        char *save = NULL;
        for (char *ln = strtok_r(rotate, "\n", &save); ln && n_requests < 65536;
             ln = strtok_r(NULL, "\n", &save))
            if (*ln) lines[n_requests++] = ln;
        if (!n_requests) die("the rotate file has no lines");
    }
    requests = malloc(sizeof(char *) * n_requests);
    request_lens = malloc(sizeof(size_t) * n_requests);
    int has_type = 0;
    size_t cap = 512 + strlen(path) + strlen(host) + body_len;
    for (int i = 0; i < n_headers; i++) {
        cap += strlen(headers[i]) + 2;
        if (strncasecmp(headers[i], "content-type:", 13) == 0) has_type = 1;
    }
    for (size_t r = 0; r < n_requests; r++) {
        size_t rcap = cap + (rotate ? strlen(lines[r]) + 2 : 0);
        char *request = malloc(rcap);
        int off = snprintf(request, rcap, "POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Length: %zu\r\n%s",
                           path, host, port, body_len, has_type ? "" : "Content-Type: application/json\r\n");
        for (int i = 0; i < n_headers; i++) off += snprintf(request + off, rcap - (size_t)off, "%s\r\n", headers[i]);
        if (rotate) off += snprintf(request + off, rcap - (size_t)off, "%s\r\n", lines[r]);
        off += snprintf(request + off, rcap - (size_t)off, "\r\n");
        memcpy(request + off, body, body_len);
        requests[r] = request;
        request_lens[r] = (size_t)off + body_len;
    }

    long long skip = (long long)(rate * warmup);
    long long total = (long long)(rate * duration);
    latencies = malloc(sizeof(double) * (size_t)(total + 1));
    lags = malloc(sizeof(double) * (size_t)(total + 1));
    if (trace) {
        sends = malloc(sizeof(double) * (size_t)(total + 1));
        trace_status = malloc(sizeof(int) * (size_t)(total + 1));
    }
    all_conns = calloc((size_t)max_inflight, sizeof(conn_t *));
    epfd = epoll_create1(EPOLL_CLOEXEC);
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    struct epoll_event tev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, &tev);

    long long dropped = 0;
    double start = now_s() + 0.05;
    trace_origin = start + (double)skip / rate;
    long long next = 0;
    double last_timeout_check = start;
    struct epoll_event events[256];
    double drain_deadline = 0;
    double elapsed = 0;
    for (;;) {
        double t = now_s();
        /* Everything due by now is sent now. */
        while (next < skip + total && start + (double)next / rate <= t) {
            double due = start + (double)next / rate;
            int record = next >= skip;
            next++;
            if (record) lags[n_lags++] = t > due ? t - due : 0.0;
            if (inflight >= max_inflight) {
                if (record) dropped++;
                continue;
            }
            conn_t *c = idle_head;
            if (c) {
                idle_head = c->next_idle;
            } else {
                for (int i = 0; i < n_all; i++) {
                    if (!all_conns[i]->busy && all_conns[i]->fd < 0) {
                        c = all_conns[i];
                        break;
                    }
                }
                if (!c) {
                    c = calloc(1, sizeof *c);
                    c->fd = -1;
                    all_conns[n_all++] = c;
                }
            }
            start_request(c, record, t, timeout);
            t = now_s();
        }
        if (next >= skip + total) {
            if (drain_deadline == 0) {
                elapsed = t - start - (double)skip / rate;
                drain_deadline = t + timeout;
            }
            if (inflight == 0 || t >= drain_deadline) break;
        }
        if (t - last_timeout_check > 0.1) {
            last_timeout_check = t;
            for (int i = 0; i < n_all; i++) {
                conn_t *c = all_conns[i];
                if (c->busy && t >= c->deadline) {
                    c->close_after = 1;
                    finish(c, -1, E_TIMEOUT);
                }
            }
        }
        int wait_ms = 100;
        if (next < skip + total) {
            double due = start + (double)next / rate;
            struct itimerspec its = {0};
            its.it_value.tv_sec = (time_t)due;
            its.it_value.tv_nsec = (long)((due - (double)(time_t)due) * 1e9);
            timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
        }
        int n = epoll_wait(epfd, events, 256, wait_ms);
        for (int i = 0; i < n; i++) {
            conn_t *c = events[i].data.ptr;
            if (!c) {
                uint64_t x;
                while (read(tfd, &x, sizeof x) > 0) {
                }
                continue;
            }
            if (c->fd < 0) continue;
            uint32_t e = events[i].events;
            if (!c->connected && (e & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err != 0) {
                    if (c->busy) {
                        c->close_after = 1;
                        finish(c, -1, E_CONNECT);
                    }
                    continue;
                }
                c->connected = 1;
            }
            if (c->busy && c->sent < c->req_len && (e & EPOLLOUT)) try_send(c);
            if (c->fd >= 0 && (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))) on_readable(c);
        }
    }
    for (int i = 0; i < n_all; i++) {
        conn_t *c = all_conns[i];
        if (c->busy) {
            c->close_after = 1;
            finish(c, -1, E_TIMEOUT);
        }
    }

    if (trace) {
        /* Answers came in the order they finished; the trace is in the order of sending.
         * Then only the 200s stay for the percentiles. */
        traced_t *rows = malloc(sizeof(traced_t) * (n_latencies + 1));
        for (size_t i = 0; i < n_latencies; i++)
            rows[i] = (traced_t){sends[i], latencies[i], trace_status[i]};
        qsort(rows, n_latencies, sizeof(traced_t), cmp_send);
        FILE *f = fopen(trace, "w");
        if (!f) die("cannot write the trace file");
        /* The origin on CLOCK_MONOTONIC (Python's time.monotonic()), to line the trace
         * up with what the server logged. */
        fprintf(f, "# origin %.6f\n", trace_origin);
        size_t kept = 0;
        for (size_t i = 0; i < n_latencies; i++) {
            fprintf(f, "%.6f %.6f %d\n", rows[i].send, rows[i].latency, rows[i].status);
            if (rows[i].status == 200) latencies[kept++] = rows[i].latency;
        }
        fclose(f);
        n_latencies = kept;
    }
    qsort(latencies, n_latencies, sizeof(double), cmp_double);
    qsort(lags, n_lags, sizeof(double), cmp_double);
    printf("{\"rate\":%g,\"duration_s\":%.3f,\"sent\":%lld,\"ok\":%zu,\"dropped\":%lld,", rate,
           elapsed, total - dropped, n_latencies, dropped);
    printf("\"statuses\":{");
    int first = 1;
    for (int s = 0; s < 600; s++) {
        if (statuses[s]) {
            printf("%s\"%d\":%lld", first ? "" : ",", s, statuses[s]);
            first = 0;
        }
    }
    printf("},\"errors\":{");
    first = 1;
    for (int k = 0; k < E_COUNT; k++) {
        if (errors[k]) {
            printf("%s\"%s\":%lld", first ? "" : ",", ERROR_NAMES[k], errors[k]);
            first = 0;
        }
    }
    printf("},\"latency_ms\":{");
    print_ms("p50", pct(latencies, n_latencies, 50), 1);
    print_ms("p90", pct(latencies, n_latencies, 90), 1);
    print_ms("p99", pct(latencies, n_latencies, 99), 1);
    print_ms("p99.9", pct(latencies, n_latencies, 99.9), 1);
    print_ms("max", n_latencies ? latencies[n_latencies - 1] : NAN, 0);
    printf("},\"lag_ms\":{");
    print_ms("p50", pct(lags, n_lags, 50), 1);
    print_ms("p99", pct(lags, n_lags, 99), 0);
    printf("},\"client\":\"openloop.c\"}\n");
    return 0;
}
