/*
 * loadgen: a WebSocket load generator for the agentcast benchmarks (benchmarks/README.md).
 *
 * One thread, non-blocking sockets, level-triggered epoll, no libraries beyond libc: the
 * HTTP upgrade (with a checked Sec-WebSocket-Accept: SHA-1 and base64 are below), RFC 6455
 * client framing (masked), and the publish API's HTTP POST are written by hand here.
 *
 * It opens N clients to ws://HOST:PORT/PATH?token=..., reads everything, counts messages
 * by "type", checks that each connection's broadcast ids are strictly increasing and that
 * it received every published notification exactly once and in order (each notification
 * carries "seq=NNNNNNNN" in its text), and measures what the scenario asks for. It reads
 * the server's CPU (utime+stime from /proc/PID/stat) and memory (VmRSS, VmHWM from
 * /proc/PID/status) itself, at the exact edges of the measured window.
 *
 * Scenarios (--scenario):
 *   fanout  connect N clients, wait until quiet, then POST --bursts batches of --burst-size
 *           notifications to /api/notifications (one request per burst, each sent after the
 *           previous one's 202, and at most two bursts not yet fully delivered); the window
 *           runs from the first POST to the last delivery. With --channels K, client i
 *           subscribes to channel "ch<i mod K>" (channels= in its URL) and each notification
 *           names a pseudo-random channel (a hash of its seq): every client must receive
 *           exactly the notifications of its own channel, in order, and nothing else.
 *   rtt     connect N clients (distinct users), wait until quiet (RSS: idle memory), then
 *           send JSON {"type":"ping"} at --ping-rate per second in total, round-robin, at
 *           most one outstanding per client, for --duration seconds; RTT = ping to pong.
 *   churn   N connections, --concurrency at a time: connect, upgrade, auth, presence_state,
 *           wait for the client's own "online" user_presence, close handshake, next.
 *   latency connect N clients (one user), wait until quiet, then have --messages single
 *           notifications published at --publish-rate per second, each one on its own: with
 *           --publish http, one POST /api/notifications of one item per notification (its own
 *           TCP connection, as the API serves one request per connection), sent at its
 *           scheduled time; with --publish inproc, SIGUSR2 to the server (the first
 *           --server-pid), which then publishes them itself through its in-process API
 *           (the benchmark servers take --inproc-rate/--inproc-count/--msg-bytes). Every
 *           notification's text holds "seq=NNNNNNNN t=T", T its scheduled publish time in
 *           microseconds of CLOCK_MONOTONIC; latency = arrival at a client - T, for every
 *           client and notification (a server that falls behind the rate shows it here).
 *           The window ends when every client has them all, or --grace seconds after the
 *           last one was due: each one still missing then counts with the latency it has at
 *           least (end of the window - T), and in "not_delivered_in_window".
 *   storm   N distinct users connect (at most --concurrency handshakes in flight). Every
 *           client keeps its own view of who is online (its presence_state, then each
 *           user_presence: online/away/busy add the user, offline removes it); the window
 *           ends when every client's view is exactly the true set (the N users, plus the
 *           probe): N(N+1)/2 presence deliveries at least. With --probe-rate R, one more
 *           client (the probe, a user too) connects first, and during the storm sends
 *           {"type":"ping"} R times a second (at most one outstanding): its RTTs are the
 *           latency an already-connected client sees during the storm.
 *
 * Output: one JSON object on one line on stdout; diagnostics on stderr. With --hold, it then
 * keeps its connections open until stdin is closed (the driver stops the server first).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
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
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------ small utilities -- */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n);
    if (!q && n) die("realloc");
    return q;
}

static uint32_t rng_state = 0x9e3779b9u;
static uint32_t rng(void) {
    uint32_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return rng_state = x;
}

/* SHA-1 (FIPS 180-4), only for checking Sec-WebSocket-Accept. */
static uint32_t rol(uint32_t x, int n) { return (x << n) | (x >> (32 - n)); }

static void sha1(const uint8_t *msg, size_t len, uint8_t out[20]) {
    uint32_t h[5] = {0x67452301u, 0xEFCDAB89u, 0x98BADCFEu, 0x10325476u, 0xC3D2E1F0u};
    size_t total = ((len + 8) / 64 + 1) * 64;
    uint8_t *buf = calloc(total, 1);
    if (!buf) die("calloc");
    memcpy(buf, msg, len);
    buf[len] = 0x80;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++) buf[total - 1 - i] = (uint8_t)(bits >> (8 * i));
    for (size_t off = 0; off < total; off += 64) {
        uint32_t w[80];
        for (int i = 0; i < 16; i++) {
            const uint8_t *p = buf + off + 4 * i;
            w[i] = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
        }
        for (int i = 16; i < 80; i++) w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
        uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
        for (int i = 0; i < 80; i++) {
            uint32_t f, k;
            if (i < 20) {
                f = (b & c) | (~b & d);
                k = 0x5A827999u;
            } else if (i < 40) {
                f = b ^ c ^ d;
                k = 0x6ED9EBA1u;
            } else if (i < 60) {
                f = (b & c) | (b & d) | (c & d);
                k = 0x8F1BBCDCu;
            } else {
                f = b ^ c ^ d;
                k = 0xCA62C1D6u;
            }
            uint32_t t = rol(a, 5) + f + e + k + w[i];
            e = d;
            d = c;
            c = rol(b, 30);
            b = a;
            a = t;
        }
        h[0] += a;
        h[1] += b;
        h[2] += c;
        h[3] += d;
        h[4] += e;
    }
    free(buf);
    for (int i = 0; i < 5; i++)
        for (int j = 0; j < 4; j++) out[4 * i + j] = (uint8_t)(h[i] >> (24 - 8 * j));
}

static void base64(const uint8_t *in, size_t n, char *out) {
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n) v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n) v |= in[i + 2];
        out[o++] = tab[(v >> 18) & 63];
        out[o++] = tab[(v >> 12) & 63];
        out[o++] = i + 1 < n ? tab[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? tab[v & 63] : '=';
    }
    out[o] = 0;
}

/* ------------------------------------------------------------------ /proc readings --- */

/* The server's processes (--server-pid, comma-separated: a server of several workers is
 * measured as the sum of its processes). */
static int server_pids[64];
static int n_server_pids = 0;

/* utime+stime of one process (all threads), in clock ticks; -1 if unreadable. */
static long long pid_cpu_ticks(int pid) {
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p) return -1;
    p += 2; /* field 3, the state */
    unsigned long long ut = 0, st = 0;
    int field = 3;
    while (*p && field < 14) {
        if (*p++ == ' ') field++;
    }
    if (sscanf(p, "%llu %llu", &ut, &st) != 2) return -1;
    return (long long)(ut + st);
}

/* The sum over the server's processes; -1 if any is unreadable. */
static long long proc_cpu_ticks(void) {
    if (!n_server_pids) return -1;
    long long total = 0;
    for (int i = 0; i < n_server_pids; i++) {
        long long t = pid_cpu_ticks(server_pids[i]);
        if (t < 0) return -1;
        total += t;
    }
    return total;
}

/* A "VmRSS:"-style line of /proc/PID/status, in kB; -1 if unreadable. */
static long pid_status_kb(int pid, const char *key) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    long v = -1;
    size_t kl = strlen(key);
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, key, kl) == 0) {
            v = strtol(line + kl, NULL, 10);
            break;
        }
    }
    fclose(f);
    return v;
}

/* The sum over the server's processes (for VmHWM: the sum of each one's peak). */
static long proc_status_kb(const char *key) {
    if (!n_server_pids) return -1;
    long total = 0;
    for (int i = 0; i < n_server_pids; i++) {
        long v = pid_status_kb(server_pids[i], key);
        if (v < 0) return -1;
        total += v;
    }
    return total;
}

static double self_cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
}

/* ------------------------------------------------------------------ configuration ---- */

enum { SC_FANOUT, SC_RTT, SC_CHURN, SC_STORM, SC_LATENCY };
static const char *scenario_names[] = {"fanout", "rtt", "churn", "storm", "latency"};
#define N_SCENARIOS 5

static struct {
    const char *host;
    int port, pub_port;
    const char *path;
    const char *api_key;
    const char *token_prefix;
    int clients;
    int concurrency;
    int same_user;
    int scenario;
    int bursts, burst_size, msg_bytes;
    int channels; /* fanout: 0 = unscoped broadcasts */
    double ping_rate, duration;
    double probe_rate; /* storm: pings/s of the already-connected probe client (0: none) */
    int publish_inproc; /* latency: the server publishes (SIGUSR2) rather than the HTTP API */
    double publish_rate; /* latency: notifications per second */
    int messages;        /* latency: notifications in all */
    double settle, timeout;
    double grace; /* latency: seconds after the last publish was due before giving up */
    int hold;
} cfg = {
    .host = "127.0.0.1",
    .path = "/ws",
    .api_key = "",
    .token_prefix = "lg",
    .clients = 100,
    .concurrency = 200,
    .scenario = SC_FANOUT,
    .bursts = 10,
    .burst_size = 100,
    .msg_bytes = 200,
    .ping_rate = 1000,
    .duration = 5,
    .settle = 0.3,
    .timeout = 300,
    .publish_rate = 1000,
    .messages = 10000,
    .grace = 3,
};

static struct sockaddr_in server_addr, pub_addr;

/* ------------------------------------------------------------------ connections ------ */

enum { ST_FREE, ST_CONNECTING, ST_HANDSHAKE, ST_OPEN, ST_CLOSING, ST_DONE };
enum { K_CLIENT, K_PUBLISHER };

typedef struct conn {
    int kind, fd, state, idx;
    uint8_t *part; /* bytes of an incomplete frame (or response) kept for the next read */
    size_t plen, pcap;
    uint8_t *wb; /* bytes the socket did not take yet */
    size_t wlen, wcap;
    int want_out;
    char accept[32];
    char user_needle[160]; /* "userId":"<own id>" once authenticated */
    size_t user_needle_len;
    uint64_t next_seq, n_notif;
    int channel, burst_mark, finished;
    char last_id[64];
    int last_id_len;
    uint32_t presence_seen;
    uint8_t *view; /* storm: bit u set = user u is online in this client's view */
    uint8_t *seen; /* latency: bit s set = notification s received */
    uint32_t view_count;
    uint8_t authed, self_online, ping_out, close_sent, counted_ready;
    double t_start, ping_at;
} conn_t;

static int ep;
static conn_t *clients;
static conn_t publisher;
#define MAX_PUBLISHERS 256
static conn_t publishers[MAX_PUBLISHERS]; /* latency: POSTs in flight, one connection each */
static uint8_t rbuf[8 << 20];

/* counters */
enum { T_AUTH, T_PRESENCE_STATE, T_USER_PRESENCE, T_NOTIFICATION, T_PONG, T_PING, T_ERROR,
       T_OTHER, T_COUNT };
static const char *type_names[] = {"auth", "presence_state", "user_presence", "notification",
                                   "pong", "ping", "error", "other"};
static uint64_t type_count[T_COUNT];
static uint64_t n_binary, n_ws_ping, n_server_close, n_protocol_errors, n_handshake_failed,
    n_connect_failed, n_unexpected_eof, n_auth_failed, n_lost, n_dup_or_reordered,
    n_id_not_increasing, n_foreign, n_ping_skipped, n_fragmented, n_unknown_user,
    n_view_wrong;
static int first_close_code = -1;
static char first_error[200];
static double last_rx;

static int n_started, n_authed, n_done, n_inflight, n_presence_complete, n_finished;
static double t_window0 = -1, t_window1 = -1;

/* rtt / connect-time samples, in seconds */
typedef struct {
    double *v;
    size_t n, cap;
} samples_t;
static samples_t rtt_samples, connect_samples, probe_samples;
static conn_t probe;
static int storm_users; /* storm: users in the true set (N, plus the probe) */
static int probe_down = -1; /* storm: the pipe that tells the probe process to stop */

static void sample_add(samples_t *s, double x) {
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 4096;
        s->v = xrealloc(s->v, s->cap * sizeof(double));
    }
    s->v[s->n++] = x;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double percentile(samples_t *s, double p) {
    if (!s->n) return -1;
    size_t k = (size_t)(p * (double)s->n + 0.999999);
    if (k < 1) k = 1;
    if (k > s->n) k = s->n;
    return s->v[k - 1];
}

/* latency: publish -> delivery, a histogram: 1 µs buckets up to 1 s, then 1 ms buckets up
   to 1,000 s */
#define LAT_FINE 1000000
#define LAT_BUCKETS (2 * LAT_FINE)
static uint32_t *lat_hist;
static uint64_t lat_n, lat_over;
static double lat_max_us, lat_sum_us;
static uint64_t pub_late; /* latency/http: POSTs sent over 1 ms after their scheduled time */
static uint64_t lat_late; /* latency: deliveries still missing at the end of the window */

static void lat_add(double us) {
    if (us < 0) us = 0;
    lat_n++;
    lat_sum_us += us;
    if (us > lat_max_us) lat_max_us = us;
    uint64_t b = (uint64_t)us;
    if (b >= LAT_FINE) b = LAT_FINE + (b - LAT_FINE) / 1000;
    if (b >= LAT_BUCKETS) lat_over++;
    else lat_hist[b]++;
}

static double lat_percentile(double p) {
    if (!lat_n) return -1;
    uint64_t k = (uint64_t)(p * (double)lat_n + 0.999999), seen = 0;
    if (k < 1) k = 1;
    for (uint64_t b = 0; b < LAT_BUCKETS; b++) {
        seen += lat_hist[b];
        if (seen >= k)
            return b < LAT_FINE ? (double)b + 0.5 : LAT_FINE + (double)(b - LAT_FINE) * 1000 + 500;
    }
    return lat_max_us;
}

/* fan-out bookkeeping */
static uint64_t total_msgs, expected_deliveries;
static int *burst_done; /* clients that received all of burst b */
static int bursts_sent, bursts_acked, pub_busy; /* pub_busy: requests in flight */
static uint64_t pub_delivered_reported;
static int pub_bad_status;

static void set_events(conn_t *c) {
    struct epoll_event ev = {.events = EPOLLIN | (c->want_out ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0) die("epoll_ctl mod");
}

static void conn_close(conn_t *c) {
    if (c->fd >= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
    free(c->part);
    free(c->wb);
    c->part = c->wb = NULL;
    c->plen = c->pcap = c->wlen = c->wcap = 0;
}

static void conn_write(conn_t *c, const void *data, size_t len) {
    if (c->fd < 0) return;
    const uint8_t *p = data;
    if (c->wlen == 0) {
        ssize_t w = write(c->fd, p, len);
        if (w < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK) return; /* the read side will see it */
            w = 0;
        }
        p += w;
        len -= (size_t)w;
        if (!len) return;
    }
    if (c->wlen + len > c->wcap) {
        c->wcap = (c->wlen + len) * 2;
        c->wb = xrealloc(c->wb, c->wcap);
    }
    memcpy(c->wb + c->wlen, p, len);
    c->wlen += len;
    if (!c->want_out) {
        c->want_out = 1;
        set_events(c);
    }
}

static void flush_out(conn_t *c) {
    if (c->wlen) {
        ssize_t w = write(c->fd, c->wb, c->wlen);
        if (w > 0) {
            memmove(c->wb, c->wb + w, c->wlen - (size_t)w);
            c->wlen -= (size_t)w;
        }
    }
    if (!c->wlen && c->want_out) {
        c->want_out = 0;
        set_events(c);
    }
}

/* A masked client frame (RFC 6455 5.2, 5.3). */
static void send_frame(conn_t *c, int opcode, const void *payload, size_t len) {
    uint8_t stackbuf[256];
    uint8_t *f = len + 14 <= sizeof stackbuf ? stackbuf : malloc(len + 14);
    if (!f) die("malloc");
    size_t h = 0;
    f[h++] = (uint8_t)(0x80 | opcode);
    if (len < 126) {
        f[h++] = (uint8_t)(0x80 | len);
    } else if (len < 65536) {
        f[h++] = 0x80 | 126;
        f[h++] = (uint8_t)(len >> 8);
        f[h++] = (uint8_t)len;
    } else {
        f[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--) f[h++] = (uint8_t)((uint64_t)len >> (8 * i));
    }
    uint32_t key = rng();
    uint8_t mask[4] = {(uint8_t)key, (uint8_t)(key >> 8), (uint8_t)(key >> 16),
                       (uint8_t)(key >> 24)};
    memcpy(f + h, mask, 4);
    h += 4;
    const uint8_t *src = payload;
    for (size_t i = 0; i < len; i++) f[h + i] = src[i] ^ mask[i & 3];
    conn_write(c, f, h + len);
    if (f != stackbuf) free(f);
}

static void send_close(conn_t *c, int code) {
    uint8_t payload[2] = {(uint8_t)(code >> 8), (uint8_t)code};
    send_frame(c, 0x8, payload, 2);
    c->close_sent = 1;
}

static int open_socket(struct sockaddr_in *addr) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)addr, sizeof *addr) < 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    return fd;
}

static void client_start(conn_t *c) {
    c->fd = open_socket(&server_addr);
    c->t_start = now_s();
    n_started++;
    n_inflight++;
    if (c->fd < 0) {
        n_connect_failed++;
        c->state = ST_DONE;
        n_inflight--;
        n_done++;
        return;
    }
    c->state = ST_CONNECTING;
    c->want_out = 1;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl add");
}

static void client_send_upgrade(conn_t *c) {
    uint8_t raw[16];
    for (int i = 0; i < 16; i += 4) {
        uint32_t r = rng();
        memcpy(raw + i, &r, 4);
    }
    char key[32], req[1024], cat[128];
    base64(raw, 16, key);
    snprintf(cat, sizeof cat, "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", key);
    uint8_t digest[20];
    sha1((const uint8_t *)cat, strlen(cat), digest);
    base64(digest, 20, c->accept);
    char token[64], channel[32] = "";
    if (cfg.same_user)
        snprintf(token, sizeof token, "%s", cfg.token_prefix);
    else
        snprintf(token, sizeof token, "%s%d", cfg.token_prefix, c->idx);
    if (cfg.channels) snprintf(channel, sizeof channel, "&channels=ch%d", c->channel);
    int n = snprintf(req, sizeof req,
                     "GET %s?token=%s%s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n",
                     cfg.path, token, channel, cfg.host, cfg.port, key);
    c->state = ST_HANDSHAKE;
    c->want_out = 0;
    set_events(c);
    conn_write(c, req, (size_t)n);
}

static void note_error(const char *fmt, const char *detail, size_t len) {
    if (first_error[0]) return;
    char tmp[160];
    if (len > sizeof tmp - 1) len = sizeof tmp - 1;
    memcpy(tmp, detail, len);
    tmp[len] = 0;
    snprintf(first_error, sizeof first_error, fmt, tmp);
    for (char *p = first_error; *p; p++)
        if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20) *p = '\'';
    fprintf(stderr, "loadgen: %s\n", first_error);
}

static void client_finished_connection(conn_t *c);

static void client_end(conn_t *c, int unexpected) {
    if (c->state == ST_DONE) return;
    if (unexpected) n_unexpected_eof++;
    if (!c->authed) n_inflight--;
    conn_close(c);
    c->state = ST_DONE;
    n_done++;
    client_finished_connection(c);
}

/* ------------------------------------------------------------------ messages --------- */

static const uint8_t *find(const uint8_t *p, size_t n, const char *needle) {
    return memmem(p, n, needle, strlen(needle));
}

static void check_id(conn_t *c, const uint8_t *p, size_t n) {
    const uint8_t *q = find(p, n, "\"id\":\"");
    if (!q) {
        n_id_not_increasing++;
        return;
    }
    q += 6;
    const uint8_t *e = memchr(q, '"', (size_t)(p + n - q));
    if (!e) {
        n_id_not_increasing++;
        return;
    }
    int len = (int)(e - q);
    if (len > (int)sizeof c->last_id) len = sizeof c->last_id;
    if (c->last_id_len) {
        int m = len < c->last_id_len ? len : c->last_id_len;
        int cmp = memcmp(q, c->last_id, (size_t)m);
        if (cmp == 0) cmp = len - c->last_id_len;
        if (cmp <= 0) n_id_not_increasing++;
    }
    memcpy(c->last_id, q, (size_t)len);
    c->last_id_len = len;
}

static void presence_progress(conn_t *c, uint32_t seen) {
    c->presence_seen += seen;
    if (cfg.scenario == SC_STORM) return; /* the view decides (view_set) */
    if (!cfg.same_user && !c->counted_ready && c->presence_seen >= (uint32_t)cfg.clients) {
        c->counted_ready = 1;
        n_presence_complete++;
    }
}

/* The user index of a "user_<prefix><index>" id at p (length n); -1 if it is not one. */
static int user_index(const uint8_t *p, size_t n) {
    size_t pl = strlen(cfg.token_prefix);
    if (n < 5 + pl + 1 || memcmp(p, "user_", 5) != 0 || memcmp(p + 5, cfg.token_prefix, pl))
        return -1;
    long v = 0;
    for (size_t i = 5 + pl; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') return -1;
        v = v * 10 + (p[i] - '0');
        if (v >= storm_users) return -1;
    }
    return (int)v;
}

/* One presence entry for client c: user id at u (length ul), present or not. */
static void view_set(conn_t *c, const uint8_t *u, size_t ul, int present) {
    int idx = user_index(u, ul);
    if (idx < 0) {
        n_unknown_user++;
        return;
    }
    if (!c->view) {
        c->view = calloc((size_t)storm_users / 8 + 1, 1);
        if (!c->view) die("calloc");
    }
    uint8_t bit = (uint8_t)(1u << (idx & 7)), *b = &c->view[idx >> 3];
    int was_complete = c->view_count == (uint32_t)storm_users;
    if (present && !(*b & bit)) {
        *b |= bit;
        c->view_count++;
    } else if (!present && (*b & bit)) {
        *b &= (uint8_t)~bit;
        c->view_count--;
    }
    int complete = c->view_count == (uint32_t)storm_users;
    if (complete && !was_complete) n_presence_complete++;
    if (was_complete && !complete) n_presence_complete--;
}

/* Reads the presence entries ({"userId":"...","status":"..."}) in p[0..n). */
static uint32_t view_entries(conn_t *c, const uint8_t *p, size_t n) {
    uint32_t entries = 0;
    const uint8_t *q = p, *end = p + n;
    while ((q = memmem(q, (size_t)(end - q), "\"userId\":\"", 10))) {
        q += 10;
        const uint8_t *e = memchr(q, '"', (size_t)(end - q));
        if (!e) break;
        const uint8_t *s = memmem(e, (size_t)(end - e), "\"status\":\"", 10);
        if (!s) break;
        s += 10;
        entries++;
        if (cfg.scenario == SC_STORM) view_set(c, q, (size_t)(e - q), *s != 'o' || s[1] != 'f');
        q = s;
    }
    return entries;
}

/* The channel of notification seq (--channels): pseudo-random, the same on both sides. */
static int seq_channel(uint64_t seq) {
    uint64_t x = (seq + 1) * 0x9E3779B97F4A7C15ull;
    x ^= x >> 31;
    return (int)(x % (uint64_t)cfg.channels);
}

/* The first seq >= from that client c must receive (total_msgs: none left). */
static uint64_t next_for(const conn_t *c, uint64_t from) {
    if (!cfg.channels) return from;
    while (from < total_msgs && seq_channel(from) != c->channel) from++;
    return from;
}

/* Bursts c has received all of its messages of, and whether it has received everything. */
static void mark_progress(conn_t *c) {
    while (c->burst_mark < cfg.bursts &&
           c->next_seq >= (uint64_t)(c->burst_mark + 1) * (uint64_t)cfg.burst_size) {
        burst_done[c->burst_mark]++;
        c->burst_mark++;
    }
    if (c->next_seq >= total_msgs && !c->finished) {
        c->finished = 1;
        n_finished++;
        if (n_finished == cfg.clients && t_window0 >= 0) t_window1 = now_s();
    }
}

static void on_notification(conn_t *c, const uint8_t *p, size_t n) {
    check_id(c, p, n);
    const uint8_t *q = find(p, n, "seq=");
    if (!q || q + 12 > p + n) {
        n_foreign++;
        return;
    }
    uint64_t seq = 0;
    for (int i = 4; i < 12; i++) seq = seq * 10 + (uint64_t)(q[i] - '0');
    if (seq >= total_msgs || (cfg.channels && seq_channel(seq) != c->channel)) {
        n_foreign++; /* outside this client's scope */
        return;
    }
    c->n_notif++;
    if (cfg.scenario == SC_LATENCY) {
        /* Single publishes may overlap (several POSTs in flight, each its own connection),
           so they may be published in another order: each must arrive exactly once. */
        const uint8_t *t = find(q, (size_t)(p + n - q), " t=");
        if (t) {
            double us = 0;
            for (t += 3; t < p + n && *t >= '0' && *t <= '9'; t++) us = us * 10 + (*t - '0');
            lat_add(now_s() * 1e6 - us);
        }
        if (!c->seen) {
            c->seen = calloc(total_msgs / 8 + 1, 1);
            if (!c->seen) die("calloc");
        }
        uint8_t bit = (uint8_t)(1u << (seq & 7));
        if (c->seen[seq >> 3] & bit) {
            n_dup_or_reordered++;
            c->n_notif--;
            return;
        }
        c->seen[seq >> 3] |= bit;
        if (c->n_notif == total_msgs && !c->finished) {
            c->finished = 1;
            n_finished++;
            if (n_finished == cfg.clients && t_window0 >= 0) t_window1 = now_s();
        }
        return;
    }
    if (seq == c->next_seq) {
        c->next_seq = next_for(c, seq + 1);
    } else if (seq > c->next_seq) {
        for (uint64_t s = c->next_seq; s < seq; s = next_for(c, s + 1)) n_lost++;
        c->next_seq = next_for(c, seq + 1);
    } else {
        n_dup_or_reordered++;
        return;
    }
    mark_progress(c);
}

static void on_text(conn_t *c, const uint8_t *p, size_t n) {
    const uint8_t *t = find(p, n < 64 ? n : 64, "\"type\":\"");
    int type = T_OTHER;
    if (t) {
        t += 8;
        const uint8_t *e = memchr(t, '"', (size_t)(p + n - t));
        size_t tl = e ? (size_t)(e - t) : 0;
        for (int i = 0; i < T_OTHER; i++) {
            if (strlen(type_names[i]) == tl && memcmp(t, type_names[i], tl) == 0) type = i;
        }
    }
    type_count[type]++;
    switch (type) {
    case T_AUTH:
        if (c->authed) break;
        if (!find(p, n, "\"success\":true")) {
            n_auth_failed++;
            note_error("auth failed: %s", (const char *)p, n);
            break;
        }
        c->authed = 1;
        n_authed++;
        n_inflight--;
        sample_add(&connect_samples, now_s() - c->t_start);
        {
            const uint8_t *u = find(p, n, "\"userId\":\"");
            const uint8_t *e = u ? memchr(u + 10, '"', (size_t)(p + n - u - 10)) : NULL;
            if (e && (size_t)(e - u + 1) < sizeof c->user_needle) {
                c->user_needle_len = (size_t)(e - u + 1);
                memcpy(c->user_needle, u, c->user_needle_len);
            }
        }
        break;
    case T_PRESENCE_STATE:
        presence_progress(c, view_entries(c, p, n));
        break;
    case T_USER_PRESENCE:
        check_id(c, p, n);
        if (cfg.scenario == SC_STORM) view_entries(c, p, n);
        if (find(p, n, "\"status\":\"online\"")) {
            presence_progress(c, 1);
            if (c->user_needle_len && !c->self_online &&
                memmem(p, n, c->user_needle, c->user_needle_len)) {
                c->self_online = 1;
                if (cfg.scenario == SC_CHURN && !c->close_sent) {
                    send_close(c, 1000);
                    c->state = ST_CLOSING;
                }
            }
        }
        break;
    case T_NOTIFICATION:
        on_notification(c, p, n);
        break;
    case T_PONG:
        if (c->ping_out) {
            c->ping_out = 0;
            sample_add(c == &probe ? &probe_samples : &rtt_samples, now_s() - c->ping_at);
        }
        break;
    case T_ERROR:
        note_error("server error message: %s", (const char *)p, n);
        break;
    default:
        break;
    }
}

/* Parses whole frames from buf; returns the bytes consumed. */
static size_t on_frames(conn_t *c, const uint8_t *buf, size_t n) {
    size_t off = 0;
    while (c->fd >= 0 && n - off >= 2) {
        const uint8_t *f = buf + off;
        int fin = f[0] & 0x80, opcode = f[0] & 0x0f, masked = f[1] & 0x80;
        uint64_t len = f[1] & 0x7f;
        size_t h = 2;
        if (len == 126) {
            if (n - off < 4) break;
            len = (uint64_t)f[2] << 8 | f[3];
            h = 4;
        } else if (len == 127) {
            if (n - off < 10) break;
            len = 0;
            for (int i = 0; i < 8; i++) len = len << 8 | f[2 + i];
            h = 10;
        }
        if (masked) {
            n_protocol_errors++;
            note_error("%s", "server sent a masked frame", 26);
            client_end(c, 1);
            return n;
        }
        if (len > sizeof rbuf / 2) {
            n_protocol_errors++;
            note_error("%s", "frame too large", 15);
            client_end(c, 1);
            return n;
        }
        if (n - off - h < len) break;
        const uint8_t *p = f + h;
        off += h + (size_t)len;
        last_rx = now_s();
        if (!fin || opcode == 0) {
            n_fragmented++; /* neither server fragments its messages: count, don't reassemble */
            continue;
        }
        switch (opcode) {
        case 0x1:
            on_text(c, p, (size_t)len);
            break;
        case 0x2:
            n_binary++;
            break;
        case 0x8: {
            int code = len >= 2 ? (p[0] << 8 | p[1]) : 1005;
            if (!c->close_sent) {
                n_server_close++;
                if (first_close_code < 0) first_close_code = code;
                send_close(c, code == 1005 ? 1000 : code);
            }
            c->state = ST_CLOSING;
            break;
        }
        case 0x9:
            n_ws_ping++;
            send_frame(c, 0xA, p, (size_t)len);
            break;
        case 0xA:
            break;
        default:
            n_protocol_errors++;
            break;
        }
    }
    return off;
}

/* Parses the upgrade answer; returns the bytes consumed, 0 if incomplete. */
static size_t on_handshake(conn_t *c, const uint8_t *buf, size_t n) {
    const uint8_t *end = memmem(buf, n, "\r\n\r\n", 4);
    if (!end) return 0;
    size_t hlen = (size_t)(end - buf) + 4;
    char head[4096];
    size_t m = hlen < sizeof head - 1 ? hlen : sizeof head - 1;
    memcpy(head, buf, m);
    head[m] = 0;
    if (strncmp(head, "HTTP/1.1 101", 12) != 0) {
        n_handshake_failed++;
        char *eol = strstr(head, "\r\n");
        note_error("upgrade refused: %s", head, eol ? (size_t)(eol - head) : m);
        client_end(c, 0);
        return n;
    }
    char *a = strcasestr(head, "\r\nsec-websocket-accept:");
    int ok = 0;
    if (a) {
        a += 23;
        while (*a == ' ') a++;
        size_t al = strlen(c->accept);
        ok = strncmp(a, c->accept, al) == 0 && (a[al] == '\r' || a[al] == ' ');
    }
    if (!ok) {
        n_handshake_failed++;
        note_error("%s", "bad Sec-WebSocket-Accept", 24);
        client_end(c, 0);
        return n;
    }
    c->state = ST_OPEN;
    return hlen;
}

/* ------------------------------------------------------------------ publisher -------- */

static char *pub_body;
static size_t pub_body_cap;

static void publish_burst(int b) {
    size_t need = (size_t)cfg.burst_size * ((size_t)cfg.msg_bytes + 96) + 16;
    if (need > pub_body_cap) {
        pub_body_cap = need;
        pub_body = xrealloc(pub_body, need);
    }
    /* A notification frame is ~115 bytes of envelope (type, level, timestamp, id) plus the
       text: size the text so the frame is ~msg_bytes. */
    int text_len = cfg.msg_bytes - 115;
    if (text_len < 13) text_len = 13;
    size_t o = 0;
    pub_body[o++] = '[';
    for (int i = 0; i < cfg.burst_size; i++) {
        uint64_t seq = (uint64_t)b * (uint64_t)cfg.burst_size + (uint64_t)i;
        if (i) pub_body[o++] = ',';
        if (cfg.channels)
            o += (size_t)sprintf(pub_body + o, "{\"channel\":\"ch%d\",", seq_channel(seq));
        else
            pub_body[o++] = '{';
        o += (size_t)sprintf(pub_body + o, "\"level\":\"info\",\"message\":\"seq=%08llu ",
                             (unsigned long long)seq);
        for (int k = 13; k < text_len; k++) pub_body[o++] = (char)('a' + (k % 26));
        pub_body[o++] = '"';
        pub_body[o++] = '}';
    }
    pub_body[o++] = ']';
    char head[512];
    int hn = snprintf(head, sizeof head,
                      "POST /api/notifications HTTP/1.1\r\nHost: %s:%d\r\n"
                      "Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
                      "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                      cfg.host, cfg.pub_port, cfg.api_key, o);
    conn_t *c = &publisher;
    memset(c, 0, sizeof *c);
    c->kind = K_PUBLISHER;
    c->fd = open_socket(&pub_addr);
    if (c->fd < 0) die("publisher connect");
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl add");
    c->state = ST_HANDSHAKE;
    conn_write(c, head, (size_t)hn);
    conn_write(c, pub_body, o);
    pub_busy = 1;
    bursts_sent++;
}

/* Reads the publish answer into c->part until it is complete. */
static void publisher_read(conn_t *c) {
    if (c->plen + 65536 > c->pcap) {
        c->pcap = c->plen + 65536;
        c->part = xrealloc(c->part, c->pcap);
    }
    ssize_t r = read(c->fd, c->part + c->plen, c->pcap - c->plen - 1);
    if (r > 0) c->plen += (size_t)r;
    c->part[c->plen] = 0;
    char *hend = strstr((char *)c->part, "\r\n\r\n");
    int complete = r <= 0;
    if (hend) {
        char *cl = strcasestr((char *)c->part, "\r\ncontent-length:");
        if (cl && cl < hend) {
            size_t want = (size_t)strtoul(cl + 17, NULL, 10);
            if (c->plen >= (size_t)(hend + 4 - (char *)c->part) + want) complete = 1;
        }
    }
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) complete = 0;
    if (!complete) return;
    if (strncmp((char *)c->part, "HTTP/1.1 202", 12) != 0) {
        pub_bad_status++;
        char *eol = strstr((char *)c->part, "\r\n");
        note_error("publish refused: %s", (char *)c->part,
                   eol ? (size_t)(eol - (char *)c->part) : c->plen);
    } else {
        char *d = strstr((char *)c->part, "\"delivered\":");
        if (d) pub_delivered_reported += strtoull(d + 12, NULL, 10);
    }
    conn_close(c);
    c->state = ST_DONE;
    pub_busy--;
    bursts_acked++;
}

/* latency/http: one notification in its own POST (one item, not an array), sent now. */
static void publish_one(uint64_t seq, double t_sched) {
    conn_t *c = NULL;
    for (int i = 0; i < MAX_PUBLISHERS && !c; i++)
        if (publishers[i].fd < 0 || publishers[i].state == ST_DONE || publishers[i].state == ST_FREE)
            c = &publishers[i];
    if (!c) die("no free publisher slot");
    int text_len = cfg.msg_bytes - 115;
    char body[4096], text[2048];
    if (text_len > (int)sizeof text - 1) text_len = (int)sizeof text - 1;
    int tl = snprintf(text, sizeof text, "seq=%08llu t=%.0f ", (unsigned long long)seq,
                      t_sched * 1e6);
    for (int k = tl; k < text_len; k++) text[k] = (char)('a' + (k % 26));
    if (tl < text_len) tl = text_len;
    text[tl] = 0;
    int bn = snprintf(body, sizeof body, "{\"level\":\"info\",\"message\":\"%s\"}", text);
    char head[512];
    int hn = snprintf(head, sizeof head,
                      "POST /api/notifications HTTP/1.1\r\nHost: %s:%d\r\n"
                      "Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
                      "Content-Length: %d\r\nConnection: close\r\n\r\n",
                      cfg.host, cfg.pub_port, cfg.api_key, bn);
    memset(c, 0, sizeof *c);
    c->kind = K_PUBLISHER;
    c->fd = open_socket(&pub_addr);
    if (c->fd < 0) die("publisher connect");
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl add");
    c->state = ST_HANDSHAKE;
    /* connect() is in progress: the bytes wait in our buffer until it is writable */
    conn_write(c, head, (size_t)hn);
    conn_write(c, body, (size_t)bn);
    pub_busy++;
    bursts_sent++;
}

/* ------------------------------------------------------------------ the loop ---------- */

static void client_finished_connection(conn_t *c) {
    (void)c;
    if (cfg.scenario == SC_CHURN && n_started < cfg.clients) client_start(&clients[n_started]);
}

static void on_client_event(conn_t *c, uint32_t events) {
    if (c->state == ST_CONNECTING) {
        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) {
            n_connect_failed++;
            if (!first_error[0]) {
                const char *msg = strerror(err);
                note_error("connect failed: %s", msg, strlen(msg));
            }
            client_end(c, 0);
            return;
        }
        client_send_upgrade(c);
        return;
    }
    if (events & EPOLLOUT) flush_out(c);
    if (!(events & (EPOLLIN | EPOLLERR | EPOLLHUP))) return;
    size_t have = c->plen;
    if (have) memcpy(rbuf, c->part, have);
    ssize_t r = read(c->fd, rbuf + have, sizeof rbuf - have);
    if (r < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
        client_end(c, c->state != ST_CLOSING);
        return;
    }
    if (r == 0) {
        client_end(c, c->state != ST_CLOSING);
        return;
    }
    size_t n = have + (size_t)r, off = 0;
    if (c->state == ST_HANDSHAKE) {
        off = on_handshake(c, rbuf, n);
        if (c->state != ST_OPEN) {
            if (c->state == ST_HANDSHAKE) off = 0; /* incomplete: keep it all */
            else return;
        }
    }
    if (c->state == ST_OPEN || c->state == ST_CLOSING) off += on_frames(c, rbuf + off, n - off);
    if (c->fd < 0) return;
    size_t left = n - off;
    if (left > c->pcap) {
        c->pcap = left;
        c->part = xrealloc(c->part, c->pcap);
    }
    if (left) memcpy(c->part, rbuf + off, left);
    c->plen = left;
}

static void loop_once(double until) {
    static struct epoll_event evs[1024];
    double wait = until - now_s();
    if (wait < 0) wait = 0;
    if (wait > 0.1) wait = 0.1;
    /* to the microsecond: the latency scenario publishes on a 1 ms schedule */
    struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)(wait * 1e9)};
    int k = epoll_pwait2(ep, evs, 1024, &ts, NULL);
    if (k < 0) {
        if (errno == EINTR) return;
        die("epoll_wait");
    }
    for (int i = 0; i < k; i++) {
        conn_t *c = evs[i].data.ptr;
        if (c->kind == K_PUBLISHER) {
            if (evs[i].events & EPOLLOUT) flush_out(c);
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) publisher_read(c);
        } else {
            on_client_event(c, evs[i].events);
        }
    }
}

static double deadline;

static int timed_out(void) { return now_s() > deadline; }

/* The probe (--probe-rate), in a child process of its own so that its RTTs are the
   server's, not this busy loop's: connects, says 'R' on up once it is online, pings until
   down says stop, writes "n p50 p99 max view_count" (µs) on up, then keeps its connection
   open until down is closed (the parent exits), so that nobody sees it leave. */
static void run_probe(int up, int down) {
    close(ep);
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    probe.idx = cfg.clients;
    probe.fd = -1;
    client_start(&probe);
    while (!timed_out() && !(probe.authed && probe.view_count) && probe.state != ST_DONE)
        loop_once(now_s() + 0.1);
    char r = probe.state == ST_OPEN ? 'R' : 'F';
    if (write(up, &r, 1) != 1) _exit(1);
    fcntl(down, F_SETFL, O_NONBLOCK);
    double next = now_s(), interval = 1.0 / cfg.probe_rate;
    char buf[16];
    while (!timed_out()) {
        ssize_t k = read(down, buf, sizeof buf);
        if (k >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) break; /* stop */
        double t = now_s();
        if (t >= next) {
            next += interval;
            if (next < t) next = t;
            if (probe.state != ST_OPEN) {
            } else if (probe.ping_out) {
                n_ping_skipped++;
            } else {
                probe.ping_out = 1;
                probe.ping_at = t;
                send_frame(&probe, 0x1, "{\"type\":\"ping\"}", 15);
            }
        }
        loop_once(next);
    }
    qsort(probe_samples.v, probe_samples.n, sizeof(double), cmp_double);
    char out[256];
    int n = snprintf(out, sizeof out, "%zu %.1f %.1f %.1f %u\n", probe_samples.n,
                     percentile(&probe_samples, 0.5) * 1e6, percentile(&probe_samples, 0.99) * 1e6,
                     probe_samples.n ? probe_samples.v[probe_samples.n - 1] * 1e6 : -1.0,
                     probe.view_count);
    if (write(up, out, (size_t)n) != n) _exit(1);
    fcntl(down, F_SETFL, 0);
    while (read(down, buf, sizeof buf) > 0) {
    }
    _exit(0);
}

/* Opens N clients (at most --concurrency handshakes in flight) and waits until each is
   authenticated and, for distinct users, has seen every user online; then until no message
   has arrived for --settle seconds. Returns the time the last of them was ready. */
static double connect_all(double *t_ready) {
    double t_last_ready = -1;
    while (!timed_out()) {
        while (n_started < cfg.clients && n_inflight < cfg.concurrency)
            client_start(&clients[n_started]);
        int ready = n_started == cfg.clients && n_authed + n_done >= cfg.clients;
        /* every client of this process has a complete view (storm: all N + 1 users; the
           probe, in a process of its own, reports its view at the end) */
        if (ready && !cfg.same_user && n_done == 0) ready = n_presence_complete == cfg.clients;
        if (ready) {
            if (t_last_ready < 0) {
                t_last_ready = now_s();
                if (probe_down >= 0 && write(probe_down, "S", 1) != 1) probe_down = -1;
            }
            if (now_s() - last_rx >= cfg.settle) break;
        }
        loop_once(ready ? last_rx + cfg.settle : now_s() + 0.1);
    }
    *t_ready = t_last_ready;
    return t_last_ready;
}

static void usage(void) {
    fprintf(stderr, "loadgen: a WebSocket load generator; see the comment at the top of "
                    "benchmarks/loadgen/loadgen.c\n");
    fprintf(stderr,
            "usage: loadgen --scenario fanout|rtt|churn|storm|latency --port P [--pub-port P]\n"
            "  [--host 127.0.0.1] [--path /ws] [--api-key K] [--token-prefix T] [--same-user]\n"
            "  [--clients N] [--concurrency C] [--server-pid PID]\n"
            "  [--bursts B] [--burst-size M] [--msg-bytes S] [--channels K]\n"
            "  [--ping-rate R] [--duration D] [--probe-rate R] [--settle S] [--timeout S]\n"
            "  [--publish http|inproc] [--publish-rate R] [--messages N] [--grace S] [--hold]\n");
    exit(2);
}

int main(int argc, char **argv) {
    static struct option opts[] = {
        {"host", 1, 0, 'h'},      {"port", 1, 0, 'p'},         {"pub-port", 1, 0, 'P'},
        {"path", 1, 0, 'u'},      {"api-key", 1, 0, 'k'},      {"token-prefix", 1, 0, 't'},
        {"same-user", 0, 0, 'S'}, {"clients", 1, 0, 'n'},      {"concurrency", 1, 0, 'c'},
        {"scenario", 1, 0, 's'},  {"server-pid", 1, 0, 'i'},   {"bursts", 1, 0, 'b'},
        {"burst-size", 1, 0, 'm'}, {"msg-bytes", 1, 0, 'B'},   {"ping-rate", 1, 0, 'r'},
        {"duration", 1, 0, 'd'},  {"settle", 1, 0, 'q'},       {"timeout", 1, 0, 'T'},
        {"hold", 0, 0, 'H'},      {"help", 0, 0, '?'},         {"channels", 1, 0, 'C'},
        {"probe-rate", 1, 0, 'R'}, {"publish", 1, 0, 'M'},  {"publish-rate", 1, 0, 'x'},
        {"messages", 1, 0, 'N'},    {"grace", 1, 0, 'g'},
        {0, 0, 0, 0}};
    int o;
    const char *scen = "fanout";
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'h': cfg.host = optarg; break;
        case 'p': cfg.port = atoi(optarg); break;
        case 'P': cfg.pub_port = atoi(optarg); break;
        case 'u': cfg.path = optarg; break;
        case 'k': cfg.api_key = optarg; break;
        case 't': cfg.token_prefix = optarg; break;
        case 'S': cfg.same_user = 1; break;
        case 'n': cfg.clients = atoi(optarg); break;
        case 'c': cfg.concurrency = atoi(optarg); break;
        case 's': scen = optarg; break;
        case 'i':
            for (char *tok = strtok(optarg, ","); tok && n_server_pids < 64; tok = strtok(NULL, ","))
                server_pids[n_server_pids++] = atoi(tok);
            break;
        case 'b': cfg.bursts = atoi(optarg); break;
        case 'm': cfg.burst_size = atoi(optarg); break;
        case 'B': cfg.msg_bytes = atoi(optarg); break;
        case 'r': cfg.ping_rate = atof(optarg); break;
        case 'd': cfg.duration = atof(optarg); break;
        case 'q': cfg.settle = atof(optarg); break;
        case 'T': cfg.timeout = atof(optarg); break;
        case 'H': cfg.hold = 1; break;
        case 'C': cfg.channels = atoi(optarg); break;
        case 'R': cfg.probe_rate = atof(optarg); break;
        case 'M':
            if (strcmp(optarg, "inproc") == 0) cfg.publish_inproc = 1;
            else if (strcmp(optarg, "http") == 0) cfg.publish_inproc = 0;
            else usage();
            break;
        case 'x': cfg.publish_rate = atof(optarg); break;
        case 'N': cfg.messages = atoi(optarg); break;
        case 'g': cfg.grace = atof(optarg); break;
        default: usage();
        }
    }
    cfg.scenario = -1;
    for (int i = 0; i < N_SCENARIOS; i++)
        if (strcmp(scen, scenario_names[i]) == 0) cfg.scenario = i;
    if (cfg.scenario < 0 || !cfg.port || cfg.clients < 1 || cfg.concurrency < 1) usage();
    if (!cfg.pub_port) cfg.pub_port = cfg.port;
    if (cfg.scenario == SC_LATENCY) {
        /* one notification a "burst": the fan-out bookkeeping tracks them */
        if (cfg.messages < 1 || cfg.publish_rate <= 0) usage();
        cfg.bursts = cfg.messages;
        cfg.burst_size = 1;
        cfg.same_user = 1;
        lat_hist = calloc(LAT_BUCKETS, sizeof *lat_hist);
        if (!lat_hist) die("calloc");
        for (int i = 0; i < MAX_PUBLISHERS; i++) publishers[i].fd = -1;
    } else if (cfg.scenario != SC_FANOUT) {
        cfg.burst_size = 0;
    }
    if (cfg.scenario != SC_FANOUT || cfg.channels < 0) cfg.channels = 0;
    if (cfg.scenario != SC_STORM || cfg.probe_rate < 0) cfg.probe_rate = 0;
    storm_users = cfg.clients + (cfg.probe_rate > 0);

    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    rng_state ^= (uint32_t)getpid() * 2654435761u ^ (uint32_t)(now_s() * 1e6);
    memset(&server_addr, 0, sizeof server_addr);
    server_addr.sin_family = AF_INET;
    server_addr.sin_port = htons((uint16_t)cfg.port);
    if (inet_pton(AF_INET, cfg.host, &server_addr.sin_addr) != 1) usage();
    pub_addr = server_addr;
    pub_addr.sin_port = htons((uint16_t)cfg.pub_port);

    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    clients = calloc((size_t)cfg.clients, sizeof *clients);
    if (!clients) die("calloc");
    for (int i = 0; i < cfg.clients; i++) {
        clients[i].idx = i;
        clients[i].fd = -1;
    }
    deadline = now_s() + cfg.timeout;
    if (cfg.scenario == SC_FANOUT || cfg.scenario == SC_LATENCY) {
        total_msgs = (uint64_t)cfg.bursts * (uint64_t)cfg.burst_size;
        burst_done = calloc((size_t)cfg.bursts + 1, sizeof *burst_done);
        for (int i = 0; i < cfg.clients; i++) {
            conn_t *c = &clients[i];
            c->channel = cfg.channels ? i % cfg.channels : 0;
            for (uint64_t s = next_for(c, 0); s < total_msgs; s = next_for(c, s + 1))
                expected_deliveries++;
            c->next_seq = next_for(c, 0);
            mark_progress(c);
        }
    }

    long rss0 = proc_status_kb("VmRSS:");
    int probe_up = -1;
    if (cfg.probe_rate > 0) {
        /* the probe: connected (and quiet) before the storm begins */
        int up[2], down[2];
        if (pipe(up) < 0 || pipe(down) < 0) die("pipe");
        fflush(stdout);
        pid_t pid = fork();
        if (pid < 0) die("fork");
        if (pid == 0) {
            close(up[0]);
            close(down[1]);
            run_probe(up[1], down[0]);
        }
        close(up[1]);
        close(down[0]);
        probe_up = up[0];
        probe_down = down[1];
        char r = 0;
        if (read(probe_up, &r, 1) != 1 || r != 'R') {
            note_error("%s", "the probe client did not connect", 32);
            n_connect_failed++;
        }
    }
    double t0 = now_s();
    long long cpu0 = proc_cpu_ticks();
    double self0 = self_cpu_s();
    long long cpu_w0 = -1, cpu_w1 = -1;
    double self_w0 = 0, self_w1 = 0;
    long rss_ready = -1, rss_window_end = -1;
    double t_ready = -1, setup_s = -1;
    uint64_t deliveries0 = 0;
    uint64_t rtt_sent = 0;

    if (cfg.scenario == SC_CHURN) {
        t_window0 = t0;
        cpu_w0 = cpu0;
        self_w0 = self0;
        while (n_started < cfg.clients && n_started < cfg.concurrency)
            client_start(&clients[n_started]);
        while (n_done < cfg.clients && !timed_out()) loop_once(now_s() + 0.1);
        t_window1 = now_s();
        cpu_w1 = proc_cpu_ticks();
        self_w1 = self_cpu_s();
    } else {
        connect_all(&t_ready);
        setup_s = t_ready >= 0 ? t_ready - t0 : -1;
        if (cfg.scenario == SC_STORM) {
            /* the storm is the connect phase: its window ends when the last client has seen
               everyone online (not after the settle time). */
            t_window0 = t0;
            t_window1 = t_ready;
            cpu_w0 = cpu0;
            cpu_w1 = proc_cpu_ticks(); /* read after the settle: nothing happened meanwhile */
            self_w0 = self0;
            self_w1 = self_cpu_s();
        }
        rss_ready = proc_status_kb("VmRSS:");
    }

    if (cfg.scenario == SC_FANOUT && !timed_out()) {
        deliveries0 = type_count[T_NOTIFICATION];
        cpu_w0 = proc_cpu_ticks();
        self_w0 = self_cpu_s();
        t_window0 = now_s();
        while (!timed_out() && n_finished < cfg.clients) {
            if (!pub_busy && bursts_sent < cfg.bursts &&
                (bursts_sent < 2 || burst_done[bursts_sent - 2] >= cfg.clients - (int)n_done))
                publish_burst(bursts_sent);
            if (n_done == cfg.clients) break;
            loop_once(now_s() + 0.1);
        }
        if (t_window1 < 0) t_window1 = now_s();
        cpu_w1 = proc_cpu_ticks();
        self_w1 = self_cpu_s();
        rss_window_end = proc_status_kb("VmRSS:");
        while (pub_busy && !timed_out()) loop_once(now_s() + 0.1);
        /* then wait until quiet, so that rss_end is what the server keeps, not what its
           writers still hold at the instant the last message arrived */
        double quiet_until = now_s() + cfg.settle;
        while (now_s() < quiet_until && !timed_out()) loop_once(quiet_until);
    }

    if (cfg.scenario == SC_LATENCY && !timed_out()) {
        deliveries0 = type_count[T_NOTIFICATION];
        cpu_w0 = proc_cpu_ticks();
        self_w0 = self_cpu_s();
        t_window0 = now_s();
        double interval = 1.0 / cfg.publish_rate;
        if (cfg.publish_inproc) {
            if (!n_server_pids || kill(server_pids[0], SIGUSR2) < 0) die("kill SIGUSR2");
            bursts_sent = cfg.messages;
        }
        /* The window ends when every client has everything, or --grace seconds after the
           last notification was due: a server that cannot keep up is not waited for (what
           it has not delivered by then is counted, with the latency it has at least). */
        double give_up = t_window0 + cfg.messages * interval + cfg.grace;
        while (!timed_out() && n_finished < cfg.clients && now_s() < give_up) {
            double t = now_s();
            while (bursts_sent < cfg.messages && pub_busy < MAX_PUBLISHERS) {
                double at = t_window0 + bursts_sent * interval;
                if (at > t) break;
                if (t - at > 1e-3) pub_late++;
                publish_one((uint64_t)bursts_sent, at);
            }
            if (n_done == cfg.clients) break;
            double next = bursts_sent < cfg.messages ? t_window0 + bursts_sent * interval : give_up;
            loop_once(next);
        }
        double t_end = now_s();
        if (t_window1 < 0) t_window1 = t_end;
        cpu_w1 = proc_cpu_ticks();
        self_w1 = self_cpu_s();
        for (int i = 0; i < cfg.clients; i++) {
            conn_t *c = &clients[i];
            for (uint64_t q = 0; q < total_msgs && !c->finished; q++)
                if (!c->seen || !(c->seen[q >> 3] & (1u << (q & 7)))) {
                    lat_late++;
                    lat_add((t_end - (t_window0 + (double)q * interval)) * 1e6);
                }
        }
        double drain_until = now_s() + cfg.grace;
        while (pub_busy && now_s() < drain_until) loop_once(drain_until);
    }

    if (cfg.scenario == SC_RTT && !timed_out()) {
        cpu_w0 = proc_cpu_ticks();
        self_w0 = self_cpu_s();
        t_window0 = now_s();
        double interval = 1.0 / cfg.ping_rate, next = t_window0, stop = t_window0 + cfg.duration;
        int rr = 0;
        while (now_s() < stop && !timed_out()) {
            double t = now_s();
            while (next <= t && next < stop) {
                conn_t *c = &clients[rr];
                rr = (rr + 1) % cfg.clients;
                next += interval;
                if (c->state != ST_OPEN) continue;
                if (c->ping_out) {
                    n_ping_skipped++;
                    continue;
                }
                c->ping_out = 1;
                c->ping_at = now_s();
                rtt_sent++;
                send_frame(c, 0x1, "{\"type\":\"ping\"}", 15);
            }
            loop_once(next < stop ? next : stop);
        }
        double grace = now_s() + 1.0;
        while (rtt_samples.n < rtt_sent && now_s() < grace) loop_once(grace);
        t_window1 = now_s();
        cpu_w1 = proc_cpu_ticks();
        self_w1 = self_cpu_s();
    }

    size_t probe_n = 0;
    double probe_p50 = -1, probe_p99 = -1, probe_max = -1;
    unsigned probe_view = 0;
    if (probe_up >= 0) {
        if (probe_down >= 0 && t_ready < 0 && write(probe_down, "S", 1) != 1) probe_down = -1;
        char line[256];
        ssize_t k = read(probe_up, line, sizeof line - 1);
        line[k > 0 ? k : 0] = 0;
        if (sscanf(line, "%zu %lf %lf %lf %u", &probe_n, &probe_p50, &probe_p99, &probe_max,
                   &probe_view) != 5)
            note_error("%s", "no answer from the probe", 24);
    }
    long hwm = proc_status_kb("VmHWM:");
    long rss_end = proc_status_kb("VmRSS:");
    double tck = (double)sysconf(_SC_CLK_TCK);
    double window = t_window1 >= 0 && t_window0 >= 0 ? t_window1 - t_window0 : -1;
    double cpu_us = cpu_w0 >= 0 && cpu_w1 >= 0 ? (double)(cpu_w1 - cpu_w0) * 1e6 / tck : -1;
    uint64_t delivered = 0, expected = 0;
    if (cfg.scenario == SC_FANOUT || cfg.scenario == SC_LATENCY) {
        delivered = type_count[T_NOTIFICATION] - deliveries0;
        expected = expected_deliveries;
    } else if (cfg.scenario == SC_STORM) {
        /* each arrival announced to everyone connected by then (the newcomer included),
           and to the probe: what the clients must learn one message at a time */
        delivered = type_count[T_USER_PRESENCE];
        expected = (uint64_t)cfg.clients * (uint64_t)(cfg.clients + 1) / 2 +
                   (cfg.probe_rate > 0 ? (uint64_t)cfg.clients : 0);
        for (int i = 0; i < cfg.clients; i++)
            if (clients[i].view_count != (uint32_t)storm_users) n_view_wrong++;
        if (cfg.probe_rate > 0 && probe_view != (uint32_t)storm_users) n_view_wrong++;
    } else if (cfg.scenario == SC_RTT) {
        delivered = rtt_samples.n;
        expected = rtt_sent;
    } else {
        delivered = (uint64_t)n_done;
        expected = (uint64_t)cfg.clients;
    }
    int timeout_hit = timed_out();
    uint64_t not_delivered = 0;
    if (cfg.scenario == SC_FANOUT) {
        for (int i = 0; i < cfg.clients; i++)
            for (uint64_t s = clients[i].next_seq; s < total_msgs; s = next_for(&clients[i], s + 1))
                not_delivered++;
    } else if (cfg.scenario == SC_LATENCY) {
        for (int i = 0; i < cfg.clients; i++)
            for (uint64_t s = 0; s < total_msgs; s++)
                if (!clients[i].seen || !(clients[i].seen[s >> 3] & (1u << (s & 7)))) not_delivered++;
    }
    int zero_loss = !n_lost && !n_dup_or_reordered && !n_id_not_increasing &&
                    (!not_delivered || cfg.scenario == SC_LATENCY) && !n_foreign;
    int ok = !timeout_hit && !n_connect_failed && !n_handshake_failed && !n_auth_failed &&
             !n_protocol_errors && !n_server_close && !pub_bad_status && zero_loss;
    if (cfg.scenario == SC_STORM) /* the views decide; coalescing may merge deliveries */
        ok = ok && !n_view_wrong && !n_unknown_user;
    else if (cfg.scenario != SC_LATENCY) /* latency: what was late is in the figures */
        ok = ok && delivered == expected;
    if (cfg.scenario == SC_CHURN) ok = ok && (uint64_t)n_authed == expected;
    if (cfg.scenario == SC_FANOUT ||
        (cfg.scenario == SC_LATENCY && !cfg.publish_inproc && !lat_late && !pub_busy))
        ok = ok && pub_delivered_reported == expected;

    qsort(rtt_samples.v, rtt_samples.n, sizeof(double), cmp_double);
    qsort(connect_samples.v, connect_samples.n, sizeof(double), cmp_double);

    printf("{\"scenario\":\"%s\",\"clients\":%d,\"ok\":%s,\"timeout\":%s,\"zero_loss\":%s,",
           scenario_names[cfg.scenario], cfg.clients, ok ? "true" : "false",
           timeout_hit ? "true" : "false", zero_loss ? "true" : "false");
    printf("\"setup_s\":%.6f,\"window_s\":%.6f,\"server_cpu_us\":%.0f,\"loadgen_cpu_us\":%.0f,",
           setup_s, window, cpu_us, (self_w1 - self_w0) * 1e6);
    printf("\"delivered\":%llu,\"expected\":%llu,\"publish_reported_delivered\":%llu,",
           (unsigned long long)delivered, (unsigned long long)expected,
           (unsigned long long)pub_delivered_reported);
    printf("\"rss0_kb\":%ld,\"rss_ready_kb\":%ld,\"rss_window_end_kb\":%ld,\"rss_end_kb\":%ld,"
           "\"hwm_kb\":%ld,",
           rss0, rss_ready, rss_window_end, rss_end, hwm);
    printf("\"rtt_us\":{\"n\":%zu,\"p50\":%.1f,\"p90\":%.1f,\"p99\":%.1f,\"max\":%.1f},"
           "\"pings_skipped\":%llu,",
           rtt_samples.n, percentile(&rtt_samples, 0.5) * 1e6,
           percentile(&rtt_samples, 0.9) * 1e6, percentile(&rtt_samples, 0.99) * 1e6,
           rtt_samples.n ? rtt_samples.v[rtt_samples.n - 1] * 1e6 : -1.0,
           (unsigned long long)n_ping_skipped);
    printf("\"probe_rtt_us\":{\"n\":%zu,\"p50\":%.1f,\"p99\":%.1f,\"max\":%.1f},"
           "\"views_wrong\":%llu,\"unknown_users\":%llu,",
           probe_n, probe_p50, probe_p99, probe_max,
           (unsigned long long)n_view_wrong, (unsigned long long)n_unknown_user);
    printf("\"latency_us\":{\"n\":%llu,\"p50\":%.1f,\"p99\":%.1f,\"max\":%.1f,\"mean\":%.1f,"
           "\"over_1000s\":%llu,\"not_delivered_in_window\":%llu},\"publish\":\"%s\","
           "\"publishes_late\":%llu,\"grace_s\":%.1f,",
           (unsigned long long)lat_n, lat_percentile(0.5), lat_percentile(0.99), lat_max_us,
           lat_n ? lat_sum_us / (double)lat_n : -1.0, (unsigned long long)lat_over,
           (unsigned long long)lat_late,
           cfg.scenario != SC_LATENCY ? "" : cfg.publish_inproc ? "inproc" : "http",
           (unsigned long long)pub_late, cfg.grace);
    printf("\"connect_ms\":{\"n\":%zu,\"p50\":%.3f,\"p99\":%.3f,\"max\":%.3f},",
           connect_samples.n, percentile(&connect_samples, 0.5) * 1e3,
           percentile(&connect_samples, 0.99) * 1e3,
           connect_samples.n ? connect_samples.v[connect_samples.n - 1] * 1e3 : -1.0);
    printf("\"counts\":{");
    for (int i = 0; i < T_COUNT; i++)
        printf("%s\"%s\":%llu", i ? "," : "", type_names[i], (unsigned long long)type_count[i]);
    printf("},\"errors\":{\"connect_failed\":%llu,\"handshake_failed\":%llu,"
           "\"auth_failed\":%llu,\"unexpected_eof\":%llu,\"server_close\":%llu,"
           "\"first_close_code\":%d,\"protocol\":%llu,\"fragmented\":%llu,\"binary\":%llu,"
           "\"lost\":%llu,\"not_delivered\":%llu,\"dup_or_reordered\":%llu,"
           "\"id_not_increasing\":%llu,\"foreign\":%llu,\"publish_bad_status\":%d},",
           (unsigned long long)n_connect_failed, (unsigned long long)n_handshake_failed,
           (unsigned long long)n_auth_failed, (unsigned long long)n_unexpected_eof,
           (unsigned long long)n_server_close, first_close_code,
           (unsigned long long)n_protocol_errors, (unsigned long long)n_fragmented,
           (unsigned long long)n_binary, (unsigned long long)n_lost,
           (unsigned long long)not_delivered, (unsigned long long)n_dup_or_reordered,
           (unsigned long long)n_id_not_increasing, (unsigned long long)n_foreign,
           pub_bad_status);
    printf("\"channels\":%d,\"ws_pings\":%llu,\"first_error\":\"%s\"}\n", cfg.channels,
           (unsigned long long)n_ws_ping, first_error);
    fflush(stdout);

    if (cfg.hold) {
        char tmp[256];
        while (read(0, tmp, sizeof tmp) > 0) {
        }
    }
    /* Reset rather than close: no TIME_WAIT left behind on the client side. */
    struct linger lg = {1, 0};
    for (int i = 0; i < cfg.clients; i++)
        if (clients[i].fd >= 0) setsockopt(clients[i].fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    return ok ? 0 : 1;
}
