/*
 * tracecar demo workload: a CPU burner with a known hot and cold function.
 *
 * Each round spends ten times as long in tracecar_demo_hot() as in
 * tracecar_demo_cold(), then sleeps about as long as it worked, so the demo pod
 * uses about half a core (the machines running the e2e stage are small and
 * shared). A flame graph of it shows tracecar_demo_hot with ~90% of the samples;
 * a uprobe on tracecar_demo_hot counts ~100 calls a second.
 *
 * The iteration counts are volatile and the results kept, so the compiler can
 * neither remove nor hoist the work (see docs/e2e.md). Built with frame pointers
 * and symbols by scripts/images.
 */
#include <stdint.h>
#include <stdio.h>
#include <time.h>

static volatile uint64_t sink;

/* Each does its own loop (no shared helper): the samples land in the function itself,
 * not in a callee a tail call would hide it behind. */
__attribute__((noinline)) uint64_t tracecar_demo_hot(volatile uint64_t iterations)
{
    uint64_t x = 1;
    for (uint64_t i = 0; i < iterations; i++)
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    return x;
}

__attribute__((noinline)) uint64_t tracecar_demo_cold(volatile uint64_t iterations)
{
    uint64_t x = 2;
    for (uint64_t i = 0; i < iterations; i++)
        x = x * 2862933555777941757ULL + 3037000493ULL;
    return x;
}

int main(void)
{
    const struct timespec pause = {.tv_sec = 0, .tv_nsec = 4 * 1000 * 1000};
    volatile uint64_t hot = 4000000, cold = 400000;

    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("tracecar demo burner: hot=tracecar_demo_hot cold=tracecar_demo_cold (10:1)\n");
    for (uint64_t round = 0;; round++) {
        sink += tracecar_demo_hot(hot);
        sink += tracecar_demo_cold(cold);
        nanosleep(&pause, NULL);
        if (round % 1000 == 0)
            printf("round %llu\n", (unsigned long long)round);
    }
}
