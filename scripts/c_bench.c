/* C libchirp baseline for scripts/bench.sh: an echo node and an event-driven sender,
 * written against the libchirp 1.2.1 C API and linked with the C core pip built.
 *
 *   c_bench echo PORT SYNC
 *   c_bench send ECHO_PORT OWN_PORT SYNC WINDOW SIZE COUNT
 *   c_bench latency ECHO_PORT OWN_PORT SYNC RATE COUNT SIZE OUTFILE
 *
 * latency: open loop, like `chirp bench-latency`. A scheduler thread sends message i at
 * start + i / RATE with the thread-safe ch_chirp_send_ts (at most 1,000 outstanding, as
 * ours); the loop thread records each echo's latency from its scheduled time. The
 * latencies (ns, one per line) go to OUTFILE for `chirp bench-histogram`; the line
 * printed is "secs S".
 *
 * The sender keeps WINDOW messages outstanding (sent but not yet echoed) and prints
 * "N round trips in S s: R/s" like `chirp bench`. Encryption is disabled (loopback).
 */
#include "libchirp.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static ch_chirp_t chirp;
static uv_loop_t loop;
static ch_message_t *msgs;
static char *payload;
static int *busy;
static long window_, size_, count_, sent, back;
static int echo_port;
static struct timespec started;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void echo_sent(ch_chirp_t *c, ch_message_t *msg, ch_error_t status) {
    (void)status;
    ch_chirp_release_msg_slot(c, msg, NULL);
}

static void echo_recv(ch_chirp_t *c, ch_message_t *msg) {
    if (ch_chirp_send(c, msg, echo_sent) == CH_SHUTDOWN) {
        ch_chirp_release_msg_slot(c, msg, NULL);
    }
}

static void send_cb(ch_chirp_t *c, ch_message_t *msg, ch_error_t status);

static void fill(ch_chirp_t *c) {
    for (long i = 0; i < window_ && sent < count_ && sent - back < window_; i++) {
        if (busy[i]) continue;
        ch_message_t *m = &msgs[i];
        ch_msg_init(m);
        ch_msg_set_address(m, AF_INET, "127.0.0.1", echo_port);
        ch_msg_set_data(m, payload, (uint32_t)size_);
        m->user_data = (void *)(intptr_t)i;
        busy[i] = 1;
        sent++;
        ch_chirp_send(c, m, send_cb);
    }
}

static void send_cb(ch_chirp_t *c, ch_message_t *msg, ch_error_t status) {
    if (status != CH_SUCCESS) {
        fprintf(stderr, "c_bench: send failed with %d\n", status);
        exit(1);
    }
    busy[(intptr_t)msg->user_data] = 0;
    fill(c);
}

static void sender_recv(ch_chirp_t *c, ch_message_t *msg) {
    ch_chirp_release_msg_slot(c, msg, NULL);
    back++;
    if (back == count_) {
        double secs = now() - (started.tv_sec + started.tv_nsec / 1e9);
        printf("%ld round trips in %.3f s: %.0f/s\n", count_, secs, count_ / secs);
        fflush(stdout);
        ch_chirp_close_ts(c);
        return;
    }
    fill(c);
}

static void sender_start(ch_chirp_t *c) {
    clock_gettime(CLOCK_MONOTONIC, &started);
    fill(c);
}

static void echo_start(ch_chirp_t *c) {
    (void)c;
    printf("listening on %d\n", echo_port);
    fflush(stdout);
}

/* --- latency mode ------------------------------------------------------------------ */
#define LAT_SLOTS 1000
static double rate_;
static long lat_count;
static uint64_t *lat_sched, *lat_ns;
static atomic_long lat_back, lat_free = LAT_SLOTS;
static atomic_int slot_busy[LAT_SLOTS];
static ch_message_t lat_msgs[LAT_SLOTS];
static char (*lat_data)[64];
static struct timespec lat_t0;
static const char *lat_out;

static uint64_t since_t0(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)(t.tv_sec - lat_t0.tv_sec) * 1000000000ull + (uint64_t)(t.tv_nsec - lat_t0.tv_nsec);
}

static void lat_sent(ch_chirp_t *c, ch_message_t *msg, ch_error_t status) {
    (void)c;
    if (status != CH_SUCCESS) {
        fprintf(stderr, "c_bench: send failed with %d\n", status);
        exit(1);
    }
    atomic_store(&slot_busy[(intptr_t)msg->user_data], 0);
    atomic_fetch_add(&lat_free, 1);
}

static void lat_recv(ch_chirp_t *c, ch_message_t *msg) {
    uint64_t now = since_t0(), i;
    memcpy(&i, msg->data, sizeof i);
    ch_chirp_release_msg_slot(c, msg, NULL);
    if (i < (uint64_t)lat_count) lat_ns[i] = now - lat_sched[i];
    if (atomic_fetch_add(&lat_back, 1) + 1 == lat_count) {
        double secs = since_t0() / 1e9;
        FILE *f = fopen(lat_out, "w");
        for (long k = 0; f && k < lat_count; k++) fprintf(f, "%llu\n", (unsigned long long)lat_ns[k]);
        if (f) fclose(f);
        printf("secs %.3f\n", secs);
        fflush(stdout);
        ch_chirp_close_ts(c);
    }
}

static void *lat_scheduler(void *arg) {
    (void)arg;
    long slot = 0;
    for (long i = 0; i < lat_count; i++) {
        uint64_t due = rate_ > 0 ? (uint64_t)(i / rate_ * 1e9) : 0;
        struct timespec at = lat_t0;
        at.tv_sec += due / 1000000000ull;
        at.tv_nsec += due % 1000000000ull;
        if (at.tv_nsec >= 1000000000) { at.tv_sec++; at.tv_nsec -= 1000000000; }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &at, NULL);
        /* At most LAT_SLOTS outstanding: wait for a slot (the wait is charged). */
        while (atomic_load(&lat_free) == 0 || atomic_load(&slot_busy[slot])) {
            struct timespec nap = {0, 20000};
            nanosleep(&nap, NULL);
        }
        atomic_fetch_sub(&lat_free, 1);
        atomic_store(&slot_busy[slot], 1);
        lat_sched[i] = due;
        ch_message_t *m = &lat_msgs[slot];
        ch_msg_init(m);
        ch_msg_set_address(m, AF_INET, "127.0.0.1", echo_port);
        memcpy(lat_data[slot], &i, sizeof i);
        ch_msg_set_data(m, lat_data[slot], (uint32_t)size_);
        m->user_data = (void *)(intptr_t)slot;
        if (ch_chirp_send_ts(&chirp, m, lat_sent) != CH_SUCCESS) {
            fprintf(stderr, "c_bench: send_ts refused message %ld\n", i);
            exit(1);
        }
        slot = (slot + 1) % LAT_SLOTS;
    }
    return NULL;
}

static void lat_start(ch_chirp_t *c) {
    (void)c;
    clock_gettime(CLOCK_MONOTONIC, &lat_t0);
    pthread_t t;
    pthread_create(&t, NULL, lat_scheduler, NULL);
    pthread_detach(t);
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: c_bench echo PORT SYNC | send ECHO_PORT OWN_PORT SYNC WINDOW SIZE COUNT\n");
        return 1;
    }
    int is_echo = strcmp(argv[1], "echo") == 0;
    ch_config_t config;
    ch_libchirp_init();
    ch_chirp_config_init(&config);
    config.DISABLE_SIGNALS = 1;
    /* TLS on every connection (loopback too) when CHIRP_CERT_CHAIN and CHIRP_DH_PARAMS name
     * the PEM files; plaintext otherwise. */
    const char *chain = getenv("CHIRP_CERT_CHAIN"), *dh = getenv("CHIRP_DH_PARAMS");
    if (chain && dh) {
        config.CERT_CHAIN_PEM = (char *)chain;
        config.DH_PARAMS_PEM = (char *)dh;
        config.DISABLE_ENCRYPTION = 0;
        ch_chirp_set_always_encrypt();
    } else {
        config.DISABLE_ENCRYPTION = 1;
    }
    ch_loop_init(&loop);
    if (is_echo) {
        echo_port = atoi(argv[2]);
        config.PORT = echo_port;
        config.SYNCHRONOUS = atoi(argv[3]);
        if (ch_chirp_init(&chirp, &config, &loop, echo_recv, echo_start, NULL, NULL) != CH_SUCCESS) {
            fprintf(stderr, "c_bench: init failed\n");
            return 1;
        }
    } else if (strcmp(argv[1], "latency") == 0) {
        if (argc < 9) return 1;
        echo_port = atoi(argv[2]);
        config.PORT = atoi(argv[3]);
        config.SYNCHRONOUS = atoi(argv[4]);
        rate_ = atof(argv[5]);
        lat_count = atol(argv[6]);
        size_ = atol(argv[7]);
        if (size_ < 8) size_ = 8;
        if (size_ > 64) size_ = 64;
        lat_out = argv[8];
        lat_sched = calloc(lat_count, sizeof *lat_sched);
        lat_ns = calloc(lat_count, sizeof *lat_ns);
        lat_data = calloc(LAT_SLOTS, sizeof *lat_data);
        if (ch_chirp_init(&chirp, &config, &loop, lat_recv, lat_start, NULL, NULL) != CH_SUCCESS) {
            fprintf(stderr, "c_bench: init failed\n");
            return 1;
        }
    } else {
        if (argc < 8) return 1;
        echo_port = atoi(argv[2]);
        config.PORT = atoi(argv[3]);
        config.SYNCHRONOUS = atoi(argv[4]);
        window_ = atol(argv[5]);
        size_ = atol(argv[6]);
        count_ = atol(argv[7]);
        msgs = calloc(window_, sizeof(ch_message_t));
        busy = calloc(window_, sizeof(int));
        payload = malloc(size_ ? size_ : 1);
        memset(payload, 'a', size_);
        if (ch_chirp_init(&chirp, &config, &loop, sender_recv, sender_start, NULL, NULL) != CH_SUCCESS) {
            fprintf(stderr, "c_bench: init failed\n");
            return 1;
        }
    }
    ch_run(&loop);
    ch_libchirp_cleanup();
    return 0;
}
