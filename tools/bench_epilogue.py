"""Time the fused conv / dense epilogue alone: no recording, recording bits, recording counts.

The epilogue (`refdecomp.kernels.epilogue.epilogue`) adds the bias, records "value > 0" per group,
activates and masks. This isolates what recording costs there, per instruction set: each ISA
runs in its own process with Numba held to it (`refdecomp.kernels.isa.ENVIRONMENTS`), as in
tools/bench_forward.py. The bit maps are those of a pass in its steady state (the same block
recorded again, so most bits are already set), which is most of a real recording pass;
"bits, filling" records every image into a cleared map of its own group (every block stores),
the early batches of a pass with many groups.

Usage: python tools/bench_epilogue.py [--isa avx2 avx512] [--positions 256] [--channels 32]
                                      [--images 32] [--repeats 30]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np


def time_one_isa(images: int, positions: int, channels: int, repeats: int) -> None:
    """Best-of-`repeats` time of the epilogue (plain ReLU) on (images * positions, channels)."""
    from refdecomp.activations import activation_code
    from refdecomp.kernels.epilogue import epilogue
    from refdecomp.kernels.isa import ISA

    rows = images * positions
    y0 = np.random.default_rng(0).standard_normal((rows, channels)).astype(np.float32)
    bias = np.zeros(channels, np.float32)
    groups = np.zeros(images, np.int32)
    no_mask = np.empty(0, np.uint8)
    own_group = np.arange(images, dtype=np.int32)
    targets = {"no recording": (np.empty((0, 0), np.uint8), groups),
               "bits": (np.zeros((1, positions * channels), np.uint8), groups),
               "bits, filling": (np.zeros((images, positions * channels), np.uint8), own_group),
               "counts": (np.zeros((1, positions * channels), np.uint32), groups)}
    act = activation_code({"name": "relu"})
    for what, (seen, g) in targets.items():
        best = np.inf
        for _ in range(repeats + 1):        # the first call compiles (or loads the cache)
            y = y0.copy()
            if what == "bits, filling":
                seen.fill(0)
            t = time.perf_counter()
            epilogue(y, bias, *act, positions, no_mask, channels, 1, seen, channels, 1, g)
            best = min(best, time.perf_counter() - t)
        print(f"  {ISA:8s} {what:14s} {best * 1e3:8.3f} ms")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--isa", nargs="+", choices=["avx2", "avx512", "native"])
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--positions", type=int, default=256)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args()
    print(f"epilogue of {args.images} images x {args.positions} positions x {args.channels} "
          f"channels, plain ReLU, best of {args.repeats}")
    if not args.isa:
        time_one_isa(args.images, args.positions, args.channels, args.repeats)
        return
    from refdecomp.kernels.isa import ENVIRONMENTS
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for isa in args.isa:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CPU_")}
        env.update(ENVIRONMENTS[isa])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        argv = [sys.executable, os.path.abspath(__file__), "--images", str(args.images),
                "--positions", str(args.positions), "--channels", str(args.channels),
                "--repeats", str(args.repeats)]
        out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout
        print("".join(out.splitlines(keepends=True)[1:]), end="")


if __name__ == "__main__":
    main()
