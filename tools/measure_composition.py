#!/usr/bin/env python3
"""Composition by margin vs by probability, "mean" vs "logsumexp" channeling, and the delta
rule's "relative" vs "absolute" threshold, on one model, from one recording pass.

For each setting the modules are built from the same observation; each distinct set of masks
is run once over the test images (features at the head's input), and every head is applied
to those features. Reported per setting: composed top-1 ranked by margin (what refdecomp
does) and by the float32 concerned probability (what it did before), the images decided by a
tie, head inputs removed by the delta rule, and the modules' mean binary accuracy beside the
model's own one-vs-rest accuracy.

  python tools/measure_composition.py --model weights/mnist_cnn.h5 --data mnist
  python tools/measure_composition.py --model M.h5 --data mnist --scale 0.00392156862745098 \\
      --name composition-corpus-mnist-dense
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from refdecomp import build_modules, load_model, metrics, observe  # noqa: E402
from refdecomp.datasets import load_dataset  # noqa: E402
from refdecomp.report import markdown_table, set_command, write_report  # noqa: E402

#: (label, build options); "none" is the unmodified composition (CI + TI + channeling).
SETTINGS = [
    ("none / mean", {"backtrack": "none", "channeling": "mean"}),
    ("none / logsumexp", {"backtrack": "none", "channeling": "logsumexp"}),
    ("last_conv / mean / delta relative", {"backtrack": "last_conv", "channeling": "mean",
                                           "delta_scale": "relative"}),
    ("last_conv / mean / delta absolute", {"backtrack": "last_conv", "channeling": "mean",
                                           "delta_scale": "absolute"}),
    ("last_conv / logsumexp / delta relative", {"backtrack": "last_conv",
                                                "channeling": "logsumexp",
                                                "delta_scale": "relative"}),
]


def subset(x, y, n: int | None, seed: int):
    """A seeded random subset of n images (all when n is None)."""
    if n is None or n >= len(y):
        return x, y
    idx = np.sort(np.random.default_rng(seed).permutation(len(y))[:n])
    return x[idx], y[idx]


def mask_key(module) -> str:
    h = hashlib.sha256()
    for name in sorted(module.masks):
        h.update(name.encode())
        h.update(np.packbits(module.masks[name]).tobytes())
    return h.hexdigest()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--scale", type=float, default=1.0, help="multiply pixels by this")
    p.add_argument("--train-limit", type=int, help="observe a seeded subset of the training split")
    p.add_argument("--test-limit", type=int, help="evaluate on a seeded subset of the test split")
    p.add_argument("--delta", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", help="report name (default: composition-<model stem>)")
    p.add_argument("--out", default=str(ROOT / "reports"))
    args = p.parse_args(argv)
    set_command(["tools/measure_composition.py", *(argv or sys.argv[1:])], prog="python")

    t0 = time.perf_counter()
    model = load_model(args.model)
    ds = load_dataset(args.data)
    as_x = lambda a: a.astype(np.float32) * np.float32(args.scale)  # noqa: E731
    x_tr, y_tr = subset(ds.x_train, ds.y_train, args.train_limit, args.seed)
    x_te, y_te = subset(ds.x_test, ds.y_test, args.test_limit, args.seed + 1)
    x_tr, x_te = as_x(x_tr), as_x(x_te)
    probs = model.predict(x_te)
    model_top1 = metrics.top_k_accuracy(probs, y_te, 1)
    obs = observe(model, x_tr, y_tr, seed=args.seed)
    features: dict[str, np.ndarray] = {}
    rows, data = [], {"model": args.model, "data": args.data, "scale": args.scale,
                      "n_train": int(len(y_tr)), "n_test": int(len(y_te)),
                      "model_top1": model_top1, "delta": args.delta, "settings": {}}
    for label, opts in SETTINGS:
        ms = build_modules(model, obs, delta=args.delta, **opts)
        logits = []
        for m in ms:
            key = mask_key(m)
            if key not in features:
                features[key] = m.features(x_te)
            logits.append(m.head_logits(features[key]))
        margins = np.stack([metrics.margins(z) for z in logits], axis=1)
        p_concerned = np.stack([metrics.softmax_rows(z)[:, 0] for z in logits], axis=1)
        binary = [metrics.binary_accuracy(margins[:, j], y_te, m.class_index)
                  for j, m in enumerate(ms)]
        ovr = [metrics.one_vs_rest_accuracy(probs, y_te, m.class_index) for m in ms]
        r = {"top1_margin": metrics.top_k_accuracy(margins, y_te, 1, ms.classes),
             "top1_probability": metrics.top_k_accuracy(p_concerned, y_te, 1, ms.classes),
             "ties_probability": metrics.count_top_ties(p_concerned),
             "ties_margin": metrics.count_top_ties(margins),
             "head_inputs_removed": [int(m.info["head_inputs_removed"]) for m in ms],
             "delta_threshold": ms.options["delta_threshold"],
             "binary_accuracy": binary, "model_one_vs_rest": ovr}
        data["settings"][label] = r
        rows.append([label, f"{100 * r['top1_margin']:.2f}%",
                     f"{100 * r['top1_probability']:.2f}%", r["ties_probability"],
                     f"{r['delta_threshold']:.3g}" if opts["backtrack"] != "none" else "-",
                     f"{min(r['head_inputs_removed'])}-{max(r['head_inputs_removed'])}",
                     f"{100 * np.mean(binary):.2f}%", f"{100 * np.mean(ovr):.2f}%"])
    data["seconds"] = time.perf_counter() - t0
    md = (f"Model `{args.model}` on `{args.data}` (pixels x {args.scale:g}): model top-1 "
          f"{100 * model_top1:.2f}% on {len(y_te)} test images; modules observed "
          f"{len(y_tr)} training images; delta = {args.delta}.\n\n"
          + markdown_table(["setting", "composed top-1 (margin)", "composed top-1 (P, before)",
                            "images tied (P)", "delta threshold", "head inputs removed",
                            "module binary acc. (mean)", "model one-vs-rest (mean)"], rows))
    name = args.name or f"composition-{Path(args.model).stem}"
    write_report(args.out, name, data, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
