/* ZeroMQ baseline for scripts/bench.sh: the same workloads as our chirp benchmarks, on
 * libzmq (Debian's libzmq3-dev), two processes over loopback, high-water marks off.
 *
 *   zmq_bench echo PORT                     ROUTER that sends every message back
 *   zmq_bench send PORT WINDOW SIZE COUNT   DEALER keeping WINDOW messages outstanding
 *                                           until COUNT came back; prints the rate
 *   zmq_bench sink PORT COUNT               PULL that counts COUNT messages; prints the
 *                                           rate from the first to the last
 *   zmq_bench push PORT SIZE COUNT          PUSH of COUNT messages of SIZE bytes
 *   zmq_bench latency PORT RATE COUNT SIZE OUTFILE
 *                                           open loop, like `chirp bench-latency`: message
 *                                           i is due at i / RATE s (at most 1,000
 *                                           outstanding, as ours); each echo's latency runs
 *                                           from its due time. Latencies (ns, one per line)
 *                                           go to OUTFILE for `chirp bench-histogram`;
 *                                           prints "secs S".
 *
 * ZeroMQ has no acknowledgement, so it compares with our asynchronous mode. Output lines
 * match chirp's ("N round trips in S s: R/s", "N messages in S s: R/s").
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* High-water marks off, unless ZMQ_BENCH_DEFAULT_HWM is set: then ZeroMQ's defaults
 * (1,000 messages each way), as its users run it. */
static void *sock(void *ctx, int type) {
    void *s = zmq_socket(ctx, type);
    int zero = 0;
    if (!getenv("ZMQ_BENCH_DEFAULT_HWM")) {
        zmq_setsockopt(s, ZMQ_SNDHWM, &zero, sizeof zero);
        zmq_setsockopt(s, ZMQ_RCVHWM, &zero, sizeof zero);
    }
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    return s;
}

static void die(const char *what) {
    fprintf(stderr, "zmq_bench: %s: %s\n", what, zmq_strerror(zmq_errno()));
    exit(1);
}

static struct timespec t0_;

static uint64_t since0(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)(t.tv_sec - t0_.tv_sec) * 1000000000ull + (uint64_t)(t.tv_nsec - t0_.tv_nsec);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: zmq_bench echo|send|sink|push PORT ...\n");
        return 2;
    }
    char ep[64];
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%s", argv[2]);
    void *ctx = zmq_ctx_new();
    if (strcmp(argv[1], "echo") == 0) {
        void *s = sock(ctx, ZMQ_ROUTER);
        if (zmq_bind(s, ep) != 0) die("bind");
        printf("listening on %s\n", argv[2]);
        fflush(stdout);
        for (;;) {
            zmq_msg_t id, body;
            zmq_msg_init(&id);
            zmq_msg_init(&body);
            if (zmq_msg_recv(&id, s, 0) < 0) die("recv");
            if (zmq_msg_recv(&body, s, 0) < 0) die("recv");
            if (zmq_msg_send(&id, s, ZMQ_SNDMORE) < 0) die("send");
            if (zmq_msg_send(&body, s, 0) < 0) die("send");
        }
    } else if (strcmp(argv[1], "send") == 0 && argc >= 6) {
        long window = atol(argv[3]), size = atol(argv[4]), count = atol(argv[5]);
        void *s = sock(ctx, ZMQ_DEALER);
        if (zmq_connect(s, ep) != 0) die("connect");
        char *payload = calloc(1, size > 0 ? size : 1);
        char buf[65536];
        long sent = 0, back = 0;
        double t0 = now();
        while (back < count) {
            while (sent < count && sent - back < window) {
                if (zmq_send(s, payload, size, 0) < 0) die("send");
                sent++;
            }
            if (zmq_recv(s, buf, sizeof buf, 0) < 0) die("recv");
            back++;
        }
        double dt = now() - t0;
        printf("%ld round trips in %.3f s: %.0f/s\n", count, dt, count / dt);
        zmq_close(s);
    } else if (strcmp(argv[1], "sink") == 0 && argc >= 4) {
        long count = atol(argv[3]);
        void *s = sock(ctx, ZMQ_PULL);
        if (zmq_bind(s, ep) != 0) die("bind");
        printf("listening on %s\n", argv[2]);
        fflush(stdout);
        char buf[65536];
        double t0 = 0;
        for (long i = 0; i < count; i++) {
            if (zmq_recv(s, buf, sizeof buf, 0) < 0) die("recv");
            if (i == 0) t0 = now();
        }
        double dt = now() - t0;
        printf("%ld messages in %.3f s: %.0f/s\n", count, dt, (count - 1) / dt);
        zmq_close(s);
    } else if (strcmp(argv[1], "push") == 0 && argc >= 5) {
        long size = atol(argv[3]), count = atol(argv[4]);
        void *s = sock(ctx, ZMQ_PUSH);
        if (zmq_connect(s, ep) != 0) die("connect");
        char *payload = calloc(1, size > 0 ? size : 1);
        for (long i = 0; i < count; i++)
            if (zmq_send(s, payload, size, 0) < 0) die("send");
        /* linger 0 would drop queued messages: wait for them to leave */
        int forever = -1;
        zmq_setsockopt(s, ZMQ_LINGER, &forever, sizeof forever);
        zmq_close(s);
    } else if (strcmp(argv[1], "latency") == 0 && argc >= 7) {
        /* One thread, one DEALER against the ROUTER echo: send what is due, take what
         * came back, then sleep in ppoll() on the socket's ZMQ_FD until the next message
         * is due (nanosecond timeout) or an echo arrives. */
        double rate = atof(argv[3]);
        long count = atol(argv[4]), size = atol(argv[5]);
        if (size < 8) size = 8;
        uint64_t *sched = calloc(count, sizeof *sched), *lat = calloc(count, sizeof *lat);
        void *s = sock(ctx, ZMQ_DEALER);
        if (zmq_connect(s, ep) != 0) die("connect");
        int fd;
        size_t fdlen = sizeof fd;
        zmq_getsockopt(s, ZMQ_FD, &fd, &fdlen);
        char *payload = calloc(1, size), buf[65536];
        long sent = 0, back = 0;
        clock_gettime(CLOCK_MONOTONIC, &t0_);
        while (back < count) {
            uint64_t now_ns = since0();
            while (sent < count && sent - back < 1000) {
                uint64_t due = rate > 0 ? (uint64_t)(sent / rate * 1e9) : 0;
                if (due > now_ns) break;
                sched[sent] = due;
                memcpy(payload, &sent, sizeof sent);
                if (zmq_send(s, payload, size, 0) < 0) die("send");
                sent++;
            }
            int n;
            while ((n = zmq_recv(s, buf, sizeof buf, ZMQ_DONTWAIT)) >= 0) {
                uint64_t i;
                memcpy(&i, buf, sizeof i);
                if (i < (uint64_t)count) lat[i] = since0() - sched[i];
                back++;
            }
            if (zmq_errno() != EAGAIN) die("recv");
            if (back >= count) break;
            struct pollfd p = {fd, POLLIN, 0};
            struct timespec wait, *tw = NULL;
            if (sent < count && sent - back < 1000) {
                uint64_t due = rate > 0 ? (uint64_t)(sent / rate * 1e9) : 0, t = since0();
                uint64_t left = due > t ? due - t : 0;
                wait.tv_sec = left / 1000000000ull;
                wait.tv_nsec = left % 1000000000ull;
                tw = &wait;
            }
            int events = 0;
            size_t elen = sizeof events;
            zmq_getsockopt(s, ZMQ_EVENTS, &events, &elen);
            if (!(events & ZMQ_POLLIN)) ppoll(&p, 1, tw, NULL);
        }
        double secs = since0() / 1e9;
        FILE *f = fopen(argv[6], "w");
        for (long k = 0; f && k < count; k++) fprintf(f, "%llu\n", (unsigned long long)lat[k]);
        if (f) fclose(f);
        printf("secs %.3f\n", secs);
        zmq_close(s);
    } else {
        fprintf(stderr, "zmq_bench: bad arguments\n");
        return 2;
    }
    zmq_ctx_term(ctx);
    return 0;
}
