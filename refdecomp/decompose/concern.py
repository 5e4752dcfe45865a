"""Concern Identification (paper Section 3.2): the nodes a module keeps.

A node is a position x channel of a conv2d output or a unit of a dense output. It is *inactive*
for a module when its value (after a folded batch norm, before the activation) was <= 0 for
every input the module observed (its own class plus the tangling inputs, Section 3.3); the
module forces inactive nodes to 0. The output (head) dense layer is never masked: channeling
(Section 3.4) rewrites it instead.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..errors import RefdecompError


def keep_masks(seen: Mapping[str, np.ndarray], module_groups: np.ndarray,
               nodes: list[str]) -> dict[str, np.ndarray]:
    """{node: uint8 keep mask of the node's output shape} for the listed nodes.

    `seen[node]` has shape (n_groups, *node shape); a node is kept when any of the module's
    groups saw a value > 0 there.
    """
    masks = {}
    for name in nodes:
        rec = np.asarray(seen[name])
        if module_groups.size == 0:
            masks[name] = np.zeros(rec.shape[1:], dtype=np.uint8)
        else:
            masks[name] = np.any(rec[module_groups] != 0, axis=0).astype(np.uint8)
    return masks


# -- graded rule and whole channels (counts of active images, not only bits) -----------------
#: Units a module keeps or removes: single nodes, or whole conv2d filters / dense units.
GRANULARITIES = ("node", "channel")


def check_activity_options(threshold, granularity: str) -> float:
    """`threshold` as a float in [0, 1) and a known granularity; RefdecompError otherwise."""
    if isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, (int, float,
                                                                             np.number)):
        raise RefdecompError(f"argument activity_threshold={threshold!r}: expected a number "
                             f"in [0, 1)")
    t = float(threshold)
    if not (0.0 <= t < 1.0):
        raise RefdecompError(f"argument activity_threshold={threshold!r}: expected a number "
                             f"in [0, 1) (0 is the paper's rule: kept when active on any "
                             f"observed image)")
    if granularity not in GRANULARITIES:
        raise RefdecompError(f"argument granularity={granularity!r}: expected one of "
                             f"{GRANULARITIES}")
    return t


def activity_masks(counts: Mapping[str, np.ndarray], group_sizes: np.ndarray,
                   module_groups: np.ndarray, nodes: list[str], threshold: float = 0.0,
                   granularity: str = "node",
                   channel_axes: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """{node: uint8 keep mask} by the graded rule (see docs/algorithm.md, "Graded rule").

    `counts[node]` (n_groups, *shape): images of each group with value > 0 there;
    `group_sizes[g]`: images in group g. With n the images the module observes (its groups):

    - "node": a node is kept when it was active on at least a fraction `threshold` of the n
      images, and on at least one (threshold 0 is the paper's rule, `keep_masks`);
    - "channel": a conv2d filter / dense unit is kept, at all its positions, when its mean
      activity over positions (active (image, position) pairs / (n * positions)) is at least
      `threshold`, and it was active somewhere. `channel_axes[node]` is the channel axis of
      the node's shape (without batch axis).
    """
    t = check_activity_options(threshold, granularity)
    n_obs = int(np.asarray(group_sizes, dtype=np.int64)[module_groups].sum())
    masks = {}
    for name in nodes:
        rec = np.asarray(counts[name])
        c = rec[module_groups].sum(axis=0, dtype=np.int64) if module_groups.size else \
            np.zeros(rec.shape[1:], np.int64)
        if granularity == "node":
            keep = (c > 0) & (c >= t * n_obs)
        else:
            axis = (channel_axes or {}).get(name, -1) % c.ndim
            others = tuple(a for a in range(c.ndim) if a != axis)
            per_channel = c.sum(axis=others, keepdims=True)
            positions = c.size // c.shape[axis]
            keep = np.broadcast_to((per_channel > 0) & (per_channel >= t * n_obs * positions),
                                   c.shape)
        masks[name] = keep.astype(np.uint8)
    return masks
