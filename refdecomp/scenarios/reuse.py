"""Reuse, replace and update modules (paper Sections 3.5, 4.2.2).

- *Reuse*: compose the modules of chosen classes (from one module set, or from several module
  sets of different datasets with the same input shape) into a new classifier over just those
  classes. Each chosen class is evaluated on its own test images; the label of an image is the
  position of its class among the picks.
- *Replace*: in a module set, swap the module of a class for the same class's module decomposed
  from another model (e.g. ResNet-20 vs ResNet-32 on CIFAR-10), and evaluate the composition on
  the full test set.
- *Update* (Section 3.5): re-apply tangling identification to a reused module with the other
  picks' classes as unconcerned inputs: the nodes those inputs activate are added to the
  module's observed activity, and masks and backtracking are recomputed.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import metrics
from ..decompose.tangling import tangling_counts
from ..decompose.update import update_module
from ..errors import DataError
from ..experiments import as_input as _as_input
from ..report import markdown_table


@dataclass
class Pick:
    """One class chosen for a reuse scenario: its module and where its images come from."""

    module: Any                # refdecomp.modules.Module
    dataset: Any               # refdecomp.datasets.Dataset the module's class belongs to
    label: str = ""            # display name, e.g. "cifar10:cat"

    @property
    def class_index(self) -> int:
        return self.module.class_index


def class_images(dataset, class_index: int, split: str, limit: int | None = None) -> np.ndarray:
    """The images of one class from a split (first `limit` of them, in dataset order)."""
    x, y = dataset.split(split)
    sel = np.flatnonzero(y == class_index)
    if limit is not None:
        sel = sel[:limit]
    if sel.size == 0:
        raise DataError(f"dataset {dataset.name!r} has no {split} images of class {class_index}")
    return x[sel]


def scenario_data(picks: Sequence[Pick], split: str = "test",
                  limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images of every pick's class, labelled by the pick's position."""
    shapes = {tuple(p.dataset.image_shape) for p in picks}
    if len(shapes) != 1:
        raise DataError(f"reuse: the picked modules take different input shapes {sorted(shapes)}; "
                        "modules can only be composed over inputs of one shape")
    xs, ys = [], []
    for j, p in enumerate(picks):
        xi = class_images(p.dataset, p.class_index, split, limit)
        xs.append(xi)
        ys.append(np.full(len(xi), j, dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


class _Inputs:
    """Raw images `x` as each module takes them: through the module's own preprocessing
    (`Module.preprocessing`, recorded in its module file), computed once per preprocessing."""

    def __init__(self, x: np.ndarray):
        self.raw = x
        self._made: dict[int, tuple[Any, np.ndarray]] = {}

    def __call__(self, module) -> np.ndarray:
        pre = getattr(module, "preprocessing", None)
        if id(pre) not in self._made:
            self._made[id(pre)] = (pre, _as_input(self.raw, pre))
        return self._made[id(pre)][1]


def compose_scores(modules: Sequence[Any], x: np.ndarray, batch_size: int = 256,
                   progress: bool = False) -> np.ndarray:
    """(n, len(modules)) margins (`Module.decision_function`): the voting composition of any
    modules ranks them. One shared pass per source model and preprocessing
    (`refdecomp.compose`). `x`: raw images; each module sees them through its own
    preprocessing, so modules of models trained with different input conventions compose."""
    from ..compose import compose_margins  # Numba loads when composing, not on import

    modules = list(modules)
    inputs = _Inputs(x)
    groups: dict[int, list[int]] = {}
    for j, m in enumerate(modules):
        groups.setdefault(id(getattr(m, "preprocessing", None)), []).append(j)
    parts = {tuple(cols): compose_margins([modules[j] for j in cols], inputs(modules[cols[0]]),
                                          batch_size, progress).margins
             for cols in groups.values()}
    first = next(iter(parts.values()), np.zeros((len(x), 0), np.float32))
    out = np.empty((first.shape[0], len(modules)), dtype=first.dtype)
    for cols, margins in parts.items():
        out[:, list(cols)] = margins
    return out


def model_images_per_second(module, x: np.ndarray, batch_size: int = 256) -> float:
    """Images per second of `module`'s whole source model on raw images `x` (through the
    module's preprocessing): the reference a composition's throughput is compared with."""
    xm = _Inputs(x)(module)
    start = time.perf_counter()
    module.source_model.predict(xm, batch_size)
    return len(x) / max(time.perf_counter() - start, 1e-9)


def evaluate_reuse(picks: Sequence[Pick], *, update: bool = False, update_limit: int | None = None,
                   batch_size: int = 256, progress: bool = False,
                   measure: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Composed accuracy of the picked modules on their classes' test images (MA) and, with
    `update`, of the updated modules (MMA). `measure(step)`, when given, returns a context
    manager (e.g. `scenarios.co2.Measurement`) around the "reuse" step (compose + predict) and
    the "update" step (update + compose + predict); its `.report` is stored as
    `reuse_cost` / `update_cost`."""
    timed = measure or (lambda step: contextlib.nullcontext())
    x, y = scenario_data(picks, "test")
    with timed("reuse") as m:
        scores = compose_scores([p.module for p in picks], x, batch_size, progress)
    result: dict[str, Any] = {
        "picks": [p.label for p in picks], "n_images": int(len(y)),
        "MA": metrics.top_k_accuracy(scores, y, 1),
        "MA_top5": metrics.top_k_accuracy(scores, y, min(5, len(picks)))}
    if m is not None:
        result["reuse_cost"] = m.report
    if update:
        with timed("update") as mu:
            updated = update_modules(picks, limit=update_limit, batch_size=batch_size,
                                     progress=progress)
            scores_u = compose_scores(updated, x, batch_size, progress)
        result["MMA"] = metrics.top_k_accuracy(scores_u, y, 1)
        result["updated_weight_fraction"] = [u.size().get("weights_fraction") for u in updated]
        if mu is not None:
            result["update_cost"] = mu.report
    return result


def update_modules(picks: Sequence[Pick], *, limit: int | None = None, batch_size: int = 256,
                   progress: bool = False) -> list[Any]:
    """Section 3.5: each pick's module observes *training* images of the other picks' classes
    as unconcerned inputs and is re-modularized. Per other class it takes `limit` images, by
    default floor(E / (k - 1)) as tangling identification does (E: the module's own class's
    training images, k: the number of picks), and at least one."""
    own = [int(np.sum(p.dataset.split("train")[1] == p.class_index)) for p in picks]
    counts = tangling_counts(np.array(own), "balanced" if limit is None else int(limit))
    updated = []
    for j, p in enumerate(picks):
        per_class = max(1, int(counts[j]))
        others = [class_images(q.dataset, q.class_index, "train", per_class)
                  for k, q in enumerate(picks) if k != j]
        u = update_module(p.module, _as_input(np.concatenate(others), p.module.preprocessing),
                          batch_size=batch_size, progress=progress)
        u.preprocessing = p.module.preprocessing
        updated.append(u)
    return updated


def evaluate_replace(target, donor, classes: Sequence[int], x: np.ndarray, y: np.ndarray, *,
                     batch_size: int = 256, progress: bool = False) -> dict[str, Any]:
    """For each class c: composed top-1 / top-5 of `target` with module c replaced by `donor`'s
    module c, against the unchanged composition. Scores of every module are computed once."""
    missing = [int(c) for c in classes
               if c not in set(target.classes.tolist()) or c not in set(donor.classes.tolist())]
    if missing:
        raise DataError(f"replace: classes {missing} are not in both module sets (target: "
                        f"{target.classes.tolist()}, donor: {donor.classes.tolist()})")
    base = compose_scores(list(target), x, batch_size, progress)
    donor_cols = compose_scores([donor[c] for c in classes], x, batch_size, progress)
    donor_scores = {c: donor_cols[:, i] for i, c in enumerate(classes)}
    cls = target.classes
    rows = []
    for c in classes:
        s = base.copy()
        s[:, int(np.flatnonzero(cls == c)[0])] = donor_scores[c]
        rows.append({"class": int(c), "top1": metrics.top_k_accuracy(s, y, 1, cls),
                     "top5": metrics.top_k_accuracy(s, y, 5, cls)})
    return {"composed": {"top1": metrics.top_k_accuracy(base, y, 1, cls),
                         "top5": metrics.top_k_accuracy(base, y, 5, cls)},
            "replaced": rows, "n_images": int(len(y))}


def replace_table(res: dict[str, Any], class_names: Sequence[str] | None = None) -> str:
    """Markdown table of `evaluate_replace`'s result: each replaced class's composed top-1 /
    top-5 and their change against the composition without replacement."""
    base = res["composed"]
    rows = [[class_names[r["class"]] if class_names is not None else r["class"],
             f"{100 * r['top1']:.2f}%", f"{100 * r['top5']:.2f}%",
             f"{100 * (r['top1'] - base['top1']):+.2f}",
             f"{100 * (r['top5'] - base['top5']):+.2f}"] for r in res["replaced"]]
    return (f"Composed without replacement: top-1 {100 * base['top1']:.2f}%, top-5 "
            f"{100 * base['top5']:.2f}% on {res['n_images']} test images.\n\n"
            + markdown_table(["class replaced", "top-1", "top-5", "delta top-1 (pp)",
                              "delta top-5 (pp)"], rows))
