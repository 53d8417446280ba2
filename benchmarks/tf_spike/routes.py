"""TF fast-path spike, part 1.3: the routes a momentum step on CPU tf.Variables can take,
timed side by side (interleaved rounds, medians) beside inertia bench's bandwidth probe.

    PYTHONPATH=src python benchmarks/tf_spike/routes.py W3 --scale 0.25 [--nesterov] [--routes a,b] [--rounds 3]
    PYTHONPATH=src python benchmarks/tf_spike/routes.py --check     # each route's bits against NumPy's

Routes (float32, lr 0.01, momentum 0.9; state and weights are tf.Variables, gradients tf.Tensors):
  keras-jit / keras-nojit          tf_keras.optimizers.SGD eager apply_gradients, jit_compile True / False
  keras-jit-fn / keras-nojit-fn    the same inside one tf.function
  legacy / legacy-fn               tf_keras.optimizers.legacy.SGD, eager / inside one tf.function
  kernel-assign-np                 w, v copied through DLPack (read-only views) into NumPy buffers kept across
                                   steps, the host kernel steps those in place (the kernel's out-of-place mode
                                   is heavy-ball only), then var.assign(ndarray) (TF copies it into a new tensor)
  kernel-assign-tf                 the same into new TF-allocated tensors (tf.raw_ops.Empty, written through a
                                   DLPack view before anyone else sees them), then var.assign(tensor), which
                                   adopts the buffer (no copy); a new kernel plan each step (new addresses)
  kernel-inplace                   host kernel writes the variables' buffers in place through DLPack (UNSAFE:
                                   breaks copy-on-write, see semantics.py; reference only)
  apply-op / apply-op-fn           tf.raw_ops.ResourceApplyKerasMomentum per variable, eager / in one tf.function
  ops-fn / ops-fn-jit              one tf.function of v.assign(m*v - lr*g); w.assign_add(v), XLA off / on
Every route re-derives its views every step (a fast path must re-check what the user can change).
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import torch  # noqa: E402

from inertia import bench  # noqa: E402
from inertia.backend.numpy import BACKEND as NUMPY  # noqa: E402
from inertia.engine import host  # noqa: E402
from inertia.engine.step import KERAS, GroupSettings  # noqa: E402

LR, M = 0.01, 0.9
ROUTES = ("keras-jit", "keras-nojit", "keras-jit-fn", "keras-nojit-fn", "legacy", "legacy-fn", "kernel-assign-np",
          "kernel-assign-tf", "kernel-inplace", "apply-op", "apply-op-fn", "ops-fn", "ops-fn-jit")


def _writable(tensor: tf.Tensor) -> np.ndarray:
    """A writable NumPy view of a TF tensor's buffer (the legacy DLPack capsule, through torch:
    NumPy's own from_dlpack honours TF's read-only flag)."""
    return torch.from_dlpack(tf.experimental.dlpack.to_dlpack(tensor)).numpy()


def make(route: str, shapes: list, nesterov: bool, grads: list) -> tuple:
    weights, _ = bench._data(shapes)
    variables = [tf.Variable(w) for w in weights]
    if route.startswith("keras") or route.startswith("legacy"):
        import tf_keras

        if route.startswith("legacy"):
            opt = tf_keras.optimizers.legacy.SGD(LR, momentum=M, nesterov=nesterov)
        else:
            opt = tf_keras.optimizers.SGD(LR, momentum=M, nesterov=nesterov, jit_compile="nojit" not in route)
        def step():
            opt.apply_gradients(zip(grads, variables))
        if route.endswith("-fn"):
            step = tf.function(step)
        return step, variables
    velocities = [tf.Variable(tf.zeros(s)) for s in shapes]
    if route.startswith("kernel"):
        plan_in = host.plan_memory(NUMPY, "float32", [[_writable(v.value()) for v in variables],
                                                      [_writable(v.value()) for v in velocities]])
        groups = [GroupSettings(learning_rate=float(np.float32(LR)), momentum=M, nesterov=nesterov)]
        read = lambda ts: [np.from_dlpack(t) for t in ts]

        def values(vs):
            return [v.value() for v in vs]

        if route == "kernel-assign-np":
            # The kernel's out-of-place mode covers only the heavy-ball (MLX) form: the Keras
            # form runs in place, on NumPy copies (kept from step to step: assign copies them).
            w_buf = [np.empty(s, np.float32) for s in shapes]
            v_buf = [np.empty(s, np.float32) for s in shapes]
            plan_buf = host.plan_memory(NUMPY, "float32", [w_buf, v_buf])

            def step():
                for buf, t in zip(w_buf, values(variables)):
                    np.copyto(buf, np.from_dlpack(t))
                for buf, t in zip(v_buf, values(velocities)):
                    np.copyto(buf, np.from_dlpack(t))
                done = host.run(plan_buf, KERAS, groups, weights=w_buf, grads=read(grads), velocities=v_buf)
                assert done == host.DONE, done
                for var, out in zip(variables, w_buf):
                    var.assign(out)
                for var, out in zip(velocities, v_buf):
                    var.assign(out)
        elif route == "kernel-assign-tf":
            # New TF tensors nobody else has seen, filled with copies, stepped in place, then
            # adopted by assign (no copy); a new plan every step (new addresses).
            def step():
                w_new = [tf.raw_ops.Empty(shape=s, dtype=tf.float32) for s in shapes]
                v_new = [tf.raw_ops.Empty(shape=s, dtype=tf.float32) for s in shapes]
                w_view, v_view = [_writable(t) for t in w_new], [_writable(t) for t in v_new]
                for buf, t in zip(w_view, values(variables)):
                    np.copyto(buf, np.from_dlpack(t))
                for buf, t in zip(v_view, values(velocities)):
                    np.copyto(buf, np.from_dlpack(t))
                plan = host.plan_memory(NUMPY, "float32", [w_view, v_view])
                done = host.run(plan, KERAS, groups, weights=w_view, grads=read(grads), velocities=v_view)
                assert done == host.DONE, done
                del w_view, v_view
                for var, out in zip(variables, w_new):
                    var.assign(out)
                for var, out in zip(velocities, v_new):
                    var.assign(out)
        else:
            def step():
                nonlocal plan_in
                w, v = [_writable(x.value()) for x in variables], [_writable(x.value()) for x in velocities]
                done = host.run(plan_in, KERAS, groups, weights=w, grads=read(grads), velocities=v)
                if done == host.MOVED:
                    plan_in = host.plan_memory(NUMPY, "float32", [w, v])
                    done = host.run(plan_in, KERAS, groups, weights=w, grads=read(grads), velocities=v)
                assert done == host.DONE, done
        return step, variables
    lr, m = tf.constant(LR, tf.float32), tf.constant(M, tf.float32)
    if route.startswith("apply-op"):
        def step():
            for var, vel, g in zip(variables, velocities, grads):
                tf.raw_ops.ResourceApplyKerasMomentum(var=var.handle, accum=vel.handle, lr=lr, grad=g, momentum=m,
                                                      use_nesterov=nesterov)
        return (tf.function(step) if route.endswith("-fn") else step), variables

    @tf.function(jit_compile=route.endswith("jit"))
    def step():
        for var, vel, g in zip(variables, velocities, grads):
            vel.assign(m * vel - lr * g)
            var.assign_add(m * vel - lr * g if nesterov else vel)
    return step, variables


def check() -> None:
    """Each route's weights after 3 steps, against NumPy's float32 steps, bit for bit."""
    shapes = [(1000,), (7, 3), (4096,)]
    _, g_np = bench._data(shapes)
    grads = [tf.constant(g) for g in g_np]
    for nesterov in (False, True):
        w0, _ = bench._data(shapes)
        lr, m = np.float32(LR), np.float32(M)
        want = []
        for w, g in zip(w0, g_np):
            v = np.zeros_like(w)
            for _ in range(3):
                v = m * v - lr * g
                w = w + (m * v - lr * g if nesterov else v)
            want.append(w)
        for route in ROUTES:
            step, variables = make(route, shapes, nesterov, grads)
            for _ in range(3):
                step()
            got = [v.numpy() for v in variables]
            same = all(np.array_equal(a, b) for a, b in zip(got, want))
            worst = max(float(np.max(np.abs(a - b))) for a, b in zip(got, want))
            print(f"{'nesterov' if nesterov else 'plain'} {route}: {'bit-identical' if same else f'differs (max {worst:.1e})'}")


def _times(step, count: int) -> list:
    out = []
    for _ in range(count):
        start = time.perf_counter()
        step()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workload", nargs="?", default="W3")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--nesterov", action="store_true")
    parser.add_argument("--routes", default=",".join(ROUTES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=0.3, help="per route per round")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    if args.check:
        return check()
    shapes = bench._scaled(bench.WORKLOADS[args.workload](), args.scale)
    elements = int(sum(np.prod(s) for s in shapes))
    _, g_np = bench._data(shapes)
    grads = [tf.constant(g) for g in g_np]
    del g_np
    routes, first = {}, {}
    for route in args.routes.split(","):
        start = time.perf_counter()
        step, _ = make(route, shapes, args.nesterov, grads)
        step()
        first[route] = time.perf_counter() - start
        step()
        routes[route] = step
        print(f"  set up {route}: first step {first[route]:.2f} s", file=sys.stderr, flush=True)
    probe = bench._Probe(elements)
    counts = {name: max(3, min(100, int(args.seconds / max(statistics.median(_times(s, 2)), 1e-6))))
              for name, s in routes.items()}
    probe_counts = max(3, min(200, int(args.seconds / statistics.median(probe.run(3)))))
    per_round = {name: [] for name in routes}
    probe_times = []
    order = list(routes)
    for _ in range(args.rounds):
        random.shuffle(order)
        probe_times.append(statistics.median(probe.run(probe_counts)))
        for name in order:
            per_round[name].append(statistics.median(_times(routes[name], counts[name])))
    load = open("/proc/loadavg").read().split()[0]
    probe_s = statistics.median(probe_times)
    gbps = lambda s: elements * 20 / s / 1e9
    print(f"{args.workload} x{args.scale} ({len(shapes)} tensors, {elements / 1e6:.2f}M params) "
          f"{'nesterov' if args.nesterov else 'plain'}; load {load}; probe {gbps(probe_s):.1f} GB/s "
          f"({probe_s * 1e3:.2f} ms; rounds {', '.join(f'{gbps(t):.1f}' for t in probe_times)})")
    print("| route | step ms (median of rounds) | round range ms | GB/s at 20 B/param | of probe | first step s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in sorted(routes, key=lambda n: statistics.median(per_round[n])):
        t = statistics.median(per_round[name])
        print(f"| {name} | {t * 1e3:.2f} | {min(per_round[name]) * 1e3:.2f}-{max(per_round[name]) * 1e3:.2f} | "
              f"{gbps(t):.1f} | {probe_s / t:.2f} | {first[name]:.2f} |")


if __name__ == "__main__":
    main()
