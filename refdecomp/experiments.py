"""The main job: decompose a model on a dataset's training split, compose its modules, and
compare them with the model on the test split (the paper's Table 1 for one model).

Used by `refdecomp demo` and `refdecomp evaluate`; writes the module file, a JSON and a Markdown
report and a plot, each naming the command that produced it.
"""
from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics
from .datasets import load_dataset
from .decompose import build_modules, observe
from .errors import DataError, RefdecompError
from .loading import load_model
from .report import bar_plots, command_line, markdown_table, write_report


def as_input(images: np.ndarray, preprocessing=None) -> np.ndarray:
    """Model input from raw images: float32 pixel values 0..255 (the models in weights/ carry
    their preprocessing inside), or what `preprocessing` (a `Preprocessing`) makes of them."""
    if preprocessing is not None:
        return preprocessing(images)
    return np.asarray(images, dtype=np.float32)


class SubsetWarning(UserWarning):
    """A `--limit` subset left some class without images."""


def stratified_indices(y: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of a seeded subset of `limit` labels `y`, every class in proportion.

    Class c of n_c images gets floor(limit * n_c / n) images, and the images left over go to
    the classes with the largest remainders (ties: lower class index), so the total is
    exactly min(limit, n). Within a class the images are drawn at random with `seed`."""
    y = np.asarray(y).reshape(-1)
    n = len(y)
    if limit >= n:
        return np.arange(n)
    classes, counts = np.unique(y, return_counts=True)
    exact = limit * counts / n
    take = np.floor(exact).astype(np.int64)
    left = limit - int(take.sum())
    order = np.lexsort((classes, -(exact - take)))   # largest remainder first
    take[order[:left]] += 1
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(y == c), size=k, replace=False)
              for c, k in zip(classes, take) if k]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


def limit_dataset(ds, limit: int | None, seed: int = 0):
    """A seeded, stratified subset of at most `limit` images of each split (every class in
    proportion, see `stratified_indices`), or `ds` itself when `limit` is None. Warns
    (`SubsetWarning`) when a class that has images in a split has none in its subset."""
    if limit is None:
        return ds
    if limit < 1:
        raise DataError(f"argument --limit {limit}: give a number of images >= 1")

    parts = {}
    for split in ("train", "test"):
        x, y = ds.split(split)
        keep = stratified_indices(y, limit, seed)
        parts[f"x_{split}"], parts[f"y_{split}"] = x[keep], y[keep]
        lost = sorted(set(np.unique(y).tolist()) - set(np.unique(y[keep]).tolist()))
        if lost:
            names = [ds.class_names[c] for c in lost[:10]]
            warnings.warn(
                f"--limit {limit}: the {split} subset has no images of {len(lost)} of the "
                f"{len(np.unique(y))} classes (e.g. {', '.join(names)}); give --limit of at "
                f"least {len(np.unique(y))} so that every class is represented",
                SubsetWarning, stacklevel=2)
    return dataclasses.replace(ds, **parts)


def parse_classes(text: str, argument: str) -> list[int]:
    """`"0,3,7"` -> [0, 3, 7]; a clear error naming `argument` otherwise."""
    try:
        classes = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        classes = []
    if not classes or min(classes) < 0:
        raise RefdecompError(f"argument {argument} {text!r}: expected class indices separated "
                             "by commas, e.g. 0,1,2")
    return classes


def describe(ds, split: str) -> str:
    x, _ = ds.split(split)
    return f"{ds.name} {split} split, {len(x)} images {tuple(x.shape[1:])}"


def model_accuracy(model, x: np.ndarray, y: np.ndarray, batch_size: int, progress: bool,
                   preprocessing=None) -> dict:
    t0 = time.perf_counter()
    probs = model.predict(as_input(x, preprocessing), batch_size=batch_size, progress=progress)
    seconds = time.perf_counter() - t0
    return {"top1": metrics.top_k_accuracy(probs, y, 1),
            "top5": metrics.top_k_accuracy(probs, y, 5), "seconds": seconds}


def evaluation_report(ms, ds, *, batch_size: int = 256, progress: bool = True,
                      out_dir: str | Path | None = None, model_figures: dict | None = None,
                      extra: dict | None = None, client=None) -> dict[str, Any]:
    """Evaluate module set `ms` on the test split of `ds`; return {"data", "markdown"} and, with
    `out_dir`, write `report.json`, `report.md` and `modules.png` there. The test images go
    through the preprocessing recorded with the modules (`ms.preprocessing`)."""
    x, y = ds.split("test")
    pre = ms.preprocessing
    x = as_input(x, pre)
    t0 = time.perf_counter()
    ev = ms.evaluate(x, y, batch_size=batch_size, progress=progress, client=client)
    eval_seconds = time.perf_counter() - t0
    if model_figures is None:
        model_figures = ev["model"]
    names = list(ds.class_names)
    data: dict[str, Any] = {
        "data": describe(ds, "test"),
        "options": ms.options,
        "preprocessing": pre.to_dict() if pre is not None else None,
        "model": {"top1": model_figures["top1"], "top5": model_figures["top5"]},
        "composed": {"top1": ev["top1"], "top5": ev["top5"], "ties_top1": ev["ties_top1"]},
        "cost_pp": {"top1": 100 * (model_figures["top1"] - ev["top1"]),
                    "top5": 100 * (model_figures["top5"] - ev["top5"])},
        "mean_jaccard_values": ev["mean_jaccard_values"],
        "mean_jaccard_set": ev["mean_jaccard_set"],
        "evaluate_seconds": eval_seconds,
        "modules": ev["modules"],
        **(extra or {}),
    }
    head = markdown_table(
        ["", "top-1", "top-5"],
        [["model", _pct(data["model"]["top1"]), _pct(data["model"]["top5"])],
         ["composed modules", _pct(ev["top1"]), _pct(ev["top5"])],
         ["cost (pp)", f"{data['cost_pp']['top1']:.2f}", f"{data['cost_pp']['top5']:.2f}"]])
    rows = [[r["class"], names[r["class"]] if r["class"] < len(names) else "",
             _pct(r["binary_accuracy"]), _pct(r["model_binary_accuracy"]),
             _pct(r["nodes_fraction"]), _pct(r["weights_fraction"]),
             f"{r['jaccard_values']:.3f}", f"{r['jaccard_set']:.3f}",
             *((_pct(r["needed_pass_fraction"]), f"{r['recomputed_passes']:.2f}")
               if "needed_pass_fraction" in r else ("n/a", "n/a"))] for r in ev["modules"]]
    table = markdown_table(["class", "name", "module accuracy", "model one-vs-rest",
                            "nodes kept", "weights kept", "Jaccard (values)", "Jaccard (set)",
                            "images needing a pass", "recomputed (passes)"], rows)
    timing = "".join(f"- {k.replace('_', ' ')}: {v:.2f} s\n" for k, v in data.items()
                     if k.endswith("_seconds"))
    md = (f"# Decomposition of {data.get('model_file', 'the model')}\n\n"
          f"Data: {data['data']}. Options: `{ms.options}`.\n"
          f"Preprocessing: {pre.describe() if pre is not None else 'none'}.\n\n{head}\n{table}\n"
          f"Mean Jaccard index: {ev['mean_jaccard_values']:.3f} (values, prior work's formula), "
          f"{ev['mean_jaccard_set']:.3f} (exact set of kept weights).\n\n{timing}")
    if out_dir is not None:
        out = Path(out_dir)
        plot = bar_plots(out / "modules.png", f"Modules of {data.get('model_file', 'model')}",
                         [f"{r['class']} {names[r['class']] if r['class'] < len(names) else ''}"
                          for r in ev["modules"]],
                         {"module accuracy": [r["binary_accuracy"] for r in ev["modules"]],
                          "model one-vs-rest": [r["model_binary_accuracy"]
                                                for r in ev["modules"]],
                          "nodes kept": [r["nodes_fraction"] for r in ev["modules"]],
                          "Jaccard (values)": [r["jaccard_values"] for r in ev["modules"]]},
                         command=command_line())
        if plot is not None:
            md += f"\n![per-module accuracy, size and Jaccard]({plot.name})\n"
            data["plot"] = str(plot)
        data["reports"] = {k: str(v) for k, v in write_report(out, "report", data, md).items()}
    return {"data": data, "markdown": md}


def run_decomposition_experiment(model_path: str, data: str, *, data_dir: str | None = None,
                                 limit: int | None = None, backtrack: str = "last_conv",
                                 delta: float = 0.5, seed: int = 0, out_dir: str = "out/demo",
                                 batch_size: int = 256, progress: bool = True,
                                 **options: Any) -> dict[str, Any]:
    """Load, decompose on the training split, save the modules, evaluate on the test split.
    `options`: the other keywords of `run_decomposition_settings` (limit_seed,
    preprocessing, tangling, and delta_rule, delta_scale, channeling for `build_modules`)."""
    return run_decomposition_settings(
        model_path, data, {backtrack: out_dir}, data_dir=data_dir, limit=limit, delta=delta,
        seed=seed, batch_size=batch_size, progress=progress, **options)[backtrack]


def run_decomposition_settings(model_path: str, data: str, out_dirs: dict[str, str], *,
                               data_dir: str | None = None, limit: int | None = None,
                               delta: float = 0.5, seed: int = 0, batch_size: int = 256,
                               progress: bool = True, limit_seed: int = 0,
                               preprocessing=None, tangling: str | int = "balanced",
                               **build_options: Any) -> dict[str, dict[str, Any]]:
    """`run_decomposition_experiment` for several backtracking settings (`out_dirs`: setting
    -> report folder) from one load and one recording pass. Each setting's
    `decompose_seconds` is that pass plus its own module building, as if run alone.

    `limit`, `limit_seed`: a stratified subset of each split (`limit_dataset`).
    `preprocessing`: a `Preprocessing` (fitted here on the full training split) that turns
    the raw images into model input; recorded with the modules. `tangling` goes to `observe`,
    `build_options` (delta_rule, delta_scale, channeling) to `build_modules`."""
    t0 = time.perf_counter()
    model = load_model(model_path)
    ds = load_dataset(data, data_dir=data_dir)
    pre = preprocessing.fit(ds.x_train) if preprocessing is not None else None  # full split
    ds = limit_dataset(ds, limit, limit_seed)
    load_seconds = time.perf_counter() - t0
    x_test, y_test = ds.split("test")
    model_figures = model_accuracy(model, x_test, y_test, batch_size, progress, pre)
    t0 = time.perf_counter()
    obs = observe(model, as_input(ds.x_train, pre), ds.y_train, tangling=tangling, seed=seed,
                  batch_size=batch_size, progress=progress)
    record_seconds = time.perf_counter() - t0
    results = {}
    for backtrack, out_dir in out_dirs.items():
        t0 = time.perf_counter()
        ms = build_modules(model, obs, backtrack=backtrack, delta=delta,
                           class_names=list(ds.class_names), data=describe(ds, "train"),
                           **build_options)
        ms.preprocessing = pre
        build_seconds = time.perf_counter() - t0
        out = Path(out_dir)
        modules_path = ms.save(out / "modules.h5")
        results[backtrack] = evaluation_report(
            ms, ds, batch_size=batch_size, progress=progress, out_dir=out,
            model_figures=model_figures,
            extra={"model_file": str(model_path), "modules_file": str(modules_path),
                   "load_seconds": load_seconds,
                   "model_predict_seconds": model_figures["seconds"],
                   "record_seconds": record_seconds, "build_seconds": build_seconds,
                   "decompose_seconds": record_seconds + build_seconds})
    return results


def _pct(v: float) -> str:
    return "n/a" if v != v else f"{100 * v:.2f}%"
