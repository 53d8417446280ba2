"""TF fast-path spike, part 1.1 / 1.3: what each step of a route costs per tensor, on W3's
2000 tensors of 4096 float32 (Python and TF dispatch, not memory: 16 KiB each).
Run: PYTHONPATH=src python benchmarks/tf_spike/per_tensor.py"""
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import tensorflow as tf
import torch

N, SIZE = 2000, 4096
rng = np.random.default_rng(0)
variables = [tf.Variable(rng.standard_normal(SIZE, dtype=np.float32)) for _ in range(N)]
velocities = [tf.Variable(np.zeros(SIZE, np.float32)) for _ in range(N)]
grads = [tf.constant(rng.standard_normal(SIZE, dtype=np.float32)) for _ in range(N)]
values = [v.value() for v in variables]
arrays = [np.from_dlpack(t) for t in values]
empties = [np.empty(SIZE, np.float32) for _ in range(N)]
lr, m = tf.constant(0.01), tf.constant(0.9)


def cost(label, fn, repeat=5):
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    print(f"| {label} | {statistics.median(times) / N * 1e6:.1f} |")


print(f"load {open('/proc/loadavg').read().split()[0]}")
print("| per tensor (2000 of 4096 float32) | us |")
print("|---|---:|")
cost("var.value()", lambda: [v.value() for v in variables])
cost("var.handle (attribute)", lambda: [v.handle for v in variables])
cost("np.from_dlpack(tensor) (read-only view)", lambda: [np.from_dlpack(t) for t in values])
cost("tf.experimental.dlpack.to_dlpack(tensor)", lambda: [tf.experimental.dlpack.to_dlpack(t) for t in values])
cost("to_dlpack -> torch.from_dlpack -> .numpy() (writable view)",
     lambda: [torch.from_dlpack(tf.experimental.dlpack.to_dlpack(t)).numpy() for t in values])
cost("var.numpy() (a copy)", lambda: [v.numpy() for v in variables])
cost("tf.raw_ops.Empty", lambda: [tf.raw_ops.Empty(shape=(SIZE,), dtype=tf.float32) for _ in range(N)])
cost("var.assign(tensor) (adopts the buffer)", lambda: [v.assign(t) for v, t in zip(velocities, grads)])
cost("var.assign(ndarray) (converts: a copy)", lambda: [v.assign(a) for v, a in zip(velocities, empties)])
cost("ResourceApplyKerasMomentum, eager", lambda: [tf.raw_ops.ResourceApplyKerasMomentum(
    var=w.handle, accum=v.handle, lr=lr, grad=g, momentum=m) for w, v, g in zip(variables, velocities, grads)])
cost("tf.add of two 4096 tensors, eager", lambda: [tf.add(g, g) for g in grads])
