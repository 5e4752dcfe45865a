"""Element-wise ops: activation (Activation, ReLU, LeakyReLU, ELU), prelu, softmax,
batch_norm, rescaling, normalization and identity (layers that do nothing at inference)."""
from __future__ import annotations

import numpy as np

from ...reader.params import Lowered, activation, axes, bad, f32, fail, floats
from ...reader.shapes import check_scales
from .. import reference as ref
from ..channels import Barrier, SameChannels
from ..registry import KerasLayer, OpSpec, register
from ..rules import along_axis, same_kept, same_live, units_mixed, units_same


def _same_shape(attrs, weights, shapes, where):
    return tuple(shapes[0])


# -- activation -----------------------------------------------------------------------------
def read_activation(layer, shapes, w, dialect) -> Lowered:
    return Lowered("activation", {"activation": activation(layer.config.get("activation"), layer,
                                                           dialect)})


def read_relu(layer, shapes, w, dialect) -> Lowered:
    cfg = layer.config
    max_value = cfg.get("max_value")
    act = {"name": "relu", "max_value": None if max_value is None else float(max_value),
           "negative_slope": float(cfg.get("negative_slope") or 0.0),
           "threshold": float(cfg.get("threshold") or 0.0)}
    return Lowered("activation", {"activation": act})


def read_leaky_relu(layer, shapes, w, dialect) -> Lowered:
    cfg = layer.config
    # Keras 2 calls the slope `alpha`, Keras 3 `negative_slope`; both default to 0.3.
    slope = cfg.get("negative_slope", cfg.get("alpha", 0.3))
    act = {"name": "leaky_relu", "negative_slope": float(0.3 if slope is None else slope)}
    return Lowered("activation", {"activation": act})


def read_elu(layer, shapes, w, dialect) -> Lowered:
    return Lowered("activation", {"activation": {"name": "elu",
                                                 "alpha": float(layer.config.get("alpha", 1.0))}})


def _is_softmax(node) -> bool:
    return node.activation.get("name") in ("softmax", "log_softmax")


def activation_live(node, out, in_shapes, mode):
    """Softmax mixes along its axis; every other activation is element-wise."""
    if _is_softmax(node):
        return [along_axis(out, node.activation.get("axis", -1))]
    return [out.copy()]


def activation_kept(node, kin, in_shape):
    return None if _is_softmax(node) else kin


def activation_units(node, units, src, graph):
    if _is_softmax(node):
        return None
    return units, ref.maps_zero_to_zero(node.activation)


def export_activation(node, k) -> str:
    act_string, act_layers = k.activation(node.activation)
    if not act_layers:
        return k.add("Activation", {"activation": act_string})
    return k.chain(act_layers, k.inbound[0])


# -- softmax --------------------------------------------------------------------------------
def read_softmax(layer, shapes, w, dialect) -> Lowered:
    axis = layer.config.get("axis", -1)
    axis = tuple(int(a) for a in axis) if isinstance(axis, (list, tuple)) else int(axis)
    return Lowered("softmax", {"axis": axis})


# -- prelu ----------------------------------------------------------------------------------
def read_prelu(layer, shapes, w, dialect) -> Lowered:
    (shape,) = shapes
    shared = layer.config.get("shared_axes")
    if shared is not None:
        shared = tuple(int(a) for a in (shared if isinstance(shared, (list, tuple)) else [shared]))
    alpha = f32(w["alpha"])
    want = tuple(1 if (shared and (i + 1) in shared) else d for i, d in enumerate(shape))
    if alpha.ndim != len(shape) or any(d is not None and a != d for a, d in zip(alpha.shape,
                                                                                  want)):
        raise bad(layer, dialect, f"alpha of shape {alpha.shape} does not match the input "
                                  f"shape {shape} with shared axes {shared}")
    return Lowered("prelu", {"shared_axes": shared}, {"alpha": alpha})


def prelu_expected(layer, shapes, dialect):
    (x,) = shapes if len(shapes) == 1 else (None,)
    return {} if x is None else {"alpha": (None,) * len(x)}


def export_prelu(node, k) -> str:
    shared, alpha = node.attrs.get("shared_axes"), node.weights["alpha"]
    return k.add("PReLU", {"shared_axes": list(shared) if shared else None},
                 [("alpha", alpha.reshape(node.shape if not shared else alpha.shape))])


# -- batch_norm -----------------------------------------------------------------------------
def read_batch_norm(layer, shapes, w, dialect) -> Lowered:
    """Weights keep Keras' parameter shape (the sizes of `axis`); gamma / beta are absent when
    `scale` / `center` is off."""
    cfg = layer.config
    (shape,) = shapes
    if cfg.get("renorm"):
        raise fail(layer, dialect, "batch renormalisation (renorm=True) is not supported")
    if cfg.get("virtual_batch_size") is not None:
        raise fail(layer, dialect, "virtual_batch_size is not supported")
    bn_axes = axes(cfg.get("axis", -1), len(shape), layer, dialect)
    param_shape = tuple(shape[a - 1] for a in bn_axes)
    weights = {}
    for role in ("gamma", "beta", "moving_mean", "moving_variance"):
        if role in w:
            arr = f32(w[role])
            if None not in param_shape and arr.size != int(np.prod(param_shape)):
                raise bad(layer, dialect, f"{role} has shape {arr.shape}, expected "
                                          f"{param_shape} for axis {cfg.get('axis', -1)}")
            weights[role] = arr
    attrs = {"axis": bn_axes, "epsilon": float(cfg.get("epsilon", 1e-3)),
             "center": bool(cfg.get("center", True)), "scale": bool(cfg.get("scale", True))}
    return Lowered("batch_norm", attrs, weights)


def batch_norm_roles(layer):
    cfg = layer.config
    trainable = (["gamma"] if cfg.get("scale", True) else []) + \
                (["beta"] if cfg.get("center", True) else [])
    return trainable, ["moving_mean", "moving_variance"]


def batch_norm_expected(layer, shapes, dialect):
    (x,) = shapes if len(shapes) == 1 else (None,)
    if x is None:
        return {}
    axis = layer.config.get("axis", -1)
    items = axis if isinstance(axis, (list, tuple)) else [axis]
    dims = [x[a - 1] if a > 0 else x[a] for a in items if isinstance(a, int) and
            -len(x) <= (a if a < 0 else a - 1) < len(x)]
    n = int(np.prod(dims, dtype=object)) if dims and None not in dims else None
    return {role: n for role in ("gamma", "beta", "moving_mean", "moving_variance")}


def _positive_axes(node, k) -> list[int]:
    bn_axes = node.attrs.get("axis", -1)
    bn_axes = [int(x) for x in ((bn_axes,) if isinstance(bn_axes, int) else (bn_axes or ()))]
    rank = len(k.input_shape())
    return [ax if ax > 0 else ax + rank + 1 for ax in bn_axes]


def export_batch_norm(node, k) -> str:
    a, w = node.attrs, node.weights
    bn_axes = _positive_axes(node, k)
    param_shape = tuple(k.input_shape()[ax - 1] for ax in bn_axes)
    names = (["gamma"] if a.get("scale", True) else []) + \
        (["beta"] if a.get("center", True) else []) + ["moving_mean", "moving_variance"]
    weights = [(n, np.asarray(w[n]).reshape(param_shape)) for n in names]
    cfg = {"axis": bn_axes, "momentum": 0.99, "epsilon": float(a.get("epsilon", 1e-3)),
           "center": bool(a.get("center", True)), "scale": bool(a.get("scale", True))}
    return k.add("BatchNormalization", cfg, weights)


# -- rescaling / normalization --------------------------------------------------------------
def read_rescaling(layer, shapes, w, dialect) -> Lowered:
    cfg = layer.config
    return Lowered("rescaling", {"scale": floats(cfg.get("scale", 1.0)),
                                 "offset": floats(cfg.get("offset", 0.0))})


def rescaling_shape(attrs, weights, shapes, where):
    check_scales(attrs, shapes[0])
    return tuple(shapes[0])


def _jsonable(v):
    return np.asarray(v).tolist() if isinstance(v, (np.ndarray, list, tuple)) else float(v)


def export_rescaling(node, k) -> str:
    return k.add("Rescaling", {"scale": _jsonable(node.attrs.get("scale", 1.0)),
                               "offset": _jsonable(node.attrs.get("offset", 0.0))})


def read_normalization(layer, shapes, w, dialect) -> Lowered:
    """Keras preprocessing Normalization: mean / variance kept with the broadcast shape (no
    batch axis) over the layer's axes, e.g. (1, 1, C) for axis=-1 on (H, W, C)."""
    cfg = layer.config
    (shape,) = shapes
    if cfg.get("invert"):
        raise fail(layer, dialect, "invert=True (de-normalisation) is not supported")
    axis = cfg.get("axis", -1)
    norm_axes = () if axis is None else axes(axis, len(shape), layer, dialect)
    bshape = tuple(shape[i] if (i + 1) in norm_axes else 1 for i in range(len(shape)))
    if None in bshape:
        raise bad(layer, dialect, f"normalises over an axis of unknown size in {shape}")
    out = {}
    for role in ("mean", "variance"):
        value = w.get(role, cfg.get(role))
        if value is None:
            raise bad(layer, dialect, f"has no {role} (the layer was never adapted)")
        arr = np.asarray(value, dtype=np.float32)
        if arr.size == int(np.prod(bshape)):
            out[role] = np.ascontiguousarray(arr.reshape(bshape))
        elif arr.size == 1:
            out[role] = np.full(bshape, arr.item(), dtype=np.float32)
        else:
            raise bad(layer, dialect, f"{role} of shape {arr.shape} does not fit axis {axis} "
                                      f"of an input of shape {shape}")
    return Lowered("normalization", {"axis": norm_axes}, out)


def normalization_roles(layer):
    cfg = layer.config
    if cfg.get("mean") is not None and cfg.get("variance") is not None:
        return [], []
    return [], ["mean", "variance", "count"]


def _per_axis(value, kept: list[int]) -> list:
    """Normalization statistics as a nested list of the kept axes' shape."""
    arr = np.asarray(value, dtype=np.float64)
    arr = arr.reshape(kept) if arr.size == int(np.prod(kept)) else np.broadcast_to(arr, kept)
    return arr.tolist()


def export_normalization(node, k) -> str:
    norm_axes = _positive_axes(node, k)
    kept = [k.input_shape()[ax - 1] for ax in norm_axes]
    return k.add("Normalization", {"axis": norm_axes, "mean": _per_axis(node.weights["mean"], kept),
                                   "variance": _per_axis(node.weights["variance"], kept),
                                   "invert": False})


def read_identity(layer, shapes, w, dialect) -> Lowered:
    return Lowered("identity", {})


_IDENTITY = KerasLayer(read_identity)

register(
    OpSpec(name="activation", attrs="activation (see ACTIVATIONS)",
           keras={"Activation": KerasLayer(read_activation), "ReLU": KerasLayer(read_relu),
                  "LeakyReLU": KerasLayer(read_leaky_relu), "ELU": KerasLayer(read_elu)},
           shape=_same_shape, reference=ref.activation, liveness=activation_live,
           kept=activation_kept, export=export_activation, units=activation_units,
           compaction=SameChannels(when=lambda node: ref.maps_zero_to_zero(node.activation))),
    OpSpec(name="prelu", attrs="shared_axes (tuple or None)",
           weights="alpha (shape of input with shared axes = 1)",
           keras={"PReLU": KerasLayer(read_prelu, lambda layer: (["alpha"], []),
                                      prelu_expected)},
           shape=_same_shape, reference=ref.prelu, liveness=same_live, kept=same_kept,
           units=units_mixed, compaction=SameChannels(per_channel=("alpha",)),
           export=export_prelu),
    OpSpec(name="softmax", attrs="axis", keras={"Softmax": KerasLayer(read_softmax)},
           shape=_same_shape, reference=ref.softmax_op,
           liveness=lambda node, out, in_shapes, mode: [along_axis(out,
                                                                   node.attrs.get("axis", -1))],
           compaction=Barrier(),
           export=lambda node, k: k.add("Softmax", {"axis": int(node.attrs.get("axis", -1))})),
    OpSpec(name="batch_norm",
           attrs="axis (tuple of non-batch axes, counted with the batch axis), epsilon, "
                 "center, scale",
           weights="gamma, beta, moving_mean, moving_variance",
           keras={"BatchNormalization": KerasLayer(read_batch_norm, batch_norm_roles,
                                                   batch_norm_expected)},
           shape=_same_shape, reference=ref.batch_norm, liveness=same_live, kept=same_kept,
           units=units_mixed, compaction=Barrier(), export=export_batch_norm),
    OpSpec(name="rescaling",
           attrs="scale, offset (floats or lists broadcast on the last axis)",
           keras={"Rescaling": KerasLayer(read_rescaling)},
           shape=rescaling_shape, reference=ref.rescaling, liveness=same_live, kept=same_kept,
           units=units_mixed, compaction=Barrier(), export=export_rescaling),
    OpSpec(name="normalization",
           attrs="axis (tuple); (x - mean) / max(sqrt(variance), 1e-7) (Keras 3)",
           weights="mean, variance",
           keras={"Normalization": KerasLayer(read_normalization, normalization_roles,
                                              lambda layer, shapes, dialect: {"count": 1})},
           shape=_same_shape, reference=ref.normalization, liveness=same_live, kept=same_kept,
           units=units_mixed, compaction=Barrier(), export=export_normalization),
    OpSpec(name="identity",
           attrs="- (Dropout, SpatialDropout2D, GaussianNoise, ... at inference)",
           keras={c: _IDENTITY for c in ("Dropout", "SpatialDropout2D", "GaussianNoise",
                                         "GaussianDropout", "AlphaDropout",
                                         "ActivityRegularization")},
           shape=_same_shape, reference=ref.identity, liveness=same_live, kept=same_kept,
           units=units_same, compaction=SameChannels(),
           export=lambda node, k: k.add("Activation", {"activation": "linear"})),
)
