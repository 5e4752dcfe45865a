"""Reading Keras config values: the helpers every op's `KerasLayer` normaliser uses.

Every size, stride and dilation that reaches a kernel passes `integer` / `pair`, so no index
computed from a file can leave its buffer; errors name the file, the layer and the argument.
`Dialect` says what about the file changes the meaning of a config; `Lowered` is what a
normaliser returns.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..activations import from_keras
from ..errors import ModelFormatError, UnsupportedLayerError
from .config import MAX_DIM, LayerSpec, is_keras_module

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
    #: nodes emitted before this one, as (name suffix, Lowered): the first reads the layer's
    #: inputs, each later one (and this one) the one before (SeparableConv2D: a depthwise node
    #: named `<layer>/depthwise`, then the pointwise conv2d named after the layer)
    before: list = field(default_factory=list)


def fail(layer: LayerSpec, dialect: Dialect, why: str) -> UnsupportedLayerError:
    return UnsupportedLayerError(f"{dialect.source}: {layer.describe()}: {why}")


def bad(layer: LayerSpec, dialect: Dialect, why: str) -> ModelFormatError:
    return ModelFormatError(f"{dialect.source}: {layer.describe()}: {why}")


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------
def integer(value: Any, layer: LayerSpec, dialect: Dialect, what: str, lo: int = 1,
            hi: int = MAX_DIM) -> int:
    """A JSON integer config value in [lo, hi]; anything else (a string, a float, a bool,
    null, a huge number) is refused naming the layer and the argument. Every size, stride and
    dilation that reaches a kernel passes here, so no index computed from them can leave its
    buffer."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or \
            not lo <= int(value) <= hi:
        raise bad(layer, dialect, f"{what} is {short(value)}; expected an integer in "
                                   f"[{lo}, {hi}]")
    return int(value)


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def pair(value: Any, default: Any, layer: LayerSpec, dialect: Dialect, what: str,
         lo: int = 1) -> tuple[int, int]:
    """An int or a list of one or two ints (`kernel_size`, `strides`, ...), each >= lo."""
    if value is None:
        value = default
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(items) not in (1, 2):
        raise bad(layer, dialect, f"{what} is {short(value)}; expected one or two "
                                   f"integers")
    a = integer(items[0], layer, dialect, what, lo)
    b = integer(items[-1], layer, dialect, what, lo)
    return (a, b)


def data_format(cfg: dict) -> str:
    fmt = cfg.get("data_format") or "channels_last"
    if fmt not in ("channels_last", "channels_first"):
        raise ValueError(f"data_format {str(fmt)[:40]!r} is neither 'channels_last' nor "
                         f"'channels_first'")
    return str(fmt)


def padding(layer: LayerSpec, dialect: Dialect) -> str:
    pad = str(layer.config.get("padding", "valid")).lower()
    if pad not in ("valid", "same"):
        raise fail(layer, dialect, f"padding {pad!r} is not supported (only 'valid', 'same')")
    return pad


def floats(value: Any):
    if isinstance(value, (list, tuple)):
        return [float(v) for v in value]
    return float(value)


def axes(axis: Any, rank: int, layer: LayerSpec, dialect: Dialect) -> tuple[int, ...]:
    """Axes counted with the batch axis, made positive; `rank` excludes the batch axis."""
    items = axis if isinstance(axis, (list, tuple)) else [axis]
    out = []
    for a in items:
        a = integer(a, layer, dialect, "axis", -rank - 1, rank + 1)
        p = a + rank + 1 if a < 0 else a
        if not 1 <= p <= rank:
            raise bad(layer, dialect, f"axis {a} is out of range for an input of rank "
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
            raise fail(layer, dialect, f"custom activation {value.get('class_name')!r} is code "
                                       f"from the program that saved the file")
        value = inner if isinstance(inner, str) else value.get("class_name")
    name = "linear" if value is None else str(value)
    act = from_keras(name, dialect.keras_major)  # defaults of the file's Keras version
    if act is not None:
        return act
    raise fail(layer, dialect, f"activation {name!r} is not supported")


def f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a, dtype=np.float32))


def channels(shape: Shape, cfg: dict):
    if len(shape) != 3:
        return None
    return shape[0] if data_format(cfg) == "channels_first" else shape[-1]

