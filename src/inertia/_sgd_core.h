/* The per-element SGD pipeline and its threads, shared by inertia's two front ends:
 * _kernels.c (a Python extension, for NumPy arrays and CPU torch tensors) and _xla_kernels.c
 * (an XLA FFI handler, for JAX on the CPU). Plain C: no Python, no XLA.
 *
 * One job updates a list of tensors. Each tensor belongs to a group (the torch face's param
 * groups; one group for the other faces) that holds the rule's settings. Per element, in the
 * tensor's dtype T and in the reference path's order of operations (compiled with
 * -ffp-contract=off: a multiply-add is fused only where the reference fuses it):
 *
 *     g = G / unscale                                  (1 when there is no loss scale)
 *     g = (g + A) / steps;  A = 0                      (gradient accumulation, update step)
 *     g = clip(g, -clipvalue, clipvalue)               (clipvalue; first when a norm clip follows)
 *     g = (g * clip_mul) / clip_div                    (clipnorm: c / max(|g|, c); global: s / 1)
 *   Keras form (lr inside the velocity):
 *     w = w - (w * wd) * lr                            (decoupled decay, where it applies)
 *     v = v * m - g * lr;  w = w + v                   (momentum)
 *     v = v * m - g * lr;  w = w + (v * m - g * lr)    (Nesterov)
 *     w = w - g * lr                                   (no momentum)
 *   heavy-ball form (torch, MLX), every y + a*x as AXPY: one rounding (fma, torch's
 *   add(alpha=)) or two (MLX):
 *     g = -g                                           (maximize)
 *     g = AXPY(g, w, wd)                               (coupled L2 decay, where it applies)
 *     b = g  (a fresh buffer: torch's first step)   or   b = AXPY(b * m, g, 1 - dampening)
 *     w = AXPY(w, Nesterov ? AXPY(g, b, m) : b, -lr)   (w = AXPY(w, g, -lr) without momentum)
 *   then
 *     E = em * E + (1 - em) * w                        (EMA of the new weights; E = w when fresh)
 *
 * Weights and buffers are updated in place, or written to separate outputs (the MLX face's new
 * arrays). Large tensors are cut into chunks, small neighbouring tensors are grouped, and the
 * tasks are shared between threads. A small tensor's norm and its update run back to back while
 * it is in cache. Norm sums are per chunk, in double, added in chunk order: the result does not
 * depend on the number of threads.
 */
#ifndef INERTIA_SGD_CORE_H
#define INERTIA_SGD_CORE_H

#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define CHUNK 65536
#ifndef OUT_BLOCK
#define OUT_BLOCK 64 /* out-of-place results are made in blocks of this many (a few cache lines per output), then streamed: measured best of 16-1024 (2026-12-04) */
#endif
#define LANES 16
#define MAX_THREADS 256

enum { MODE_NONE = 0, MODE_PLAIN = 1, MODE_NESTEROV = 2 };
enum { FORM_KERAS = 0, FORM_HEAVY_BALL = 1 };
/* A group's clipping: bits (clipvalue first when both are set, as tf.keras legacy orders them). */
enum { CLIPS_BY_NORM = 1, CLIPS_BY_VALUE = 2 };
/* The job's global norm clipping: off, Keras 3's 1/c (rounded once from double), or 1/c in T. */
enum { GLOBAL_NONE = 0, GLOBAL_KERAS = 1, GLOBAL_RECIPROCAL_IN_DTYPE = 2 };
/* Per-tensor flags. */
enum { FLAG_DECAY = 1, FLAG_FRESH_BUFFER = 2, FLAG_FRESH_AVERAGE = 4 };

/* The settings of one group of tensors. */
typedef struct {
    double lr, momentum, wd, one_minus_dampening, clipnorm, clipvalue;
    int form, mode, fused, maximize, clip;
} Group;

/* A task is either a run of whole small tensors [first, last] (first < last or a tensor of at
 * most CHUNK elements), or one chunk [start, end) of a large tensor (first == last). Grouping
 * small tensors keeps each thread streaming through neighbouring arrays instead of hopping. */
typedef struct {
    ptrdiff_t first, last;
    int64_t start, end;
} Task;

typedef struct {
    int is_double, ema, acc, global_clip;
    ptrdiff_t count;
    char **w, **g, **v, **e, **a;
    char **w_out, **v_out; /* NULL: in place */
    const int64_t *sizes;
    const unsigned char *flags; /* per tensor, FLAG_* */
    const Group *groups;
    const int64_t *group_of; /* per tensor; NULL: every tensor is in groups[0] */
    Group single;            /* storage for one group (update_job) */
    char *arena;             /* arena_bytes() of scratch memory the caller owns; NULL: run_job allocates */
    int stream_outputs;      /* outputs bigger than the caches: stored non-temporally */
    double *clip_mul, *clip_div;
    double *chunk_sums;  /* per task, for chunks of large tensors */
    double *tensor_sums; /* per tensor, for small (unchunked) tensors */
    double unscale, steps, ema_momentum, global_clipnorm;
    Task *tasks;
    ptrdiff_t ntasks;
    ptrdiff_t next;
    int phase_after_sums; /* the phase run_job runs: 1 (update) or 2 (accumulate) */
    int phase; /* 0: norm sums (chunks; every tensor for a global norm); 1: the update; 2: an accumulation micro-step */
} Job;

static inline const Group *group_of(const Job *job, ptrdiff_t t)
{
    return job->group_of ? &job->groups[job->group_of[t]] : &job->groups[0];
}

/* Whether tensor t's gradient is clipped by value before a norm is taken of it. */
static inline int value_first(const Job *job, const Group *group)
{
    return (group->clip & CLIPS_BY_VALUE) && ((group->clip & CLIPS_BY_NORM) || job->global_clip);
}

/* Copies n results into new memory (the MLX face's outputs) with non-temporal stores where
 * the machine has them: a store that misses the cache then does not first read the line it
 * overwrites (28 bytes moved per float32 parameter instead of 20). Same values either way. */
static inline void stream_f32(float *dst, const float *src, int64_t n)
{
    int64_t k = 0;
#if defined(__SSE2__)
    if (((uintptr_t)dst & 15) == 0)
        for (; k + 4 <= n; k += 4) _mm_stream_ps(dst + k, _mm_loadu_ps(src + k));
#endif
    for (; k < n; k++) dst[k] = src[k];
}

static inline void stream_f64(double *dst, const double *src, int64_t n)
{
    int64_t k = 0;
#if defined(__SSE2__)
    if (((uintptr_t)dst & 15) == 0)
        for (; k + 2 <= n; k += 2) _mm_stream_pd(dst + k, _mm_loadu_pd(src + k));
#endif
    for (; k < n; k++) dst[k] = src[k];
}

static inline void stream_fence(void)
{
#if defined(__SSE2__)
    _mm_sfence(); /* streamed stores are visible before the thread reports its task done */
#endif
}

/* ---- the per-element pipeline, instantiated per dtype and per constant flag set ---- */

#define DEFINE_KERNELS(T, SUFFIX, SQRT, FMA, STREAM)                                                      \
    /* Sum of squares of the prepared gradient (unscaled, accumulated, clipped by value when a \
       norm follows) over [start, end), in LANES independent double sums so that the loop       \
       vectorizes without reassociating. */                                                      \
    static double sum_squares_##SUFFIX(const Job *job, ptrdiff_t t, int64_t start, int64_t end)  \
    {                                                                                              \
        const Group *group = group_of(job, t);                                                     \
        const T *G = (const T *)job->g[t];                                                         \
        const T *A = job->acc ? (const T *)job->a[t] : NULL;                                       \
        const T unscale = (T)job->unscale, steps = (T)job->steps;                                  \
        const int clamp = value_first(job, group);                                                 \
        const T hi = clamp ? (T)group->clipvalue : (T)INFINITY, lo = -hi;                          \
        const int plain = A == NULL && unscale == (T)1 && !clamp;                                  \
        double lanes[LANES] = {0};                                                                 \
        T block[LANES];                                                                            \
        int64_t i = start;                                                                         \
        for (; i + LANES <= end; i += LANES) {                                                     \
            if (plain) {                                                                           \
                for (int k = 0; k < LANES; k++) block[k] = G[i + k];                               \
            } else {                                                                               \
                for (int k = 0; k < LANES; k++) {                                                  \
                    T x = G[i + k] / unscale;                                                      \
                    x = A ? (x + A[i + k]) / steps : x;                                            \
                    block[k] = x < lo ? lo : (x > hi ? hi : x);                                    \
                }                                                                                  \
            }                                                                                      \
            for (int k = 0; k < LANES; k++) lanes[k] += (double)(block[k] * block[k]);            \
        }                                                                                          \
        for (; i < end; i++) {                                                                     \
            T x = G[i] / unscale;                                                                  \
            if (A) x = (x + A[i]) / steps;                                                         \
            x = x < lo ? lo : (x > hi ? hi : x);                                                   \
            lanes[0] += (double)(x * x);                                                           \
        }                                                                                          \
        double total = 0;                                                                          \
        for (int k = 0; k < LANES; k++) total += lanes[k];                                         \
        return total;                                                                              \
    }                                                                                              \
                                                                                                   \
    static inline __attribute__((always_inline)) void update_##SUFFIX(                             \
        const Job *job, ptrdiff_t t, int64_t start, int64_t end, const int form, const int mode,  \
        const int decay, const int ema, const int acc, const int fused, const int fresh,          \
        const int out)                                                                             \
    {                                                                                              \
        const Group *group = group_of(job, t);                                                     \
        /* in place: W and V are read and written; out of place: read, and Wo / Vo written.    \
           Either way every pointer that is used is the only way to its memory (restrict). */    \
        T *restrict W = (T *)job->w[t];                                                            \
        T *restrict Wo = out ? (T *)job->w_out[t] : NULL;                                          \
        const T *restrict G = (const T *)job->g[t];                                                \
        T *restrict V = mode ? (T *)job->v[t] : NULL;                                              \
        T *restrict Vo = mode && out ? (T *)job->v_out[t] : NULL;                                  \
        T *restrict E = ema ? (T *)job->e[t] : NULL;                                               \
        T *restrict A = acc ? (T *)job->a[t] : NULL;                                               \
        const int fresh_average = ema && (job->flags[t] & FLAG_FRESH_AVERAGE);                     \
        const int maximize = group->maximize;                                                      \
        const T unscale = (T)job->unscale, steps = (T)job->steps;                                  \
        const T mul = (T)job->clip_mul[t], div = (T)job->clip_div[t];                              \
        const T hi = (group->clip & CLIPS_BY_VALUE) ? (T)group->clipvalue : (T)INFINITY, lo = -hi; \
        const T lr = (T)group->lr, negative_lr = (T)(-group->lr), m = (T)group->momentum;          \
        const T wd = (T)group->wd, omd = (T)group->one_minus_dampening;                            \
        const T em = (T)job->ema_momentum, one_minus_em = (T)1 - em;                               \
        /* out of place: results go to small buffers, then to the outputs (streamed when the \
           step is too big for the caches); in place: one pass over [start, end). */             \
        const int stream = out && job->stream_outputs;                                             \
        T w_block[out ? OUT_BLOCK : 1], v_block[out ? OUT_BLOCK : 1];                              \
        const int64_t block = out ? OUT_BLOCK : (end - start > 0 ? end - start : 1);               \
        for (int64_t base = start; base < end; base += block) {                                    \
        const int64_t stop = end - base > block ? base + block : end;                              \
        for (int64_t i = base; i < stop; i++) {                                                    \
            T g = G[i] / unscale;                                                                  \
            if (acc) {                                                                             \
                g = (g + A[i]) / steps;                                                            \
                A[i] = 0;                                                                          \
            }                                                                                      \
            g = g < lo ? lo : (g > hi ? hi : g);                                                   \
            g = (g * mul) / div;                                                                   \
            T w = W[i];                                                                            \
            if (form == FORM_KERAS) {                                                              \
                if (decay) w = w - (w * wd) * lr;                                                  \
                if (mode == MODE_NONE) {                                                           \
                    w = w - g * lr;                                                                \
                } else {                                                                           \
                    T v = V[i] * m - g * lr;                                                       \
                    if (out) v_block[i - base] = v; else V[i] = v;                                 \
                    w = mode == MODE_NESTEROV ? w + (v * m - g * lr) : w + v;                      \
                }                                                                                  \
            } else {                                                                               \
                if (maximize) g = -g;                                                              \
                if (decay) g = fused ? FMA(wd, w, g) : g + wd * w;                                 \
                if (mode == MODE_NONE) {                                                           \
                    w = fused ? FMA(negative_lr, g, w) : w + negative_lr * g;                      \
                } else {                                                                           \
                    T b;                                                                           \
                    if (fresh) {                                                                   \
                        b = g;                                                                     \
                    } else {                                                                       \
                        T decayed = V[i] * m;                                                      \
                        b = fused ? FMA(omd, g, decayed) : decayed + omd * g;                      \
                    }                                                                              \
                    if (out) v_block[i - base] = b; else V[i] = b;                                 \
                    T d = b;                                                                       \
                    if (mode == MODE_NESTEROV) d = fused ? FMA(m, b, g) : g + m * b;               \
                    w = fused ? FMA(negative_lr, d, w) : w + negative_lr * d;                      \
                }                                                                                  \
            }                                                                                      \
            if (out) w_block[i - base] = w; else W[i] = w;                                         \
            if (ema) E[i] = fresh_average ? w : em * E[i] + one_minus_em * w;                      \
        }                                                                                          \
        if (out) {                                                                                 \
            if (stream) {                                                                          \
                STREAM(Wo + base, w_block, stop - base);                                           \
                if (mode) STREAM(Vo + base, v_block, stop - base);                                 \
            } else {                                                                               \
                memcpy(Wo + base, w_block, (size_t)(stop - base) * sizeof(T));                     \
                if (mode) memcpy(Vo + base, v_block, (size_t)(stop - base) * sizeof(T));           \
            }                                                                                      \
        }                                                                                          \
        }                                                                                          \
        if (stream) stream_fence();                                                                \
    }                                                                                              \
                                                                                                   \
    /* Each level fixes one flag as a constant, so that every combination in use gets its own  \
       loop: outputs of their own only in the MLX face's form (heavy-ball, rounded twice, no    \
       EMA or accumulation), a fresh buffer only in the torch face's (heavy-ball, fused). */    \
    static inline __attribute__((always_inline)) void by_out_##SUFFIX(                             \
        const Job *job, ptrdiff_t t, int64_t s, int64_t e, int form, int mode, int decay, int ema, \
        int acc, int fused, int fresh)                                                             \
    {                                                                                              \
        if (form == FORM_HEAVY_BALL && !fused && !fresh && !ema && !acc && job->w_out)             \
            update_##SUFFIX(job, t, s, e, form, mode, decay, ema, acc, fused, fresh, 1);           \
        else                                                                                       \
            update_##SUFFIX(job, t, s, e, form, mode, decay, ema, acc, fused, fresh, 0);           \
    }                                                                                              \
    static inline __attribute__((always_inline)) void by_fresh_##SUFFIX(                           \
        const Job *job, ptrdiff_t t, int64_t s, int64_t e, int form, int mode, int decay, int ema, \
        int acc, int fused)                                                                        \
    {                                                                                              \
        if (form == FORM_HEAVY_BALL && fused && mode != MODE_NONE && (job->flags[t] & FLAG_FRESH_BUFFER)) \
            by_out_##SUFFIX(job, t, s, e, form, mode, decay, ema, acc, fused, 1);                  \
        else                                                                                       \
            by_out_##SUFFIX(job, t, s, e, form, mode, decay, ema, acc, fused, 0);                  \
    }                                                                                              \
    static inline __attribute__((always_inline)) void by_fused_##SUFFIX(                           \
        const Job *job, ptrdiff_t t, int64_t s, int64_t e, int form, int mode, int decay, int ema, \
        int acc)                                                                                   \
    {                                                                                              \
        if (form == FORM_HEAVY_BALL && group_of(job, t)->fused)                                    \
            by_fresh_##SUFFIX(job, t, s, e, form, mode, decay, ema, acc, 1);                       \
        else                                                                                       \
            by_fresh_##SUFFIX(job, t, s, e, form, mode, decay, ema, acc, 0);                       \
    }                                                                                              \
    static inline __attribute__((always_inline)) void by_acc_##SUFFIX(                             \
        const Job *job, ptrdiff_t t, int64_t s, int64_t e, int form, int mode, int decay, int ema) \
    {                                                                                              \
        if (job->acc)                                                                              \
            by_fused_##SUFFIX(job, t, s, e, form, mode, decay, ema, 1);                            \
        else                                                                                       \
            by_fused_##SUFFIX(job, t, s, e, form, mode, decay, ema, 0);                            \
    }                                                                                              \
    static inline __attribute__((always_inline)) void by_ema_##SUFFIX(                             \
        const Job *job, ptrdiff_t t, int64_t s, int64_t e, int form, int mode, int decay)          \
    {                                                                                              \
        if (job->ema)                                                                              \
            by_acc_##SUFFIX(job, t, s, e, form, mode, decay, 1);                                   \
        else                                                                                       \
            by_acc_##SUFFIX(job, t, s, e, form, mode, decay, 0);                                   \
    }                                                                                              \
    static inline __attribute__((always_inline)) void by_decay_##SUFFIX(                           \
        const Job *job, ptrdiff_t t, int64_t s, int64_t e, int form, int mode)                     \
    {                                                                                              \
        if (job->flags[t] & FLAG_DECAY)                                                            \
            by_ema_##SUFFIX(job, t, s, e, form, mode, 1);                                          \
        else                                                                                       \
            by_ema_##SUFFIX(job, t, s, e, form, mode, 0);                                          \
    }                                                                                              \
    static inline __attribute__((always_inline)) void by_mode_##SUFFIX(                            \
        const Job *job, ptrdiff_t t, int64_t s, int64_t e, int form)                               \
    {                                                                                              \
        switch (group_of(job, t)->mode) {                                                          \
        case MODE_PLAIN: by_decay_##SUFFIX(job, t, s, e, form, MODE_PLAIN); break;                \
        case MODE_NESTEROV: by_decay_##SUFFIX(job, t, s, e, form, MODE_NESTEROV); break;          \
        default: by_decay_##SUFFIX(job, t, s, e, form, MODE_NONE); break;                         \
        }                                                                                          \
    }                                                                                              \
    static void dispatch_##SUFFIX(const Job *job, ptrdiff_t t, int64_t start, int64_t end)       \
    {                                                                                              \
        if (group_of(job, t)->form == FORM_HEAVY_BALL)                                             \
            by_mode_##SUFFIX(job, t, start, end, FORM_HEAVY_BALL);                                 \
        else                                                                                       \
            by_mode_##SUFFIX(job, t, start, end, FORM_KERAS);                                      \
    }                                                                                              \
                                                                                                   \
    /* The clipnorm denominator as Keras forms it: max(norm, c), norm = sqrt(s) if s > 0. */     \
    static double clip_divisor_##SUFFIX(double sum, double clipnorm)                               \
    {                                                                                              \
        T s = (T)sum, c = (T)clipnorm;                                                             \
        T norm = s > 0 ? SQRT(s) : s;                                                              \
        return (double)((norm > c || norm != norm) ? norm : c);                                    \
    }                                                                                              \
                                                                                                   \
    /* The global scale c * min(1/norm, 1/c) + (norm - norm), with per-tensor sums rounded to  \
       T and added in order, as the reference path adds them; 1/c rounded once from double     \
       (Keras 3) or formed in T (tf.clip_by_global_norm, tf.keras legacy). */                      \
    static double global_scale_##SUFFIX(const double *sums, ptrdiff_t count, double clipnorm,    \
                                        int reciprocal_in_dtype)                                   \
    {                                                                                              \
        T total = 0;                                                                               \
        for (ptrdiff_t t = 0; t < count; t++) total = total + (T)sums[t];                        \
        T norm = SQRT(total), c = (T)clipnorm;                                                     \
        T inverse_c = reciprocal_in_dtype ? (T)1 / c : (T)(1.0 / clipnorm);                        \
        T inverse = (T)1 / norm;                                                                   \
        T smaller = (inverse < inverse_c || inverse != inverse) ? inverse : inverse_c;             \
        return (double)(c * smaller + (norm - norm));                                              \
    }

DEFINE_KERNELS(float, f32, sqrtf, fmaf, stream_f32)
DEFINE_KERNELS(double, f64, sqrt, fma, stream_f64)

/* ---- threads ---- */

static void accumulate_range(Job *job, ptrdiff_t t, int64_t start, int64_t end)
{
    if (job->is_double) {
        double *A = (double *)job->a[t];
        const double *G = (const double *)job->g[t];
        for (int64_t i = start; i < end; i++) A[i] = G[i] + A[i];
    } else {
        float *A = (float *)job->a[t];
        const float *G = (const float *)job->g[t];
        for (int64_t i = start; i < end; i++) A[i] = G[i] + A[i];
    }
}

static double sum_squares(const Job *job, ptrdiff_t t, int64_t start, int64_t end)
{
    return job->is_double ? sum_squares_f64(job, t, start, end) : sum_squares_f32(job, t, start, end);
}

/* The same pipeline compiled for x86-64 CPUs with AVX2 and FMA (2013 on), chosen at run time:
 * the library is built for the baseline CPU so that a wheel runs anywhere, and there the
 * heavy-ball form's fma() is a libm call per element (6x slower on 32M float32, measured
 * 2026-12-04). Both give the same numbers: fma() rounds once either way, and -ffp-contract=off
 * keeps the compiler from fusing anything else. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FMA_CLONE(T, SUFFIX)                                                                        \
    __attribute__((target("avx2,fma"))) static void dispatch_fma_##SUFFIX(                          \
        const Job *job, ptrdiff_t t, int64_t start, int64_t end)                                    \
    {                                                                                               \
        if (group_of(job, t)->form == FORM_HEAVY_BALL)                                              \
            by_mode_##SUFFIX(job, t, start, end, FORM_HEAVY_BALL);                                  \
        else                                                                                        \
            by_mode_##SUFFIX(job, t, start, end, FORM_KERAS);                                       \
    }
FMA_CLONE(float, f32)
FMA_CLONE(double, f64)

static int cpu_has_fma(void)
{
    static int known = -1; /* a benign race: every thread computes the same answer */
    if (known < 0) known = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    return known;
}
#else
#define dispatch_fma_f32 dispatch_f32
#define dispatch_fma_f64 dispatch_f64
static int cpu_has_fma(void) { return 0; }
#endif

static void update_range(Job *job, ptrdiff_t t, int64_t start, int64_t end)
{
    if (cpu_has_fma()) {
        if (job->is_double)
            dispatch_fma_f64(job, t, start, end);
        else
            dispatch_fma_f32(job, t, start, end);
    } else if (job->is_double)
        dispatch_f64(job, t, start, end);
    else
        dispatch_f32(job, t, start, end);
}

static void run_task(Job *job, const Task *task)
{
    if (task->first == task->last && job->sizes[task->first] > CHUNK) { /* a chunk of a large tensor */
        ptrdiff_t t = task->first;
        if (job->phase == 0) {
            if (job->global_clip || (group_of(job, t)->clip & CLIPS_BY_NORM))
                job->chunk_sums[task - job->tasks] = sum_squares(job, t, task->start, task->end);
        }
        else if (job->phase == 1)
            update_range(job, t, task->start, task->end);
        else
            accumulate_range(job, t, task->start, task->end);
        return;
    }
    for (ptrdiff_t t = task->first; t <= task->last; t++) {
        int64_t size = job->sizes[t];
        if (job->phase == 0) {
            if (job->global_clip) job->tensor_sums[t] = sum_squares(job, t, 0, size);
        } else if (job->phase == 1) {
            const Group *group = group_of(job, t);
            if ((group->clip & CLIPS_BY_NORM) && !job->global_clip) {
                double sum = sum_squares(job, t, 0, size);
                job->clip_div[t] = job->is_double ? clip_divisor_f64(sum, group->clipnorm) : clip_divisor_f32(sum, group->clipnorm);
            }
            update_range(job, t, 0, size);
        } else {
            accumulate_range(job, t, 0, size);
        }
    }
}

static void *worker(void *arg)
{
    Job *job = (Job *)arg;
    for (;;) {
        ptrdiff_t index = __atomic_fetch_add(&job->next, 1, __ATOMIC_RELAXED);
        if (index >= job->ntasks) return NULL;
        run_task(job, &job->tasks[index]);
    }
}

static void run_phase(Job *job, int phase, int threads)
{
    pthread_t ids[MAX_THREADS];
    int started = 0;
    job->phase = phase;
    job->next = 0;
    for (int k = 1; k < threads; k++)
        if (pthread_create(&ids[started], NULL, worker, job) == 0) started++;
    worker(job);
    for (int k = 0; k < started; k++) pthread_join(ids[k], NULL);
}

/* Large tensors cut into chunks of CHUNK elements; runs of small tensors grouped up to CHUNK
 * elements (a task never mixes the two). */
/* The most tasks make_tasks can make for these sizes. */
static ptrdiff_t task_bound(const int64_t *sizes, ptrdiff_t count)
{
    ptrdiff_t n = 0;
    for (ptrdiff_t t = 0; t < count; t++) n += sizes[t] > CHUNK ? (sizes[t] + CHUNK - 1) / CHUNK : 1;
    return n;
}

/* Bytes of the scratch memory run_job needs for these sizes (see Job.arena): tasks, the clip
 * factors, and the norm sums. A caller that hands it over (the XLA handler, whose workspace XLA
 * allocates before the step starts) makes run_job allocate nothing, so it cannot fail. */
static size_t arena_bytes(const int64_t *sizes, ptrdiff_t count)
{
    ptrdiff_t n = task_bound(sizes, count);
    return (size_t)(n + 1) * sizeof(Task) + (size_t)(2 * count + 1) * sizeof(double) +
           (size_t)(n + 1) * sizeof(double) + (size_t)(count + 1) * sizeof(double);
}

/* Fills `tasks` (room for task_bound() + 1) and sets *ntasks. */
static Task *make_tasks(const int64_t *sizes, ptrdiff_t count, ptrdiff_t *ntasks, Task *tasks)
{
    ptrdiff_t n = 0;
    int64_t group = -1; /* elements in the open group of small tensors; -1: none open */
    for (ptrdiff_t t = 0; t < count; t++) {
        if (sizes[t] > CHUNK) {
            group = -1;
            for (int64_t start = 0; start < sizes[t]; start += CHUNK) {
                tasks[n].first = tasks[n].last = t;
                tasks[n].start = start;
                tasks[n].end = sizes[t] - start > CHUNK ? start + CHUNK : sizes[t];
                n++;
            }
        } else if (group >= 0 && group + sizes[t] <= CHUNK) {
            tasks[n - 1].last = t;
            group += sizes[t];
        } else {
            tasks[n].first = tasks[n].last = t;
            tasks[n].start = 0;
            tasks[n].end = sizes[t];
            n++;
            group = sizes[t];
        }
    }
    *ntasks = n;
    return tasks;
}

/* The threads worth starting: at most one per task, and one for small steps. */
static int useful_threads(int threads, const Job *job)
{
    int64_t total = 0;
    for (ptrdiff_t t = 0; t < job->count; t++) total += job->sizes[t];
    if (threads < 1 || total < 4 * CHUNK) return 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    return threads > job->ntasks ? (int)job->ntasks : threads;
}

/* A step's hyperparameters, as the XLA front end receives them (the Keras form, one group). */
typedef struct {
    double lr, momentum, wd, ema_momentum, unscale, steps, clipnorm, clipvalue;
} Hyper;

enum { CLIP_NONE = 0, CLIP_NORM = 1, CLIP_GLOBAL = 2, CLIP_VALUE = 3 };

/* A Keras-form update job of one group over `count` tensors whose arrays are `pointers`:
 * weights, gradients, velocities, EMAs and accumulators, `count` of each (unused lists may hold
 * anything). `clip` is one CLIP_* mode; `decay`: one byte per tensor, 1 where decay applies. */
static Job update_job(char **pointers, ptrdiff_t count, const int64_t *sizes, const unsigned char *decay, int is_double,
                      int mode, int clip, int ema, int acc, Hyper hyper)
{
    Job job;
    memset(&job, 0, sizeof job);
    job.is_double = is_double;
    job.ema = ema;
    job.acc = acc;
    job.global_clip = clip == CLIP_GLOBAL ? GLOBAL_KERAS : GLOBAL_NONE;
    job.global_clipnorm = hyper.clipnorm;
    job.count = count;
    job.w = pointers;
    job.g = pointers + count;
    job.v = pointers + 2 * count;
    job.e = pointers + 3 * count;
    job.a = pointers + 4 * count;
    job.sizes = sizes;
    job.flags = decay;
    job.single.lr = hyper.lr;
    job.single.momentum = hyper.momentum;
    job.single.wd = hyper.wd;
    job.single.one_minus_dampening = 1.0;
    job.single.clipnorm = hyper.clipnorm;
    job.single.clipvalue = hyper.clipvalue;
    job.single.form = FORM_KERAS;
    job.single.mode = mode;
    job.single.clip = clip == CLIP_NORM ? CLIPS_BY_NORM : (clip == CLIP_VALUE ? CLIPS_BY_VALUE : 0);
    job.unscale = hyper.unscale;
    job.ema_momentum = hyper.ema_momentum;
    job.steps = hyper.steps;
    job.phase_after_sums = 1;
    return job;
}

/* Runs the job in its arena (arena_bytes() of scratch memory): norm sums where a clip needs
 * them, then the update. Allocates nothing and cannot fail. */
static void run_in_arena(Job *job, int threads)
{
    ptrdiff_t count = job->count, n = 0;
    const int64_t *sizes = job->sizes;
    char *arena = job->arena;
    Task *tasks = make_tasks(sizes, count, &n, (Task *)arena);
    arena += (size_t)(task_bound(sizes, count) + 1) * sizeof(Task);
    double *doubles = (double *)arena;
    arena += (size_t)(2 * count + 1) * sizeof(double);
    int needs_sums = job->global_clip != GLOBAL_NONE && job->phase_after_sums == 1;
    for (ptrdiff_t t = 0; t < count && !needs_sums && job->phase_after_sums == 1; t++)
        needs_sums = (group_of(job, t)->clip & CLIPS_BY_NORM) && sizes[t] > CHUNK;
    job->chunk_sums = (double *)arena;
    job->tensor_sums = (double *)(arena + (size_t)(n + 1) * sizeof(double));
    if (needs_sums) {
        memset(job->chunk_sums, 0, (size_t)(n + 1) * sizeof(double));
        memset(job->tensor_sums, 0, (size_t)(count + 1) * sizeof(double));
    }
    job->tasks = tasks;
    job->ntasks = n;
    job->clip_mul = doubles;
    job->clip_div = doubles + count;
    for (ptrdiff_t t = 0; t < count; t++) {
        const Group *group = group_of(job, t);
        job->clip_mul[t] = (group->clip & CLIPS_BY_NORM) && !job->global_clip ? group->clipnorm : 1.0;
        job->clip_div[t] = 1.0;
    }
    threads = useful_threads(threads, job);
    int64_t total = 0;
    for (ptrdiff_t t = 0; t < count; t++) total += sizes[t];
    job->stream_outputs = job->w_out != NULL && total * (job->is_double ? 8 : 4) > 8 * 1024 * 1024;
    if (needs_sums) {
        run_phase(job, 0, threads);
        /* chunk sums added in chunk order: the same total for any number of threads */
        for (ptrdiff_t k = 0; k < n; k++)
            if (sizes[tasks[k].first] > CHUNK) job->tensor_sums[tasks[k].first] += job->chunk_sums[k];
        if (job->global_clip) {
            int in_dtype = job->global_clip == GLOBAL_RECIPROCAL_IN_DTYPE;
            double scale = job->is_double ? global_scale_f64(job->tensor_sums, count, job->global_clipnorm, in_dtype)
                                          : global_scale_f32(job->tensor_sums, count, job->global_clipnorm, in_dtype);
            for (ptrdiff_t t = 0; t < count; t++) job->clip_mul[t] = scale;
        } else {
            for (ptrdiff_t t = 0; t < count; t++) {
                const Group *group = group_of(job, t);
                if ((group->clip & CLIPS_BY_NORM) && sizes[t] > CHUNK)
                    job->clip_div[t] = job->is_double ? clip_divisor_f64(job->tensor_sums[t], group->clipnorm)
                                                      : clip_divisor_f32(job->tensor_sums[t], group->clipnorm);
            }
        }
    }
    run_phase(job, job->phase_after_sums, threads);
    job->chunk_sums = job->tensor_sums = NULL;
    job->tasks = NULL;
}

/* Runs the job: in the caller's arena when it gave one (job->arena: then nothing is allocated
 * and the call cannot fail), else in one allocation of its own. The caller has set the arrays,
 * sizes, flags, groups and hyperparameters (a job made by update_job points its groups at its
 * own storage here). Touches no interpreter state (callers run it without the GIL). Returns 0,
 * or -1 when out of memory (nothing written). */
static int run_job(Job *job, int threads)
{
    if (job->groups == NULL) job->groups = &job->single;
    if (job->arena) {
        run_in_arena(job, threads);
        return 0;
    }
    char *memory = malloc(arena_bytes(job->sizes, job->count));
    if (!memory) return -1;
    job->arena = memory;
    run_in_arena(job, threads);
    job->arena = NULL;
    free(memory);
    return 0;
}

#endif
