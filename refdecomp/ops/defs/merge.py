"""add (two or more inputs, broadcasting) and concatenate."""
from __future__ import annotations

import numpy as np

from ...reader.config import MAX_DIM
from ...reader.params import Lowered, bad, integer
from ...reader.shapes import add_shape, concat_shape
from .. import reference as ref
from ..channels import Add, Concatenate
from ..registry import KerasLayer, OpSpec, register
from ..rules import nonbatch_axis, per_channel, same_live


def read_add(layer, shapes, w, dialect) -> Lowered:
    if len(shapes) < 2:
        raise bad(layer, dialect, f"expects at least two inputs, got {len(shapes)}")
    return Lowered("add", {})


def read_concatenate(layer, shapes, w, dialect) -> Lowered:
    return Lowered("concatenate", {"axis": integer(layer.config.get("axis", -1), layer, dialect,
                                                   "axis", -MAX_DIM)})


def concat_live(node, out, in_shapes, mode):
    """Each input is its slice of the output along the axis."""
    axis = nonbatch_axis(node.attrs["axis"])
    sizes = np.cumsum([s[axis] for s in in_shapes])[:-1]
    return [p.copy() for p in np.split(out, sizes, axis=axis)]


def add_units(node, units, src, graph):
    """The sum carries the unit in its channel, mixed with the other operands."""
    return per_channel(node, units), False


def concat_units(node, units, src, graph):
    """The unit map in its slice, -1 in the other operands'."""
    parts = [np.asarray(units) if s == src else np.full(graph[s].shape, -1)
             for s in node.inputs]
    return np.concatenate(parts, axis=nonbatch_axis(node.attrs["axis"])), True


register(
    OpSpec(name="add", attrs="-", n_inputs=None,
           keras={"Add": KerasLayer(read_add, n_inputs=None)},
           shape=lambda attrs, weights, shapes, where: add_shape(shapes),
           reference=ref.add, lowering="add", liveness=same_live, units=add_units,
           compaction=Add(),
           export=lambda node, k: k.add("Add", {})),
    OpSpec(name="concatenate",
           attrs="axis (negative or positive, counted *with* the batch axis)", n_inputs=None,
           keras={"Concatenate": KerasLayer(read_concatenate, n_inputs=None)},
           shape=lambda attrs, weights, shapes, where: concat_shape(
               int(attrs.get("axis", -1)), shapes),
           reference=ref.concatenate, liveness=concat_live, units=concat_units,
           compaction=Concatenate(),
           export=lambda node, k: k.add("Concatenate", {"axis": int(node.attrs.get("axis", -1))})),
)
