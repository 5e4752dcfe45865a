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
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def bench(data: str, model_file: str, n: int, n_observe: int, n_alone: int) -> dict:
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
    _, t_predict = timed(model.predict, x)
    # what ms.decision_function runs by default (it also gives the fractions)
    ev, t_fast = timed(compose_margins, ms.modules, x)
    fast = ev.margins
    alone = ms.modules[:n_alone]
    cols, t_alone = timed(lambda: [m.decision_function(x) for m in alone])
    identical = all(np.array_equal(fast[:, j].view(np.uint32), c.view(np.uint32))
                    for j, c in enumerate(cols))
    t_one_by_one = t_alone * len(ms) / len(alone)
    return {
        "data": data, "model": model_file, "modules": len(ms), "test_images": len(x),
        "observed_images": int(sel.size), "alone_modules_timed": len(alone),
        "predict_s": t_predict, "shared_pass_s": t_fast, "one_by_one_s": t_one_by_one,
        "shared_vs_predict": t_fast / t_predict, "one_by_one_vs_predict": t_one_by_one / t_predict,
        "target_vs_predict": TARGETS.get(data), "identical_margins": identical,
        "needed_pass_fraction": {"mean": float(ev.flagged_fraction.mean()),
                                 "min": float(ev.flagged_fraction.min()),
                                 "max": float(ev.flagged_fraction.max())},
        "recomputed_passes_per_module": float(ev.recomputed_fraction.mean()),
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
        print(f"  one model.predict        {r['predict_s']:8.2f} s   1.00x")
        print(f"  shared pass (compose)    {r['shared_pass_s']:8.2f} s   "
              f"{r['shared_vs_predict']:.2f}x  (target <= {r['target_vs_predict']}x)")
        print(f"  modules one by one       {r['one_by_one_s']:8.2f} s   "
              f"{r['one_by_one_vs_predict']:.2f}x  (timed on {r['alone_modules_timed']} "
              f"modules, scaled to {r['modules']})")
        f = r["needed_pass_fraction"]
        print(f"  images needing a pass per module: mean {f['mean']:.3f} (min {f['min']:.3f}, "
              f"max {f['max']:.3f}); recomputed work {r['recomputed_passes_per_module']:.3f} "
              f"passes per module; margins identical to one by one: {r['identical_margins']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
