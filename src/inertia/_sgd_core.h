/* The per-element Keras SGD pipeline and its threads, shared by inertia's two front ends:
 * _kernels.c (a Python extension, for NumPy arrays and CPU torch tensors) and _xla_kernels.c
 * (an XLA FFI handler, for JAX on the CPU). Plain C: no Python, no XLA.
 *
 * Per element, in the tensor's dtype T and in the reference path's order of operations
 * (compiled with -ffp-contract=off, so no multiply-add is fused and results match NumPy):
 *
 *     g = G / unscale                                  (1 when there is no loss scale)
 *     g = (g + A) / steps;  A = 0                      (gradient accumulation, update step)
 *     g = (g * clip_mul) / clip_div                    (clipnorm: c / max(|g|, c); global: s / 1)
 *     g = clip(g, lo, hi)                              (clipvalue; +-inf when off)
 *     w = w - (w * wd) * lr                            (decoupled decay, where it applies)
 *     v = v * m - g * lr;  w = w + v                   (momentum)
 *     v = v * m - g * lr;  w = w + (v * m - g * lr)    (Nesterov)
 *     w = w - g * lr                                   (no momentum)
 *     E = em * E + (1 - em) * w                        (EMA of the new weights)
 *
 * Large tensors are cut into chunks, small neighbouring tensors are grouped, and the tasks are
 * shared between threads. A small tensor's norm and its update run back to back while it is
 * in cache. Norm sums are per chunk, in double, added in chunk order: the result does not
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

#define CHUNK 65536
#define LANES 16
#define MAX_THREADS 256

enum { MODE_NONE = 0, MODE_PLAIN = 1, MODE_NESTEROV = 2 };
enum { CLIP_NONE = 0, CLIP_NORM = 1, CLIP_GLOBAL = 2, CLIP_VALUE = 3 };

/* A task is either a run of whole small tensors [first, last] (first < last or a tensor of at
 * most CHUNK elements), or one chunk [start, end) of a large tensor (first == last). Grouping
 * small tensors keeps each thread streaming through neighbouring arrays instead of hopping. */
typedef struct {
    ptrdiff_t first, last;
    int64_t start, end;
} Task;

typedef struct {
    int is_double, mode, ema, acc, clip;
    ptrdiff_t count;
    char **w, **g, **v, **e, **a;
    const int64_t *sizes;
    const unsigned char *decay;
    double *clip_mul, *clip_div;
    double *chunk_sums;  /* per task, for chunks of large tensors */
    double *tensor_sums; /* per tensor, for small (unchunked) tensors */
    double unscale, lo, hi, lr, momentum, wd, ema_momentum, steps, clipnorm;
    Task *tasks;
    ptrdiff_t ntasks;
    ptrdiff_t next;
    int phase_after_sums; /* the phase run_job runs: 1 (update) or 2 (accumulate) */
    int phase; /* 0: norm sums (chunks; every tensor for global_clipnorm); 1: the update; 2: an accumulation micro-step */
} Job;

/* ---- the per-element pipeline, instantiated per dtype and per constant flag set ---- */

#define DEFINE_KERNELS(T, SUFFIX, SQRT)                                                           \
    /* Sum of squares of the prepared gradient (unscaled, accumulated) over [start, end), in  \
       LANES independent double sums so that the loop vectorizes without reassociating. */     \
    static double sum_squares_##SUFFIX(const Job *job, ptrdiff_t t, int64_t start, int64_t end)  \
    {                                                                                              \
        const T *G = (const T *)job->g[t];                                                         \
        const T *A = job->acc ? (const T *)job->a[t] : NULL;                                       \
        const T unscale = (T)job->unscale, steps = (T)job->steps;                                  \
        const int plain = A == NULL && unscale == (T)1;                                            \
        double lanes[LANES] = {0};                                                                 \
        T block[LANES];                                                                            \
        int64_t i = start;                                                                         \
        for (; i + LANES <= end; i += LANES) {                                                     \
            if (plain) {                                                                           \
                for (int k = 0; k < LANES; k++) block[k] = G[i + k];                               \
            } else {                                                                               \
                for (int k = 0; k < LANES; k++) {                                                  \
                    T x = G[i + k] / unscale;                                                      \
                    block[k] = A ? (x + A[i + k]) / steps : x;                                     \
                }                                                                                  \
            }                                                                                      \
            for (int k = 0; k < LANES; k++) lanes[k] += (double)(block[k] * block[k]);            \
        }                                                                                          \
        for (; i < end; i++) {                                                                     \
            T x = G[i] / unscale;                                                                  \
            if (A) x = (x + A[i]) / steps;                                                         \
            lanes[0] += (double)(x * x);                                                           \
        }                                                                                          \
        double total = 0;                                                                          \
        for (int k = 0; k < LANES; k++) total += lanes[k];                                         \
        return total;                                                                              \
    }                                                                                              \
                                                                                                   \
    static inline __attribute__((always_inline)) void update_##SUFFIX(                             \
        const Job *job, ptrdiff_t t, int64_t start, int64_t end, const int mode, const int decay, \
        const int ema, const int acc)                                                              \
    {                                                                                              \
        T *restrict W = (T *)job->w[t];                                                            \
        const T *restrict G = (const T *)job->g[t];                                                \
        T *restrict V = mode ? (T *)job->v[t] : NULL;                                              \
        T *restrict E = ema ? (T *)job->e[t] : NULL;                                               \
        T *restrict A = acc ? (T *)job->a[t] : NULL;                                               \
        const T unscale = (T)job->unscale, steps = (T)job->steps;                                  \
        const T mul = (T)job->clip_mul[t], div = (T)job->clip_div[t];                              \
        const T lo = (T)job->lo, hi = (T)job->hi, lr = (T)job->lr, m = (T)job->momentum;           \
        const T wd = (T)job->wd, em = (T)job->ema_momentum, one_minus_em = (T)1 - em;              \
        for (int64_t i = start; i < end; i++) {                                                    \
            T g = G[i] / unscale;                                                                  \
            if (acc) {                                                                             \
                g = (g + A[i]) / steps;                                                            \
                A[i] = 0;                                                                          \
            }                                                                                      \
            g = (g * mul) / div;                                                                   \
            g = g < lo ? lo : (g > hi ? hi : g);                                                   \
            T w = W[i];                                                                            \
            if (decay) w = w - (w * wd) * lr;                                                      \
            if (mode == MODE_NONE) {                                                               \
                w = w - g * lr;                                                                    \
            } else {                                                                               \
                T v = V[i] * m - g * lr;                                                           \
                V[i] = v;                                                                          \
                w = mode == MODE_NESTEROV ? w + (v * m - g * lr) : w + v;                          \
            }                                                                                      \
            W[i] = w;                                                                              \
            if (ema) E[i] = em * E[i] + one_minus_em * w;                                          \
        }                                                                                          \
    }                                                                                              \
                                                                                                   \
    static void dispatch_##SUFFIX(const Job *job, ptrdiff_t t, int64_t start, int64_t end)       \
    {                                                                                              \
        int decay = job->decay[t] != 0;                                                            \
        switch (job->mode * 8 + decay * 4 + job->ema * 2 + job->acc) {                             \
        case 0: update_##SUFFIX(job, t, start, end, 0, 0, 0, 0); break;                           \
        case 1: update_##SUFFIX(job, t, start, end, 0, 0, 0, 1); break;                           \
        case 2: update_##SUFFIX(job, t, start, end, 0, 0, 1, 0); break;                           \
        case 3: update_##SUFFIX(job, t, start, end, 0, 0, 1, 1); break;                           \
        case 4: update_##SUFFIX(job, t, start, end, 0, 1, 0, 0); break;                           \
        case 5: update_##SUFFIX(job, t, start, end, 0, 1, 0, 1); break;                           \
        case 6: update_##SUFFIX(job, t, start, end, 0, 1, 1, 0); break;                           \
        case 7: update_##SUFFIX(job, t, start, end, 0, 1, 1, 1); break;                           \
        case 8: update_##SUFFIX(job, t, start, end, 1, 0, 0, 0); break;                           \
        case 9: update_##SUFFIX(job, t, start, end, 1, 0, 0, 1); break;                           \
        case 10: update_##SUFFIX(job, t, start, end, 1, 0, 1, 0); break;                          \
        case 11: update_##SUFFIX(job, t, start, end, 1, 0, 1, 1); break;                          \
        case 12: update_##SUFFIX(job, t, start, end, 1, 1, 0, 0); break;                          \
        case 13: update_##SUFFIX(job, t, start, end, 1, 1, 0, 1); break;                          \
        case 14: update_##SUFFIX(job, t, start, end, 1, 1, 1, 0); break;                          \
        case 15: update_##SUFFIX(job, t, start, end, 1, 1, 1, 1); break;                          \
        case 16: update_##SUFFIX(job, t, start, end, 2, 0, 0, 0); break;                          \
        case 17: update_##SUFFIX(job, t, start, end, 2, 0, 0, 1); break;                          \
        case 18: update_##SUFFIX(job, t, start, end, 2, 0, 1, 0); break;                          \
        case 19: update_##SUFFIX(job, t, start, end, 2, 0, 1, 1); break;                          \
        case 20: update_##SUFFIX(job, t, start, end, 2, 1, 0, 0); break;                          \
        case 21: update_##SUFFIX(job, t, start, end, 2, 1, 0, 1); break;                          \
        case 22: update_##SUFFIX(job, t, start, end, 2, 1, 1, 0); break;                          \
        default: update_##SUFFIX(job, t, start, end, 2, 1, 1, 1); break;                          \
        }                                                                                          \
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
    /* Keras' global scale: c * min(1/norm, 1/c) + (norm - norm), with per-tensor sums        \
       rounded to T and added in order, as the reference path adds them. */                      \
    static double global_scale_##SUFFIX(const double *sums, ptrdiff_t count, double clipnorm)    \
    {                                                                                              \
        T total = 0;                                                                               \
        for (ptrdiff_t t = 0; t < count; t++) total = total + (T)sums[t];                        \
        T norm = SQRT(total), c = (T)clipnorm, inverse_c = (T)(1.0 / clipnorm);                   \
        T inverse = (T)1 / norm;                                                                   \
        T smaller = (inverse < inverse_c || inverse != inverse) ? inverse : inverse_c;             \
        return (double)(c * smaller + (norm - norm));                                              \
    }

DEFINE_KERNELS(float, f32, sqrtf)
DEFINE_KERNELS(double, f64, sqrt)

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

static void update_range(Job *job, ptrdiff_t t, int64_t start, int64_t end)
{
    if (job->is_double)
        dispatch_f64(job, t, start, end);
    else
        dispatch_f32(job, t, start, end);
}

static void run_task(Job *job, const Task *task)
{
    if (task->first == task->last && job->sizes[task->first] > CHUNK) { /* a chunk of a large tensor */
        ptrdiff_t t = task->first;
        if (job->phase == 0)
            job->chunk_sums[task - job->tasks] = sum_squares(job, t, task->start, task->end);
        else if (job->phase == 1)
            update_range(job, t, task->start, task->end);
        else
            accumulate_range(job, t, task->start, task->end);
        return;
    }
    for (ptrdiff_t t = task->first; t <= task->last; t++) {
        int64_t size = job->sizes[t];
        if (job->phase == 0) {
            if (job->clip == CLIP_GLOBAL) job->tensor_sums[t] = sum_squares(job, t, 0, size);
        } else if (job->phase == 1) {
            if (job->clip == CLIP_NORM) {
                double sum = sum_squares(job, t, 0, size);
                job->clip_div[t] = job->is_double ? clip_divisor_f64(sum, job->clipnorm) : clip_divisor_f32(sum, job->clipnorm);
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
static Task *make_tasks(const int64_t *sizes, ptrdiff_t count, ptrdiff_t *ntasks)
{
    ptrdiff_t n = 0;
    for (ptrdiff_t t = 0; t < count; t++) n += sizes[t] > CHUNK ? (sizes[t] + CHUNK - 1) / CHUNK : 1;
    Task *tasks = malloc((size_t)(n + 1) * sizeof(Task));
    if (!tasks) return NULL;
    n = 0;
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

/* A step's hyperparameters, as both front ends receive them. */
typedef struct {
    double lr, momentum, wd, ema_momentum, unscale, steps, clipnorm, clipvalue;
} Hyper;

/* The update job over `count` tensors whose arrays are `pointers`: weights, gradients,
 * velocities, EMAs and accumulators, `count` of each (unused lists may hold anything). */
static Job update_job(char **pointers, ptrdiff_t count, const int64_t *sizes, const unsigned char *decay, int is_double,
                      int mode, int clip, int ema, int acc, Hyper hyper)
{
    Job job;
    memset(&job, 0, sizeof job);
    job.is_double = is_double;
    job.mode = mode;
    job.ema = ema;
    job.acc = acc;
    job.clip = clip;
    job.count = count;
    job.w = pointers;
    job.g = pointers + count;
    job.v = pointers + 2 * count;
    job.e = pointers + 3 * count;
    job.a = pointers + 4 * count;
    job.sizes = sizes;
    job.decay = decay;
    job.unscale = hyper.unscale;
    job.lo = clip == CLIP_VALUE ? -hyper.clipvalue : -INFINITY;
    job.hi = clip == CLIP_VALUE ? hyper.clipvalue : INFINITY;
    job.lr = hyper.lr;
    job.momentum = hyper.momentum;
    job.wd = hyper.wd;
    job.ema_momentum = hyper.ema_momentum;
    job.steps = hyper.steps;
    job.clipnorm = hyper.clipnorm;
    job.phase_after_sums = 1;
    return job;
}

/* Fills the job's per-run fields and runs it: norm sums where a clip needs them, then the
 * update. The caller has set the arrays, sizes, flags and hyperparameters. Touches no
 * interpreter state (callers run it without the GIL). Returns 0, or -1 when out of memory
 * (nothing written). */
static int run_job(Job *job, int threads)
{
    ptrdiff_t count = job->count, n = 0;
    const int64_t *sizes = job->sizes;
    int clip = job->clip;
    Task *tasks = make_tasks(sizes, count, &n);
    double *doubles = calloc((size_t)(2 * count + 1), sizeof(double));
    int needs_sums = clip == CLIP_GLOBAL;
    for (ptrdiff_t t = 0; t < count && !needs_sums; t++) needs_sums = clip == CLIP_NORM && sizes[t] > CHUNK;
    if (needs_sums) {
        job->chunk_sums = calloc((size_t)n + 1, sizeof(double));
        job->tensor_sums = calloc((size_t)count + 1, sizeof(double));
    }
    if (!tasks || !doubles || (needs_sums && (!job->chunk_sums || !job->tensor_sums))) {
        free(tasks);
        free(doubles);
        free(job->chunk_sums);
        free(job->tensor_sums);
        job->chunk_sums = job->tensor_sums = NULL;
        return -1;
    }
    job->tasks = tasks;
    job->ntasks = n;
    job->clip_mul = doubles;
    job->clip_div = doubles + count;
    for (ptrdiff_t t = 0; t < count; t++) {
        job->clip_mul[t] = clip == CLIP_NORM ? job->clipnorm : 1.0;
        job->clip_div[t] = 1.0;
    }
    threads = useful_threads(threads, job);
    if (needs_sums) {
        run_phase(job, 0, threads);
        /* chunk sums added in chunk order: the same total for any number of threads */
        for (ptrdiff_t k = 0; k < n; k++)
            if (sizes[tasks[k].first] > CHUNK) job->tensor_sums[tasks[k].first] += job->chunk_sums[k];
        if (clip == CLIP_GLOBAL) {
            double scale = job->is_double ? global_scale_f64(job->tensor_sums, count, job->clipnorm)
                                          : global_scale_f32(job->tensor_sums, count, job->clipnorm);
            for (ptrdiff_t t = 0; t < count; t++) job->clip_mul[t] = scale;
        } else {
            for (ptrdiff_t t = 0; t < count; t++)
                if (sizes[t] > CHUNK)
                    job->clip_div[t] = job->is_double ? clip_divisor_f64(job->tensor_sums[t], job->clipnorm)
                                                      : clip_divisor_f32(job->tensor_sums[t], job->clipnorm);
        }
    }
    run_phase(job, job->phase_after_sums, threads);
    free(job->chunk_sums);
    free(job->tensor_sums);
    free(doubles);
    free(tasks);
    job->chunk_sums = job->tensor_sums = NULL;
    job->tasks = NULL;
    return 0;
}

#endif
