"""max_pool2d, avg_pool2d (Keras `same`: padded cells are not counted in the mean),
global_avg_pool2d, global_max_pool2d."""
from __future__ import annotations

import numpy as np

from ...reader.params import Lowered, data_format, padding, pair
from ...reader.shapes import from_hwc, hwc, window_shape
from .. import reference as ref
from ..channels import Spatial
from ..registry import KerasLayer, OpSpec, register
from ..rules import channels_first, through_windows, units_spatial


def _read_pool(op: str):
    def read(layer, shapes, w, dialect) -> Lowered:
        cfg = layer.config
        pool = pair(cfg.get("pool_size"), 2, layer, dialect, "pool_size")
        strides = pair(cfg.get("strides"), pool, layer, dialect, "strides")
        return Lowered(op, {"pool": pool, "strides": strides,
                            "padding": padding(layer, dialect), "data_format": data_format(cfg)})
    return read


def _read_global(op: str):
    def read(layer, shapes, w, dialect) -> Lowered:
        cfg = layer.config
        return Lowered(op, {"data_format": data_format(cfg),
                            "keepdims": bool(cfg.get("keepdims", False))})
    return read


def pool_shape(attrs, weights, shapes, where):
    return window_shape(attrs, shapes[0], attrs["pool"], None, where)


def pool_liveness(node, out, in_shapes, mode):
    """Input (p, c) is live when a live output (q, c) has p in its window."""
    return [through_windows(node, out, in_shapes[0], node.attrs["pool"], lambda t, q: q > 0)]


def _export_pool(cls: str):
    def export(node, k) -> str:
        a = node.attrs
        return k.add(cls, {"pool_size": list(a["pool"]), "strides": list(a["strides"]),
                           "padding": a.get("padding", "valid"),
                           "data_format": a.get("data_format", "channels_last")},
                     nhwc_only=True)
    return export


def global_shape(attrs, weights, shapes, where):
    fmt = attrs.get("data_format", "channels_last")
    c = hwc(shapes[0], fmt)[2]
    return from_hwc(1, 1, c, fmt) if attrs.get("keepdims") else (c,)


def global_liveness(node, out, in_shapes, mode):
    """Every position of a channel is live when that channel's output is."""
    ch = out.reshape(-1)
    live = ch[:, None, None] if channels_first(node) else ch[None, None, :]
    return [np.broadcast_to(live, in_shapes[0]).copy()]


def global_units(node, units, src, graph):
    """Each channel of the output is its channel's unit (keepdims maps are not followed)."""
    if node.attrs.get("keepdims"):
        return None
    units = np.asarray(units)
    return (units[:, 0, 0] if channels_first(node) else units[0, 0, :]), True


def _export_global(cls: str):
    def export(node, k) -> str:
        return k.add(cls, {"data_format": node.attrs.get("data_format", "channels_last"),
                           "keepdims": bool(node.attrs.get("keepdims", False))})
    return export


_POOL_ATTRS = "pool (2), strides (2), padding, data_format"
register(
    OpSpec(name="max_pool2d", attrs=_POOL_ATTRS,
           keras={"MaxPooling2D": KerasLayer(_read_pool("max_pool2d")),
                  "MaxPool2D": KerasLayer(_read_pool("max_pool2d"))},
           shape=pool_shape, reference=ref.max_pool2d, lowering="max_pool",
           liveness=pool_liveness, units=units_spatial, compaction=Spatial(),
           export=_export_pool("MaxPooling2D")),
    OpSpec(name="avg_pool2d", attrs=_POOL_ATTRS,
           keras={"AveragePooling2D": KerasLayer(_read_pool("avg_pool2d")),
                  "AvgPool2D": KerasLayer(_read_pool("avg_pool2d"))},
           shape=pool_shape, reference=ref.avg_pool2d, lowering="avg_pool",
           liveness=pool_liveness, units=units_spatial, compaction=Spatial(),
           export=_export_pool("AveragePooling2D")),
    OpSpec(name="global_avg_pool2d", attrs="data_format, keepdims",
           keras={"GlobalAveragePooling2D": KerasLayer(_read_global("global_avg_pool2d")),
                  "GlobalAvgPool2D": KerasLayer(_read_global("global_avg_pool2d"))},
           shape=global_shape, reference=ref.global_avg_pool2d, liveness=global_liveness,
           units=global_units, compaction=Spatial(),
           export=_export_global("GlobalAveragePooling2D")),
    OpSpec(name="global_max_pool2d", attrs="data_format, keepdims",
           keras={"GlobalMaxPooling2D": KerasLayer(_read_global("global_max_pool2d")),
                  "GlobalMaxPool2D": KerasLayer(_read_global("global_max_pool2d"))},
           shape=global_shape, reference=ref.global_max_pool2d, liveness=global_liveness,
           units=global_units, compaction=Spatial(),
           export=_export_global("GlobalMaxPooling2D")),
)
