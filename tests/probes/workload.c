/* A probe target: calls known functions a known number of times, in batches.
 *
 * Each batch starts when /tmp/go appears in the container's own /tmp (the test
 * creates it through /proc/PID/root once its probe is attached), so counts are
 * exact. After a batch the file is removed and /tmp/done-<k> written.
 * argv[1] = N calls of add3 and greet per batch, argv[2] = calls of nap.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

__attribute__((noinline)) long add3(long a, long b, long c) {
    volatile long r = a * 100 + b * 10 + c;
    return r;
}

__attribute__((noinline)) long greet(const char *who, long n) {
    volatile long len = (long)strlen(who);
    return len + n;
}

__attribute__((noinline)) long nap(long us) {
    usleep((useconds_t)us);
    return us;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 10;
    long naps = argc > 2 ? atol(argv[2]) : 3;
    volatile long sink = 0;
    for (int batch = 1;; batch++) {
        while (access("/tmp/go", F_OK) != 0) usleep(5000);
        for (long i = 0; i < n; i++) {
            sink += add3(i, -i, 7 * i);
            sink += greet("tab\there \"quoted\" {x;}", i);
        }
        for (long i = 0; i < naps; i++) sink += nap(2000);
        unlink("/tmp/go");
        char done[64];
        snprintf(done, sizeof done, "/tmp/done-%d", batch);
        FILE *f = fopen(done, "w");
        if (f) { fprintf(f, "%ld\n", (long)sink); fclose(f); }
    }
    return 0;
}
