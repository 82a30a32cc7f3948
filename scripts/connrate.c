/* connrate server ADDR PORT: accept, echo one byte, close, forever.
 * connrate client ADDR PORT SECONDS: connect, one byte each way, close with
 * a reset (SO_LINGER 0: no TIME_WAIT, so source ports never run out), in a
 * loop for SECONDS; prints {"connections": N, "failures": N, "seconds": S}.
 * A connection that does not complete within 1 s counts as a failure.
 *
 * Built for each run by build_connrate in scripts/bench-lib.sh. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    struct sockaddr_in sa;
    struct timeval tv = { 1, 0 };
    char byte = 'x';
    int one = 1;

    if (argc < 4 || (strcmp(argv[1], "client") == 0 && argc < 5)) {
        fprintf(stderr, "usage: connrate server ADDR PORT | client ADDR PORT SECONDS\n");
        return 2;
    }
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((unsigned short)atoi(argv[3]));
    if (inet_pton(AF_INET, argv[2], &sa.sin_addr) != 1) {
        fprintf(stderr, "connrate: bad IPv4 address %s\n", argv[2]);
        return 2;
    }
    if (strcmp(argv[1], "server") == 0) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(s, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(s, 4096) != 0) {
            perror("connrate: bind/listen");
            return 1;
        }
        for (;;) {
            int c = accept(s, NULL, NULL);
            if (c < 0)
                continue;
            setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
            if (read(c, &byte, 1) == 1 && write(c, &byte, 1) != 1)
                perror("connrate: write");
            close(c);
        }
    }
    {
        struct linger lg = { 1, 0 };
        double start = now(), end = start + atof(argv[4]);
        long ok = 0, failed = 0;
        while (now() < end) {
            int s = socket(AF_INET, SOCK_STREAM, 0);
            if (s < 0) {
                perror("connrate: socket");
                return 1;
            }
            /* SO_SNDTIMEO bounds connect() too. */
            setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
            setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
            setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
            if (connect(s, (struct sockaddr *)&sa, sizeof sa) == 0 && write(s, &byte, 1) == 1 &&
                read(s, &byte, 1) == 1)
                ok++;
            else
                failed++;
            close(s);
        }
        printf("{\"connections\": %ld, \"failures\": %ld, \"seconds\": %.3f}\n", ok, failed,
               now() - start);
    }
    return 0;
}
