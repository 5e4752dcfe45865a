#!/usr/bin/env python3
"""Overhead of the dask recording pass against the in-process one, bytes moved, and an estimate
for ImageNet-sized work.

Runs `refdecomp.observe` on the same images (a) in this process with REFDECOMP_THREADS=2 and
(b) on a LocalCluster of 2 worker processes x 1 thread (1 kernel thread each): the same total
threads on this 2-core machine. Checks that both observations are identical, prints the times,
their ratio, the bytes per partition (images in, record out) and per reduction, and from the
measured per-worker throughput an estimate of the wall time of the recording pass for ImageNet-1k
on ResNet-50 on N workers:

    T(N) = I * C / (N * r)  +  ceil(log2 P) * (B / bw + t_merge)  +  t_fixed

I images of C multiply-accumulates each, r MAC/s per worker (measured here), P partitions, B
bytes of one partial record (groups x nodes / 8), bw the network's bytes/s, t_merge the measured
merge time per byte x B, t_fixed the measured fixed overhead (cluster start excluded).

    python tools/bench_distributed.py --model weights/cifar10_resnet20.h5 --images 4096
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("REFDECOMP_THREADS", "2")

import numpy as np  # noqa: E402

import refdecomp  # noqa: E402
from refdecomp.distributed import observe_distributed, start_client  # noqa: E402


def resnet50_nodes_and_macs() -> tuple[int, int]:
    """Conv / dense output nodes and MACs of ResNet-50 v1 at 224 x 224 (1000 classes)."""
    nodes = 112 * 112 * 64
    macs = 112 * 112 * 64 * 7 * 7 * 3
    size, cin = 56, 64
    for blocks, width, stride in ((3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2)):
        for b in range(blocks):
            s = stride if b == 0 else 1
            out = size // s
            layers = [(out, cin, width, 1), (out, width, width, 3),
                      (out, width, 4 * width, 1)]
            if b == 0:
                layers.append((out, cin, 4 * width, 1))
            for hw, ci, co, k in layers:
                nodes += hw * hw * co
                macs += hw * hw * co * ci * k * k
            size, cin = out, 4 * width
    return nodes + 1000, macs + 2048 * 1000


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(ROOT / "weights" / "cifar10_resnet20.h5"))
    p.add_argument("--images", type=int, default=4096)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--bandwidth", type=float, default=1.25e9, help="bytes/s for the estimate")
    p.add_argument("--workers-estimate", default="8,32,128")
    args = p.parse_args(argv)

    model = refdecomp.load_model(args.model)
    shape = model.graph.input_shapes()[0]
    n_classes = model.graph[model.graph.outputs[0]].shape[-1]
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(args.images, *shape)).astype(np.float32)
    y = np.arange(args.images) % n_classes
    model.predict(x[:64])  # compile / load the kernels outside the timings

    t0 = time.perf_counter()
    local = refdecomp.observe(model, x, y)
    t_local = time.perf_counter() - t0

    client = start_client(workers=2)
    try:
        observe_distributed(client, args.model, x[:64], y[:64], partitions=2)  # warm workers
        t0 = time.perf_counter()
        dist = observe_distributed(client, args.model, x, y, partitions=args.partitions)
        t_dist = time.perf_counter() - t0
        # merge cost: one OR of two partial records, timed on the client
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()
    same = all(np.array_equal(local.seen[k], dist.seen[k]) for k in local.seen)

    nodes = sum(int(np.prod(model.graph[k].shape)) for k in local.seen)
    groups = local.plan.n_groups
    record_bytes = groups * nodes // 8
    per_part_in = args.images // args.partitions * int(np.prod(shape)) * 4
    a = np.packbits(np.concatenate([v.reshape(-1) for v in local.seen.values()]))
    t0 = time.perf_counter()
    for _ in range(20):
        np.bitwise_or(a, a)
    t_merge_per_byte = (time.perf_counter() - t0) / 20 / max(1, a.nbytes)
    macs = model.macs() if hasattr(model, "macs") else 0
    r_worker = args.images * macs / t_dist / 2 if macs else float("nan")
    t_fixed = max(0.0, t_dist - t_local)

    print(f"model {Path(args.model).name}: {args.images} images, {args.partitions} partitions, "
          f"{groups} groups, {nodes} nodes, {macs / 1e6:.1f} M MACs/image")
    print(f"in process (2 threads):         {t_local:8.2f} s  {args.images / t_local:8.0f} img/s")
    print(f"LocalCluster (2 x 1 thread):    {t_dist:8.2f} s  {args.images / t_dist:8.0f} img/s"
          f"  ratio {t_dist / t_local:.2f}x  identical: {same}")
    print(f"bytes per partition: {per_part_in / 1e6:.2f} MB images in, {record_bytes / 1e6:.3f} MB"
          f" record out; per reduction: {2 * record_bytes / 1e6:.3f} MB in, "
          f"{record_bytes / 1e6:.3f} MB out")
    print(f"measured per-worker throughput r = {r_worker / 1e9:.1f} GMAC/s; merge "
          f"{t_merge_per_byte * 1e9:.3f} ns/byte; fixed overhead {t_fixed:.2f} s")

    n50, c50 = resnet50_nodes_and_macs()
    images, groups50 = 1_281_167, 2 * 1000
    b50 = groups50 * n50 / 8
    print(f"\nestimate, ImageNet-1k train ({images} images) on ResNet-50 v1 "
          f"({c50 / 1e9:.2f} GMAC/image, {n50 / 1e6:.1f} M nodes, {groups50} groups: "
          f"partial record B = {b50 / 1e9:.2f} GB of bits), bw = {args.bandwidth / 1e9:.2f} GB/s:")
    for w in (int(v) for v in args.workers_estimate.split(",")):
        parts = 4 * w
        compute = images * c50 / (w * r_worker)
        reduce = math.ceil(math.log2(parts)) * (b50 / args.bandwidth + t_merge_per_byte * b50)
        total = compute + reduce + t_fixed
        print(f"  N = {w:4d} workers, P = {parts:4d}: compute {compute / 3600:7.2f} h + "
              f"reduce {reduce / 60:6.1f} min + fixed {t_fixed:.0f} s = {total / 3600:7.2f} h")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
