"""flatten, reshape, zero_pad2d: ops that move elements without computing."""
from __future__ import annotations

import numpy as np

from ...reader.params import Lowered, bad, data_format, integer, pair
from ...reader.shapes import ShapeError, from_hwc, hwc, prod, reshape_shape
from .. import reference as ref
from ..channels import Barrier, Flatten, Spatial
from ..registry import KerasLayer, OpSpec, register
from ..rules import channels_first, flat_index_map, units_spatial


# -- flatten / reshape --------------------------------------------------------------------------
def read_flatten(layer, shapes, w, dialect) -> Lowered:
    return Lowered("flatten", {"data_format": data_format(layer.config)})


def read_reshape(layer, shapes, w, dialect) -> Lowered:
    target_shape = layer.config.get("target_shape")
    if not isinstance(target_shape, (list, tuple)):
        raise bad(layer, dialect, f"target_shape {str(target_shape)[:40]!r} is not a list")
    target = tuple(integer(d, layer, dialect, "target_shape", -1) for d in target_shape)
    return Lowered("reshape", {"target_shape": target})


def permuted_live(node, out, in_shapes, mode):
    """Each output element is one input element (`flat_index_map`)."""
    live = np.zeros(int(np.prod(in_shapes[0])), dtype=bool)
    live[flat_index_map(node, in_shapes[0])] = out.reshape(-1)
    return [live.reshape(in_shapes[0])]


def permuted_kept(node, kin, in_shape):
    return kin.reshape(-1)[flat_index_map(node, in_shape)].reshape(node.shape)


def permuted_units(node, units, src, graph):
    return np.asarray(units).reshape(-1)[flat_index_map(node, graph[src].shape)].reshape(
        node.shape), True


def export_flatten(node, k) -> str:
    return k.add("Flatten", {"data_format": node.attrs.get("data_format", "channels_last")})


def export_reshape(node, k) -> str:
    return k.add("Reshape", {"target_shape": [int(d) for d in node.attrs["target_shape"]]})


# -- zero_pad2d ---------------------------------------------------------------------------------
def read_zero_pad(layer, shapes, w, dialect) -> Lowered:
    cfg = layer.config
    pad = cfg.get("padding", 1)
    if isinstance(pad, (list, tuple)) and len(pad) == 2 and isinstance(pad[0], (list, tuple)):
        (t, b) = pair(pad[0], None, layer, dialect, "padding", lo=0)
        (lf, r) = pair(pad[1], None, layer, dialect, "padding", lo=0)
    else:
        (t, lf) = pair(pad, None, layer, dialect, "padding", lo=0)
        b, r = t, lf
    return Lowered("zero_pad2d", {"padding": ((t, b), (lf, r)), "data_format": data_format(cfg)})


def zero_pad_shape(attrs, weights, shapes, where):
    fmt = attrs.get("data_format", "channels_last")
    h, w, c = hwc(shapes[0], fmt)
    (t, b), (lf, r) = attrs["padding"]
    if min(t, b, lf, r) < 0:
        raise ShapeError(f"padding {attrs['padding']} must be >= 0")
    return from_hwc(None if h is None else h + t + b, None if w is None else w + lf + r, c, fmt)


def zero_pad_live(node, out, in_shapes, mode):
    """The input is the unpadded middle of the output."""
    (t, b), (lf, r) = node.attrs["padding"]
    cf = channels_first(node)
    h, w = (out.shape[1], out.shape[2]) if cf else (out.shape[0], out.shape[1])
    rows, cols = slice(t, h - b), slice(lf, w - r)
    return [(out[:, rows, cols] if cf else out[rows, cols, :]).copy()]


def export_zero_pad(node, k) -> str:
    (t, b), (lf, r) = node.attrs["padding"]
    return k.add("ZeroPadding2D", {"padding": [[int(t), int(b)], [int(lf), int(r)]],
                                   "data_format": node.attrs.get("data_format", "channels_last")})


register(
    OpSpec(name="flatten", attrs="data_format (channels_first: move C last, as Keras does)",
           keras={"Flatten": KerasLayer(read_flatten)},
           shape=lambda attrs, weights, shapes, where: (prod(shapes[0]),),
           reference=ref.flatten, liveness=permuted_live, kept=permuted_kept,
           units=permuted_units, compaction=Flatten(), export=export_flatten),
    OpSpec(name="reshape", attrs="target_shape (tuple, may hold one -1)",
           keras={"Reshape": KerasLayer(read_reshape)},
           shape=lambda attrs, weights, shapes, where: reshape_shape(
               shapes[0], tuple(attrs["target_shape"])),
           reference=ref.reshape, liveness=permuted_live, kept=permuted_kept,
           units=permuted_units, compaction=Barrier(), export=export_reshape),
    OpSpec(name="zero_pad2d", attrs="padding ((top, bottom), (left, right)), data_format",
           keras={"ZeroPadding2D": KerasLayer(read_zero_pad)},
           shape=zero_pad_shape, reference=ref.zero_pad2d, liveness=zero_pad_live,
           units=units_spatial, compaction=Spatial(), export=export_zero_pad),
)
