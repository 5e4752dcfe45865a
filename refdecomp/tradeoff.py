"""The accuracy-size trade-off of small modules: one recording pass, many module settings.

`sweep` builds the module set of every (granularity, activity threshold, max_per_class) setting
from one `Observation` and evaluates each on the same test images: composed top-1 / top-5, its
cost against the model, and per module the binary accuracy, nodes / weights kept, Jaccard
indices and the compact module's multiply-accumulates and parameters (`Module.size`).
`tradeoff_report` turns the rows into JSON, a Markdown table and a plot (composed top-1 cost
against the MACs kept, one curve per granularity, the paper's rule marked).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics
from .decompose import build_modules
from .report import command_line, markdown_table, write_report

#: The paper's decomposition cost on CIFAR-10 ResNet-20 and the size targets (issue's terms).
TARGET_COST_PP = 1.77
TARGET_MACS = 0.40
STRETCH_MACS = 0.25


def sweep(model, obs, x, y, *, thresholds: Sequence[float], granularities: Sequence[str],
          caps: Sequence[int | None] = (None,), backtrack: str = "last_conv",
          delta: float = 0.5, batch_size: int = 256, class_names=None,
          progress: bool = False) -> dict[str, Any]:
    """Evaluate every setting on images `x` labelled `y` (see module docstring)."""
    y = np.asarray(y).reshape(-1)
    probs = model.predict(x, batch_size)
    base = {"top1": metrics.top_k_accuracy(probs, y, 1),
            "top5": metrics.top_k_accuracy(probs, y, 5)}
    rows = []
    settings = [(g, float(t), cap) for cap in caps for g in granularities for t in thresholds]
    for i, (granularity, t, cap) in enumerate(settings):
        t0 = time.perf_counter()
        ms = build_modules(model, obs, backtrack=backtrack, delta=delta,
                           activity_threshold=t, granularity=granularity, max_per_class=cap,
                           class_names=class_names)
        build_s = time.perf_counter() - t0
        ev = ms.evaluate(x, y, batch_size=batch_size)
        mods = ev["modules"]
        row = {"granularity": granularity, "activity_threshold": t, "max_per_class": cap,
               "paper_rule": granularity == "node" and t == 0.0 and cap is None,
               "top1": ev["top1"], "top5": ev["top5"],
               "cost_top1_pp": 100 * (base["top1"] - ev["top1"]),
               "cost_top5_pp": 100 * (base["top5"] - ev["top5"]),
               "build_seconds": build_s, "evaluate_seconds": time.perf_counter() - t0 - build_s}
        for key in ("flops_fraction", "params_fraction", "nodes_fraction", "weights_fraction",
                    "binary_accuracy", "jaccard_values", "jaccard_set"):
            vals = [r[key] for r in mods]
            row[f"mean_{key}"] = float(np.mean(vals))
            if key in ("flops_fraction", "binary_accuracy"):
                row[f"max_{key}" if key == "flops_fraction" else f"min_{key}"] = float(
                    (max if key == "flops_fraction" else min)(vals))
        row["modules"] = mods
        rows.append(row)
        if progress:
            print(f"[{i + 1}/{len(settings)}] {granularity} t={t:g} cap={cap}: top-1 "
                  f"{100 * row['top1']:.2f}% (cost {row['cost_top1_pp']:.2f} pp), MACs kept "
                  f"{100 * row['mean_flops_fraction']:.1f}%", flush=True)
    return {"model": base, "n_images": int(y.size), "rows": rows}


def chosen_setting(rows: list[dict], cost_pp: float = TARGET_COST_PP) -> dict | None:
    """The setting with the fewest MACs kept among those costing at most `cost_pp`."""
    ok = [r for r in rows if r["cost_top1_pp"] <= cost_pp]
    return min(ok, key=lambda r: r["mean_flops_fraction"]) if ok else None


def time_compact(module, x, batch_size: int = 256, repeats: int = 3) -> dict[str, float]:
    """Images/s of a module run masked on the full model and run compact, best of `repeats`
    interleaved rounds (same run, same images)."""
    compact = module.compact()

    def full():
        module.model.run(x, batch_size, masks=module.masks)

    def small():
        compact.predict(x, batch_size)

    best = [float("inf"), float("inf")]
    full(), small()                                    # warm-up (compilation)
    for _ in range(repeats):
        for j, fn in enumerate((full, small)):
            t0 = time.perf_counter()
            fn()
            best[j] = min(best[j], time.perf_counter() - t0)
    n = len(x)
    return {"full_images_per_s": n / best[0], "compact_images_per_s": n / best[1],
            "speedup": best[0] / best[1]}


def _label(r: dict) -> str:
    cap = "" if r["max_per_class"] is None else f", E={r['max_per_class']}"
    return f"{r['granularity']}{cap}"


def tradeoff_markdown(result: dict, title: str) -> str:
    rows = result["rows"]
    m = result["model"]
    table = markdown_table(
        ["granularity", "threshold", "max/class", "composed top-1", "cost top-1 (pp)",
         "cost top-5 (pp)", "MACs kept (mean / max)", "params kept", "nodes kept",
         "weights kept", "module acc. (mean / min)", "JI (values)", "JI (set)"],
        [[r["granularity"] + (" (paper)" if r["paper_rule"] else ""),
          f"{r['activity_threshold']:g}", r["max_per_class"] or "all",
          f"{100 * r['top1']:.2f}%", f"{r['cost_top1_pp']:.2f}", f"{r['cost_top5_pp']:.2f}",
          f"{100 * r['mean_flops_fraction']:.1f}% / {100 * r['max_flops_fraction']:.1f}%",
          f"{100 * r['mean_params_fraction']:.1f}%", f"{100 * r['mean_nodes_fraction']:.1f}%",
          f"{100 * r['mean_weights_fraction']:.1f}%",
          f"{100 * r['mean_binary_accuracy']:.2f}% / {100 * r['min_binary_accuracy']:.2f}%",
          f"{r['mean_jaccard_values']:.3f}", f"{r['mean_jaccard_set']:.3f}"] for r in rows])
    return (f"# {title}\n\nModel on the same {result['n_images']} test images: top-1 "
            f"{100 * m['top1']:.2f}%, top-5 {100 * m['top5']:.2f}%. MACs / params kept: of the "
            f"compact modules (whole filters and units dropped), mean over the modules.\n\n"
            f"{table}\n")


def tradeoff_plot(path, result: dict, title: str) -> Path | None:
    """Composed top-1 cost against MACs kept, one curve per granularity (and cap); the
    paper's rule marked; the target region shaded. None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    curves: dict[str, list[dict]] = {}
    for r in result["rows"]:
        curves.setdefault(_label(r), []).append(r)
    for label, rs in curves.items():
        rs = sorted(rs, key=lambda r: r["activity_threshold"])
        ax.plot([100 * r["mean_flops_fraction"] for r in rs], [r["cost_top1_pp"] for r in rs],
                "o-", label=label, markersize=4)
        for r in rs:
            ax.annotate(f"{r['activity_threshold']:g}", (100 * r["mean_flops_fraction"],
                                                         r["cost_top1_pp"]),
                        fontsize=6, xytext=(2, 2), textcoords="offset points")
    paper = [r for r in result["rows"] if r["paper_rule"]]
    if paper:
        ax.plot([100 * paper[0]["mean_flops_fraction"]], [paper[0]["cost_top1_pp"]], "k*",
                markersize=12, label="paper's rule (t = 0, nodes)")
    ax.axvline(100 * TARGET_MACS, color="grey", ls=":", lw=1)
    ax.axhline(TARGET_COST_PP, color="grey", ls=":", lw=1)
    ax.fill_between([0, 100 * TARGET_MACS], -100, TARGET_COST_PP, color="green", alpha=0.08,
                    label=f"target (<= {100 * TARGET_MACS:.0f}% MACs, <= {TARGET_COST_PP} pp)")
    costs = [r["cost_top1_pp"] for r in result["rows"]]
    ax.set_ylim(min(-0.5, min(costs) - 0.5), max(costs) * 1.05 + 0.5)
    ax.set_xlim(0, 102)
    ax.set_xlabel("MACs kept by the compact modules (% of the model, mean over modules)")
    ax.set_ylabel("composed top-1 cost (pp)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.text(0.01, 0.01, command_line(), fontsize=5, color="grey")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def tradeoff_report(out_dir, name: str, result: dict, title: str) -> dict[str, Path]:
    """Write <name>.json, <name>.md and <name>.png to `out_dir`."""
    md = tradeoff_markdown(result, title)
    plot = tradeoff_plot(Path(out_dir) / f"{name}.png", result, title)
    if plot is not None:
        md += f"\n![composed top-1 cost against MACs kept]({plot.name})\n"
        result = {**result, "plot": str(plot)}
    extra = result.get("notes")
    if extra:
        md += "\n" + extra + "\n"
    paths = write_report(out_dir, name, result, md)
    if plot is not None:
        paths["plot"] = plot
    return paths
