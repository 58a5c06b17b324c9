/* NNG baseline for scripts/bench.sh: the workloads of zmq_bench.c on NNG 1.5 (Debian's
 * libnng-dev), two processes over loopback.
 *
 *   nng_bench echo PORT                     PAIR (v0) that sends every message back
 *   nng_bench send PORT WINDOW SIZE COUNT   PAIR keeping WINDOW messages outstanding
 *                                           until COUNT came back; prints the rate
 *   nng_bench sink PORT COUNT               PULL that counts COUNT messages; prints the
 *                                           rate from the first to the last
 *   nng_bench push PORT SIZE COUNT          PUSH of COUNT messages of SIZE bytes
 *
 * NNG has no acknowledgement either, so it compares with our asynchronous mode. The
 * sockets' queues hold 1,024 messages each way (NNG_OPT_SENDBUF/RECVBUF; NNG's default
 * is none: a send waits for the pipe to take it). Output lines match chirp's ("N round
 * trips in S s: R/s", "N messages in S s: R/s").
 */
#include <nng/nng.h>
#include <nng/protocol/pair0/pair.h>
#include <nng/protocol/pipeline0/pull.h>
#include <nng/protocol/pipeline0/push.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void check(int rv, const char *what) {
    if (rv != 0) {
        fprintf(stderr, "nng_bench: %s: %s\n", what, nng_strerror(rv));
        exit(1);
    }
}

static void buffers(nng_socket s) {
    check(nng_socket_set_int(s, NNG_OPT_SENDBUF, 1024), "sendbuf");
    check(nng_socket_set_int(s, NNG_OPT_RECVBUF, 1024), "recvbuf");
}

/* The pusher's end: NNG drops what is still queued when a socket closes, so the pusher
 * waits until the sink, having counted everything, hangs up (at most a minute). */
static pthread_mutex_t gone_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gone_cv = PTHREAD_COND_INITIALIZER;
static int gone = 0;

static void pipe_gone(nng_pipe p, nng_pipe_ev ev, void *arg) {
    (void)p; (void)ev; (void)arg;
    pthread_mutex_lock(&gone_mu);
    gone = 1;
    pthread_cond_broadcast(&gone_cv);
    pthread_mutex_unlock(&gone_mu);
}

/* Listens on PORT and says so (bench.sh waits for the line). */
static void listen_on(nng_socket s, const char *url, const char *port) {
    check(nng_listen(s, url, NULL, 0), "listen");
    printf("listening on %s\n", port);
    fflush(stdout);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: nng_bench echo|send|sink|push PORT ...\n");
        return 2;
    }
    char url[64];
    snprintf(url, sizeof url, "tcp://127.0.0.1:%s", argv[2]);
    nng_socket s;
    if (strcmp(argv[1], "echo") == 0) {
        check(nng_pair0_open(&s), "pair");
        buffers(s);
        listen_on(s, url, argv[2]);
        for (;;) {
            nng_msg *m;
            check(nng_recvmsg(s, &m, 0), "recv");
            check(nng_sendmsg(s, m, 0), "send");
        }
    } else if (strcmp(argv[1], "send") == 0 && argc >= 6) {
        long window = atol(argv[3]), size = atol(argv[4]), count = atol(argv[5]);
        char *buf = calloc(1, size > 0 ? size : 1);
        check(nng_pair0_open(&s), "pair");
        buffers(s);
        check(nng_dial(s, url, NULL, 0), "dial");
        double t0 = now();
        long sent = 0, back = 0;
        for (; sent < window && sent < count; sent++) check(nng_send(s, buf, size, 0), "send");
        while (back < count) {
            nng_msg *m;
            check(nng_recvmsg(s, &m, 0), "recv");
            nng_msg_free(m);
            back++;
            if (sent < count) {
                check(nng_send(s, buf, size, 0), "send");
                sent++;
            }
        }
        double dt = now() - t0;
        printf("%ld round trips in %.3f s: %.0f/s\n", count, dt, count / dt);
        nng_close(s);
    } else if (strcmp(argv[1], "sink") == 0 && argc >= 4) {
        long count = atol(argv[3]);
        check(nng_pull0_open(&s), "pull");
        buffers(s);
        listen_on(s, url, argv[2]);
        double t0 = 0;
        for (long k = 0; k < count; k++) {
            nng_msg *m;
            check(nng_recvmsg(s, &m, 0), "recv");
            nng_msg_free(m);
            if (k == 0) t0 = now();
        }
        double dt = now() - t0;
        printf("%ld messages in %.3f s: %.0f/s\n", count, dt, (count - 1) / dt);
        nng_close(s);
    } else if (strcmp(argv[1], "push") == 0 && argc >= 5) {
        long size = atol(argv[3]), count = atol(argv[4]);
        char *buf = calloc(1, size > 0 ? size : 1);
        check(nng_push0_open(&s), "push");
        buffers(s);
        check(nng_pipe_notify(s, NNG_PIPE_EV_REM_POST, pipe_gone, NULL), "notify");
        check(nng_dial(s, url, NULL, 0), "dial");
        for (long k = 0; k < count; k++) check(nng_send(s, buf, size, 0), "send");
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 60;
        pthread_mutex_lock(&gone_mu);
        while (!gone) {
            if (pthread_cond_timedwait(&gone_cv, &gone_mu, &until) != 0) break;
        }
        pthread_mutex_unlock(&gone_mu);
        nng_close(s);
    } else {
        fprintf(stderr, "nng_bench: bad arguments\n");
        return 2;
    }
    return 0;
}
