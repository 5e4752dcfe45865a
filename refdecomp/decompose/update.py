"""Updating a decomposed module (paper Section 3.5).

A module reused beside modules of another dataset has never observed that dataset's classes.
Updating re-applies tangling identification (Section 3.3) with those classes' images as extra
unconcerned inputs: one recording pass over them on the source model, OR-ed into the module's
observed activity (`Module.active`, the concern + tangling map before backtracking), then the
module's masks are re-derived exactly as `decompose` derives them (same backtracking mode and
head). Nodes can only come back, never go: more observed inputs never make more nodes inactive.

Ambiguity: the paper's prose says the update "removes the nodes responsible for detecting" the
other class, while it also calls the update a re-application of tangling identification, which
adds observed inputs and so keeps *more* nodes. We implement the re-application (the operation
the paper names); see docs/algorithm.md.
"""
from __future__ import annotations

import numpy as np

from ..errors import DataError
from ..interpreter import Recorder
from ..modules import Module
from . import _n_images
from .backtrack import prune_masks


def update_module(module, x, *, batch_size: int = 256, progress: bool = False):
    """A new `Module`: `module` after observing images `x` as unconcerned inputs."""
    n = _n_images(x)
    if n == 0:
        raise DataError("update: no unconcerned images given")
    model = module.source_model
    active = module.active
    recorder = Recorder(model.graph, 1, nodes=list(active))
    model.run(x, batch_size, recorder=recorder, groups=np.zeros(n, dtype=np.int64),
              progress=progress)
    seen = recorder.seen
    new_active = {k: (active[k] | seen[k][0]).astype(np.uint8) for k in active}
    backtrack = module.info.get("backtrack", "none")
    masks = dict(new_active)
    if backtrack != "none":
        masks = prune_masks(module.graph, new_active, backtrack,
                            exclude=frozenset({module.head_name}))
    info = {**module.info, "updated_with_images": module.info.get("updated_with_images", 0) + n}
    return Module(model, module.class_index, module.head_kernel, module.head_bias, masks,
                  class_name=module.class_name, info=info, active=new_active,
                  channeling=module.channeling)
