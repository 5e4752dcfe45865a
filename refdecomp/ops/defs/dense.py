"""dense: Keras Dense (on the last axis; an explicit zero bias when the layer has none)."""
from __future__ import annotations

import numpy as np

from ...reader.params import Lowered, activation, bad, f32, integer
from ...reader.shapes import ShapeError
from .. import reference as ref
from ..channels import Filters
from ..registry import KerasLayer, OpSpec, register
from .conv2d import scale_outputs


def read(layer, shapes, w, dialect) -> Lowered:
    cfg = layer.config
    kernel = f32(w["kernel"])
    units = integer(cfg.get("units", kernel.shape[-1]), layer, dialect, "units")
    if kernel.ndim != 2 or kernel.shape[1] != units:
        raise bad(layer, dialect, f"kernel of shape {kernel.shape} does not match {units} "
                                  f"units")
    # A Dense without bias gets an explicit zero bias: the IR's dense always has one.
    bias = f32(w["bias"]).reshape(units) if "bias" in w else np.zeros(units, np.float32)
    attrs = {"activation": activation(cfg.get("activation"), layer, dialect)}
    return Lowered("dense", attrs, {"kernel": kernel, "bias": bias})


def roles(layer):
    return (["kernel", "bias"] if layer.config.get("use_bias", True) else ["kernel"]), []


def expected(layer, shapes, dialect):
    (x,) = shapes if len(shapes) == 1 else (None,)
    units = layer.config.get("units")
    units = None if units is None else integer(units, layer, dialect, "units")
    return {"kernel": (x[-1] if x else None, units), "bias": (units,)}


def shape(attrs, weights, shapes, where):
    (x,) = shapes
    kernel = weights["kernel"]
    if not x or (x[-1] is not None and x[-1] != kernel.shape[0]):
        raise ShapeError(f"kernel of shape {kernel.shape} does not fit an input of shape {x}")
    return (*x[:-1], kernel.shape[1])


def channel_axis(node) -> int:
    return len(node.shape) - 1


def macs(node) -> int:
    i, o = node.weights["kernel"].shape
    return int(np.prod(node.shape[:-1], dtype=np.int64)) * i * o


def liveness(node, out, in_shapes, mode):
    """Input unit i is live when it reaches a live output through a nonzero weight."""
    nz = (node.weights["kernel"] != 0).astype(np.float32)  # (in, out)
    return [(out.astype(np.float32) @ nz.T) > 0]


def used_weights(node, kin, kout):
    """W[i, o] is kept when a kept input i meets a kept output o at some position."""
    fin, fout = node.weights["kernel"].shape
    return (kin.reshape(-1, fin).astype(np.float32).T
            @ kout.reshape(-1, fout).astype(np.float32)) > 0


def export(node, k) -> str:
    w = node.weights
    act_string, act_layers = k.activation(node.activation)
    cfg = {"units": int(w["kernel"].shape[1]), "activation": act_string,
           "use_bias": "bias" in w}
    weights = [("kernel", w["kernel"])] + ([("bias", w["bias"])] if "bias" in w else [])
    return k.chain(act_layers, k.add("Dense", cfg, weights))


register(OpSpec(
    name="dense", attrs="activation", weights="kernel (in, out), bias (out,)",
    keras={"Dense": KerasLayer(read, roles, expected)},
    shape=shape, reference=ref.dense, linear=ref.dense_linear, lowering="dense",
    weighted=True, channel_axis=channel_axis, scale_outputs=scale_outputs, macs=macs,
    liveness=liveness, used_weights=used_weights,
    compaction=Filters(channel_axis, lambda node, rank: rank - 1),
    export=export,
))
