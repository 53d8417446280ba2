/* inertia's fused SGD step as an XLA FFI handler: JAX on the CPU runs the same kernel as the
 * NumPy backend (_sgd_core.h) inside its jitted step, as one custom call over every tensor.
 *
 * Built on first use by inertia/kernels.py against the FFI headers that ship with jaxlib (the
 * plain C API, xla/ffi/api/c_api.h) and cached on disk; inertia/xla_fused.py registers it with
 * jax.ffi and emits the call.
 *
 * Operands: scalars (lr and the EMA momentum of this step, in the tensors' dtype), then the
 * weights, the gradients, the momentum slots (when momentum is on) and the EMAs (when on),
 * `count` of each. Results: the new weights, slots and EMAs, aliased to their operands, so with
 * donated buffers the update is in place; then a workspace of bytes (workspace_bytes in
 * xla_fused.py), so that the handler allocates nothing and cannot fail once its checks pass. Attributes (compile-time): count, mode, clip,
 * threads, decay (one byte per tensor), momentum, wd, clipnorm, clipvalue, unscale.
 */
#include <string.h>

#include "_sgd_core.h"
#include "xla/ffi/api/c_api.h"

static XLA_FFI_Error *failure(const XLA_FFI_Api *api, const char *message)
{
    XLA_FFI_Error_Create_Args args;
    memset(&args, 0, sizeof args);
    args.struct_size = XLA_FFI_Error_Create_Args_STRUCT_SIZE;
    args.message = message;
    args.errc = XLA_FFI_Error_Code_INVALID_ARGUMENT;
    return api->XLA_FFI_Error_Create(&args);
}

/* The attribute called `name`, or NULL. */
static void *attribute(const XLA_FFI_Attrs *attrs, const char *name, XLA_FFI_AttrType type)
{
    size_t length = strlen(name);
    for (int64_t k = 0; k < attrs->size; k++) {
        const XLA_FFI_ByteSpan *key = attrs->names[k];
        if (key->len == length && memcmp(key->ptr, name, length) == 0)
            return attrs->types[k] == type ? attrs->attrs[k] : NULL;
    }
    return NULL;
}

static int scalar_i64(const XLA_FFI_Attrs *attrs, const char *name, int64_t *out)
{
    XLA_FFI_Scalar *scalar = attribute(attrs, name, XLA_FFI_AttrType_SCALAR);
    if (!scalar || scalar->dtype != XLA_FFI_DataType_S64) return 0;
    *out = *(const int64_t *)scalar->value;
    return 1;
}

static int scalar_f64(const XLA_FFI_Attrs *attrs, const char *name, double *out)
{
    XLA_FFI_Scalar *scalar = attribute(attrs, name, XLA_FFI_AttrType_SCALAR);
    if (!scalar || scalar->dtype != XLA_FFI_DataType_F64) return 0;
    *out = *(const double *)scalar->value;
    return 1;
}

static int64_t elements(const XLA_FFI_Buffer *buffer)
{
    int64_t size = 1;
    for (int64_t d = 0; d < buffer->rank; d++) size *= buffer->dims[d];
    return size;
}

/* The version handshake XLA makes before using a handler. */
static XLA_FFI_Error *describe(XLA_FFI_Metadata_Extension *extension)
{
    XLA_FFI_Metadata *metadata = extension->metadata;
    metadata->api_version.struct_size = XLA_FFI_Api_Version_STRUCT_SIZE;
    metadata->api_version.extension_start = NULL;
    metadata->api_version.major_version = XLA_FFI_API_MAJOR;
    metadata->api_version.minor_version = XLA_FFI_API_MINOR;
    metadata->traits = 0;
    return NULL;
}

XLA_FFI_Error *inertia_sgd_step(XLA_FFI_CallFrame *frame)
{
    if (frame->extension_start != NULL && frame->extension_start->type == XLA_FFI_Extension_Metadata)
        return describe((XLA_FFI_Metadata_Extension *)frame->extension_start);
    const XLA_FFI_Api *api = frame->api;
    if (frame->stage != XLA_FFI_ExecutionStage_EXECUTE) return NULL;

    const XLA_FFI_Attrs *attrs = &frame->attrs;
    int64_t count, mode, clip, threads, ema;
    double momentum, wd, clipnorm, clipvalue, unscale;
    XLA_FFI_Array *decay = attribute(attrs, "decay", XLA_FFI_AttrType_ARRAY);
    if (!scalar_i64(attrs, "count", &count) || !scalar_i64(attrs, "mode", &mode) || !scalar_i64(attrs, "clip", &clip) ||
        !scalar_i64(attrs, "threads", &threads) || !scalar_i64(attrs, "ema", &ema) || !scalar_f64(attrs, "momentum", &momentum) ||
        !scalar_f64(attrs, "wd", &wd) || !scalar_f64(attrs, "clipnorm", &clipnorm) ||
        !scalar_f64(attrs, "clipvalue", &clipvalue) || !scalar_f64(attrs, "unscale", &unscale) || !decay ||
        decay->dtype != XLA_FFI_DataType_U8 || (int64_t)decay->size != count || count < 1)
        return failure(api, "inertia_sgd_step: missing or mistyped attributes");
    int64_t lists = 2 + (mode != MODE_NONE) + (ema != 0); /* operand lists after the scalars */
    /* results: the updated lists, then the workspace (bytes XLA allocates before the step) */
    if (frame->args.size != 1 + lists * count || frame->rets.size != (lists - 1) * count + 1)
        return failure(api, "inertia_sgd_step: wrong number of operands or results");
    for (int64_t k = 0; k < frame->args.size; k++)
        if (frame->args.types[k] != XLA_FFI_ArgType_BUFFER) return failure(api, "inertia_sgd_step: operands must be buffers");
    for (int64_t k = 0; k < frame->rets.size; k++)
        if (frame->rets.types[k] != XLA_FFI_RetType_BUFFER) return failure(api, "inertia_sgd_step: results must be buffers");

    XLA_FFI_Buffer *const *args = (XLA_FFI_Buffer *const *)frame->args.args;
    XLA_FFI_Buffer *const *rets = (XLA_FFI_Buffer *const *)frame->rets.rets;
    XLA_FFI_DataType dtype = args[0]->dtype;
    if ((dtype != XLA_FFI_DataType_F32 && dtype != XLA_FFI_DataType_F64) || elements(args[0]) != 2)
        return failure(api, "inertia_sgd_step: scalars must be two floats of the tensors' dtype");
    size_t itemsize = dtype == XLA_FFI_DataType_F64 ? 8 : 4;

    /* Nothing is allocated here: every scratch array lives in the workspace, so once its
     * checks pass a call cannot fail, and a step of several calls is whole or not at all. */
    const XLA_FFI_Buffer *workspace = rets[frame->rets.size - 1];
    if (workspace->dtype != XLA_FFI_DataType_U8)
        return failure(api, "inertia_sgd_step: the workspace must be bytes");
    char *scratch = (char *)workspace->data;
    size_t scratch_size = (size_t)elements(workspace);
    if (scratch_size < (size_t)count * (sizeof(int64_t) + 5 * sizeof(char *)))
        return failure(api, "inertia_sgd_step: the workspace is too small");
    int64_t *sizes = (int64_t *)scratch;
    char **pointers = (char **)(scratch + (size_t)count * sizeof(int64_t));
    memset(pointers, 0, (size_t)(5 * count) * sizeof(char *));
    char *arena = scratch + (size_t)count * (sizeof(int64_t) + 5 * sizeof(char *));
    /* Every operand is checked before anything is written. */
    const char *problem = NULL;
    for (int64_t t = 0; t < count && !problem; t++) {
        sizes[t] = elements(args[1 + t]);
        for (int64_t list = 0; list < lists && !problem; list++) {
            const XLA_FFI_Buffer *operand = args[1 + list * count + t];
            if (operand->dtype != dtype || elements(operand) != sizes[t]) problem = "inertia_sgd_step: operands differ in dtype or size";
        }
        for (int64_t list = 0; list + 1 < lists && !problem; list++) {
            const XLA_FFI_Buffer *result = rets[list * count + t];
            if (result->dtype != dtype || elements(result) != sizes[t]) problem = "inertia_sgd_step: results differ in dtype or size";
        }
    }
    if (!problem && (size_t)(arena - scratch) + arena_bytes(sizes, count) > scratch_size)
        problem = "inertia_sgd_step: the workspace is too small";
    if (problem) return failure(api, problem);
    /* Weights, slots and EMAs are updated in their result buffers: the same memory as the
     * operands when XLA honours the aliasing (donated buffers); a copy of them otherwise. */
    int64_t slots[3] = {0, mode != MODE_NONE ? 2 : -1, ema ? 3 : -1}; /* pointer list of each result list */
    int64_t operand_lists[3] = {0, 2, mode != MODE_NONE ? 3 : 2};     /* operand list of each result list */
    int64_t result_list = 0;
    for (int k = 0; k < 3; k++) {
        if (slots[k] < 0) continue;
        for (int64_t t = 0; t < count; t++) {
            const XLA_FFI_Buffer *operand = args[1 + operand_lists[k] * count + t];
            XLA_FFI_Buffer *result = rets[result_list * count + t];
            if (result->data != operand->data && sizes[t] > 0) memcpy(result->data, operand->data, (size_t)sizes[t] * itemsize);
            pointers[slots[k] * count + t] = result->data;
        }
        result_list++;
    }
    for (int64_t t = 0; t < count; t++) pointers[count + t] = args[1 + count + t]->data;

    double lr, ema_momentum;
    if (dtype == XLA_FFI_DataType_F64) {
        lr = ((const double *)args[0]->data)[0];
        ema_momentum = ((const double *)args[0]->data)[1];
    } else {
        lr = ((const float *)args[0]->data)[0];
        ema_momentum = ((const float *)args[0]->data)[1];
    }
    Hyper hyper = {lr, momentum, wd, ema_momentum, unscale, 1.0, clipnorm, clipvalue};
    Job job = update_job(pointers, count, sizes, (const unsigned char *)decay->data, dtype == XLA_FFI_DataType_F64,
                         (int)mode, (int)clip, ema != 0, 0, hyper);
    job.arena = arena;
    int status = run_job(&job, (int)threads); /* with an arena: allocates nothing, always 0 */
    return status == 0 ? NULL : failure(api, "inertia_sgd_step: out of memory");
}
