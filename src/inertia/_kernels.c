/* inertia's fused CPU kernels as a Python extension, for NumPy arrays and CPU torch tensors.
 *
 * Built with the package (setup.py, flags from inertia/kernel_build.py) as inertia._kernels;
 * inertia/kernels.py loads it, after checking that it was built from these sources.
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
/* The lists a step takes: weights, gradients, velocities, averages, accumulators, and the
 * outputs of weights and velocities (the MLX face's new arrays). */
enum { STEP_DONE = 0, STEP_DECLINED = 1, STEP_MOVED = 2 };
enum { LIST_W = 0, LIST_G = 1, LIST_V = 2, LIST_E = 3, LIST_A = 4, LIST_W_OUT = 5, LIST_V_OUT = 6, LISTS = 7 };
typedef struct {
    Py_buffer views[LISTS];
    PyObject *arrays[LISTS];
    int held[LISTS];
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
        if ((uintptr_t)address % (uintptr_t)(is_double ? 8 : 4) != 0) return 0; /* misaligned: never dereferenced */
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

#define GROUP_FIELDS 11

/* The groups buffer (float64, GROUP_FIELDS per group) as Group structs; 0 with TypeError set
 * when a field is out of range. */
static int read_groups(const Py_buffer *view, Group **out, Py_ssize_t *count)
{
    if (view->len % (Py_ssize_t)(GROUP_FIELDS * sizeof(double)) != 0 || view->len == 0) {
        PyErr_SetString(PyExc_TypeError, "inertia kernels: groups must hold whole rows of 11 float64");
        return 0;
    }
    Py_ssize_t n = view->len / (Py_ssize_t)(GROUP_FIELDS * sizeof(double));
    Group *groups = calloc((size_t)n, sizeof(Group));
    if (!groups) {
        PyErr_NoMemory();
        return 0;
    }
    const double *row = (const double *)view->buf;
    for (Py_ssize_t k = 0; k < n; k++, row += GROUP_FIELDS) {
        Group *group = &groups[k];
        group->lr = row[0];
        group->momentum = row[1];
        group->wd = row[2];
        group->one_minus_dampening = row[3];
        group->clipnorm = row[4];
        group->clipvalue = row[5];
        group->form = (int)row[6];
        group->mode = (int)row[7];
        group->fused = (int)row[8];
        group->maximize = (int)row[9];
        group->clip = (int)row[10];
        if ((group->form != FORM_KERAS && group->form != FORM_HEAVY_BALL) || group->mode < MODE_NONE ||
            group->mode > MODE_NESTEROV || (group->fused != 0 && group->fused != 1) ||
            (group->maximize != 0 && group->maximize != 1) || group->clip < 0 || group->clip > 3) {
            free(groups);
            PyErr_SetString(PyExc_ValueError, "inertia kernels: a group's form, mode, fused, maximize or clip is out of range");
            return 0;
        }
    }
    *out = groups;
    *count = n;
    return 1;
}

static int by_address(const void *left, const void *right)
{
    int64_t a = *(const int64_t *)left, b = *(const int64_t *)right;
    return (a > b) - (a < b);
}

/* Whether [start, end) meets one of the sorted, disjoint intervals (start, end pairs). */
static int meets(const int64_t *intervals, Py_ssize_t pairs, int64_t start, int64_t end)
{
    Py_ssize_t lo = 0, hi = pairs; /* the first interval whose end is past `start` */
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        if (intervals[2 * mid + 1] <= start)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < pairs && intervals[2 * lo] < end;
}


/* The written memory must be where the caller's plan (its overlap check) saw it: `expected`
 * holds the addresses of the written lists (those of `written_lists` that are given, in order),
 * and no array of `read_lists` may meet the sorted (start, end) intervals of `written`. Returns
 * 1 when both hold, 2 when an address moved, 0 when an array meets the written memory, -1 with
 * an exception set on a malformed argument. */
static int memory_holds(char **pointers, Py_ssize_t count, const int64_t *sizes, int is_double, PyObject *const *lists,
                        const int *written_lists, int n_written, const int *read_lists, int n_read, PyObject *expected_obj,
                        PyObject *written_obj)
{
    int holds = 1, moved = 0;
    if (expected_obj != Py_None) {
        Py_ssize_t given = 0;
        for (int c = 0; c < n_written; c++) given += lists[written_lists[c]] != Py_None;
        Py_buffer view;
        if (!as_int64_array(expected_obj, &view, given * count)) return -1;
        const int64_t *expected = (const int64_t *)view.buf;
        Py_ssize_t position = 0;
        for (int c = 0; c < n_written && holds; c++) {
            int k = written_lists[c];
            if (lists[k] == Py_None) continue;
            for (Py_ssize_t t = 0; t < count && holds; t++)
                holds = sizes[t] == 0 || (int64_t)(intptr_t)pointers[k * count + t] == expected[position + t];
            position += count;
        }
        PyBuffer_Release(&view);
        moved = !holds;
    }
    if (holds && written_obj != Py_None) {
        Py_buffer view;
        if (!as_int64_array(written_obj, &view, 0)) return -1;
        Py_ssize_t pairs = view.len / 16;
        const int64_t *intervals = (const int64_t *)view.buf;
        int64_t itemsize = is_double ? 8 : 4;
        for (int c = 0; c < n_read && holds; c++) {
            int k = read_lists[c];
            if (lists[k] == Py_None) continue;
            for (Py_ssize_t t = 0; t < count && holds; t++) {
                int64_t start = (int64_t)(intptr_t)pointers[k * count + t];
                holds = sizes[t] == 0 || !meets(intervals, pairs, start, start + sizes[t] * itemsize);
            }
        }
        PyBuffer_Release(&view);
    }
    return moved ? 2 : holds;
}

/* step(lists, sizes, shapes, shape_offsets, flags, groups, group_of, expected, written,
 *      is_double, global_clip, threads, unscale, steps, ema_momentum, global_clipnorm) -> int
 *
 * One SGD step over `count` tensors (see _sgd_core.h for the pipeline).
 *   lists: a tuple of LISTS entries (weights, gradients, velocities, averages, accumulators,
 *     weights_out, velocities_out), each a list of `count` arrays or int addresses, or None
 *     (weights and gradients are required; velocities when a group has momentum).
 *   sizes: int64 elements per tensor; shapes / shape_offsets: int64 (ndim, dims...) per tensor,
 *     checked against every array of every list (addresses are checked by the caller).
 *   flags: one byte per tensor (FLAG_*); groups: float64, GROUP_FIELDS per group; group_of:
 *     int64 per tensor, or None (every tensor in group 0).
 *   expected: None, or int64 addresses the written lists (weights, velocities, averages,
 *     accumulators: those given, in that order) must have now; written: None, or the sorted
 *     (start, end) byte intervals of that memory, which no gradient or output may meet.
 * Every index, pointer, size and shape is checked before anything is written. Returns STEP_DONE
 * after the update; STEP_DECLINED (touching nothing) when an array does not fit or a gradient
 * meets the written memory, STEP_MOVED when a written array is not where `expected` says. */
static PyObject *step(PyObject *self, PyObject *args)
{
    PyObject *lists_obj, *sizes_obj, *shapes_obj, *offsets_obj, *group_of_obj, *expected_obj, *written_obj;
    Py_buffer flags_view, groups_view;
    int is_double, global_clip, threads;
    double unscale, steps, ema_momentum, global_clipnorm;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!OOOy*y*OOOiiidddd", &PyTuple_Type, &lists_obj, &sizes_obj, &shapes_obj,
                          &offsets_obj, &flags_view, &groups_view, &group_of_obj, &expected_obj, &written_obj,
                          &is_double, &global_clip, &threads, &unscale, &steps, &ema_momentum, &global_clipnorm))
        return NULL;
    PyObject *result = NULL;
    PyObject *lists[LISTS];
    Py_buffer sizes_view, shapes_view, offsets_view, group_of_view;
    int have_sizes = 0, have_shapes = 0, have_offsets = 0, have_group_of = 0;
    char **pointers = NULL;
    Held *held = NULL;
    Group *groups = NULL;
    int64_t *moving = NULL;
    Py_ssize_t group_count = 0, count = -1;
    if (PyTuple_GET_SIZE(lists_obj) != LISTS) {
        PyErr_SetString(PyExc_TypeError, "inertia kernels: lists must be a tuple of 7 entries");
        goto done;
    }
    for (int k = 0; k < LISTS; k++) lists[k] = PyTuple_GET_ITEM(lists_obj, k);
    count = PyList_Check(lists[LIST_W]) ? PyList_GET_SIZE(lists[LIST_W]) : -1;
    if (count < 0 || lists[LIST_G] == Py_None) {
        PyErr_SetString(PyExc_TypeError, "inertia kernels: weights and gradients must be lists");
        goto done;
    }
    for (int k = 1; k < LISTS; k++)
        if (lists[k] != Py_None && !(PyList_Check(lists[k]) && PyList_GET_SIZE(lists[k]) == count)) {
            PyErr_SetString(PyExc_TypeError, "inertia kernels: every list must match the weights");
            goto done;
        }
    if (global_clip < GLOBAL_NONE || global_clip > GLOBAL_RECIPROCAL_IN_DTYPE || (is_double != 0 && is_double != 1)) {
        PyErr_SetString(PyExc_ValueError, "inertia kernels: global_clip or is_double out of range");
        goto done;
    }
    if (!(have_sizes = as_int64_array(sizes_obj, &sizes_view, count))) goto done;
    if (!(have_shapes = as_int64_array(shapes_obj, &shapes_view, 0))) goto done;
    if (!(have_offsets = as_int64_array(offsets_obj, &offsets_view, count))) goto done;
    if (group_of_obj != Py_None && !(have_group_of = as_int64_array(group_of_obj, &group_of_view, count))) goto done;
    if (flags_view.len < count) {
        PyErr_SetString(PyExc_TypeError, "inertia kernels: flags are too short");
        goto done;
    }
    if (!read_groups(&groups_view, &groups, &group_count)) goto done;
    const int64_t *sizes = (const int64_t *)sizes_view.buf;
    const int64_t *shapes = (const int64_t *)shapes_view.buf;
    const int64_t *offsets = (const int64_t *)offsets_view.buf;
    const int64_t *group_of = have_group_of ? (const int64_t *)group_of_view.buf : NULL;
    Py_ssize_t shape_length = shapes_view.len / 8;
    int any_momentum = 0;
    for (Py_ssize_t t = 0; t < count; t++) {
        int64_t offset = offsets[t];
        if (sizes[t] < 0 || offset < 0 || offset >= shape_length || shapes[offset] < 0 ||
            shapes[offset] > shape_length - offset - 1 || (group_of && (group_of[t] < 0 || group_of[t] >= group_count))) {
            PyErr_SetString(PyExc_ValueError, "inertia kernels: a size, shape offset or group index is out of range");
            goto done;
        }
        any_momentum |= groups[group_of ? group_of[t] : 0].mode != MODE_NONE;
    }
    if (any_momentum && lists[LIST_V] == Py_None) {
        PyErr_SetString(PyExc_TypeError, "inertia kernels: a group with momentum needs velocities");
        goto done;
    }
    if (lists[LIST_W_OUT] != Py_None || lists[LIST_V_OUT] != Py_None) {
        /* outputs of their own (the MLX face): weights and (with momentum) velocities both, in
         * the heavy-ball form rounded twice, without EMA or accumulation: the only loops made */
        int fits_outputs = lists[LIST_W_OUT] != Py_None && (lists[LIST_V_OUT] != Py_None) == (lists[LIST_V] != Py_None) &&
                           lists[LIST_E] == Py_None && lists[LIST_A] == Py_None;
        for (Py_ssize_t k = 0; k < group_count && fits_outputs; k++)
            fits_outputs = groups[k].form == FORM_HEAVY_BALL && !groups[k].fused;
        if (!fits_outputs) {
            PyErr_SetString(PyExc_TypeError, "inertia kernels: outputs need weights_out (and velocities_out with "
                                             "velocities), heavy-ball groups rounded twice, and no averages or accumulators");
            goto done;
        }
    }
    for (Py_ssize_t t = 0; t < count; t++) {
        const Group *group = &groups[group_of ? group_of[t] : 0];
        if ((((const unsigned char *)flags_view.buf)[t] & FLAG_FRESH_BUFFER) && !(group->form == FORM_HEAVY_BALL && group->fused)) {
            /* a fresh buffer takes the gradient in the torch face's form only */
            PyErr_SetString(PyExc_TypeError, "inertia kernels: a fresh buffer needs a fused heavy-ball group");
            goto done;
        }
    }

    pointers = calloc((size_t)(LISTS * count + 1), sizeof(char *));
    held = calloc((size_t)(count + 1), sizeof(Held));
    if (!pointers || !held) {
        PyErr_NoMemory();
        goto done;
    }
    int fits = 1;
    for (Py_ssize_t t = 0; t < count && fits; t++) {
        for (int k = 0; k < LISTS && fits; k++) {
            if (lists[k] == Py_None) continue;
            PyObject *item = PyList_GET_ITEM(lists[k], t);
            const int64_t *shape = shapes + offsets[t]; /* every array: a NumPy one reshaped in place declines */
            /* weights and velocities are only read when they have outputs of their own */
            int written = k != LIST_G && !(k == LIST_W && lists[LIST_W_OUT] != Py_None) &&
                          !(k == LIST_V && lists[LIST_V_OUT] != Py_None);
            fits = pointer_of(item, is_double, sizes[t], shape, written, &pointers[k * count + t], &held[t], k);
        }
    }
    if (fits) {
        static const int written_lists[4] = {LIST_W, LIST_V, LIST_E, LIST_A}, read_lists[3] = {LIST_G, LIST_W_OUT, LIST_V_OUT};
        fits = memory_holds(pointers, count, sizes, is_double, lists, written_lists, 4, read_lists, 3, expected_obj,
                            written_obj);
        if (fits < 0) goto done;
        if (fits == 2) {
            result = PyLong_FromLong(STEP_MOVED);
            goto done;
        }
    }
    /* Outputs are new memory: they may not meet each other either. */
    if (fits && lists[LIST_W_OUT] != Py_None) {
        Py_ssize_t n = 0;
        moving = malloc(sizeof(int64_t) * (size_t)(4 * count + 2));
        if (!moving) {
            PyErr_NoMemory();
            goto done;
        }
        int64_t itemsize = is_double ? 8 : 4;
        for (int k = LIST_W_OUT; k <= LIST_V_OUT; k++) {
            if (lists[k] == Py_None) continue;
            for (Py_ssize_t t = 0; t < count; t++) {
                if (sizes[t] == 0) continue;
                moving[2 * n] = (int64_t)(intptr_t)pointers[k * count + t];
                moving[2 * n + 1] = moving[2 * n] + sizes[t] * itemsize;
                n++;
            }
        }
        qsort(moving, (size_t)n, 2 * sizeof(int64_t), by_address);
        for (Py_ssize_t j = 1; j < n && fits; j++) fits = moving[2 * j] >= moving[2 * j - 1];
    }
    if (!fits) {
        result = PyLong_FromLong(STEP_DECLINED);
        goto done;
    }
    Job job;
    memset(&job, 0, sizeof job);
    job.is_double = is_double;
    job.ema = lists[LIST_E] != Py_None;
    job.acc = lists[LIST_A] != Py_None;
    job.global_clip = global_clip;
    job.global_clipnorm = global_clipnorm;
    job.count = count;
    job.w = pointers + LIST_W * count;
    job.g = pointers + LIST_G * count;
    job.v = pointers + LIST_V * count;
    job.e = pointers + LIST_E * count;
    job.a = pointers + LIST_A * count;
    job.w_out = lists[LIST_W_OUT] != Py_None ? pointers + LIST_W_OUT * count : NULL;
    job.v_out = lists[LIST_V_OUT] != Py_None ? pointers + LIST_V_OUT * count : NULL;
    job.sizes = sizes;
    job.flags = (const unsigned char *)flags_view.buf;
    job.groups = groups;
    job.group_of = group_of;
    job.unscale = unscale;
    job.steps = steps;
    job.ema_momentum = ema_momentum;
    job.phase_after_sums = 1;
    if (run_released(&job, threads) != 0) goto done;
    result = PyLong_FromLong(STEP_DONE);

done:
    if (held)
        for (Py_ssize_t t = 0; t < count; t++)
            for (int k = 0; k < LISTS; k++) release(&held[t], k);
    free(held);
    free(pointers);
    free(groups);
    free(moving);
    if (have_sizes) PyBuffer_Release(&sizes_view);
    if (have_shapes) PyBuffer_Release(&shapes_view);
    if (have_offsets) PyBuffer_Release(&offsets_view);
    if (have_group_of) PyBuffer_Release(&group_of_view);
    PyBuffer_Release(&flags_view);
    PyBuffer_Release(&groups_view);
    return result;
}

/* accumulate(accumulators, grads, sizes, shapes, shape_offsets, expected, written, is_double, threads) -> int:
 * a gradient-accumulation micro-step, A = G + A, with the same checks as step. */
static PyObject *accumulate(PyObject *self, PyObject *args)
{
    PyObject *accumulators, *grads, *sizes_obj, *shapes_obj, *offsets_obj, *expected_obj, *written_obj;
    int is_double, threads;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOOOOii", &accumulators, &grads, &sizes_obj, &shapes_obj, &offsets_obj,
                          &expected_obj, &written_obj, &is_double, &threads))
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
    Py_ssize_t shape_length = shapes_view.len / 8;
    for (Py_ssize_t t = 0; t < count; t++)
        if (sizes[t] < 0 || offsets[t] < 0 || offsets[t] >= shape_length || shapes[offsets[t]] < 0 ||
            shapes[offsets[t]] > shape_length - offsets[t] - 1) {
            PyErr_SetString(PyExc_ValueError, "inertia kernels: a size or shape offset is out of range");
            PyBuffer_Release(&sizes_view);
            PyBuffer_Release(&shapes_view);
            PyBuffer_Release(&offsets_view);
            return NULL;
        }
    char **pointers = calloc((size_t)(2 * count + 1), sizeof(char *));
    Held *held = calloc((size_t)(count + 1), sizeof(Held));
    PyObject *result = NULL;
    int pointers_failed = 0;
    int fits = pointers && held;
    if (!fits) PyErr_NoMemory();
    for (Py_ssize_t t = 0; t < count && fits; t++) {
        fits = pointer_of(PyList_GET_ITEM(accumulators, t), is_double, sizes[t], shapes + offsets[t], 1, &pointers[t], &held[t], 0) &&
               pointer_of(PyList_GET_ITEM(grads, t), is_double, sizes[t], shapes + offsets[t], 0, &pointers[count + t],
                          &held[t], 1);
    }
    if (fits) {
        PyObject *lists[2] = {accumulators, grads};
        static const int written_lists[1] = {0}, read_lists[1] = {1};
        fits = memory_holds(pointers, count, sizes, is_double, lists, written_lists, 1, read_lists, 1, expected_obj,
                            written_obj);
        if (fits < 0) pointers_failed = 1;
    }
    if (fits == 2) {
        result = PyLong_FromLong(STEP_MOVED);
    } else if (fits > 0) {
        Job job = {0};
        job.is_double = is_double;
        job.count = count;
        job.a = pointers;
        job.g = pointers + count;
        job.sizes = sizes;
        job.phase_after_sums = 2;
        if (run_released(&job, threads) == 0) result = PyLong_FromLong(STEP_DONE);
    } else if (pointers && held && !pointers_failed) {
        result = PyLong_FromLong(STEP_DECLINED);
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
    {"step", step, METH_VARARGS, "One SGD step over a list of tensors (every face's rule and pipeline)."},
    {"accumulate", accumulate, METH_VARARGS, "A gradient-accumulation micro-step."},
    {"stream", stream, METH_VARARGS, "In-place streaming kernel with SGD's access pattern."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "inertia._kernels", NULL, -1, methods};

#ifndef INERTIA_SOURCE_DIGEST
#define INERTIA_SOURCE_DIGEST "" /* setup.py defines it: kernel_build.source_digest("_kernels.c") */
#endif

PyMODINIT_FUNC PyInit__kernels(void)
{
    import_array();
    PyObject *created = PyModule_Create(&module);
    if (created && PyModule_AddStringConstant(created, "source_digest", INERTIA_SOURCE_DIGEST) < 0) {
        Py_DECREF(created);
        return NULL;
    }
    return created;
}
