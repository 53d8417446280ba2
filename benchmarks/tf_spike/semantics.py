"""TF fast-path spike, part 1.2: is writing a tf.Variable's buffer in place through DLPack
observable by tensors read earlier, where assign / ResourceApplyKerasMomentum are not?
Run: PYTHONPATH=src python benchmarks/tf_spike/semantics.py"""
import os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import tensorflow as tf
import torch


def ptr(t):
    return np.from_dlpack(t).ctypes.data


def writable_view(var):
    # np.from_dlpack(tensor) is read-only (TF exports DLPack 1.0 with the read-only flag);
    # the legacy capsule through torch is writable.
    return torch.from_dlpack(tf.experimental.dlpack.to_dlpack(var.value()))


def scenario(label, write):
    var = tf.Variable(np.zeros(4, np.float32))
    before = var.value()                 # a tensor read earlier
    as_numpy = var.numpy()               # a NumPy copy
    ident = tf.identity(var)             # tf.identity of the variable
    converted = tf.convert_to_tensor(var)
    derived = var * 1.0                  # a computed tensor
    p0 = ptr(var.value())

    @tf.function
    def read():
        return var.read_value()
    in_graph = read()                    # a value returned by a tf.function
    write(var)
    seen = {name: float(np.asarray(t)[0]) for name, t in [
        ("var", var.value()), ("before=var.value()", before), ("var.numpy() earlier", as_numpy),
        ("tf.identity(var)", ident), ("tf.convert_to_tensor(var)", converted), ("var*1.0", derived),
        ("tf.function read_value()", in_graph)]}
    moved = ptr(var.value()) != p0
    print(f"{label}: " + ", ".join(f"{k}={v:g}" for k, v in seen.items()) + f"; var buffer {'moved (copy-on-write)' if moved else 'same'}")


def inplace(var):
    writable_view(var).add_(1.0)


def inplace_numpy(var):
    a = np.from_dlpack(var.value())
    try:
        a += 1
    except ValueError as e:
        print("  np.from_dlpack(var.value()) is read-only:", e)
        a.flags.writeable = True  # what a C kernel ignoring the flag would do
        a += 1


def assign(var):
    var.assign_add(tf.ones(4))


def keras_momentum(var):
    accum = tf.Variable(np.zeros(4, np.float32))
    tf.raw_ops.ResourceApplyKerasMomentum(var=var.handle, accum=accum.handle, lr=np.float32(-1.0),
                                          grad=tf.ones(4), momentum=np.float32(0.9))


def gradient_descent(var):
    tf.raw_ops.ResourceApplyGradientDescent(var=var.handle, alpha=np.float32(1.0), delta=-tf.ones(4))


for label, write in [("in place via DLPack (torch view)", inplace), ("in place via np.from_dlpack, flag forced", inplace_numpy),
                     ("var.assign_add", assign), ("ResourceApplyKerasMomentum", keras_momentum),
                     ("ResourceApplyGradientDescent", gradient_descent)]:
    try:
        scenario(label, write)
    except Exception as e:
        print(label, "error:", type(e).__name__, e)

# When nothing else holds the buffer, do assign and the training ops write in place?
var = tf.Variable(np.zeros(1 << 20, np.float32))
p0 = ptr(var.value())
var.assign_add(tf.ones(1 << 20)); p1 = ptr(var.value())
var.assign(np.ones(1 << 20, np.float32)); p2 = ptr(var.value())
accum = tf.Variable(np.zeros(1 << 20, np.float32))
tf.raw_ops.ResourceApplyKerasMomentum(var=var.handle, accum=accum.handle, lr=np.float32(0.1), grad=tf.ones(1 << 20),
                                      momentum=np.float32(0.9))
p3 = ptr(var.value())
print(f"unshared buffer: assign_add keeps it: {p1 == p0}; assign(ndarray) keeps it: {p2 == p0}; "
      f"ResourceApplyKerasMomentum keeps it: {p3 == p0}")
# A live DLPack view held across steps makes every later update copy the buffer:
view = np.from_dlpack(var.value())
tf.raw_ops.ResourceApplyKerasMomentum(var=var.handle, accum=accum.handle, lr=np.float32(0.1), grad=tf.ones(1 << 20),
                                      momentum=np.float32(0.9))
print(f"with a DLPack view alive, ResourceApplyKerasMomentum moved the buffer: {ptr(var.value()) != p3}; "
      f"the view still shows the old weights: {view[0] != var.numpy()[0]}")
