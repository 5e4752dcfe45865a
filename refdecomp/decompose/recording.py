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

from ..errors import DataError
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

    def observed(self, m: int) -> np.ndarray:
        """Boolean mask over images: those module m observes."""
        return np.isin(self.groups, self.module_groups[m])


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


def plan_groups(y: np.ndarray, n_classes: int, tangling: str | int = "balanced",
                seed: int = 0) -> GroupPlan:
    """Bucket the images so that one recording pass serves every module (see module docstring).

    Draws one permutation per class with `np.random.default_rng(seed)` (classes in index order).
    Warns when a class has fewer images than a module asks for (all of them are then used).
    """
    y = np.asarray(y, dtype=np.int64)
    counts = np.bincount(y, minlength=n_classes)
    k = tangling_counts(counts, tangling)
    rng = np.random.default_rng(seed)
    groups = np.empty(y.shape[0], dtype=np.int32)
    group_class: list[int] = []
    # per class c: bucket upper bounds (exclusive rank limits) and their group ids
    bounds_of: list[np.ndarray] = []
    first_gid: list[int] = []
    for c in range(n_classes):
        idx = np.flatnonzero(y == c)
        perm = idx[rng.permutation(idx.size)]
        others = np.delete(k, c)
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
    module_groups = []
    for m in range(n_classes):
        if counts[m] == 0:
            warnings.warn(f"class {m} has no images in the data: its module observes "
                          f"only its tangling inputs of other classes (if any)", stacklevel=3)
        ids = [first_gid[m] + j for j in range(bounds_of[m].size)]
        for c in range(n_classes):
            if c == m or k[m] == 0:
                continue
            if counts[c] < k[m]:
                warnings.warn(f"tangling: the module of class {m} asks for {k[m]} images of "
                              f"class {c}, which has only {counts[c]}; all {counts[c]} are used",
                              stacklevel=3)
            take = min(int(k[m]), int(counts[c]))
            ids += [first_gid[c] + j for j, b in enumerate(bounds_of[c]) if b <= take]
        module_groups.append(np.asarray(sorted(ids), dtype=np.int32))
    return GroupPlan(groups, len(group_class), np.asarray(group_class, dtype=np.int64),
                     module_groups, counts, k)
