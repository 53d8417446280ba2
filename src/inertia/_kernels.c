/* inertia's fused CPU kernels as a Python extension, for NumPy arrays and CPU torch tensors.
 *
 * Built on first use by inertia/kernels.py with the system C compiler and cached on disk.
 * One call updates a list of tensors: every pointer, length and shape is checked first, so a
 * call either updates everything or nothing (it then answers "not applicable" and the caller
 * runs the reference path, which raises the proper error). The pipeline itself, per element
 * and in the reference path's order of operations, is in _sgd_core.h.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>
#include <string.h>

#include "_sgd_core.h"

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

/* run_job without the GIL; -1 with MemoryError set when it fails. */
static int run_released(Job *job, int threads)
{
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = run_job(job, threads);
    Py_END_ALLOW_THREADS
    if (status != 0) PyErr_NoMemory();
    return status;
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
    if (!pointers || !held) {
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
    Hyper hyper = {lr, momentum, wd, ema_momentum, unscale, steps, clipnorm, clipvalue};
    Job job = update_job(pointers, count, sizes, (const unsigned char *)decay_view.buf, is_double, mode, clip,
                         lists[3] != Py_None, lists[4] != Py_None, hyper);
    if (run_released(&job, threads) != 0) goto done;
    result = Py_NewRef(Py_True);

done:
    if (held)
        for (Py_ssize_t t = 0; t < count; t++)
            for (int k = 0; k < 5; k++) release(&held[t], k);
    free(held);
    free(pointers);
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
    if (fits) {
        Job job = {0};
        job.is_double = is_double;
        job.count = count;
        job.a = pointers;
        job.g = pointers + count;
        job.sizes = sizes;
        job.phase_after_sums = 2;
        if (run_released(&job, threads) == 0) result = Py_NewRef(Py_True);
    } else if (pointers && held) {
        result = Py_NewRef(Py_False);
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
