"""Depthwise-heavy throughput: refdecomp's kernels vs Keras/TensorFlow `predict` on a stack of
MobileNetV2-like inverted residual blocks (1x1 expand conv + relu6, 3x3 depthwise + relu6,
1x1 linear projection, residual add where shapes allow) at 32x32 with 32-192 channels.

The Keras model gets random weights; the same weights drive `kernels.conv.Conv2D`,
`kernels.depthwise.DepthwiseConv2D` and `kernels.add.add`, run the way the interpreter runs a
graph (`kernels.threads.parallel_parts`: each worker thread takes parts of about 32 images
through the whole stack; `blas_single_threaded`). The stack is run without the interpreter,
whose graph has no depthwise op yet. Printed, all measured in this run: agreement with Keras,
images/s of Keras predict, of refdecomp without and with bit recording (every conv and
depthwise layer, 20 groups), their ratios, and per depthwise layer the time of the kernel
alone against the Keras layer called in a `tf.function`.

Usage: python tools/bench_depthwise.py [--images 1024] [--batch-size 256] [--repeats 3]
                                       [--threads N]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_forward import _best_interleaved, _set_threads  # noqa: E402

#: (expansion, output channels, stride) per block, after a 3x3 stem conv to 32 channels
BLOCKS = ((1, 16, 1), (6, 24, 1), (6, 24, 1), (6, 32, 2), (6, 32, 1), (6, 32, 1))
STEM = 32
RELU6 = {"name": "relu", "max_value": 6.0}
NO_MASK = np.empty(0, np.uint8)


def build_keras(seed: int):
    """The Keras stack, with random biases (Keras initialises them to 0)."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    x = inp = keras.Input((32, 32, 3))
    x = layers.Conv2D(STEM, 3, padding="same", activation="relu6", name="stem")(x)
    cin = STEM
    for b, (t, cout, s) in enumerate(BLOCKS):
        y = x
        if t != 1:
            y = layers.Conv2D(cin * t, 1, activation="relu6", name=f"b{b}_expand")(y)
        y = layers.DepthwiseConv2D(3, strides=s, padding="same", activation="relu6",
                                   name=f"b{b}_dw")(y)
        y = layers.Conv2D(cout, 1, name=f"b{b}_project")(y)
        x = layers.Add(name=f"b{b}_add")([x, y]) if s == 1 and cin == cout else y
        cin = cout
    model = keras.Model(inp, x)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        w = layer.get_weights()
        if len(w) == 2:
            layer.set_weights([w[0], rng.normal(0, 0.05, w[1].shape).astype(np.float32)])
    return model


class Stack:
    """The Keras model's layers as refdecomp kernels: (name, kind, kernel, input, shortcut)."""

    def __init__(self, kmodel):
        from refdecomp.activations import activation_code
        from refdecomp.kernels.conv import Conv2D
        from refdecomp.kernels.depthwise import DepthwiseConv2D

        self.steps = []
        for layer in kmodel.layers:
            cls = type(layer).__name__
            if cls in ("Conv2D", "DepthwiseConv2D"):
                k, b = layer.get_weights()
                act = activation_code(RELU6 if layer.activation.__name__ == "relu6"
                                      else {"name": "linear"})
                make = Conv2D if cls == "Conv2D" else DepthwiseConv2D
                kern = make(k, b, layer.strides, layer.padding, layer.dilation_rate, act)
                self.steps.append((layer.name, cls, kern))
            elif cls == "Add":
                self.steps.append((layer.name, cls, None))
        self.shapes = {layer.name: tuple(layer.output.shape[1:]) for layer in kmodel.layers}

    def run(self, x, seen=None, groups=None, timings=None):
        """The stack on one part of images; `seen` {layer: (groups, size) bits} records."""
        import time

        from refdecomp.kernels.add import add

        no_seen, no_groups = np.empty((0, 0), np.uint8), np.empty(0, np.int32)
        block, block_in = None, x
        for name, kind, kern in self.steps:
            t0 = time.perf_counter()
            if name.split("_")[0] != block:              # a block starts: keep its input
                block, block_in = name.split("_")[0], x
            if kind == "Add":
                x = add([block_in, x])
            else:
                c = kern.cout
                s = no_seen if seen is None else seen[name]
                x = kern(x, NO_MASK, c, 1, s, c, 1, no_groups if groups is None else groups)
            if timings is not None:
                timings[kind] = timings.get(kind, 0.0) + time.perf_counter() - t0
        return x


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int,
                    help="threads for both engines (TF intra-op pool and REFDECOMP_THREADS); "
                         "default: each engine's own choice (all cores)")
    args = ap.parse_args(argv)
    _set_threads(args.threads)

    import keras

    from refdecomp.kernels.isa import ISA
    from refdecomp.kernels.threads import blas_single_threaded, parallel_parts

    kmodel = build_keras(args.seed)
    stack = Stack(kmodel)
    rng = np.random.default_rng(args.seed)
    n, bs = args.images, args.batch_size
    x = rng.uniform(-1, 1, (n, 32, 32, 3)).astype(np.float32)
    groups = rng.integers(0, 20, n).astype(np.int32)
    out = np.empty((n, *stack.shapes[kmodel.layers[-1].name]), np.float32)
    recorded = [name for name, kind, _ in stack.steps if kind != "Add"]

    def ours(seen=None):
        def part(a, b):
            out[a:b] = stack.run(x[a:b], seen, None if seen is None else groups[a:b])
        with blas_single_threaded():
            for s in range(0, n, bs):
                parallel_parts(part, s, min(s + bs, n))

    def ours_record():
        ours({name: np.zeros((20, int(np.prod(stack.shapes[name]))), np.uint8)
              for name in recorded})

    def theirs():
        return kmodel.predict(x, batch_size=bs, verbose=0)

    ours()
    want = theirs()
    rel = float(np.abs(out - want).max() / np.abs(want).max())
    macs = sum(int(np.prod(kmodel.get_layer(name).output.shape[1:-1])) * int(
        np.prod(kmodel.get_layer(name).get_weights()[0].shape)) for name in recorded)
    t_keras, t_pred, t_rec = _best_interleaved([theirs, ours, ours_record], args.repeats)
    print(f"MobileNetV2-like stack, 32x32x3 input, {len(BLOCKS)} inverted residual blocks "
          f"(channels {STEM}-{max(c * t for t, c, _ in BLOCKS)}), {macs / 1e6:.1f} M MACs/image; "
          f"{n} images, batch {bs}, best of {args.repeats}; Numba variant {ISA}, "
          f"{args.threads or 'default'} thread(s) per engine, {os.cpu_count()} CPU cores")
    print(f"outputs vs Keras: max |diff| / max |Keras| = {rel:.2e}")
    for label, t in (("Keras/TF predict", t_keras), ("refdecomp kernels", t_pred),
                     ("refdecomp kernels + recording (20 groups)", t_rec)):
        print(f"  {label:42s} {n / t:8.1f} images/s  {t_keras / t:.2f}x TF")

    # where the time goes, one thread, one batch
    timings: dict[str, float] = {}
    stack.run(x[:bs], timings=timings)
    timings = {}
    stack.run(x[:bs], timings=timings)
    total = sum(timings.values())
    print("  share of refdecomp's time (one thread, one batch): " + ", ".join(
        f"{k} {v / total:.0%}" for k, v in sorted(timings.items(), key=lambda kv: -kv[1])))

    # each depthwise layer alone: the kernel against the Keras layer in one tf.function
    import tensorflow as tf

    print(f"depthwise layers alone ({bs} images, all threads, best of {args.repeats}):")
    dws = [(name, kern) for name, kind, kern in stack.steps if kind == "DepthwiseConv2D"]
    probe = keras.Model(kmodel.inputs, [kmodel.get_layer(name).input for name, _ in dws])
    no_seen, no_groups = np.empty((0, 0), np.uint8), np.empty(0, np.int32)
    for (name, kern), xin in zip(dws, probe.predict(x[:bs], batch_size=bs, verbose=0)):
        layer = kmodel.get_layer(name)
        call = tf.function(lambda t, layer=layer: layer(t, training=False))
        xt = tf.constant(xin)

        def k_ours(kern=kern, xin=xin):
            with blas_single_threaded():
                return kern(xin, NO_MASK, 0, 0, no_seen, 0, 0, no_groups)

        def k_theirs(call=call, xt=xt):
            return call(xt).numpy()

        diff = float(np.abs(k_ours() - k_theirs()).max())
        t_k, t_o = _best_interleaved([k_theirs, k_ours], args.repeats)
        print(f"  {name:8s} in {'x'.join(map(str, xin.shape[1:])):10s} stride "
              f"{layer.strides[0]}: refdecomp {t_o * 1e3:6.1f} ms, TF {t_k * 1e3:6.1f} ms, "
              f"{t_k / t_o:.2f}x TF (max |diff| {diff:.1e})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
