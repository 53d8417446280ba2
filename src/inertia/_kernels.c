/* inertia's fused CPU kernels: the whole Keras SGD pipeline in one pass over each array.
 *
 * Built on first use by inertia/kernels.py with the system C compiler and cached on disk.
 * One call updates a list of tensors: every pointer, length and shape is checked first, so a
 * call either updates everything or nothing (it then answers "not applicable" and the caller
 * runs the reference path, which raises the proper error).
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
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>
#include <math.h>
#include <pthread.h>
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
    Py_ssize_t first, last;
    int64_t start, end;
} Task;

typedef struct {
    int is_double, mode, ema, acc, clip;
    Py_ssize_t count;
    char **w, **g, **v, **e, **a;
    const int64_t *sizes;
    const unsigned char *decay;
    double *clip_mul, *clip_div;
    double *chunk_sums;  /* per task, for chunks of large tensors */
    double *tensor_sums; /* per tensor, for small (unchunked) tensors */
    double unscale, lo, hi, lr, momentum, wd, ema_momentum, steps, clipnorm;
    Task *tasks;
    Py_ssize_t ntasks;
    Py_ssize_t next;
    int phase; /* 0: norm sums (chunks; every tensor for global_clipnorm); 1: the update; 2: an accumulation micro-step */
} Job;

/* ---- the per-element pipeline, instantiated per dtype and per constant flag set ---- */

#define DEFINE_KERNELS(T, SUFFIX, SQRT)                                                           \
    /* Sum of squares of the prepared gradient (unscaled, accumulated) over [start, end), in  \
       LANES independent double sums so that the loop vectorizes without reassociating. */     \
    static double sum_squares_##SUFFIX(const Job *job, Py_ssize_t t, int64_t start, int64_t end)  \
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
        const Job *job, Py_ssize_t t, int64_t start, int64_t end, const int mode, const int decay, \
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
    static void dispatch_##SUFFIX(const Job *job, Py_ssize_t t, int64_t start, int64_t end)       \
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
    static double global_scale_##SUFFIX(const double *sums, Py_ssize_t count, double clipnorm)    \
    {                                                                                              \
        T total = 0;                                                                               \
        for (Py_ssize_t t = 0; t < count; t++) total = total + (T)sums[t];                        \
        T norm = SQRT(total), c = (T)clipnorm, inverse_c = (T)(1.0 / clipnorm);                   \
        T inverse = (T)1 / norm;                                                                   \
        T smaller = (inverse < inverse_c || inverse != inverse) ? inverse : inverse_c;             \
        return (double)(c * smaller + (norm - norm));                                              \
    }

DEFINE_KERNELS(float, f32, sqrtf)
DEFINE_KERNELS(double, f64, sqrt)

/* ---- threads ---- */

static void accumulate_range(Job *job, Py_ssize_t t, int64_t start, int64_t end)
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

static double sum_squares(const Job *job, Py_ssize_t t, int64_t start, int64_t end)
{
    return job->is_double ? sum_squares_f64(job, t, start, end) : sum_squares_f32(job, t, start, end);
}

static void update_range(Job *job, Py_ssize_t t, int64_t start, int64_t end)
{
    if (job->is_double)
        dispatch_f64(job, t, start, end);
    else
        dispatch_f32(job, t, start, end);
}

static void run_task(Job *job, const Task *task)
{
    if (task->first == task->last && job->sizes[task->first] > CHUNK) { /* a chunk of a large tensor */
        Py_ssize_t t = task->first;
        if (job->phase == 0)
            job->chunk_sums[task - job->tasks] = sum_squares(job, t, task->start, task->end);
        else if (job->phase == 1)
            update_range(job, t, task->start, task->end);
        else
            accumulate_range(job, t, task->start, task->end);
        return;
    }
    for (Py_ssize_t t = task->first; t <= task->last; t++) {
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
        Py_ssize_t index = __atomic_fetch_add(&job->next, 1, __ATOMIC_RELAXED);
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
static Task *make_tasks(const int64_t *sizes, Py_ssize_t count, Py_ssize_t *ntasks)
{
    Py_ssize_t n = 0;
    for (Py_ssize_t t = 0; t < count; t++) n += sizes[t] > CHUNK ? (sizes[t] + CHUNK - 1) / CHUNK : 1;
    Task *tasks = malloc((size_t)(n + 1) * sizeof(Task));
    if (!tasks) return NULL;
    n = 0;
    int64_t group = -1; /* elements in the open group of small tensors; -1: none open */
    for (Py_ssize_t t = 0; t < count; t++) {
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
    for (Py_ssize_t t = 0; t < job->count; t++) total += job->sizes[t];
    if (threads < 1 || total < 4 * CHUNK) return 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    return threads > job->ntasks ? (int)job->ntasks : threads;
}

/* ---- argument checks: everything is validated before anything is written ---- */

/* What a call holds while it runs, per tensor and list: a buffer view, or a NumPy array. */
enum { HELD_NONE = 0, HELD_VIEW = 1, HELD_ARRAY = 2 };
typedef struct {
    Py_buffer views[5];
    PyObject *arrays[5];
    int held[5];
} Held;

static void release(Held *held, int k)
{
    if (held->held[k] == HELD_VIEW) PyBuffer_Release(&held->views[k]);
    if (held->held[k] == HELD_ARRAY) Py_DECREF(held->arrays[k]);
    held->held[k] = HELD_NONE;
}

/* An address (int), a NumPy array, or a C-contiguous buffer of `size` elements of the dtype
 * (writable when `writable`); for arrays and buffers, the shape must equal `shape` (ndim,
 * dims...) when given. NumPy arrays are read through NumPy's C API (a few field reads instead
 * of a buffer export: this runs for every gradient of every step). Returns 0 when not
 * applicable. */
static int pointer_of(PyObject *item, int is_double, int64_t size, const int64_t *shape, int writable, char **out,
                      Held *held, int k)
{
    Py_buffer *view = &held->views[k];
    held->held[k] = HELD_NONE;
    if (PyLong_Check(item)) {
        void *address = PyLong_AsVoidPtr(item);
        if (address == NULL) {
            PyErr_Clear();
            return size == 0;
        }
        *out = (char *)address;
        return 1;
    }
    if (PyArray_Check(item)) {
        PyArrayObject *array = (PyArrayObject *)item;
        int flags = NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED | (writable ? NPY_ARRAY_WRITEABLE : 0);
        if (PyArray_TYPE(array) != (is_double ? NPY_FLOAT64 : NPY_FLOAT32) || !PyArray_ISNOTSWAPPED(array) ||
            !PyArray_CHKFLAGS(array, flags) || PyArray_SIZE(array) != size)
            return 0;
        if (shape != NULL) {
            if (PyArray_NDIM(array) != shape[0]) return 0;
            for (int d = 0; d < shape[0]; d++)
                if (PyArray_DIM(array, d) != shape[d + 1]) return 0;
        }
        Py_INCREF(item); /* kept alive (and unresizable) while the threads run without the GIL */
        held->arrays[k] = item;
        held->held[k] = HELD_ARRAY;
        *out = (char *)PyArray_DATA(array);
        return 1;
    }
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(item, view, flags) != 0) {
        PyErr_Clear();
        return 0;
    }
    held->held[k] = HELD_VIEW;
    const char *format = view->format ? view->format : "B";
    if (format[0] == '=' || format[0] == '@' || format[0] == '<') format++;
    Py_ssize_t itemsize = is_double ? 8 : 4;
    if (strcmp(format, is_double ? "d" : "f") != 0 || view->itemsize != itemsize || view->len != size * itemsize)
        return 0;
    if (shape != NULL) {
        if (view->ndim != shape[0]) return 0;
        for (int d = 0; d < view->ndim; d++)
            if (view->shape[d] != shape[d + 1]) return 0;
    }
    *out = (char *)view->buf;
    return 1;
}

static int as_int64_array(PyObject *object, Py_buffer *view, Py_ssize_t count)
{
    if (PyObject_GetBuffer(object, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) return 0;
    const char *format = view->format ? view->format : "B";
    if (format[0] == '=' || format[0] == '@' || format[0] == '<') format++;
    if (!((strcmp(format, "q") == 0 || strcmp(format, "l") == 0) && view->itemsize == 8 && view->len >= count * 8)) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_TypeError, "inertia kernels: expected an int64 array");
        return 0;
    }
    return 1;
}

/* sgd_step(weights, grads, velocities, emas, accumulators, sizes, shapes, shape_offsets, decay,
 *          is_double, mode, clip, threads,
 *          lr, momentum, wd, ema_momentum, unscale, steps, clipnorm, clipvalue) -> bool
 *
 * Lists hold int addresses or buffers; velocities/emas/accumulators may be None. sizes:
 * int64 elements per tensor; shapes/shape_offsets: int64 (ndim, dims...) per tensor, checked
 * against buffer gradients; decay: bytes, 1 where decoupled decay applies. Returns False
 * (touching nothing) when an array does not fit, True after the update. */
static PyObject *sgd_step(PyObject *self, PyObject *args)
{
    PyObject *lists[5], *sizes_obj, *shapes_obj, *offsets_obj;
    Py_buffer decay_view;
    int is_double, mode, clip, threads;
    double lr, momentum, wd, ema_momentum, unscale, steps, clipnorm, clipvalue;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOOOOOy*iiiidddddddd", &lists[0], &lists[1], &lists[2], &lists[3], &lists[4],
                          &sizes_obj, &shapes_obj, &offsets_obj, &decay_view, &is_double, &mode, &clip, &threads,
                          &lr, &momentum, &wd, &ema_momentum, &unscale, &steps, &clipnorm, &clipvalue))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t count = PyList_Check(lists[0]) ? PyList_GET_SIZE(lists[0]) : -1;
    Py_buffer sizes_view, shapes_view, offsets_view;
    int have_sizes = 0, have_shapes = 0, have_offsets = 0;
    char **pointers = NULL;
    Held *held = NULL;
    double *doubles = NULL;
    Task *tasks = NULL;
    if (count < 0) {
        PyErr_SetString(PyExc_TypeError, "inertia kernels: weights must be a list");
        goto done;
    }
    for (int k = 1; k < 5; k++)
        if (lists[k] != Py_None && !(PyList_Check(lists[k]) && PyList_GET_SIZE(lists[k]) == count)) {
            PyErr_SetString(PyExc_TypeError, "inertia kernels: every list must match the weights");
            goto done;
        }
    if (!(have_sizes = as_int64_array(sizes_obj, &sizes_view, count))) goto done;
    if (!(have_shapes = as_int64_array(shapes_obj, &shapes_view, 0))) goto done;
    if (!(have_offsets = as_int64_array(offsets_obj, &offsets_view, count))) goto done;
    if (decay_view.len < count) {
        PyErr_SetString(PyExc_TypeError, "inertia kernels: decay flags are too short");
        goto done;
    }
    const int64_t *sizes = (const int64_t *)sizes_view.buf;
    const int64_t *shapes = (const int64_t *)shapes_view.buf;
    const int64_t *offsets = (const int64_t *)offsets_view.buf;

    pointers = calloc((size_t)(5 * count + 1), sizeof(char *));
    held = calloc((size_t)(count + 1), sizeof(Held));
    doubles = calloc((size_t)(2 * count + 1), sizeof(double));
    if (!pointers || !held || !doubles) {
        PyErr_NoMemory();
        goto done;
    }
    int fits = 1;
    for (Py_ssize_t t = 0; t < count && fits; t++) {
        for (int k = 0; k < 5 && fits; k++) {
            if (lists[k] == Py_None) continue;
            PyObject *item = PyList_GET_ITEM(lists[k], t);
            const int64_t *shape = k == 1 ? shapes + offsets[t] : NULL;
            fits = pointer_of(item, is_double, sizes[t], shape, k != 1, &pointers[k * count + t], &held[t], k);
        }
    }
    if (mode != MODE_NONE && lists[2] == Py_None) fits = 0;
    if (!fits) {
        result = Py_NewRef(Py_False);
        goto done;
    }
    Py_ssize_t n = 0;
    tasks = make_tasks(sizes, count, &n);
    if (!tasks) {
        PyErr_NoMemory();
        goto done;
    }
    Job job = {0};
    job.is_double = is_double;
    job.mode = mode;
    job.ema = lists[3] != Py_None;
    job.acc = lists[4] != Py_None;
    job.clip = clip;
    job.count = count;
    job.w = pointers;
    job.g = pointers + count;
    job.v = pointers + 2 * count;
    job.e = pointers + 3 * count;
    job.a = pointers + 4 * count;
    job.sizes = sizes;
    job.decay = (const unsigned char *)decay_view.buf;
    job.clip_mul = doubles;
    job.clip_div = doubles + count;
    job.unscale = unscale;
    job.lo = clip == CLIP_VALUE ? -clipvalue : -INFINITY;
    job.hi = clip == CLIP_VALUE ? clipvalue : INFINITY;
    job.lr = lr;
    job.momentum = momentum;
    job.wd = wd;
    job.ema_momentum = ema_momentum;
    job.steps = steps;
    job.clipnorm = clipnorm;
    job.tasks = tasks;
    job.ntasks = n;
    for (Py_ssize_t t = 0; t < count; t++) {
        job.clip_mul[t] = clip == CLIP_NORM ? clipnorm : 1.0;
        job.clip_div[t] = 1.0;
    }
    threads = useful_threads(threads, &job);
    int needs_sums = clip == CLIP_GLOBAL;
    for (Py_ssize_t t = 0; t < count && !needs_sums; t++) needs_sums = clip == CLIP_NORM && sizes[t] > CHUNK;
    if (needs_sums) {
        job.chunk_sums = calloc((size_t)n + 1, sizeof(double));
        job.tensor_sums = calloc((size_t)count + 1, sizeof(double));
        if (!job.chunk_sums || !job.tensor_sums) {
            free(job.chunk_sums);
            free(job.tensor_sums);
            PyErr_NoMemory();
            goto done;
        }
    }

    Py_BEGIN_ALLOW_THREADS
    if (needs_sums) {
        run_phase(&job, 0, threads);
        /* chunk sums added in chunk order: the same total for any number of threads */
        for (Py_ssize_t k = 0; k < n; k++)
            if (sizes[tasks[k].first] > CHUNK) job.tensor_sums[tasks[k].first] += job.chunk_sums[k];
        if (clip == CLIP_GLOBAL) {
            double scale = is_double ? global_scale_f64(job.tensor_sums, count, clipnorm)
                                     : global_scale_f32(job.tensor_sums, count, clipnorm);
            for (Py_ssize_t t = 0; t < count; t++) job.clip_mul[t] = scale;
        } else {
            for (Py_ssize_t t = 0; t < count; t++)
                if (sizes[t] > CHUNK)
                    job.clip_div[t] = is_double ? clip_divisor_f64(job.tensor_sums[t], clipnorm)
                                                : clip_divisor_f32(job.tensor_sums[t], clipnorm);
        }
    }
    run_phase(&job, 1, threads);
    free(job.chunk_sums);
    free(job.tensor_sums);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_True);

done:
    if (held)
        for (Py_ssize_t t = 0; t < count; t++)
            for (int k = 0; k < 5; k++) release(&held[t], k);
    free(held);
    free(pointers);
    free(doubles);
    free(tasks);
    if (have_sizes) PyBuffer_Release(&sizes_view);
    if (have_shapes) PyBuffer_Release(&shapes_view);
    if (have_offsets) PyBuffer_Release(&offsets_view);
    PyBuffer_Release(&decay_view);
    return result;
}

/* accumulate(accumulators, grads, sizes, shapes, shape_offsets, is_double, threads) -> bool:
 * a gradient-accumulation micro-step, A = G + A, with the same checks as sgd_step. */
static PyObject *accumulate(PyObject *self, PyObject *args)
{
    PyObject *accumulators, *grads, *sizes_obj, *shapes_obj, *offsets_obj;
    int is_double, threads;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOOii", &accumulators, &grads, &sizes_obj, &shapes_obj, &offsets_obj, &is_double,
                          &threads))
        return NULL;
    if (!PyList_Check(accumulators) || !PyList_Check(grads) || PyList_GET_SIZE(accumulators) != PyList_GET_SIZE(grads)) {
        PyErr_SetString(PyExc_TypeError, "inertia kernels: accumulators and grads must be lists of one length");
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(grads);
    Py_buffer sizes_view, shapes_view, offsets_view;
    if (!as_int64_array(sizes_obj, &sizes_view, count)) return NULL;
    if (!as_int64_array(shapes_obj, &shapes_view, 0)) {
        PyBuffer_Release(&sizes_view);
        return NULL;
    }
    if (!as_int64_array(offsets_obj, &offsets_view, count)) {
        PyBuffer_Release(&sizes_view);
        PyBuffer_Release(&shapes_view);
        return NULL;
    }
    const int64_t *sizes = (const int64_t *)sizes_view.buf;
    const int64_t *shapes = (const int64_t *)shapes_view.buf;
    const int64_t *offsets = (const int64_t *)offsets_view.buf;
    char **pointers = calloc((size_t)(2 * count + 1), sizeof(char *));
    Held *held = calloc((size_t)(count + 1), sizeof(Held));
    PyObject *result = NULL;
    int fits = pointers && held;
    if (!fits) PyErr_NoMemory();
    for (Py_ssize_t t = 0; t < count && fits; t++) {
        fits = pointer_of(PyList_GET_ITEM(accumulators, t), is_double, sizes[t], NULL, 1, &pointers[t], &held[t], 0) &&
               pointer_of(PyList_GET_ITEM(grads, t), is_double, sizes[t], shapes + offsets[t], 0, &pointers[count + t],
                          &held[t], 1);
    }
    if (pointers && held) {
        Py_ssize_t n = 0;
        Task *tasks = fits ? make_tasks(sizes, count, &n) : NULL;
        if (fits && !tasks) {
            PyErr_NoMemory();
        } else {
            if (fits) {
                Job job = {0};
                job.is_double = is_double;
                job.count = count;
                job.a = pointers;
                job.g = pointers + count;
                job.sizes = sizes;
                job.tasks = tasks;
                job.ntasks = n;
                threads = useful_threads(threads, &job);
                Py_BEGIN_ALLOW_THREADS
                run_phase(&job, 2, threads);
                Py_END_ALLOW_THREADS
            }
            result = Py_NewRef(fits ? Py_True : Py_False);
        }
        free(tasks);
    }
    if (held)
        for (Py_ssize_t t = 0; t < count; t++)
            for (int k = 0; k < 2; k++) release(&held[t], k);
    free(held);
    free(pointers);
    PyBuffer_Release(&sizes_view);
    PyBuffer_Release(&shapes_view);
    PyBuffer_Release(&offsets_view);
    return result;
}

/* stream(a, b, c, threads): the machine's in-place streaming kernel with SGD's access pattern
 * (read a, b, c; write a, c: 20 bytes per float32 element), split in equal static parts, one
 * per thread. The benchmark takes its time as the bandwidth ceiling. */
typedef struct {
    float *A, *C;
    const float *B;
    int64_t lo, hi;
} Range;

static void *stream_range(void *arg)
{
    Range *r = arg;
    float *restrict A = r->A, *restrict C = r->C;
    const float *restrict B = r->B;
    for (int64_t i = r->lo; i < r->hi; i++) {
        float v = C[i] * 0.5f + B[i];
        C[i] = v;
        A[i] = A[i] + v;
    }
    return NULL;
}

static PyObject *stream(PyObject *self, PyObject *args)
{
    Py_buffer a, b, c;
    int threads;
    (void)self;
    if (!PyArg_ParseTuple(args, "w*y*w*i", &a, &b, &c, &threads)) return NULL;
    PyObject *result = NULL;
    if (a.len != b.len || a.len != c.len || a.len % 4) {
        PyErr_SetString(PyExc_ValueError, "stream: three float32 buffers of one length");
    } else {
        int64_t size = a.len / 4;
        int parts = threads < 1 ? 1 : (threads > MAX_THREADS ? MAX_THREADS : threads);
        Range ranges[MAX_THREADS];
        pthread_t ids[MAX_THREADS];
        for (int k = 0; k < parts; k++) {
            ranges[k].A = a.buf;
            ranges[k].B = b.buf;
            ranges[k].C = c.buf;
            ranges[k].lo = size * k / parts;
            ranges[k].hi = size * (k + 1) / parts;
        }
        Py_BEGIN_ALLOW_THREADS
        int started[MAX_THREADS] = {0};
        for (int k = 1; k < parts; k++) started[k] = pthread_create(&ids[k], NULL, stream_range, &ranges[k]) == 0;
        for (int k = 1; k < parts; k++)
            if (!started[k]) stream_range(&ranges[k]);
        stream_range(&ranges[0]);
        for (int k = 1; k < parts; k++)
            if (started[k]) pthread_join(ids[k], NULL);
        Py_END_ALLOW_THREADS
        result = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&a);
    PyBuffer_Release(&b);
    PyBuffer_Release(&c);
    return result;
}

static PyMethodDef methods[] = {
    {"sgd_step", sgd_step, METH_VARARGS, "The fused Keras SGD pipeline over a list of tensors."},
    {"accumulate", accumulate, METH_VARARGS, "A gradient-accumulation micro-step."},
    {"stream", stream, METH_VARARGS, "In-place streaming kernel with SGD's access pattern."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_inertia_kernels", NULL, -1, methods};

PyMODINIT_FUNC PyInit__inertia_kernels(void)
{
    import_array();
    return PyModule_Create(&module);
}
