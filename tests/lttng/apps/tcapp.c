/* Test workload: a C app with its own LTTng-UST tracepoint provider.
 *
 * usage: tcapp N [RATE]
 * Each SIGUSR1 emits one batch: N tracecar_test:tick events (batch=B, seq=0..N-1,
 * msg="tick-<seq>") and one tracecar_test:detail (seq, ratio=seq/N) per 10 ticks;
 * then it writes /tmp/done-B (in its own /tmp). RATE > 0 paces emission to about
 * RATE events per second (the bench's rate-limited emitter); 0 = as fast as it can.
 * SIGTERM exits. */
#define LTTNG_UST_TRACEPOINT_CREATE_PROBES
#define LTTNG_UST_TRACEPOINT_DEFINE
#include "tracecar_tp.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 100;
    double rate = argc > 2 ? atof(argv[2]) : 0.0;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGTERM);
    sigprocmask(SIG_BLOCK, &set, NULL);
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    char msg[64];
    for (int batch = 1;; batch++) {
        int sig = 0;
        sigwait(&set, &sig);
        if (sig == SIGTERM) return 0;
        double t0 = now();
        for (int i = 0; i < n; i++) {
            snprintf(msg, sizeof msg, "tick-%d", i);
            lttng_ust_tracepoint(tracecar_test, tick, batch, i, msg);
            if (i % 10 == 0)
                lttng_ust_tracepoint(tracecar_test, detail, i, (double)i / n);
            if (rate > 0 && (i & 63) == 63) {
                /* pace: sleep until the schedule catches up with the emitted count */
                double ahead = (i + 1) / rate - (now() - t0);
                if (ahead > 0) usleep((useconds_t)(ahead * 1e6));
            }
        }
        double dt = now() - t0;
        char path[64];
        snprintf(path, sizeof path, "/tmp/done-%d", batch);
        FILE *f = fopen(path, "w");
        if (f) { fprintf(f, "%d %.9f\n", n, dt); fclose(f); }
    }
}
