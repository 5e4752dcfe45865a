"""upsample2d: Keras UpSampling2D with nearest-neighbour interpolation (each input pixel
becomes a size[0] x size[1] block of the output)."""
from __future__ import annotations

import numpy as np

from ...reader.params import Lowered, data_format, fail, pair
from ...reader.shapes import from_hwc, hwc
from ..channels import Spatial
from ..reference import from_nhwc, to_nhwc
from ..registry import KerasLayer, OpSpec, register
from ..rules import units_spatial


def read(layer, shapes, w, dialect) -> Lowered:
    cfg = layer.config
    interpolation = str(cfg.get("interpolation", "nearest"))
    if interpolation != "nearest":
        raise fail(layer, dialect, f"interpolation {interpolation!r} is not supported (only "
                                   f"'nearest')")
    return Lowered("upsample2d", {"size": pair(cfg.get("size"), 2, layer, dialect, "size"),
                                  "data_format": data_format(cfg)})


def shape(attrs, weights, shapes, where):
    fmt = attrs.get("data_format", "channels_last")
    h, w, c = hwc(shapes[0], fmt)
    sh, sw = attrs["size"]
    return from_hwc(None if h is None else h * sh, None if w is None else w * sw, c, fmt)


def reference(node, inputs) -> np.ndarray:
    fmt = node.attrs.get("data_format", "channels_last")
    sh, sw = node.attrs["size"]
    x = to_nhwc(inputs[0], fmt)
    return from_nhwc(np.repeat(np.repeat(x, sh, axis=1), sw, axis=2), fmt)


def _blocks(node, out: np.ndarray) -> np.ndarray:
    """(H, size0, W, size1, C) view of a channels_last output map (no batch axis)."""
    sh, sw = node.attrs["size"]
    oh, ow, c = out.shape
    return out.reshape(oh // sh, sh, ow // sw, sw, c)


def liveness(node, out, in_shapes, mode):
    """An input pixel is live when any pixel of its output block is."""
    cf = node.attrs.get("data_format") == "channels_first"
    o = np.moveaxis(out, 0, -1) if cf else out
    live = _blocks(node, o).any(axis=(1, 3))
    return [np.moveaxis(live, -1, 0) if cf else live]


def kept(node, kin, in_shape):
    """Every pixel of a block is its input pixel."""
    cf = node.attrs.get("data_format") == "channels_first"
    sh, sw = node.attrs["size"]
    ah, aw = (1, 2) if cf else (0, 1)
    return np.repeat(np.repeat(kin, sh, axis=ah), sw, axis=aw)


def export(node, k) -> str:
    return k.add("UpSampling2D", {"size": list(node.attrs["size"]),
                                  "data_format": node.attrs.get("data_format", "channels_last"),
                                  "interpolation": "nearest"})


register(OpSpec(
    name="upsample2d", attrs="size (2), data_format; nearest-neighbour",
    keras={"UpSampling2D": KerasLayer(read)},
    shape=shape, reference=reference, liveness=liveness, kept=kept, units=units_spatial,
    compaction=Spatial(),
    export=export,
))
