/* CPU-bound workload with deep, varied call stacks for the post-processing benchmark.
 * Built with frame pointers so `perf record -g` sees every frame. */
#include <stdlib.h>

volatile unsigned long sink;

__attribute__((noinline)) static unsigned long leaf_hot(volatile unsigned long n) {
    unsigned long s = 0;
    for (unsigned long i = 0; i < n; i++) s += i * i;
    return s;
}
__attribute__((noinline)) static unsigned long leaf_cold(volatile unsigned long n) {
    unsigned long s = 1;
    for (unsigned long i = 0; i < n; i++) s ^= s << 1;
    return s;
}
static unsigned long walk_a(volatile int depth, unsigned long seed);
__attribute__((noinline)) static unsigned long walk_b(volatile int depth, unsigned long seed) {
    if (depth <= 0) return leaf_cold(200 + seed % 300);
    return walk_a(depth - 1, seed * 31 + 7) + 1;
}
__attribute__((noinline)) static unsigned long walk_c(volatile int depth, unsigned long seed) {
    if (depth <= 0) return leaf_hot(500 + seed % 700);
    return (seed & 4 ? walk_b : walk_a)(depth - 1, seed * 17 + 3) + 2;
}
__attribute__((noinline)) static unsigned long walk_a(volatile int depth, unsigned long seed) {
    if (depth <= 0) return leaf_hot(300 + seed % 500);
    return (seed & 2 ? walk_c : walk_b)(depth - 1, seed * 13 + 1) + 3;
}

int main(int argc, char **argv) {
    long seconds_iters = argc > 1 ? atol(argv[1]) : 20000;
    unsigned long seed = 12345;
    for (long i = 0; i < seconds_iters; i++) {
        seed = seed * 6364136223846793005UL + 1442695040888963407UL;
        sink += walk_a(40 + (int)(seed >> 60) * 4, seed >> 20);
    }
    return 0;
}
