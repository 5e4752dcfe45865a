"""One normaliser per supported Keras layer class: Keras config -> graph op, attrs, weights, shape.

Both dialects are accepted (Keras 2 / tf.keras and Keras 3 parameter names). Each normaliser
gets the layer's config, the shapes of its inputs (no batch axis, `None` where unknown), its
weights by role, and the `Dialect` of the file, and returns a `Lowered` record. Shapes are
inferred here, as Keras does, because the interpreter relies on `Node.shape`.

Anything not in `NORMALISERS` is refused by `refusal_reason`, before any graph is built, so one
error lists every offending layer.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..activations import from_keras
from ..errors import ModelFormatError, UnsupportedLayerError
from .config import CODE_CLASSES, CONFIG_ERRORS, MAX_DIM, LayerSpec, is_keras_module
from .shapes import ShapeError, output_shape
from .stored import StoredArray

Shape = tuple  # of int | None, without the batch axis


@dataclass(frozen=True)
class Dialect:
    """What about the file changes the meaning of a config: Keras major version and backend."""

    keras_major: int = 2
    backend: str = "tensorflow"
    source: str = ""


@dataclass
class Lowered:
    """A layer call in IR terms: op, attrs, weights; `lower` adds the inferred shape."""

    op: str
    attrs: dict[str, Any]
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    shape: Shape = ()


# --------------------------------------------------------------------------------------------
# Weight roles: what each class stores, in Keras' order (trainable first, then non-trainable)
# --------------------------------------------------------------------------------------------
def weight_roles(layer: LayerSpec) -> tuple[list[str], list[str]]:
    """(trainable roles, non-trainable roles) of a primitive layer, in the order Keras saves."""
    c, cfg = layer.class_name, layer.config
    if c in _CONV_CLASSES or c == "Dense":
        return (["kernel", "bias"] if cfg.get("use_bias", True) else ["kernel"]), []
    if c == "BatchNormalization":
        trainable = (["gamma"] if cfg.get("scale", True) else []) + \
                    (["beta"] if cfg.get("center", True) else [])
        return trainable, ["moving_mean", "moving_variance"]
    if c == "PReLU":
        return ["alpha"], []
    if c == "Normalization":
        if cfg.get("mean") is not None and cfg.get("variance") is not None:
            return [], []
        return [], ["mean", "variance", "count"]
    return [], []


def n_weights(layer: LayerSpec) -> int:
    if layer.model is not None:
        return sum(n_weights(inner) for inner in layer.model.layers)
    t, nt = weight_roles(layer)
    return len(t) + len(nt)


# --------------------------------------------------------------------------------------------
# Refusals
# --------------------------------------------------------------------------------------------
def refusal_reason(layer: LayerSpec, dialect: Dialect) -> str | None:
    """Why this layer cannot be read (None if it can). Nested models are checked by the caller."""
    c = layer.class_name
    if c in CODE_CLASSES:
        return CODE_CLASSES[c]
    if layer.custom:
        return ("a custom (registered or non-Keras) class whose code lives in the program that "
                "saved the file, not in the file")
    if layer.model is not None or c == "InputLayer":
        return None
    if c in _KERAS2_ONLY and dialect.keras_major != 2:
        return f"{c!r} is a Keras 2 name; this file is Keras {dialect.keras_major}"
    if c not in NORMALISERS:
        return (f"layer class {c!r} is not supported (docs/formats.md lists the supported "
                f"layers)")
    return None


def _fail(layer: LayerSpec, dialect: Dialect, why: str) -> UnsupportedLayerError:
    return UnsupportedLayerError(f"{dialect.source}: {layer.describe()}: {why}")


def _bad(layer: LayerSpec, dialect: Dialect, why: str) -> ModelFormatError:
    return ModelFormatError(f"{dialect.source}: {layer.describe()}: {why}")


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------
def _int(value: Any, layer: LayerSpec, dialect: Dialect, what: str, lo: int = 1,
         hi: int = MAX_DIM) -> int:
    """A JSON integer config value in [lo, hi]; anything else (a string, a float, a bool,
    null, a huge number) is refused naming the layer and the argument. Every size, stride and
    dilation that reaches a kernel passes here, so no index computed from them can leave its
    buffer."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or \
            not lo <= int(value) <= hi:
        raise _bad(layer, dialect, f"{what} is {_short(value)}; expected an integer in "
                                   f"[{lo}, {hi}]")
    return int(value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _pair(value: Any, default: Any, layer: LayerSpec, dialect: Dialect, what: str,
          lo: int = 1) -> tuple[int, int]:
    """An int or a list of one or two ints (`kernel_size`, `strides`, ...), each >= lo."""
    if value is None:
        value = default
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(items) not in (1, 2):
        raise _bad(layer, dialect, f"{what} is {_short(value)}; expected one or two "
                                   f"integers")
    a = _int(items[0], layer, dialect, what, lo)
    b = _int(items[-1], layer, dialect, what, lo)
    return (a, b)


def _data_format(cfg: dict) -> str:
    fmt = cfg.get("data_format") or "channels_last"
    if fmt not in ("channels_last", "channels_first"):
        raise ValueError(f"data_format {str(fmt)[:40]!r} is neither 'channels_last' nor "
                         f"'channels_first'")
    return str(fmt)


def _padding(layer: LayerSpec, dialect: Dialect) -> str:
    pad = str(layer.config.get("padding", "valid")).lower()
    if pad not in ("valid", "same"):
        raise _fail(layer, dialect, f"padding {pad!r} is not supported (only 'valid', 'same')")
    return pad


def _floats(value: Any):
    if isinstance(value, (list, tuple)):
        return [float(v) for v in value]
    return float(value)


def _axes(axis: Any, rank: int, layer: LayerSpec, dialect: Dialect) -> tuple[int, ...]:
    """Axes counted with the batch axis, made positive; `rank` excludes the batch axis."""
    items = axis if isinstance(axis, (list, tuple)) else [axis]
    out = []
    for a in items:
        a = _int(a, layer, dialect, "axis", -rank - 1, rank + 1)
        p = a + rank + 1 if a < 0 else a
        if not 1 <= p <= rank:
            raise _bad(layer, dialect, f"axis {a} is out of range for an input of rank "
                                       f"{rank + 1} (with the batch axis)")
        out.append(p)
    return tuple(sorted(out))


# --------------------------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------------------------
def activation(value: Any, layer: LayerSpec, dialect: Dialect) -> dict[str, Any]:
    """Normalise a Keras activation (string or serialised function) to the IR's dict form."""
    if isinstance(value, dict):
        inner = value.get("config")
        module = value.get("module") or "keras"
        if not is_keras_module(module, ("builtins",)) or \
                value.get("registered_name") not in (None, "function", value.get("class_name")):
            raise _fail(layer, dialect, f"custom activation {value.get('class_name')!r} is code "
                                        f"from the program that saved the file")
        value = inner if isinstance(inner, str) else value.get("class_name")
    name = "linear" if value is None else str(value)
    act = from_keras(name, dialect.keras_major)  # defaults of the file's Keras version
    if act is not None:
        return act
    raise _fail(layer, dialect, f"activation {name!r} is not supported")


# --------------------------------------------------------------------------------------------
# Normalisers
# --------------------------------------------------------------------------------------------
Normaliser = Callable[[LayerSpec, list, dict, Dialect], Lowered]


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a, dtype=np.float32))


def _conv2d(layer: LayerSpec, shapes: list, w: dict, dialect: Dialect) -> Lowered:
    cfg = layer.config
    if _int(cfg.get("groups", 1) or 1, layer, dialect, "groups") != 1:
        raise _fail(layer, dialect, f"grouped convolution (groups={cfg['groups']}) is not "
                                    f"supported")
    kh, kw = _pair(cfg.get("kernel_size"), None, layer, dialect, "kernel_size")
    strides = _pair(cfg.get("strides"), 1, layer, dialect, "strides")
    dilation = _pair(cfg.get("dilation_rate"), 1, layer, dialect, "dilation_rate")
    if dilation != (1, 1) and strides != (1, 1):
        raise _fail(layer, dialect, f"strides {strides} with dilation_rate {dilation}: Keras "
                                    f"does not allow both above 1")
    kernel = _f32(w["kernel"])
    filters = _int(cfg.get("filters", kernel.shape[-1]), layer, dialect, "filters")
    if kernel.ndim != 4 or kernel.shape[:2] != (kh, kw) or kernel.shape[3] != filters:
        raise _bad(layer, dialect, f"kernel of shape {kernel.shape} does not match kernel_size "
                                   f"{(kh, kw)} and {filters} filters")
    if dialect.backend == "theano" and dialect.keras_major == 2:
        # Theano convolves (flips the kernel); Keras 2 flipped Theano kernels when loading
        # them under another backend, so the file's kernel is rotated 180 degrees here.
        kernel = np.ascontiguousarray(kernel[::-1, ::-1, :, :])
    weights = {"kernel": kernel}
    if "bias" in w:
        weights["bias"] = _f32(w["bias"]).reshape(filters)
    attrs = {"strides": strides, "padding": _padding(layer, dialect), "dilation": dilation,
             "activation": activation(cfg.get("activation"), layer, dialect),
             "data_format": _data_format(cfg)}
    return Lowered("conv2d", attrs, weights)


def _dense(layer: LayerSpec, shapes: list, w: dict, dialect: Dialect) -> Lowered:
    cfg = layer.config
    kernel = _f32(w["kernel"])
    units = _int(cfg.get("units", kernel.shape[-1]), layer, dialect, "units")
    if kernel.ndim != 2 or kernel.shape[1] != units:
        raise _bad(layer, dialect, f"kernel of shape {kernel.shape} does not match {units} "
                                   f"units")
    # A Dense without bias gets an explicit zero bias: the IR's dense always has one.
    bias = _f32(w["bias"]).reshape(units) if "bias" in w else np.zeros(units, np.float32)
    attrs = {"activation": activation(cfg.get("activation"), layer, dialect)}
    return Lowered("dense", attrs, {"kernel": kernel, "bias": bias})


def _pool(op: str) -> Normaliser:
    def normalise(layer: LayerSpec, shapes: list, w: dict, dialect: Dialect) -> Lowered:
        cfg = layer.config
        pool = _pair(cfg.get("pool_size"), 2, layer, dialect, "pool_size")
        strides = _pair(cfg.get("strides"), pool, layer, dialect, "strides")
        return Lowered(op, {"pool": pool, "strides": strides,
                            "padding": _padding(layer, dialect),
                            "data_format": _data_format(cfg)})
    return normalise


def _global_pool(op: str) -> Normaliser:
    def normalise(layer: LayerSpec, shapes: list, w: dict, dialect: Dialect) -> Lowered:
        cfg = layer.config
        return Lowered(op, {"data_format": _data_format(cfg),
                            "keepdims": bool(cfg.get("keepdims", False))})
    return normalise


def _flatten(layer: LayerSpec, shapes: list, w: dict, dialect: Dialect) -> Lowered:
    return Lowered("flatten", {"data_format": _data_format(layer.config)})


def _reshape(layer: LayerSpec, shapes: list, w: dict, dialect: Dialect) -> Lowered:
    target_shape = layer.config.get("target_shape")
    if not isinstance(target_shape, (list, tuple)):
        raise _bad(layer, dialect, f"target_shape {str(target_shape)[:40]!r} is not a list")
    target = tuple(_int(d, layer, dialect, "target_shape", -1) for d in target_shape)
    return Lowered("reshape", {"target_shape": target})


def _add(layer: LayerSpec, shapes: list, w: dict, dialect: Dialect) -> Lowered:
    if len(shapes) < 2:
        raise _bad(layer, dialect, f"expects at least two inputs, got {len(shapes)}")
    return Lowered("add", {})


def _concatenate(layer: LayerSpec, shapes: list, w: dict, dialect: Dialect) -> Lowered:
    return Lowered("concatenate", {"axis": _int(layer.config.get("axis", -1), layer, dialect,
                                                "axis", -MAX_DIM)})


def _activation_layer(layer: LayerSpec, shapes: list, w: dict, dialect: Dialect) -> Lowered:
    act = activation(layer.config.get("activation"), layer, dialect)
    return Lowered("activation", {"activation": act})


def _relu(layer: LayerSpec, shapes: list, w: dict, dialect: Dialect) -> Lowered:
    cfg = layer.config
    max_value = cfg.get("max_value")
    act = {"name": "relu", "max_value": None if max_value is None else float(max_value),
           "negative_slope": float(cfg.get("negative_slope") or 0.0),
           "threshold": float(cfg.get("threshold") or 0.0)}
    return Lowered("activation", {"activation": act})


def _leaky_relu(layer: LayerSpec, shapes: list, w: dict, dialect: Dialect) -> Lowered:
    cfg = layer.config
    # Keras 2 calls the slope `alpha`, Keras 3 `negative_slope`; both default to 0.3.
    slope = cfg.get("negative_slope", cfg.get("alpha", 0.3))
    act = {"name": "leaky_relu", "negative_slope": float(0.3 if slope is None else slope)}
    return Lowered("activation", {"activation": act})


def _elu(layer: LayerSpec, shapes: list, w: dict, dialect: Dialect) -> Lowered:
    return Lowered("activation", {"activation": {"name": "elu",
                                                 "alpha": float(layer.config.get("alpha", 1.0))}})


def _softmax(layer: LayerSpec, shapes: list, w: dict, dialect: Dialect) -> Lowered:
    axis = layer.config.get("axis", -1)
    axis = tuple(int(a) for a in axis) if isinstance(axis, (list, tuple)) else int(axis)
    return Lowered("softmax", {"axis": axis})


def _prelu(layer: LayerSpec, shapes: list, w: dict, dialect: Dialect) -> Lowered:
    (shape,) = shapes
    shared = layer.config.get("shared_axes")
    if shared is not None:
        shared = tuple(int(a) for a in (shared if isinstance(shared, (list, tuple)) else [shared]))
    alpha = _f32(w["alpha"])
    want = tuple(1 if (shared and (i + 1) in shared) else d for i, d in enumerate(shape))
    if alpha.ndim != len(shape) or any(d is not None and a != d for a, d in zip(alpha.shape,
                                                                                  want)):
        raise _bad(layer, dialect, f"alpha of shape {alpha.shape} does not match the input "
                                   f"shape {shape} with shared axes {shared}")
    return Lowered("prelu", {"shared_axes": shared}, {"alpha": alpha})


def _batch_norm(layer: LayerSpec, shapes: list, w: dict, dialect: Dialect) -> Lowered:
    """Weights keep Keras' parameter shape (the sizes of `axis`); gamma / beta are absent when
    `scale` / `center` is off."""
    cfg = layer.config
    (shape,) = shapes
    if cfg.get("renorm"):
        raise _fail(layer, dialect, "batch renormalisation (renorm=True) is not supported")
    if cfg.get("virtual_batch_size") is not None:
        raise _fail(layer, dialect, "virtual_batch_size is not supported")
    axes = _axes(cfg.get("axis", -1), len(shape), layer, dialect)
    param_shape = tuple(shape[a - 1] for a in axes)
    weights = {}
    for role in ("gamma", "beta", "moving_mean", "moving_variance"):
        if role in w:
            arr = _f32(w[role])
            if None not in param_shape and arr.size != int(np.prod(param_shape)):
                raise _bad(layer, dialect, f"{role} has shape {arr.shape}, expected "
                                           f"{param_shape} for axis {cfg.get('axis', -1)}")
            weights[role] = arr
    attrs = {"axis": axes, "epsilon": float(cfg.get("epsilon", 1e-3)),
             "center": bool(cfg.get("center", True)), "scale": bool(cfg.get("scale", True))}
    return Lowered("batch_norm", attrs, weights)


def _rescaling(layer: LayerSpec, shapes: list, w: dict, dialect: Dialect) -> Lowered:
    cfg = layer.config
    return Lowered("rescaling", {"scale": _floats(cfg.get("scale", 1.0)),
                                 "offset": _floats(cfg.get("offset", 0.0))})


def _normalization(layer: LayerSpec, shapes: list, w: dict, dialect: Dialect) -> Lowered:
    """Keras preprocessing Normalization: mean / variance kept with the broadcast shape (no
    batch axis) over the layer's axes, e.g. (1, 1, C) for axis=-1 on (H, W, C)."""
    cfg = layer.config
    (shape,) = shapes
    if cfg.get("invert"):
        raise _fail(layer, dialect, "invert=True (de-normalisation) is not supported")
    axis = cfg.get("axis", -1)
    axes = () if axis is None else _axes(axis, len(shape), layer, dialect)
    bshape = tuple(shape[i] if (i + 1) in axes else 1 for i in range(len(shape)))
    if None in bshape:
        raise _bad(layer, dialect, f"normalises over an axis of unknown size in {shape}")
    out = {}
    for role in ("mean", "variance"):
        value = w.get(role, cfg.get(role))
        if value is None:
            raise _bad(layer, dialect, f"has no {role} (the layer was never adapted)")
        arr = np.asarray(value, dtype=np.float32)
        if arr.size == int(np.prod(bshape)):
            out[role] = np.ascontiguousarray(arr.reshape(bshape))
        elif arr.size == 1:
            out[role] = np.full(bshape, arr.item(), dtype=np.float32)
        else:
            raise _bad(layer, dialect, f"{role} of shape {arr.shape} does not fit axis {axis} "
                                       f"of an input of shape {shape}")
    return Lowered("normalization", {"axis": axes}, out)


def _zero_pad2d(layer: LayerSpec, shapes: list, w: dict, dialect: Dialect) -> Lowered:
    cfg = layer.config
    pad = cfg.get("padding", 1)
    if isinstance(pad, (list, tuple)) and len(pad) == 2 and isinstance(pad[0], (list, tuple)):
        (t, b) = _pair(pad[0], None, layer, dialect, "padding", lo=0)
        (lf, r) = _pair(pad[1], None, layer, dialect, "padding", lo=0)
    else:
        (t, lf) = _pair(pad, None, layer, dialect, "padding", lo=0)
        b, r = t, lf
    return Lowered("zero_pad2d", {"padding": ((t, b), (lf, r)),
                                  "data_format": _data_format(cfg)})


def _identity(layer: LayerSpec, shapes: list, w: dict, dialect: Dialect) -> Lowered:
    return Lowered("identity", {})


_CONV_CLASSES = ("Conv2D", "Convolution2D")
_KERAS2_ONLY = frozenset({"Convolution2D"})

NORMALISERS: dict[str, Normaliser] = {
    "Conv2D": _conv2d,
    "Convolution2D": _conv2d,
    "Dense": _dense,
    "MaxPooling2D": _pool("max_pool2d"),
    "MaxPool2D": _pool("max_pool2d"),
    "AveragePooling2D": _pool("avg_pool2d"),
    "AvgPool2D": _pool("avg_pool2d"),
    "GlobalAveragePooling2D": _global_pool("global_avg_pool2d"),
    "GlobalAvgPool2D": _global_pool("global_avg_pool2d"),
    "GlobalMaxPooling2D": _global_pool("global_max_pool2d"),
    "GlobalMaxPool2D": _global_pool("global_max_pool2d"),
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Add": _add,
    "Concatenate": _concatenate,
    "Activation": _activation_layer,
    "ReLU": _relu,
    "LeakyReLU": _leaky_relu,
    "ELU": _elu,
    "PReLU": _prelu,
    "Softmax": _softmax,
    "BatchNormalization": _batch_norm,
    "Rescaling": _rescaling,
    "Normalization": _normalization,
    "ZeroPadding2D": _zero_pad2d,
    "Dropout": _identity,
    "SpatialDropout2D": _identity,
    "GaussianNoise": _identity,
    "GaussianDropout": _identity,
    "AlphaDropout": _identity,
    "ActivityRegularization": _identity,
}


def lower(layer: LayerSpec, shapes: list, dialect: Dialect) -> Lowered:
    """Run the layer's normaliser (the layer must have passed `refusal_reason`) and infer the
    output shape of the call from its input shapes."""
    if layer.class_name not in ("Add", "Concatenate") and len(shapes) != 1:
        raise _bad(layer, dialect, f"expects one input, the config gives {len(shapes)}")
    try:
        _read_weights(layer, shapes, dialect)
        low = NORMALISERS[layer.class_name](layer, shapes, layer.weights, dialect)
    except KeyError as exc:
        if exc.args and exc.args[0] in ("kernel", "bias", "alpha", "gamma", "beta",
                                        "moving_mean", "moving_variance"):
            raise _bad(layer, dialect, f"has no {exc.args[0]!r} weight in the file") from None
        raise _wrong_type(layer, dialect, exc) from None
    except ShapeError as exc:
        raise _bad(layer, dialect, str(exc)) from None
    except CONFIG_ERRORS as exc:
        raise _wrong_type(layer, dialect, exc) from None
    try:
        low.shape = output_shape(low.op, low.attrs, low.weights, shapes, dialect.source)
    except ShapeError as exc:
        raise _bad(layer, dialect, str(exc)) from None
    return low


def _wrong_type(layer: LayerSpec, dialect: Dialect, exc: Exception) -> ModelFormatError:
    return _bad(layer, dialect, f"a config value has the wrong type or is out of range "
                                f"({type(exc).__name__}: {exc})")


# --------------------------------------------------------------------------------------------
# Weights: shapes the config implies, checked before anything is read
# --------------------------------------------------------------------------------------------
def _channels(shape: Shape, cfg: dict):
    if len(shape) != 3:
        return None
    return shape[0] if _data_format(cfg) == "channels_first" else shape[-1]


def expected_weights(layer: LayerSpec, shapes: list, dialect: Dialect) -> dict[str, Any]:
    """{role: expected shape (tuple, `None` = any size) or element count (int)} implied by the
    layer's config and input shape; a stored array is read only if it fits. The sizes used
    are validated here first, so an invalid one is reported as such."""
    c, cfg = layer.class_name, layer.config
    (x,) = shapes if len(shapes) == 1 else (None,)
    if c in _CONV_CLASSES:
        kh, kw = _pair(cfg.get("kernel_size"), None, layer, dialect, "kernel_size")
        filters = cfg.get("filters")
        filters = None if filters is None else _int(filters, layer, dialect, "filters")
        return {"kernel": (kh, kw, _channels(x, cfg), filters), "bias": (filters,)}
    if c == "Dense":
        units = cfg.get("units")
        units = None if units is None else _int(units, layer, dialect, "units")
        return {"kernel": (x[-1] if x else None, units), "bias": (units,)}
    if c == "BatchNormalization" and x is not None:
        axis = cfg.get("axis", -1)
        axes = axis if isinstance(axis, (list, tuple)) else [axis]
        dims = [x[a - 1] if a > 0 else x[a] for a in axes if isinstance(a, int) and
                -len(x) <= (a if a < 0 else a - 1) < len(x)]
        n = int(np.prod(dims, dtype=object)) if dims and None not in dims else None
        return {role: n for role in ("gamma", "beta", "moving_mean", "moving_variance")}
    if c == "PReLU" and x is not None:
        return {"alpha": (None,) * len(x)}
    if c == "Normalization":
        return {"count": 1}
    return {}


def _read_weights(layer: LayerSpec, shapes: list, dialect: Dialect) -> None:
    """Replace the layer's `StoredArray`s by their values, once each is checked against
    `expected_weights` (a shared layer reads them on its first call only)."""
    want = expected_weights(layer, shapes, dialect)
    for role, value in list(layer.weights.items()):
        if not isinstance(value, StoredArray):
            continue
        spec = want.get(role)
        if isinstance(spec, int) and not isinstance(spec, bool):
            fits = int(np.prod(value.shape, dtype=object)) == spec
        elif isinstance(spec, tuple):
            fits = len(value.shape) == len(spec) and all(
                d is None or not isinstance(d, int) or d == s for d, s in zip(spec, value.shape))
        else:
            fits = True
        if not fits:
            given = shapes[0] if shapes else ()
            raise _bad(layer, dialect, f"weight {value.name!r} has shape {value.shape}, but "
                                       f"the layer's config and input {given} "
                                       f"imply {_describe_spec(spec)}")
        layer.weights[role] = value.read()


def _describe_spec(spec: Any) -> str:
    if isinstance(spec, tuple):
        dims = ["?" if not isinstance(d, int) else str(d) for d in spec]
        return "shape (" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"
    return f"{spec} values"


