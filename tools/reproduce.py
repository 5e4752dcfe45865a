#!/usr/bin/env python3
"""Reproduce the paper's tables with one command each (Pan & Rajan, ICSE'22, Section 4.2).

  table1   decomposition cost: model vs composed top-1/top-5 and mean Jaccard index for the
           three backtracking settings (none = CI+TI+MC, last_conv = MC-BLN, input = MC-BI)
  table2   intra-dataset reuse: every pair of the chosen classes, composed accuracy (MA) and,
           with --tma-epochs, a model of the same architecture trained on that pair (TMA)
  table3   inter-dataset reuse: class a of dataset 1 with class b of dataset 2: MA, updated
           modules (MMA, Section 3.5) and TMA
  table4   intra-dataset replace: in the target module set, the module of each chosen class is
           replaced by the donor's module of that class (e.g. ResNet-32 <- ResNet-20)
  table5   inter-dataset replace: in dataset 1's composition, class c's module is replaced by
           class d's module of dataset 2; the new 10-class problem is evaluated (MA, TMA)
  tradeoff small modules: activity thresholds x granularity (node / channel) x max_per_class,
           all built from ONE recording pass; composed top-1 cost against the MACs the compact
           modules keep (JSON, Markdown, plot), and the speed of a compact module

Every run writes reports/<name>.json and .md (with the command that produced them) and, where
training from scratch is compared (TMA), the time, energy and CO2e of reuse versus training,
by the paper's formula (and codecarbon where installed). Keras is needed only for TMA.

Examples (digits/MNIST run in minutes on a CPU; CIFAR needs the trained weights/):
  python tools/reproduce.py table1 --model weights/digits_cnn.h5 --data digits
  python tools/reproduce.py table2 --modules out/mnist.h5 --data mnist --classes 0,1,2,3 \
      --tma-arch small_cnn --tma-epochs 3
  python tools/reproduce.py tradeoff --model weights/cifar10_resnet20.h5 --data cifar10 \
      --train-limit 10000 --test-limit 2000
"""
from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from refdecomp import load_model, load_modules, metrics  # noqa: E402
from refdecomp.datasets import load_dataset  # noqa: E402
from refdecomp.errors import RefdecompError  # noqa: E402
from refdecomp.experiments import parse_classes, run_decomposition_settings  # noqa: E402
from refdecomp.report import markdown_table, set_command, write_report  # noqa: E402
from refdecomp.scenarios.co2 import Measurement  # noqa: E402
from refdecomp.scenarios.reuse import (  # noqa: E402
    Pick,
    evaluate_replace,
    evaluate_reuse,
    model_images_per_second,
    replace_table,
    scenario_data,
)


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


# -- training from scratch (TMA) -------------------------------------------------------------
def train_from_scratch(picks, args, tag: str) -> dict:
    """Train the same architecture on the scenario's classes with tools/train.py (Keras) and
    evaluate it with refdecomp on the scenario's test images; measured for CO2e."""
    from refdecomp.datasets import Dataset, save_npz

    x_tr, y_tr = scenario_data(picks, "train")
    x_te, y_te = scenario_data(picks, "test")
    with tempfile.TemporaryDirectory() as tmp:
        ds = Dataset(f"scenario-{tag}", x_tr, y_tr, x_te, y_te,
                     tuple(p.label for p in picks))
        npz = save_npz(ds, Path(tmp) / "scenario.npz")
        out = Path(tmp) / "tma.h5"
        cmd = [sys.executable, str(ROOT / "tools" / "train.py"), "--dataset", str(npz),
               "--arch", args.tma_arch, "--epochs", str(args.tma_epochs), "--out", str(out),
               "--checkpoint-dir", str(Path(tmp) / "ckpt"), "--seed", str(args.seed),
               "--manifest", str(Path(tmp) / "MANIFEST.json"), *args.tma_extra]
        with Measurement(f"train-{tag}") as m:
            done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True)
            if done.returncode:
                sys.exit(f"training from scratch failed ({' '.join(cmd)}):\n"
                         f"{done.stderr[-3000:]}")
            probs = load_model(out).predict(x_te.astype(np.float32))
        return {"TMA": metrics.top_k_accuracy(probs, y_te, 1), "train_cost": m.report}


def reuse_row(picks, args, tag: str, update: bool = False) -> dict:
    """One reuse case: MA (and MMA with `update`) with time / CO2e of each step, plus the
    train-from-scratch baseline (TMA) when --tma-epochs is given."""
    row = evaluate_reuse(picks, update=update, update_limit=args.update_limit,
                         measure=lambda step: Measurement(f"{step}-{tag}"))
    if args.tma_epochs:
        row.update(train_from_scratch(picks, args, tag))
    return row


def cost_summary(rows: list[dict]) -> str:
    """Mean time and CO2e of building by reuse vs training from scratch: the paper's formula
    and, where it measured, codecarbon (each figure says its source in the JSON report)."""
    lines = ["| work | mean time (s) | mean CO2e (lbs, formula) | mean CO2e (lbs, codecarbon) |",
             "|---|---|---|---|"]
    for key, label in (("reuse_cost", "compose + predict (reuse)"),
                       ("update_cost", "update + compose + predict"),
                       ("train_cost", "train from scratch + predict")):
        reports = [r[key] for r in rows if r.get(key)]
        if reports:
            measured = [m["codecarbon"]["co2e_lbs"] for m in reports if m.get("codecarbon")]
            cc = f"{np.mean(measured):.3g}" if len(measured) == len(reports) else "-"
            lines.append(f"| {label} | {np.mean([m['time_s'] for m in reports]):.2f} | "
                         f"{np.mean([m['formula']['co2e_lbs'] for m in reports]):.3g} | {cc} |")
    src = next((r[k]["formula"]["source"] for r in rows for k in ("train_cost", "reuse_cost")
                if r.get(k)), "")
    cc_src = next((r[k]["codecarbon"]["source"] for r in rows for k in ("train_cost", "reuse_cost")
                   if r.get(k) and r[k].get("codecarbon")), "not installed")
    return "\n".join(lines) + f"\n\nPower figures: {src}; codecarbon: {cc_src}.\n"


# -- tables ----------------------------------------------------------------------------------
def table1(args) -> tuple[dict, str]:
    rows, data = [], {"model": args.model, "data": args.data, "settings": {}}
    settings = ("none", "last_conv", "input")
    results = run_decomposition_settings(   # one recording pass serves all three
        args.model, args.data,
        {s: str(Path(args.out) / f"{args.name or 'table1'}-{s}") for s in settings},
        data_dir=args.data_dir, limit=args.limit, delta=args.delta, seed=args.seed,
        progress=not args.no_progress)
    for setting in settings:
        res = results[setting]["data"]
        data["settings"][setting] = {k: res[k] for k in ("model", "composed", "cost_pp",
                                                         "mean_jaccard_values", "mean_jaccard_set",
                                                         "decompose_seconds")}
        rows.append([setting, pct(res["composed"]["top1"]), pct(res["composed"]["top5"]),
                     f"{res['cost_pp']['top1']:.2f}", f"{res['cost_pp']['top5']:.2f}",
                     f"{res['mean_jaccard_values']:.2f}", f"{res['mean_jaccard_set']:.2f}"])
    m = data["settings"]["none"]["model"]
    md = (f"# Table 1: decomposition of {args.model} on {args.data}\n\n"
          f"Model: top-1 {pct(m['top1'])}, top-5 {pct(m['top5'])}.\n\n"
          + markdown_table(["backtrack", "composed top-1", "composed top-5", "cost top-1 (pp)",
                            "cost top-5 (pp)", "mean JI (values)", "mean JI (set)"], rows))
    return data, md


def _picks_from(modules_path: str, data: str, classes, data_dir):
    ms = load_modules(modules_path)
    ds = load_dataset(data, data_dir=data_dir)
    return {c: Pick(ms[c], ds, f"{ds.name}:{ds.class_names[c]}") for c in classes}


def table2(args) -> tuple[dict, str]:
    classes = parse_classes(args.classes, "--classes")
    picks = _picks_from(args.modules, args.data, classes, args.data_dir)
    rows = []
    for a, b in itertools.combinations(classes, 2):
        row = reuse_row([picks[a], picks[b]], args, f"{a}-{b}")
        # throughput of the composed pair against one pass of the whole model, same images
        x, _ = scenario_data([picks[a], picks[b]], "test")
        row["reuse_images_per_s"] = len(x) / row["reuse_cost"]["time_s"]
        row["model_images_per_s"] = model_images_per_second(picks[a].module, x)
        rows.append(row)
    table = markdown_table(
        ["classes", "TMA", "MA", "composed pair images/s", "whole model images/s"],
        [[" + ".join(r["picks"]), pct(r.get("TMA")), pct(r["MA"]),
          f"{r['reuse_images_per_s']:.0f}", f"{r['model_images_per_s']:.0f}"] for r in rows])
    md = f"# Table 2: intra-dataset reuse ({args.modules})\n\n{table}\n{cost_summary(rows)}"
    return {"rows": rows}, md


def table3(args) -> tuple[dict, str]:
    a_cls = parse_classes(args.classes, "--classes")
    b_cls = parse_classes(args.classes2, "--classes2")
    pa = _picks_from(args.modules, args.data, a_cls, args.data_dir)
    pb = _picks_from(args.modules2, args.data2, b_cls, args.data_dir)
    rows = [reuse_row([pa[a], pb[b]], args, f"{a}x{b}", update=True) for a in a_cls for b in b_cls]
    table = markdown_table(["classes", "TMA", "MA", "MMA"],
                           [[" + ".join(r["picks"]), pct(r.get("TMA")), pct(r["MA"]),
                             pct(r.get("MMA"))] for r in rows])
    md = f"# Table 3: inter-dataset reuse\n\n{table}\n{cost_summary(rows)}"
    return {"rows": rows}, md


def table4(args) -> tuple[dict, str]:
    target, donor = load_modules(args.modules), load_modules(args.modules2)
    ds = load_dataset(args.data, data_dir=args.data_dir)
    x, y = ds.split("test")
    classes = (parse_classes(args.classes, "--classes") if args.classes
               else [int(c) for c in target.classes])
    res = evaluate_replace(target, donor, classes, x, y, progress=not args.no_progress)
    md = (f"# Table 4: intra-dataset replace ({args.modules} <- {args.modules2})\n\n"
          + replace_table(res, ds.class_names))
    return res, md


def table5(args) -> tuple[dict, str]:
    try:
        pairs = [tuple(int(v) for v in p.split(":")) for p in args.pairs.split(",")]
    except ValueError:
        pairs = []
    if not pairs or any(len(p) != 2 for p in pairs):
        raise RefdecompError(f"argument --pairs {args.pairs!r}: expected C:D,... e.g. 0:3,1:7")
    base_ms = load_modules(args.modules)
    ds1 = load_dataset(args.data, data_dir=args.data_dir)
    ds2 = load_dataset(args.data2, data_dir=args.data_dir)
    donor = load_modules(args.modules2)
    rows = []
    for c, d in pairs:
        picks = [Pick(base_ms[k], ds1, f"{ds1.name}:{ds1.class_names[k]}")
                 for k in base_ms.classes if k != c]
        picks.append(Pick(donor[d], ds2, f"{ds2.name}:{ds2.class_names[d]}"))
        row = reuse_row(picks, args, f"{c}<-{d}")
        row["replaced"] = [ds1.class_names[c], ds2.class_names[d]]
        rows.append(row)
    table = markdown_table(["replaced", "by", "TMA", "MA top-1", "MA top-5"],
                           [[r["replaced"][0], r["replaced"][1], pct(r.get("TMA")), pct(r["MA"]),
                             pct(r["MA_top5"])] for r in rows])
    md = f"# Table 5: inter-dataset replace\n\n{table}\n{cost_summary(rows)}"
    return {"rows": rows}, md


def _floats(text: str, argument: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise RefdecompError(f"argument {argument} {text!r}: expected numbers separated by "
                             f"commas, e.g. 0,0.1,0.2") from None


def _seeded_subset(x, y, limit: int | None, seed: int):
    """`limit` images drawn without replacement by `np.random.default_rng(seed)`, kept in file
    order (a plain prefix would be one or two classes on class-sorted files); all if None."""
    if limit is None or limit >= len(x):
        return x, y
    idx = np.sort(np.random.default_rng(seed).permutation(len(x))[:limit])
    return x[idx], y[idx]


def tradeoff(args) -> tuple[dict, str]:
    """Small modules: every setting from one observation (see refdecomp/tradeoff.py)."""
    import time

    from refdecomp import observe
    from refdecomp.experiments import as_input
    from refdecomp.tradeoff import (
        STRETCH_MACS,
        TARGET_COST_PP,
        TARGET_MACS,
        chosen_setting,
        sweep,
        time_compact,
        tradeoff_markdown,
        tradeoff_report,
    )

    thresholds = _floats(args.thresholds, "--thresholds")
    granularities = [g for g in args.granularities.split(",") if g]
    caps = [None] + [int(v) for v in _floats(args.max_per_class, "--max-per-class")] \
        if args.max_per_class else [None]
    model = load_model(args.model)
    ds = load_dataset(args.data, data_dir=args.data_dir)
    x_tr, y_tr = _seeded_subset(ds.x_train, ds.y_train, args.train_limit, args.seed)
    x_te, y_te = _seeded_subset(ds.x_test, ds.y_test, args.test_limit, args.seed + 1)
    t0 = time.perf_counter()
    obs = observe(model, as_input(x_tr), y_tr, seed=args.seed, progress=not args.no_progress,
                  max_per_class=caps)
    record_s = time.perf_counter() - t0
    result = sweep(model, obs, as_input(x_te), y_te, thresholds=thresholds,
                   granularities=granularities, caps=caps, backtrack=args.backtrack,
                   delta=args.delta, class_names=list(ds.class_names), progress=True)
    result.update({"model_file": args.model, "data": args.data,
                   "observed_images": int(len(x_tr)), "test_images": int(len(x_te)),
                   "record_seconds": record_s, "state_bytes_per_group":
                       obs.state_bytes_per_group(), "n_groups": obs.plan.n_groups,
                   "backtrack": args.backtrack})
    best = chosen_setting(result["rows"])
    lines = [f"Observation: {len(x_tr)} training images (seeded random subset when "
             f"--train-limit is given; class counts {np.bincount(y_tr).tolist()}), one "
             f"recording pass with "
             f"counts ({obs.plan.n_groups} groups, {obs.state_bytes_per_group():,} bytes of "
             f"counters per group and recording thread, {record_s:.0f} s); evaluation: "
             f"{len(x_te)} test images (seeded random subset when --test-limit is given); "
             f"backtrack={args.backtrack}.", ""]
    if best is None:
        lines.append(f"No setting costs <= {TARGET_COST_PP} pp top-1.")
    else:
        mods = best["modules"]
        lines.append(f"Smallest setting within {TARGET_COST_PP} pp: {best['granularity']} "
                     f"t={best['activity_threshold']:g} (max/class "
                     f"{best['max_per_class'] or 'all'}): cost {best['cost_top1_pp']:.2f} pp, "
                     f"MACs kept {100 * best['mean_flops_fraction']:.1f}% (target "
                     f"<= {100 * TARGET_MACS:.0f}%, stretch <= {100 * STRETCH_MACS:.0f}%): "
                     + ("target met" if best["mean_flops_fraction"] <= TARGET_MACS
                        else "target NOT met") + ".")
        # speed of the compact module of the largest kept fraction vs its full module
        from refdecomp import build_modules
        ms = build_modules(model, obs, backtrack=args.backtrack, delta=args.delta,
                           activity_threshold=best["activity_threshold"],
                           granularity=best["granularity"], max_per_class=best["max_per_class"])
        c = int(np.argmax([m["flops_fraction"] for m in mods]))
        speed = time_compact(ms[c], as_input(x_te[:args.time_images]))
        best_summary = {k: v for k, v in best.items() if k != "modules"}
        result["chosen"] = {**best_summary, "timed_module": c, "speed": speed}
        lines.append(f"Speed (module {c}, the largest of that setting, {args.time_images} "
                     f"images, best of 3 in the same run): full module "
                     f"{speed['full_images_per_s']:.0f} images/s, compact module "
                     f"{speed['compact_images_per_s']:.0f} images/s ({speed['speedup']:.2f}x).")
    result["notes"] = "\n".join(lines)
    name = args.name or f"tradeoff-{Path(args.model).stem}"
    title = f"Small modules: {args.model} on {args.data}"
    paths = tradeoff_report(args.out, name, result, title)
    md = tradeoff_markdown(result, title) + "\n" + result["notes"] + "\n"
    print(f"plot: {paths.get('plot', '(matplotlib missing)')}", file=sys.stderr)
    return None, md


#: Arguments each table needs.
REQUIRED = {"table1": ("model", "data"), "table2": ("modules", "data", "classes"),
            "table3": ("modules", "data", "classes", "modules2", "data2", "classes2"),
            "table4": ("modules", "modules2", "data"),
            "table5": ("modules", "data", "modules2", "data2", "pairs"),
            "tradeoff": ("model", "data")}

TABLES = {"table1": table1, "table2": table2, "table3": table3, "table4": table4,
          "table5": table5, "tradeoff": tradeoff}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("table", choices=sorted(TABLES))
    p.add_argument("--model", help="table1: model file")
    p.add_argument("--modules", help="module set file (dataset 1 / replace target)")
    p.add_argument("--modules2", help="module set file (dataset 2 / replace donor)")
    p.add_argument("--data", help="dataset 1")
    p.add_argument("--data2", help="dataset 2")
    p.add_argument("--data-dir")
    p.add_argument("--classes", help="classes of dataset 1, comma-separated")
    p.add_argument("--classes2", help="classes of dataset 2, comma-separated")
    p.add_argument("--pairs", help="table5: C:D,... (replace class C of dataset 1 by D of 2)")
    p.add_argument("--limit", type=int, help="table1: a seeded subset of N images of each "
                                              "split, every class in proportion")
    p.add_argument("--delta", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--update-limit", type=int, help="unconcerned images per class for updates")
    p.add_argument("--tma-arch", default="small_cnn", help="architecture trained for TMA")
    p.add_argument("--tma-epochs", type=int, default=0, help="0: no training from scratch")
    p.add_argument("--tma-extra", nargs=argparse.REMAINDER, default=[],
                   help="further tools/train.py options (last)")
    p.add_argument("--thresholds", default="0,0.01,0.02,0.05,0.1,0.15,0.2,0.3,0.4,0.5",
                   help="tradeoff: activity thresholds")
    p.add_argument("--granularities", default="node,channel", help="tradeoff: granularities")
    p.add_argument("--max-per-class", default="",
                   help="tradeoff: caps E on the observed images of the own class, besides all")
    p.add_argument("--backtrack", default="last_conv", choices=["none", "last_conv", "input"],
                   help="tradeoff: backtracking setting")
    p.add_argument("--train-limit", type=int,
                   help="tradeoff: observe N train images (seeded random subset)")
    p.add_argument("--test-limit", type=int,
                   help="tradeoff: evaluate N test images (seeded random subset)")
    p.add_argument("--time-images", type=int, default=1000,
                   help="tradeoff: images for the compact-module speed measurement")
    p.add_argument("--name", help="report name (default: the table)")
    p.add_argument("--out", default="reports", help="report folder")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    set_command(sys.argv[1:] if argv is None else argv, prog="python tools/reproduce.py")
    missing = [f"--{a.replace('_', '-')}" for a in REQUIRED[args.table] if not getattr(args, a)]
    if missing:
        p.error(f"{args.table} needs {', '.join(missing)}")
    try:
        data, md = TABLES[args.table](args)
    except RefdecompError as exc:
        print(f"reproduce {args.table}: error: {exc}", file=sys.stderr)
        return 2
    print(md)
    if data is not None:          # tradeoff writes its own reports (JSON, Markdown, plot)
        paths = write_report(args.out, args.name or args.table, data, md)
        print(f"written: {paths['json']} {paths['markdown']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    raise SystemExit(main())
