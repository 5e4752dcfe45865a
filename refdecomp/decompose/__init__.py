"""Decompose a trained CNN into one module per output class (paper Sections 3.2-3.4).

`decompose` runs one streaming pass over the data recording, per group of images, which conv2d /
dense nodes ever took a value > 0 (recording.py; `observe`), then builds every module from
those bits (`build_modules`, which can be called again on the same observation with another
backtracking setting):
Concern + Tangling Identification (concern.py, tangling.py), channeling of the head
(channeling.py) and, optionally, backtracking (backtrack.py).
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DataError, RefdecompError
from .backtrack import MODES, prune_masks
from .channeling import (
    CHANNELINGS,
    DELTA_RULES,
    DELTA_SCALES,
    channel_weights,
    channeled_graph,
    check_channeling,
    delta_removals,
    delta_threshold,
    find_head,
    head_weights,
)
from .concern import GRANULARITIES, activity_masks, check_activity_options, keep_masks
from .recording import GroupPlan, check_labels, plan_groups

# `import refdecomp` binds this package's functions, so it keeps its top-level imports light:
# the interpreter, the model loader and `refdecomp.modules` (which imports this package) are
# imported inside the functions that use them.

__all__ = ["decompose", "observe", "build_modules", "Observation", "BACKTRACK_MODES",
           "DELTA_RULES", "DELTA_SCALES", "CHANNELINGS", "GRANULARITIES"]

#: "none": CI + TI + channeling (Table 1, "CI+TI+MC"); "last_conv": + MC-BLN; "input": + MC-BI.
BACKTRACK_MODES = ("none", *MODES)

#: Default rule for MC-BLN's head-input removal (see docs/algorithm.md for the measurement).
DEFAULT_DELTA_RULE = "prose"


@dataclass
class Observation:
    """What one recording pass saw: how the images were grouped (`plan`) and, per hidden
    conv2d / dense node, which output positions took a value > 0 in each group (`seen`) and
    on how many of the group's images (`counts`, uint32; None for a bits-only recording).
    `group_sizes[g]` is the number of images in group g. Modules for any backtracking
    setting, activity threshold and granularity are built from it without another pass."""

    plan: GroupPlan
    seen: dict[str, np.ndarray]
    n_images: int
    tangling: str | int
    seed: int
    counts: dict[str, np.ndarray] | None = None
    group_sizes: np.ndarray | None = None

    def state_bytes_per_group(self) -> int:
        """Bytes of recorded state per group: 4 per node with counts (1 for bits only)."""
        rec = self.seen if self.counts is None else self.counts
        return int(sum(a[0].nbytes for a in rec.values()))


def decompose(model, x, y, *, backtrack: str = "last_conv", delta: float = 0.5,
              delta_rule: str = DEFAULT_DELTA_RULE, delta_scale: str = "relative",
              channeling: str = "mean", tangling: str | int = "balanced",
              seed: int = 0, batch_size: int = 256, progress: bool = False,
              class_names: Sequence[str] | None = None, data: str = "", client=None,
              activity_threshold: float = 0.0, granularity: str = "node",
              max_per_class: int | None = None):
    """Decompose `model` into one module per output class, observing images `x` labelled `y`.

    `model`: a `refdecomp.interpreter.Model` or a path to a Keras model file. `x`: images as
    the model takes them (batch first); `y`: class indices (or one-hot). `backtrack`: "none",
    "last_conv" (MC-BLN, the paper's choice) or "input" (MC-BI). `delta`, `delta_rule`,
    `delta_scale`: MC-BLN's removal of head inputs (not used with backtrack="none"); with
    `delta_scale="relative"` (default) the threshold is delta x max|W| of the head kernel, with
    "absolute" it is delta itself (the paper). `channeling`: "mean" (the paper's unconcerned
    output, the mean of the other classes' logits) or "logsumexp" (P(concerned) is then the
    model's own softmax probability of the class). `tangling`: "balanced"
    (floor(E/(N-1)) inputs of each other class, Section 3.3), "none", or a fixed int. `seed`
    picks the tangling samples. `data` is a free-text description stored with the modules.
    `client`: a `dask.distributed.Client` to run the recording pass on a cluster (see
    `observe`). `activity_threshold` t in [0, 1): keep a node (or, with
    `granularity="channel"`, a whole conv2d filter / dense unit) only when it was active on at
    least a fraction t of the images the module observed; 0 is the paper's rule (see
    `build_modules`). `max_per_class` E: each module observes at most E seeded images of its
    own class (tangling counts follow). Returns a `refdecomp.modules.ModuleSet` with `ms[c]`
    the module of class c.

    The same as `build_modules(model, observe(model, x, y, ...), ...)`.
    """
    _check_delta(delta)
    _check_build_options(backtrack, delta, delta_rule, delta_scale, channeling)
    check_activity_options(activity_threshold, granularity)
    model = _as_model(model)
    obs = observe(model, x, y, tangling=tangling, seed=seed, batch_size=batch_size,
                  progress=progress, client=client, max_per_class=max_per_class)
    return build_modules(model, obs, backtrack=backtrack, delta=delta, delta_rule=delta_rule,
                         delta_scale=delta_scale, channeling=channeling,
                         class_names=class_names, data=data,
                         activity_threshold=activity_threshold, granularity=granularity,
                         max_per_class=max_per_class)


def observe(model, x, y, *, tangling: str | int = "balanced", seed: int = 0,
            batch_size: int = 256, progress: bool = False, client=None, counts: bool = True,
            max_per_class=None) -> Observation:
    """The recording pass of `decompose`: group the images (tangling samples included) and
    stream them once through `model`, recording activity per group.

    With a `dask.distributed.Client`, the images are processed as partitions on its workers
    (`x`: a dask array, a list of `.npz` shards holding `x` and `y`, or an array) and the
    records reduced in a tree; the result is the same as in process for any partitioning
    (`refdecomp.distributed`). The model must then come from a file.

    In process, activity is recorded as image counts per node (`counts=True`, what graded and
    channel rules need) or as bits only (`counts=False`; the distributed pass records bits).
    `max_per_class`: None, a cap E, or a list of caps that `build_modules` may then choose from
    (the groups are cut so that one pass serves every cap)."""
    if client is not None:
        if max_per_class is not None:
            raise RefdecompError("observe: max_per_class is not supported with a dask client")
        from ..distributed import observe_distributed

        return observe_distributed(client, model, x, y, tangling=tangling, seed=seed,
                                   batch_size=batch_size, progress=progress)
    model = _as_model(model)
    seed = _check_seed(seed)
    head, _ = find_head(model.graph)
    n_classes = head.weights["kernel"].shape[1]
    n = _n_images(x)
    y = check_labels(y, n, n_classes)
    if n == 0:
        raise DataError("decompose: x holds no images")
    _check_finite(x)
    plan = plan_groups(y, n_classes, tangling, seed, max_per_class)
    _warn_degenerate(plan, n_classes)
    recorder = _record(model, x, plan, _hidden(model.graph, head), batch_size, progress,
                       counts)
    group_sizes = np.bincount(plan.groups, minlength=plan.n_groups).astype(np.int64)
    return Observation(plan, recorder.seen, n, tangling, int(seed),
                       counts=recorder.counts if counts else None, group_sizes=group_sizes)


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"argument seed={seed!r}: expected an integer >= 0")
    return int(seed)


def _check_delta(delta) -> float:
    if isinstance(delta, bool) or not isinstance(delta, (int, float, np.integer, np.floating)) \
            or not np.isfinite(delta):
        raise DataError(f"argument delta={delta!r}: expected a finite number")
    return float(delta)


def _check_finite(x, chunk: int = 4096) -> None:
    """Refuse NaN or infinite pixels: activity recorded on them would mean nothing."""
    arrays = list(x.values()) if isinstance(x, dict) else \
        list(x) if isinstance(x, (list, tuple)) else [x]
    for a in arrays:
        a = np.asarray(a)
        if np.issubdtype(a.dtype, np.complexfloating) or not (
                np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            raise DataError(f"decompose: images must hold real numbers, got dtype {a.dtype}")
        if not np.issubdtype(a.dtype, np.floating):
            continue
        for start in range(0, len(a), chunk):
            if not np.isfinite(a[start:start + chunk]).all():
                raise DataError(f"decompose: the images hold NaN or infinite values (first in "
                                f"images {start}..{min(start + chunk, len(a)) - 1}); clean the "
                                f"data first")


def _warn_degenerate(plan, n_classes: int) -> None:
    """Say which modules would be built from no image of their own class, or from no image at
    all: their masks then keep nothing, or only what other classes activate."""
    absent = [c for c in range(n_classes) if plan.class_counts[c] == 0]
    blind = [c for c in range(n_classes) if not plan.observed(c).any()]
    if blind:
        warnings.warn(f"decompose: the modules of classes {blind} observe no image at all "
                      f"(no image of their class, and no tangling images); they keep nothing "
                      f"and always answer 'unconcerned'. Give images of every class",
                      stacklevel=3)
    absent = [c for c in absent if c not in blind]
    if absent:
        warnings.warn(f"decompose: classes {absent} have no images; their modules are built "
                      f"from other classes' (tangling) images only. Give images of every class",
                      stacklevel=3)


def build_modules(model, obs: Observation, *, backtrack: str = "last_conv",
                  delta: float = 0.5, delta_rule: str = DEFAULT_DELTA_RULE,
                  delta_scale: str = "relative", channeling: str = "mean",
                  class_names: Sequence[str] | None = None, data: str = "",
                  activity_threshold: float = 0.0, granularity: str = "node",
                  max_per_class: int | None = None):
    """One module per class from an `Observation` of `model` (see `decompose` for the
    arguments): concern and tangling identification, channeling, and backtracking.

    `activity_threshold` t and `granularity` ("node" | "channel") choose what concern and
    tangling identification keep (`concern.activity_masks`): t = 0 with "node" is the paper's
    rule and gives exactly the masks of the bits alone. `max_per_class`: one of the caps the
    observation was planned for (None: every image of the class)."""
    from ..modules import Module, ModuleSet

    delta = _check_delta(delta)
    _check_build_options(backtrack, delta, delta_rule, delta_scale, channeling)
    threshold_t = check_activity_options(activity_threshold, granularity)
    graded = threshold_t > 0 or granularity != "node"
    if obs.counts is None and threshold_t > 0:
        raise DataError("build_modules: activity_threshold > 0 needs an observation with "
                        "counts (observe(..., counts=True))")
    model = _as_model(model)
    graph = model.graph
    head, tail = find_head(graph)
    kernel, bias = head.weights["kernel"], head.weights.get("bias")
    n_classes = kernel.shape[1]
    if class_names is not None and len(class_names) != n_classes:
        raise DataError(f"class_names: {len(class_names)} names for a model with "
                        f"{n_classes} classes")
    hidden = _hidden(graph, head)
    if set(obs.seen) != set(hidden) or obs.plan.tangling.shape[0] != n_classes:
        raise DataError("build_modules: the observation was recorded on a different model")
    plan, seen = obs.plan, obs.seen
    module_groups, tangling_k = plan.for_cap(max_per_class)
    threshold = delta_threshold(kernel, delta, delta_scale)
    options: dict[str, Any] = {"backtrack": backtrack, "delta": float(delta),
                               "delta_rule": delta_rule, "delta_scale": delta_scale,
                               "delta_threshold": threshold, "channeling": channeling,
                               "tangling": obs.tangling, "seed": obs.seed,
                               "activity_threshold": threshold_t, "granularity": granularity,
                               "max_per_class": max_per_class}
    activity = obs.counts if obs.counts is not None else seen
    sizes = obs.group_sizes if obs.group_sizes is not None else \
        np.bincount(plan.groups, minlength=plan.n_groups)
    axes = {name: channel_axis(graph[name]) for name in hidden}
    modules = []
    for c in range(n_classes):
        hk, hb = head_weights(kernel, bias, c, channeling)
        if graded:
            masks = active = activity_masks(activity, sizes, module_groups[c], hidden,
                                            threshold_t, granularity, axes)
        else:
            masks = active = keep_masks(seen, module_groups[c], hidden)
        removed = np.zeros(hk.shape[0], dtype=bool)
        if backtrack != "none":
            # the rule reads the mean-channeled weights [W_c, mean of the others] whatever the
            # channeling; a removed input loses all its outgoing head weights
            removed = delta_removals(channel_weights(kernel, bias, c)[0], threshold, delta_rule)
            hk[removed] = 0
            g = channeled_graph(graph, head, tail, hk, hb, channeling, c)
            masks = prune_masks(g, masks, backtrack, exclude=frozenset({head.name}))
        info = {"observed_images": int(sizes[module_groups[c]].sum()),
                "tangling_per_class": int(tangling_k[c]),
                "head_inputs_removed": int(removed.sum())}
        modules.append(Module(model, c, hk, hb, masks,
                              class_name=None if class_names is None else str(class_names[c]),
                              info={**info, "backtrack": backtrack}, active=active,
                              channeling=channeling))
    data_info = {"description": data, "n_images": obs.n_images,
                 "class_counts": plan.class_counts.tolist(),
                 "tangling_counts": tangling_k.tolist()}
    return ModuleSet(modules, model, options=options, data=data_info,
                     class_names=None if class_names is None else list(map(str, class_names)))


def _check_build_options(backtrack: str, delta, delta_rule: str, delta_scale: str,
                         channeling: str) -> None:
    if backtrack not in BACKTRACK_MODES:
        raise RefdecompError(f"argument backtrack={backtrack!r}: expected one of "
                             f"{BACKTRACK_MODES}")
    if delta_rule not in DELTA_RULES:
        raise RefdecompError(f"argument delta_rule={delta_rule!r}: expected one of "
                             f"{DELTA_RULES}")
    delta_threshold(np.ones((1, 1), np.float32), delta, delta_scale)  # checks both
    check_channeling(channeling)


def channel_axis(node) -> int:
    """Channel axis of a conv2d / dense node's output shape (no batch axis): filters / units."""
    return node.spec.channel_axis(node)


def _hidden(graph, head) -> list[str]:
    return [nd.name for nd in graph.weighted_nodes() if nd.name != head.name]


def _as_model(model):
    from ..interpreter import Model

    if isinstance(model, Model):
        return model
    if isinstance(model, (str, os.PathLike)):
        from ..loading import load_model

        return load_model(model)
    raise RefdecompError(f"argument model: expected a refdecomp Model or a model file path, got "
                         f"{type(model).__name__}")


def _n_images(x) -> int:
    first = x[0] if isinstance(x, (list, tuple)) else (
        next(iter(x.values())) if isinstance(x, dict) else x)
    return int(np.shape(first)[0]) if np.ndim(first) else 0


def _record(model, x, plan, hidden, batch_size, progress, counts=False):
    from ..interpreter import Recorder

    recorder = Recorder(model.graph, plan.n_groups, nodes=hidden, counts=counts)
    model.run(x, batch_size, recorder=recorder, groups=plan.groups, progress=progress)
    return recorder
