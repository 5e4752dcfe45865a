"""Concern Identification (paper Section 3.2): the nodes a module keeps.

A node is a position x channel of a conv2d output or a unit of a dense output. It is *inactive*
for a module when its value (after a folded batch norm, before the activation) was <= 0 for
every input the module observed (its own class plus the tangling inputs, Section 3.3); the
module forces inactive nodes to 0. The output (head) dense layer is never masked: channeling
(Section 3.4) rewrites it instead.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np


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
