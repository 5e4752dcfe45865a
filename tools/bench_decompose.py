"""Time `decompose(..., backtrack="input")` for all 10 modules of a CIFAR-10 ResNet-20 against
one plain `predict` over the same images, in the same run (target ratio <= 1.3).

The ResNet-20 is the paper's variant (conv + bias + ReLU, no batch norm, Add, ReLU,
AveragePooling2D(8), Flatten, Dense softmax). It is read from --model when given (e.g. a trained
file from weights/), else built in memory with random He-normal weights. Images are real CIFAR-10
test images when `refdecomp.datasets` finds them, else random.

    python tools/bench_decompose.py [--n 2000] [--model weights/cifar10_resnet20.h5]
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import refdecomp  # noqa: E402
from refdecomp.graph import Graph, Node  # noqa: E402
from refdecomp.interpreter import Model  # noqa: E402

RELU = {"name": "relu"}


def resnet20_graph(seed: int = 0, n_classes: int = 10) -> Graph:
    """He et al.'s resnet_v1 layout for CIFAR (depth 20) with random He-normal weights."""
    rng = np.random.default_rng(seed)
    nodes = [Node("input", "input", [], (32, 32, 3), {"dtype": "float32"})]

    def conv(name, src, cin, cout, hw, k=3, stride=1, act=RELU):
        w = rng.normal(0, np.sqrt(2 / (k * k * cin)), (k, k, cin, cout)).astype(np.float32)
        nodes.append(Node(name, "conv2d", [src], (hw, hw, cout),
                          {"strides": (stride, stride), "padding": "same", "dilation": (1, 1),
                           "activation": act, "data_format": "channels_last"},
                          {"kernel": w, "bias": np.zeros(cout, np.float32)}, "Conv2D"))
        return name

    x = conv("conv0", "input", 3, 16, 32)
    cin, hw = 16, 32
    for stage, cout in enumerate((16, 32, 64)):
        for block in range(3):
            stride = 2 if stage > 0 and block == 0 else 1
            hw_out = hw // stride
            a = conv(f"s{stage}b{block}a", x, cin, cout, hw_out, stride=stride)
            b = conv(f"s{stage}b{block}b", a, cout, cout, hw_out, act={"name": "linear"})
            short = x if stride == 1 and cin == cout else conv(
                f"s{stage}b{block}p", x, cin, cout, hw_out, k=1, stride=stride,
                act={"name": "linear"})
            nodes.append(Node(f"s{stage}b{block}add", "add", [b, short], (hw_out, hw_out, cout)))
            nodes.append(Node(f"s{stage}b{block}relu", "activation", [f"s{stage}b{block}add"],
                              (hw_out, hw_out, cout), {"activation": RELU}))
            x, cin, hw = f"s{stage}b{block}relu", cout, hw_out
    nodes.append(Node("pool", "avg_pool2d", [x], (1, 1, 64),
                      {"pool": (8, 8), "strides": (8, 8), "padding": "valid",
                       "data_format": "channels_last"}))
    nodes.append(Node("flatten", "flatten", ["pool"], (64,), {"data_format": "channels_last"}))
    nodes.append(Node("dense", "dense", ["flatten"], (n_classes,),
                      {"activation": {"name": "softmax", "axis": -1}},
                      {"kernel": rng.normal(0, 0.1, (64, n_classes)).astype(np.float32),
                       "bias": np.zeros(n_classes, np.float32)}))
    return Graph(nodes, ["input"], ["dense"], name="resnet20_random")


def images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    try:
        from refdecomp.datasets import load_dataset

        ds = load_dataset("cifar10")
        return ds.x_test[:n].astype(np.float32), ds.y_test[:n], "CIFAR-10 test images"
    except Exception as e:  # no local copy and offline: random images, balanced labels
        rng = np.random.default_rng(seed)
        x = rng.integers(0, 256, (n, 32, 32, 3)).astype(np.float32)
        return x, np.arange(n) % 10, f"random images ({type(e).__name__})"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="number of images (default 2000)")
    ap.add_argument("--model", help="model file (default: random-weight ResNet-20)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    model = refdecomp.load_model(args.model) if args.model else Model(resnet20_graph(args.seed))
    x, y, what = images(args.n, args.seed)
    if not args.model:  # random weights do not compute CIFAR-10 scores: rescale the pixels
        x = x / 255.0
    warnings.simplefilter("ignore")
    model.predict(x[:8])  # compile / warm the kernels outside the timings
    refdecomp.decompose(model, x[:20], y[:20], backtrack="input")
    t0 = time.perf_counter()
    model.predict(x, args.batch_size)
    t_predict = time.perf_counter() - t0
    t0 = time.perf_counter()
    ms = refdecomp.decompose(model, x, y, backtrack="input", batch_size=args.batch_size)
    t_dec = time.perf_counter() - t0
    print(f"model: {args.model or 'ResNet-20 (random weights)'}; data: {len(x)} {what}")
    print(f"predict:                     {t_predict:8.2f} s")
    print(f"decompose (input, {len(ms)} modules): {t_dec:8.2f} s")
    print(f"ratio decompose / predict:   {t_dec / t_predict:8.2f}  (target <= 1.3)")


if __name__ == "__main__":
    main()
