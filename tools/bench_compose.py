"""Time composing every module of a decomposition through one shared pass
(`ModuleSet.decision_function`, refdecomp.compose) against the modules one by one and one
`model.predict`, in the same run, on the shipped CIFAR-10 and CIFAR-100 ResNet-20s.

Each model is decomposed with the default settings on `--observe` training images (a
stratified random sample), then its modules are composed on `--n` test images. The one-by-one
time is measured on `--alone` modules and scaled to all modules (each module costs one masked
pass); the margins of those modules are checked to be identical bit for bit.

    python tools/bench_compose.py [--n 2000] [--observe 10000] [--alone 5] [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout

import refdecomp  # noqa: E402
from refdecomp.compose import compose_margins  # noqa: E402
from refdecomp.datasets import load_dataset  # noqa: E402

CASES = (("cifar10", "weights/cifar10_resnet20.h5"), ("cifar100", "weights/cifar100_resnet20.h5"))
TARGETS = {"cifar10": 1.5, "cifar100": 3.0}


def stratified(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """About n indices with every class equally represented, in random order."""
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    per = max(1, n // len(classes))
    idx = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:per] for c in classes])
    return rng.permutation(idx)


def timed(fn, *args, **kwargs):
    """(result, wall seconds, CPU seconds of the process: all threads)."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0, time.process_time() - c0


def sparse_bound(model, module, x) -> dict:
    """What an exact propagation of the module's differences could save at best, on images x.

    Runs the model and the module on x keeping every activation, marks per image the output
    positions (all channels) where the module's value differs from the model's bit for bit,
    and counts, per convolution, the output positions whose window reads a differing input
    position: only those would need recomputing. Returns that work in full passes, and the
    fraction of images flagged when only masks on ReLU-like nodes (value 0 for negative
    inputs) are counted, i.e. without the masks on linear / other activations."""
    from refdecomp.interpreter import node_macs
    from refdecomp.windows import source_sink

    g = model.graph
    names = [n.name for n in g.nodes]
    plain = dict(zip(names, model.run(x, outputs=names)))
    masked = dict(zip(names, model.run(x, outputs=names, masks=module.masks)))
    changed, work = {}, 0.0
    for node in g.nodes:
        if len(node.shape) != 3 or node.op == "input":
            continue
        diff = plain[node.name].view(np.uint32) != masked[node.name].view(np.uint32)
        changed[node.name] = diff.any(axis=-1).reshape(len(x), -1)
        if node.op == "conv2d" and node.inputs[0] in changed:
            a = node.attrs
            src = source_sink(g[node.inputs[0]].shape[:2], node.weights["kernel"].shape[:2],
                              a["strides"], a["padding"], a.get("dilation", (1, 1)))
            d = changed[node.inputs[0]]
            need = np.zeros((len(x), src.shape[0]), bool)
            for t in range(src.shape[1]):
                ok = src[:, t] >= 0
                need[:, ok] |= d[:, src[ok, t]]
            work += need.mean() * node_macs(g, node)
    relu_like = {n.name for n in g.nodes_of(("conv2d", "dense"))
                 if n.activation.get("name") == "relu" and not n.activation.get("negative_slope")
                 and not n.activation.get("threshold")}
    flagged = np.zeros(len(x), bool)
    for name, mask in module.masks.items():
        if name in relu_like:
            flagged |= (plain[name].reshape(len(x), -1)[:, mask.reshape(-1) == 0] != 0).any(1)
    return {"sparse_bound_passes": work / max(1, model.macs()),
            "flagged_relu_masks_only": float(flagged.mean())}


def bench(data: str, model_file: str, n: int, n_observe: int, n_alone: int,
          n_bound: int = 200) -> dict:
    ds = load_dataset(data)
    model = refdecomp.load_model(ROOT / model_file)
    xtr, ytr = ds.split("train")
    sel = stratified(ytr, n_observe, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ms = refdecomp.decompose(model, xtr[sel].astype(np.float32), ytr[sel])
    xte, _ = ds.split("test")
    x = xte[stratified(ds.split("test")[1], n, 1)].astype(np.float32)
    model.predict(x[:64])                                   # warm up (compilation, pools)
    ms.decision_function(x[:64])
    _, w_predict, c_predict = timed(model.predict, x)
    # what ms.decision_function runs by default (it also gives the fractions)
    ev, w_fast, c_fast = timed(compose_margins, ms.modules, x)
    alone = ms.modules[:n_alone]
    cols, w_alone, c_alone = timed(lambda: [m.decision_function(x) for m in alone])
    identical = all(np.array_equal(ev.margins[:, j].view(np.uint32), c.view(np.uint32))
                    for j, c in enumerate(cols))
    scale = len(ms) / len(alone)
    bound = [sparse_bound(model, m, x[:n_bound]) for m in ms.modules[:n_alone]]
    return {
        "data": data, "model": model_file, "modules": len(ms), "test_images": len(x),
        "observed_images": int(sel.size), "alone_modules_timed": len(alone),
        "wall_s": {"predict": w_predict, "shared_pass": w_fast, "one_by_one": w_alone * scale},
        "cpu_s": {"predict": c_predict, "shared_pass": c_fast, "one_by_one": c_alone * scale},
        "target_vs_predict": TARGETS.get(data), "identical_margins": identical,
        "needed_pass_fraction": {"mean": float(ev.flagged_fraction.mean()),
                                 "min": float(ev.flagged_fraction.min()),
                                 "max": float(ev.flagged_fraction.max())},
        "recomputed_passes_per_module": float(ev.recomputed_fraction.mean()),
        "bound_images": min(n_bound, len(x)),
        "sparse_bound_passes_per_module": float(np.mean([b["sparse_bound_passes"]
                                                         for b in bound])),
        "flagged_relu_masks_only": float(np.mean([b["flagged_relu_masks_only"]
                                                  for b in bound])),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="test images (stratified sample)")
    ap.add_argument("--observe", type=int, default=10000, help="training images observed")
    ap.add_argument("--alone", type=int, default=5,
                    help="modules timed one by one (the time is scaled to all modules)")
    ap.add_argument("--data", nargs="*", default=[c[0] for c in CASES])
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    rows = [bench(d, f, a.n, a.observe, a.alone) for d, f in CASES if d in a.data]
    if a.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(f"{r['data']} {r['model']}: {r['modules']} modules (default decomposition on "
              f"{r['observed_images']} training images), {r['test_images']} test images")
        w, c = r["wall_s"], r["cpu_s"]
        print(f"  {'':26s} {'wall s':>8s} {'ratio':>7s} {'CPU s':>8s} {'ratio':>7s}")
        for key, label in (("predict", "one model.predict"),
                           ("shared_pass", "shared pass (compose)"),
                           ("one_by_one", "modules one by one")):
            print(f"  {label:26s} {w[key]:8.2f} {w[key] / w['predict']:6.2f}x "
                  f"{c[key]:8.2f} {c[key] / c['predict']:6.2f}x")
        print(f"  target: shared pass <= {r['target_vs_predict']}x one predict; one by one "
              f"timed on {r['alone_modules_timed']} modules and scaled to {r['modules']}")
        f = r["needed_pass_fraction"]
        print(f"  images needing a pass per module: mean {f['mean']:.3f} (min {f['min']:.3f}, "
              f"max {f['max']:.3f}); recomputed work {r['recomputed_passes_per_module']:.3f} "
              f"passes per module; margins identical to one by one: {r['identical_margins']}")
        print(f"  on {r['bound_images']} images, first {r['alone_modules_timed']} modules: exact "
              f"sparse propagation would still recompute >= "
              f"{r['sparse_bound_passes_per_module']:.3f} passes per module; counting only "
              f"masks on ReLU nodes, {r['flagged_relu_masks_only']:.3f} of the images would be "
              f"flagged")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
