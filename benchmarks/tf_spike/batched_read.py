"""TF fast-path spike, part 1.1: reading 2000 variables' buffers at once, through one
tf.function that returns every variable's value: cost, and whether the values share the
variables' buffers (zero copy). Run: PYTHONPATH=src python benchmarks/tf_spike/batched_read.py"""
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import tensorflow as tf

N, SIZE = 2000, 4096
variables = [tf.Variable(np.full(SIZE, i, np.float32)) for i in range(N)]


@tf.function
def read_all():
    return [v.read_value() for v in variables]


def median_time(fn, repeat=7):
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


eager = median_time(lambda: [v.value() for v in variables])
batched = median_time(read_all)
values = read_all()
shared = sum(np.from_dlpack(t).ctypes.data == np.from_dlpack(v.value()).ctypes.data for t, v in zip(values, variables))
print(f"load {open('/proc/loadavg').read().split()[0]}: eager var.value() {eager / N * 1e6:.1f} us a variable; "
      f"one tf.function returning all {batched / N * 1e6:.1f} us a variable; {shared} of {N} share the variable's buffer")
