"""TF fast-path spike, part 1.2: do TF's own fused in-place ops (and the other TF routes)
give NumPy's bits for v = m*v - lr*g; w = w + v (Nesterov: w = w + (m*v_new - lr*g)),
hyperparameters cast to the variable's dtype and every operation rounded to it?
Run: PYTHONPATH=src python benchmarks/tf_spike/bits.py"""
import os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import tensorflow as tf

LR, M, STEPS, N = 0.01, 0.9, 5, 100_003  # odd size: vector bodies and tails


def numpy_steps(w, g, dtype, nesterov):
    w, v, lr, m = w.copy(), np.zeros_like(w), dtype.type(LR) if hasattr(dtype, "type") else np.dtype(dtype).type(LR), np.dtype(dtype).type(M)
    lr, m = np.dtype(dtype).type(LR), np.dtype(dtype).type(M)
    for _ in range(STEPS):
        v = m * v - lr * g
        w = w + (m * v - lr * g if nesterov else v)
    return w, v


def keras_momentum_op(w, g, tfdtype, nesterov, in_function):
    var, acc = tf.Variable(w), tf.Variable(tf.zeros_like(w))
    gt = tf.constant(g)
    lr, m = tf.constant(LR, tfdtype), tf.constant(M, tfdtype)
    def step():
        tf.raw_ops.ResourceApplyKerasMomentum(var=var.handle, accum=acc.handle, lr=lr, grad=gt, momentum=m,
                                              use_nesterov=nesterov)
    if in_function:
        step = tf.function(step)
    for _ in range(STEPS):
        step()
    return var.numpy(), acc.numpy()


def plain_ops(w, g, tfdtype, nesterov, jit):
    var, acc = tf.Variable(w), tf.Variable(tf.zeros_like(w))
    gt = tf.constant(g)
    lr, m = tf.constant(LR, tfdtype), tf.constant(M, tfdtype)
    @tf.function(jit_compile=jit)
    def step():
        acc.assign(m * acc - lr * gt)
        var.assign_add(m * acc - lr * gt if nesterov else acc)
    for _ in range(STEPS):
        step()
    return var.numpy(), acc.numpy()


def tf_keras_sgd(w, g, tfdtype, nesterov, jit, legacy=False):
    import tf_keras
    var = tf.Variable(w)
    gt = tf.constant(g)
    if legacy:
        opt = tf_keras.optimizers.legacy.SGD(LR, momentum=M, nesterov=nesterov)
    else:
        opt = tf_keras.optimizers.SGD(LR, momentum=M, nesterov=nesterov, jit_compile=jit)
    for _ in range(STEPS):
        opt.apply_gradients([(gt, var)])
    return var.numpy(), None


def compare(label, got, want):
    w, v = got
    same_w = np.array_equal(w.view(np.uint8), want[0].view(np.uint8))
    same_v = v is None or np.array_equal(v.view(np.uint8), want[1].view(np.uint8))
    diff = int(np.sum(w != want[0]))
    return f"{label}: {'bit-identical' if same_w and same_v else f'DIFFERS ({diff} of {w.size} weights)'}"


rng = np.random.default_rng(0)
for tfdtype in (tf.float32, tf.float64, tf.float16, tf.bfloat16):
    dtype = np.dtype(tfdtype.as_numpy_dtype)
    w = rng.standard_normal(N).astype(dtype)
    g = (rng.standard_normal(N) * 1e-1).astype(dtype)
    for nesterov in (False, True):
        want = numpy_steps(w, g, dtype, nesterov)
        rows = [
            compare("ResourceApplyKerasMomentum eager", keras_momentum_op(w, g, tfdtype, nesterov, False), want),
            compare("ResourceApplyKerasMomentum in tf.function", keras_momentum_op(w, g, tfdtype, nesterov, True), want),
            compare("tf.function of plain ops", plain_ops(w, g, tfdtype, nesterov, False), want),
            compare("tf.function(jit_compile=True) of plain ops", plain_ops(w, g, tfdtype, nesterov, True), want),
            compare("tf_keras SGD jit_compile=False", tf_keras_sgd(w, g, tfdtype, nesterov, False), want),
            compare("tf_keras SGD jit_compile=True", tf_keras_sgd(w, g, tfdtype, nesterov, True), want),
            compare("tf_keras legacy SGD", tf_keras_sgd(w, g, tfdtype, nesterov, False, legacy=True), want),
        ]
        print(f"{tfdtype.name} {'nesterov' if nesterov else 'plain'}:\n  " + "\n  ".join(rows))
