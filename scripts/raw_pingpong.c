/* Raw TCP ping-pong baseline for scripts/bench.sh: two processes over loopback, blocking
 * sockets, TCP_NODELAY, one SIZE-byte message outstanding: the ceiling for the
 * one-outstanding modes, measured the way the performance issue states it.
 *
 *   raw_pingpong echo              prints "listening on PORT", echoes one connection,
 *                                  then waits to be killed
 *   raw_pingpong send PORT SIZE COUNT
 *                                  prints "N round trips in S s: R/s" like `chirp bench`
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int read_exact(int fd, char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = read(fd, buf, len);
        if (n <= 0) return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

static int write_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n <= 0) return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

static void nodelay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "echo") == 0) {
        int l = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t al = sizeof a;
        if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 1) ||
            getsockname(l, (struct sockaddr *)&a, &al)) {
            perror("raw_pingpong echo");
            return 1;
        }
        printf("listening on %d\n", ntohs(a.sin_port));
        fflush(stdout);
        int c = accept(l, NULL, NULL);
        if (c < 0) return 1;
        nodelay(c);
        char buf[65536];
        for (;;) {
            ssize_t n = read(c, buf, sizeof buf);
            if (n <= 0 || write_all(c, buf, (size_t)n)) break;
        }
        /* Stay until killed, so that the harness can read this process's counters. */
        close(c);
        pause();
        return 0;
    }
    if (argc == 5 && strcmp(argv[1], "send") == 0) {
        long size = atol(argv[3]), count = atol(argv[4]);
        if (size < 1 || size > 65536 || count < 1) {
            fprintf(stderr, "raw_pingpong: SIZE must be 1..65536 and COUNT positive\n");
            return 2;
        }
        int c = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET,
                                .sin_port = htons((unsigned short)atoi(argv[2])),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof a)) {
            perror("raw_pingpong send");
            return 1;
        }
        nodelay(c);
        char *msg = calloc(1, (size_t)size), *buf = malloc((size_t)size);
        double t0 = now();
        for (long i = 0; i < count; i++) {
            if (write_all(c, msg, (size_t)size) || read_exact(c, buf, (size_t)size)) {
                fprintf(stderr, "raw_pingpong: connection lost\n");
                return 1;
            }
        }
        double s = now() - t0;
        printf("%ld round trips in %.3f s: %.0f/s\n", count, s, count / s);
        return 0;
    }
    fprintf(stderr, "usage: raw_pingpong echo | raw_pingpong send PORT SIZE COUNT\n");
    return 2;
}
