"""input (a model input) and channel_logsumexp (a module's head; only in module graphs)."""
from __future__ import annotations

import numpy as np

from ...errors import InternalError
from ...reader.shapes import ShapeError
from .. import reference as ref
from ..channels import Barrier
from ..registry import OpSpec, register


def _input_shape(attrs, weights, shapes, where):
    raise InternalError("an input node's shape is given, never inferred")


def _input_reference(node, inputs):
    raise InternalError(f"input node {node.name!r} is fed, never run")


def export_input(node, k) -> str:
    return k.add("InputLayer", {"batch_input_shape": [None, *node.shape],
                                "dtype": str(node.attrs.get("dtype", "float32"))})


def logsumexp_shape(attrs, weights, shapes, where):
    (x,) = shapes
    c = attrs.get("class_index", 0)
    if len(x) != 1 or (x[0] is not None and not 0 <= c < x[0]):
        raise ShapeError(f"class_index {c} does not fit logits of shape {x}")
    return (2,)


def logsumexp_live(node, out, in_shapes, mode):
    """The concerned output reads z_c, the unconcerned one every other logit."""
    c = node.attrs["class_index"]
    live = np.full(in_shapes[0], bool(out[1]))
    live[c] = bool(out[0])
    return [live]


register(
    OpSpec(name="input", attrs="dtype", n_inputs=0, shape=_input_shape,
           reference=_input_reference, liveness=None, compaction=Barrier(), export=export_input),
    OpSpec(name="channel_logsumexp",
           attrs="class_index: (N,) logits -> (2,) [z_c, logsumexp of the others]",
           shape=logsumexp_shape, reference=ref.channel_logsumexp, liveness=logsumexp_live,
           compaction=Barrier(),
           export=lambda node, k: k.add("ChannelLogSumExp",
                                        {"class_index": int(node.attrs["class_index"])})),
)
