/* tracecar's sampling allocation tracer for CPython: where a Python app allocates, by
 * Python function, counting what is freed again too (the `alloc` question, which
 * tracemalloc cannot answer: it only keeps live blocks).
 *
 * Loaded into a running CPython >= 3.9 by code the agent injects
 * (agent/profiling/pyalloc.py): `ctypes.PyDLL(path)`, so every call keeps the GIL.
 * It is compiled WITHOUT Python's headers: the few structures and functions it needs are
 * declared here, all stable C API since 3.9, and resolved against the running
 * interpreter when the library is loaded, so one build serves every version. They are
 * declared weak: a process lacking one (an older Python, or not Python) still loads the
 * library and start() says so instead of the loader failing. It uses no libm and no
 * stdio either (only malloc, calloc, realloc, free from the C library), so a build on
 * one glibc loads in a process of an older one.
 *
 * How it samples. PYMEM_DOMAIN_MEM and PYMEM_DOMAIN_OBJ (PyMem_Malloc and
 * PyObject_Malloc: every Python object and its buffers) are wrapped: each wrapper calls
 * the allocator it replaced. A per-thread byte countdown, drawn from an exponential
 * distribution of mean `interval` bytes, decides which allocations are sampled: the
 * sampled points form a Poisson process over the bytes allocated, as tcmalloc's and
 * Go's samplers do, so two call sites allocating in lockstep never alias with the
 * interval. An allocation of `s` bytes then holds a sample point with probability
 * p = 1 - exp(-s / interval); a sampled one is weighted s/p bytes and 1/p allocations,
 * which makes both totals unbiased estimates (pprof's "unsampling").
 *
 * A sample walks the Python frames of the thread (innermost first, up to `max_frames`)
 * and adds its weights to the stack's entry in a hash table of this library. Samples
 * are only taken while the thread holds the GIL (PyGILState_Check and a thread state),
 * which is also what keeps the tables consistent: every writer holds the GIL. Walking
 * frames allocates (3.11+ materialises frame objects), which would re-enter the
 * wrappers: a thread-local guard makes those allocations pass straight through.
 * Nothing is allocated by the hooks except under that guard, on a sample.
 *
 * Frames are keyed by their code object (one reference held until release(), so an
 * address is never reused for another function during the window) and line; names are
 * read by the Python side after stop(), from the code objects themselves.
 *
 * RAW (PyMem_RawMalloc) is not wrapped: it is called without the GIL, so a sample could
 * not walk frames there, and a thread could still be inside a RAW wrapper when the
 * library is unloaded. MEM and OBJ are only called with the GIL held, which stop()
 * holds too: once their allocators are restored, no thread is in this library.
 *
 * Build: gcc -O2 -fPIC -shared -o tracecar-pyalloc.so pyalloc_sampler.c
 */
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* --- the CPython API used (stable since 3.9), declared here, resolved at load -------- */
typedef struct _object PyObject;
typedef enum { PYMEM_DOMAIN_RAW, PYMEM_DOMAIN_MEM, PYMEM_DOMAIN_OBJ } PyMemAllocatorDomain;
typedef struct {
    void *ctx;
    void *(*malloc)(void *ctx, size_t size);
    void *(*calloc)(void *ctx, size_t nelem, size_t elsize);
    void *(*realloc)(void *ctx, void *ptr, size_t new_size);
    void (*free)(void *ctx, void *ptr);
} PyMemAllocatorEx;

#define WEAK __attribute__((weak))
extern void PyMem_GetAllocator(PyMemAllocatorDomain, PyMemAllocatorEx *) WEAK;
extern void PyMem_SetAllocator(PyMemAllocatorDomain, PyMemAllocatorEx *) WEAK;
extern int PyGILState_Check(void) WEAK;
extern void *PyThreadState_GetUnchecked(void) WEAK;  /* 3.13+ */
extern void *_PyThreadState_UncheckedGet(void) WEAK; /* 3.5 to 3.12 */
extern PyObject *PyThreadState_GetFrame(void *tstate) WEAK; /* 3.9+, new reference */
extern PyObject *PyFrame_GetBack(PyObject *frame) WEAK;      /* 3.9+, new reference */
extern PyObject *PyFrame_GetCode(PyObject *frame) WEAK;      /* 3.9+, new reference */
extern int PyFrame_GetLineNumber(PyObject *frame) WEAK;
extern void Py_IncRef(PyObject *) WEAK;
extern int PyGC_Disable(void) WEAK; /* 3.10+ */
extern int PyGC_Enable(void) WEAK;
extern void Py_DecRef(PyObject *) WEAK;

#define EXPORT __attribute__((visibility("default")))

/* start()'s answers (the Python side words them). */
enum {
    OK = 0,
    E_RUNNING = -1,   /* already started in this process (by this copy) */
    E_API = -2,       /* a function above is missing: not CPython >= 3.9 */
    E_ARGS = -3,      /* an argument out of range */
    E_NOMEM = -4,     /* the tables could not be allocated */
};

/* --- state: written only with the GIL held ---------------------------------------- */
struct domain {
    PyMemAllocatorEx orig; /* what we wrap (called by every wrapper) */
    PyMemAllocatorEx mine; /* what we installed (compared at stop) */
};
static struct domain g_mem, g_obj;
static volatile int g_installed; /* the wrappers are in place */
static volatile int g_sampling;  /* samples are recorded (0 after stop: pass-through) */
static double g_interval;        /* mean bytes between samples */
static int g_max_frames;
static uint64_t g_seed;

/* Exact totals of the window (every call through the wrappers, under the GIL). */
static uint64_t g_calls, g_bytes;
static uint64_t g_samples, g_dropped, g_truncated;

/* Code objects seen in samples: a reference held on each, indexed by the frames. */
#define MAX_CODES (1u << 16)
static PyObject **g_codes;     /* index -> code object */
static uint32_t g_ncodes;
static uint32_t *g_code_slots; /* open addressing: index + 1, 0 = empty */
#define CODE_SLOTS (MAX_CODES * 2)

/* Distinct stacks: frames live in one growing arena, (code index << 32 | line). */
struct stack {
    uint64_t hash;
    uint32_t at;    /* first frame in g_frames */
    uint32_t depth; /* 0: empty slot */
    double bytes, count;
};
static struct stack *g_stacks;
static uint32_t g_stack_slots, g_nstacks, g_max_stacks;
static uint32_t *g_order; /* stack slot of the i-th stack, in order of first sight */
static uint64_t *g_frames;
static uint32_t g_nframes, g_frames_cap;
#define MAX_FRAME_ENTRIES (8u << 20) /* 64 MiB of frames at most */

/* Per thread: the countdown, its random state, the re-entrancy guard. */
static __thread double t_countdown;
static __thread uint64_t t_rng;
static __thread int t_busy;
static __thread uint32_t t_epoch; /* the start() this thread's countdown was drawn in */
static uint32_t g_epoch;

/* --- randomness: xorshift64*, and -ln(u) without libm ------------------------------ */
static uint64_t rng_next(void) {
    if (t_rng == 0) /* first use in this thread: its own sequence */
        t_rng = (g_seed ^ (uint64_t)(uintptr_t)&t_rng) * 0x9E3779B97F4A7C15ull | 1;
    t_rng ^= t_rng >> 12;
    t_rng ^= t_rng << 25;
    t_rng ^= t_rng >> 27;
    return t_rng * 0x2545F4914F6CDD1Dull;
}

/* ln(x) for x in (0, 1]: x = m * 2^e with m in [1, 2); ln m = 2 atanh((m-1)/(m+1)),
 * whose series converges fast there (error below 1e-9 with these terms). */
static double ln(double x) {
    union { double d; uint64_t u; } v = {x};
    int e = (int)((v.u >> 52) & 0x7ff) - 1023;
    v.u = (v.u & 0x000fffffffffffffull) | 0x3ff0000000000000ull;
    double t = (v.d - 1) / (v.d + 1), t2 = t * t, s = 0, p = t;
    for (int k = 1; k <= 19; k += 2, p *= t2) s += p / k;
    return 2 * s + e * 0.6931471805599453;
}

static double exp_neg(double x) { /* e^-x for x >= 0 (the sampling probability) */
    if (x > 40) return 0;
    /* e^-x = (e^(-x/2^k))^(2^k), the small power by its Taylor series. */
    int k = 0;
    while (x > 0.5) { x /= 2; k++; }
    double r = 1, term = 1;
    for (int n = 1; n < 12; n++) { term *= -x / n; r += term; }
    while (k--) r *= r;
    return r;
}

static double draw(void) { /* an exponential interval of mean g_interval bytes */
    double u = ((rng_next() >> 11) + 1) * (1.0 / 9007199254740993.0); /* (0, 1] */
    return -ln(u) * g_interval;
}

/* --- the tables (only under the guard, with the GIL) ------------------------------- */
static uint64_t mix(uint64_t h, uint64_t x) {
    h ^= x + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2);
    return h * 0xff51afd7ed558ccdull;
}

/* The index of a code object (a reference taken at first sight), or -1: table full. */
static int64_t code_index(PyObject *code) {
    uint64_t h = mix(0, (uint64_t)(uintptr_t)code);
    for (uint32_t i = 0; i < CODE_SLOTS; i++) {
        uint32_t *slot = &g_code_slots[(h + i) & (CODE_SLOTS - 1)];
        if (*slot == 0) {
            if (g_ncodes >= MAX_CODES) return -1;
            Py_IncRef(code);
            g_codes[g_ncodes] = code;
            *slot = ++g_ncodes;
            return g_ncodes - 1;
        }
        if (g_codes[*slot - 1] == code) return *slot - 1;
    }
    return -1;
}

static void add(const uint64_t *frames, uint32_t depth, double bytes, double count) {
    uint64_t h = 0;
    for (uint32_t i = 0; i < depth; i++) h = mix(h, frames[i]);
    h = mix(h, depth);
    for (uint32_t i = 0; i < g_stack_slots; i++) {
        struct stack *s = &g_stacks[(h + i) & (g_stack_slots - 1)];
        if (s->depth == 0) {
            if (g_nstacks >= g_max_stacks) break;
            if (g_nframes + depth > g_frames_cap) {
                uint32_t cap = g_frames_cap * 2;
                while (cap < g_nframes + depth) cap *= 2;
                if (cap > MAX_FRAME_ENTRIES) break;
                uint64_t *more = realloc(g_frames, (size_t)cap * sizeof *more);
                if (more == NULL) break;
                g_frames = more, g_frames_cap = cap;
            }
            memcpy(g_frames + g_nframes, frames, depth * sizeof *frames);
            s->hash = h, s->at = g_nframes, s->depth = depth;
            s->bytes = bytes, s->count = count;
            g_nframes += depth;
            g_order[g_nstacks++] = (uint32_t)(s - g_stacks);
            return;
        }
        if (s->hash == h && s->depth == depth &&
            memcmp(g_frames + s->at, frames, depth * sizeof *frames) == 0) {
            s->bytes += bytes, s->count += count;
            return;
        }
    }
    g_dropped++; /* no room: counted, said in the output */
}

/* One sample of `size` bytes: the thread's Python stack gets its weights. */
static void sample(size_t size) {
    void *ts = PyThreadState_GetUnchecked ? PyThreadState_GetUnchecked()
                                          : _PyThreadState_UncheckedGet();
    if (ts == NULL || !PyGILState_Check()) return; /* no GIL: no frames to walk safely */
    double p = 1 - exp_neg((double)size / g_interval);
    if (p <= 0) return;
    uint64_t frames[256];
    uint32_t depth = 0;
    /* 3.11 materialises frame objects here, and a new GC object may start a collection
     * right away (3.12 only schedules it): finalizers would then run inside the
     * allocation of whatever C code called us. The collector is held off for the walk. */
    int gc_was = PyGC_Disable ? PyGC_Disable() : 0;
    PyObject *f = PyThreadState_GetFrame(ts);
    while (f != NULL && depth < (uint32_t)g_max_frames) {
        PyObject *code = PyFrame_GetCode(f);
        int line = PyFrame_GetLineNumber(f);
        int64_t idx = code_index(code);
        Py_DecRef(code); /* the table holds its own reference */
        if (idx >= 0) frames[depth++] = (uint64_t)idx << 32 | (uint32_t)line;
        PyObject *back = PyFrame_GetBack(f);
        Py_DecRef(f);
        f = back;
    }
    if (f != NULL) {
        g_truncated++;
        Py_DecRef(f);
    }
    if (gc_was && PyGC_Enable) PyGC_Enable();
    g_samples++;
    if (depth > 0) add(frames, depth, (double)size / p, 1 / p);
}

/* Called after every successful allocation of `size` bytes through a wrapper. */
static inline void account(size_t size) {
    if (!g_sampling || t_busy) return; /* the sampler's own allocations are not counted */
    g_calls++, g_bytes += size;
    if (t_epoch != g_epoch) { /* this thread's first allocation since start(): draw */
        t_epoch = g_epoch;
        t_countdown = draw();
    }
    t_countdown -= (double)size;
    if (t_countdown > 0) return;
    t_countdown = draw(); /* memoryless: the next point is drawn from this block's end */
    t_busy = 1;
    sample(size);
    t_busy = 0;
}

/* --- the wrappers -------------------------------------------------------------------- */
static void *w_malloc(void *ctx, size_t size) {
    struct domain *d = ctx;
    void *p = d->orig.malloc(d->orig.ctx, size);
    if (p != NULL) account(size);
    return p;
}

static void *w_calloc(void *ctx, size_t nelem, size_t elsize) {
    struct domain *d = ctx;
    void *p = d->orig.calloc(d->orig.ctx, nelem, elsize);
    if (p != NULL) account(nelem * elsize);
    return p;
}

static void *w_realloc(void *ctx, void *ptr, size_t new_size) {
    struct domain *d = ctx;
    void *p = d->orig.realloc(d->orig.ctx, ptr, new_size);
    /* A realloc counts as an allocation of its new size (what memray and pprof do). */
    if (p != NULL) account(new_size);
    return p;
}

static void w_free(void *ctx, void *ptr) {
    struct domain *d = ctx;
    d->orig.free(d->orig.ctx, ptr);
}

/* A child forked during the window (multiprocessing, a pre-fork server) inherits the
 * wrappers but not the thread that would stop them: it only passes through. (glibc drops
 * this handler when the library is unloaded.) */
static void in_child(void) { g_sampling = 0; }
static int g_atfork;

static void install(PyMemAllocatorDomain dom, struct domain *d) {
    PyMem_GetAllocator(dom, &d->orig);
    d->mine = (PyMemAllocatorEx){d, w_malloc, w_calloc, w_realloc, w_free};
    PyMem_SetAllocator(dom, &d->mine);
}

/* Whether `dom`'s allocator is still ours; if so, the original goes back. */
static int restore(PyMemAllocatorDomain dom, struct domain *d) {
    PyMemAllocatorEx now;
    PyMem_GetAllocator(dom, &now);
    if (memcmp(&now, &d->mine, sizeof now) != 0) return 0;
    PyMem_SetAllocator(dom, &d->orig);
    return 1;
}

static void release_tables(void) {
    for (uint32_t i = 0; i < g_ncodes; i++) Py_DecRef(g_codes[i]);
    free(g_codes), free(g_code_slots), free(g_stacks), free(g_order), free(g_frames);
    g_codes = NULL, g_code_slots = NULL, g_stacks = NULL, g_order = NULL, g_frames = NULL;
    g_ncodes = g_nstacks = g_nframes = g_frames_cap = g_stack_slots = 0;
}

/* --- the interface (ctypes.PyDLL: called with the GIL) ------------------------------ */

/* Start sampling: one sample every `interval` bytes on average, `max_frames` frames
 * (1 to 256) per sample, at most `max_stacks` distinct stacks. */
EXPORT int tracecar_pyalloc_start(int64_t interval, int max_frames, int max_stacks,
                                  uint64_t seed) {
    if (g_installed) return E_RUNNING;
    if (!PyMem_GetAllocator || !PyMem_SetAllocator || !PyGILState_Check ||
        !(PyThreadState_GetUnchecked || _PyThreadState_UncheckedGet) ||
        !PyThreadState_GetFrame || !PyFrame_GetBack || !PyFrame_GetCode ||
        !PyFrame_GetLineNumber || !Py_IncRef || !Py_DecRef)
        return E_API;
    if (interval < 1 || max_frames < 1 || max_frames > 256 || max_stacks < 1 ||
        max_stacks > (1 << 22))
        return E_ARGS;
    release_tables();
    g_stack_slots = 1024;
    while (g_stack_slots < (uint32_t)max_stacks * 2) g_stack_slots *= 2;
    g_max_stacks = (uint32_t)max_stacks;
    g_frames_cap = 1u << 14;
    g_codes = calloc(MAX_CODES, sizeof *g_codes);
    g_code_slots = calloc(CODE_SLOTS, sizeof *g_code_slots);
    g_stacks = calloc(g_stack_slots, sizeof *g_stacks);
    g_order = calloc(g_max_stacks, sizeof *g_order);
    g_frames = malloc((size_t)g_frames_cap * sizeof *g_frames);
    if (!g_codes || !g_code_slots || !g_stacks || !g_order || !g_frames) {
        release_tables();
        return E_NOMEM;
    }
    g_interval = (double)interval, g_max_frames = max_frames, g_seed = seed | 1;
    g_calls = g_bytes = g_samples = g_dropped = g_truncated = 0;
    g_epoch++; /* every thread draws a fresh countdown at its next allocation */
    if (!g_atfork && pthread_atfork(NULL, NULL, in_child) == 0) g_atfork = 1;
    g_sampling = 1;
    install(PYMEM_DOMAIN_MEM, &g_mem);
    install(PYMEM_DOMAIN_OBJ, &g_obj);
    g_installed = 1;
    return OK;
}

/* Stop sampling and put the original allocators back. 0: restored, the library may be
 * unloaded once release() ran. 1: something replaced an allocator after ours (it wraps
 * ours, or restored its own over it): taking ours out would break it, so ours stay in
 * place as pure pass-through and the library must stay loaded. */
EXPORT int tracecar_pyalloc_stop(void) {
    if (!g_installed) return 0;
    g_sampling = 0;
    int mem = restore(PYMEM_DOMAIN_MEM, &g_mem);
    int obj = restore(PYMEM_DOMAIN_OBJ, &g_obj);
    if (mem && obj) g_installed = 0;
    return g_installed ? 1 : 0;
}

/* Figures of the window: calls, bytes (exact), samples, dropped, truncated, stacks,
 * codes, into `out[7]`. */
EXPORT void tracecar_pyalloc_stats(uint64_t *out) {
    out[0] = g_calls, out[1] = g_bytes, out[2] = g_samples, out[3] = g_dropped;
    out[4] = g_truncated, out[5] = g_nstacks, out[6] = g_ncodes;
}

/* The i-th stack: its weights, and its depth (0: no such stack). */
EXPORT uint32_t tracecar_pyalloc_stack(uint32_t i, double *bytes, double *count) {
    if (g_stacks == NULL || i >= g_nstacks) return 0;
    struct stack *s = &g_stacks[g_order[i]];
    *bytes = s->bytes, *count = s->count;
    return s->depth;
}

/* Frame j of stack i (innermost first): code index << 32 | line. */
EXPORT uint64_t tracecar_pyalloc_frame(uint32_t i, uint32_t j) {
    if (g_stacks == NULL || i >= g_nstacks) return 0;
    struct stack *s = &g_stacks[g_order[i]];
    return j < s->depth ? g_frames[s->at + j] : 0;
}

/* Code object k, a new reference (ctypes' py_object restype takes it over). */
EXPORT PyObject *tracecar_pyalloc_code(uint32_t k) {
    if (g_codes == NULL || k >= g_ncodes) return NULL;
    Py_IncRef(g_codes[k]);
    return g_codes[k];
}

/* Drop the tables and the references on code objects (after stop). */
EXPORT void tracecar_pyalloc_release(void) {
    if (g_sampling) return; /* still sampling: stop first */
    release_tables();
}
