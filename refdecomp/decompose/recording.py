"""One streaming pass records what every module observes (the grouping behind Sections 3.2-3.3).

Each module m observes all inputs of its class plus the first K_m inputs of every other class c
in one seeded permutation of class c (nested samples: a module with a smaller K sees a prefix
of what a module with a larger K sees). Images are therefore bucketed, per class, by their rank
in that permutation against the sorted distinct K values; the recorder keeps one "value > 0 was
seen" bit map per bucket (group), and a module's observations are the OR of its buckets. One
forward pass thus serves all modules, and memory depends on the number of groups, never on the
number of images.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ..errors import DataError, RefdecompError
from .tangling import tangling_counts


@dataclass
class GroupPlan:
    """Group id per image and, per module, the group ids whose images the module observes."""

    groups: np.ndarray            # (n_images,) int32 group id of each image
    n_groups: int
    group_class: np.ndarray       # (n_groups,) class of the images in each group
    module_groups: list[np.ndarray]  # module m -> int array of group ids it observes
    class_counts: np.ndarray      # E_c: images of each class
    tangling: np.ndarray          # K_m: images of each other class module m observes
    # max_per_class cap -> (module groups, K) under that cap (None: no cap, the fields above)
    by_cap: dict | None = None

    def observed(self, m: int, max_per_class: int | None = None) -> np.ndarray:
        """Boolean mask over images: those module m observes (under a `max_per_class` cap)."""
        return np.isin(self.groups, self.for_cap(max_per_class)[0][m])

    def for_cap(self, max_per_class: int | None) -> tuple[list[np.ndarray], np.ndarray]:
        """(module groups, tangling counts K) when every module observes at most
        `max_per_class` images of its own class; DataError for a cap not planned."""
        caps = self.by_cap or {None: (self.module_groups, self.tangling)}
        if max_per_class not in caps:
            raise DataError(f"argument max_per_class={max_per_class!r}: the observation was "
                            f"recorded for max_per_class in {sorted(caps, key=str)}; observe "
                            f"with that value too")
        return caps[max_per_class]


def check_labels(y, n_images: int, n_classes: int, what: str = "labels y") -> np.ndarray:
    """Labels as a 1-D int64 array in [0, n_classes); DataError otherwise (strings, NaN,
    fractions, negative or too large values, a shape that is neither (n,) nor one-hot)."""
    y = np.asarray(y)
    if y.dtype == bool or not (np.issubdtype(y.dtype, np.integer) or
                               np.issubdtype(y.dtype, np.floating)):
        raise DataError(f"{what}: expected integer class indices, got dtype {y.dtype}")
    if y.ndim == 2 and y.shape[1] == n_classes and n_classes > 1:
        y = y.argmax(axis=1)  # one-hot labels
    elif y.ndim > 1 and not (y.ndim == 2 and y.shape[1] == 1):
        raise DataError(f"{what}: shape {y.shape} is neither ({n_images},) nor one-hot "
                        f"({n_images}, {n_classes})")
    y = y.reshape(-1)
    if y.shape[0] != n_images:
        raise DataError(f"{what}: {y.shape[0]} labels for {n_images} images; "
                        f"give one label per image")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.isfinite(y)) or not np.all(np.equal(np.mod(y, 1), 0)):
            raise DataError(f"{what}: expected integer class indices (found fractional, NaN "
                            f"or infinite values)")
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise DataError(f"{what}: values must lie in [0, {n_classes}) for a model with "
                        f"{n_classes} output classes; found {y.min()}..{y.max()}")
    return y.astype(np.int64)


def check_caps(max_per_class) -> list[int | None]:
    """`max_per_class` (None, an int >= 1, or a sequence of them) as a list of caps."""
    caps = list(max_per_class) if isinstance(max_per_class, (list, tuple)) else [max_per_class]
    for cap in caps:
        if cap is not None and (isinstance(cap, (bool, np.bool_)) or not isinstance(
                cap, (int, np.integer)) or cap < 1):
            raise RefdecompError(f"argument max_per_class={max_per_class!r}: expected None or "
                                 f"an int >= 1 (or a list of them)")
    return [None if c is None else int(c) for c in caps]


def plan_groups(y: np.ndarray, n_classes: int, tangling: str | int = "balanced",
                seed: int = 0, max_per_class=None) -> GroupPlan:
    """Bucket the images so that one recording pass serves every module (see module docstring).

    Draws one permutation per class with `np.random.default_rng(seed)` (classes in index order).
    Warns when a class has fewer images than a module asks for (all of them are then used).
    `max_per_class` (an int E or a list of them): also plan for modules that observe only the
    first E images of their own class in that permutation (tangling counts from min(E, E_c));
    the first cap is the plan's default. Without it, every image of the class is observed.
    """
    caps = check_caps(max_per_class)
    caps_all = caps if None in caps else [*caps, None]
    y = np.asarray(y, dtype=np.int64)
    counts = np.bincount(y, minlength=n_classes)
    ks = {cap: tangling_counts(counts if cap is None else np.minimum(counts, cap), tangling)
          for cap in caps_all}
    rng = np.random.default_rng(seed)
    groups = np.empty(y.shape[0], dtype=np.int32)
    group_class: list[int] = []
    # per class c: bucket upper bounds (exclusive rank limits) and their group ids
    bounds_of: list[np.ndarray] = []
    first_gid: list[int] = []
    for c in range(n_classes):
        idx = np.flatnonzero(y == c)
        perm = idx[rng.permutation(idx.size)]
        others = np.concatenate([np.delete(k, c) for k in ks.values()]
                                + [[cap] for cap in caps_all if cap is not None])
        cuts = np.unique(np.clip(others, 0, counts[c]))
        cuts = cuts[(cuts > 0) & (cuts < counts[c])]
        bounds = np.append(cuts, counts[c]).astype(np.int64)
        ranks = np.empty(idx.size, dtype=np.int64)
        ranks[np.searchsorted(idx, perm)] = np.arange(idx.size)  # rank of each image of c
        bucket = np.searchsorted(bounds, ranks, side="right")
        gid0 = len(group_class)
        groups[idx] = gid0 + bucket
        first_gid.append(gid0)
        bounds_of.append(bounds)
        group_class.extend([c] * bounds.size)
    for m in range(n_classes):
        if counts[m] == 0:
            warnings.warn(f"class {m} has no images in the data: its module observes "
                          f"only its tangling inputs of other classes (if any)", stacklevel=3)
    by_cap = {cap: (_module_groups(counts, ks[cap], cap, first_gid, bounds_of), ks[cap])
              for cap in caps_all}
    groups_0, k_0 = by_cap[caps[0]]
    return GroupPlan(groups, len(group_class), np.asarray(group_class, dtype=np.int64),
                     groups_0, counts, k_0, by_cap)


def _module_groups(counts, k, cap, first_gid, bounds_of) -> list[np.ndarray]:
    """Per module m: the groups of its own class (ranks below `cap`) and of its K_m tangling
    images of every other class."""
    n_classes = counts.size
    module_groups = []
    for m in range(n_classes):
        own = counts[m] if cap is None else min(cap, counts[m])
        ids = [first_gid[m] + j for j, b in enumerate(bounds_of[m]) if b <= own]
        for c in range(n_classes):
            if c == m or k[m] == 0:
                continue
            if counts[c] < k[m]:
                warnings.warn(f"tangling: the module of class {m} asks for {k[m]} images of "
                              f"class {c}, which has only {counts[c]}; all {counts[c]} are used",
                              stacklevel=4)
            take = min(int(k[m]), int(counts[c]))
            ids += [first_gid[c] + j for j, b in enumerate(bounds_of[c]) if b <= take]
        module_groups.append(np.asarray(sorted(ids), dtype=np.int32))
    return module_groups
