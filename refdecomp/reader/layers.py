"""Keras layer -> graph op: the reader's side of the op registry.

Each Keras class is read by the `KerasLayer` of the op that declares it
(`refdecomp/ops/defs/`): its normaliser gets the layer's config, the shapes of its inputs (no
batch axis, `None` where unknown), its weights by role and the `Dialect` of the file, and
returns a `Lowered` record. Shapes are inferred here, as Keras does, because the interpreter
relies on `Node.shape`.

A class no op reads is refused by `refusal_reason`, before any graph is built, so one error
lists every offending layer.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ModelFormatError
from ..ops import registry
from .config import CODE_CLASSES, CONFIG_ERRORS, LayerSpec
from .params import Dialect, Lowered, activation, bad
from .shapes import ShapeError, output_shape
from .stored import StoredArray

__all__ = ["Dialect", "Lowered", "activation", "expected_weights", "lower", "n_weights",
           "refusal_reason", "weight_roles"]


def weight_roles(layer: LayerSpec) -> tuple[list[str], list[str]]:
    """(trainable roles, non-trainable roles) of a primitive layer, in the order Keras saves."""
    found = registry.keras_layer(layer.class_name)
    return ([], []) if found is None else found[1].roles(layer)


def n_weights(layer: LayerSpec) -> int:
    if layer.model is not None:
        return sum(n_weights(inner) for inner in layer.model.layers)
    t, nt = weight_roles(layer)
    return len(t) + len(nt)


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
    found = registry.keras_layer(c)
    if found is None:
        return (f"layer class {c!r} is not supported (docs/formats.md lists the supported "
                f"layers)")
    if found[1].keras2_only and dialect.keras_major != 2:
        return f"{c!r} is a Keras 2 name; this file is Keras {dialect.keras_major}"
    return None


def lower(layer: LayerSpec, shapes: list, dialect: Dialect) -> Lowered:
    """Run the layer's normaliser (the layer must have passed `refusal_reason`) and infer the
    output shape of the call (and of the nodes it emits before it) from its input shapes."""
    _, reader = registry.keras_layer(layer.class_name)
    if reader.n_inputs is not None and len(shapes) != reader.n_inputs:
        raise bad(layer, dialect, f"expects one input, the config gives {len(shapes)}")
    try:
        _read_weights(layer, shapes, dialect)
        low = reader.normalise(layer, shapes, layer.weights, dialect)
    except KeyError as exc:
        if exc.args and exc.args[0] in sum(reader.roles(layer), []):
            raise bad(layer, dialect, f"has no {exc.args[0]!r} weight in the file") from None
        raise _wrong_type(layer, dialect, exc) from None
    except ShapeError as exc:
        raise bad(layer, dialect, str(exc)) from None
    except CONFIG_ERRORS as exc:
        raise _wrong_type(layer, dialect, exc) from None
    try:
        for _, first in low.before:
            first.shape = output_shape(first.op, first.attrs, first.weights, shapes,
                                       dialect.source)
            shapes = [first.shape]
        low.shape = output_shape(low.op, low.attrs, low.weights, shapes, dialect.source)
    except ShapeError as exc:
        raise bad(layer, dialect, str(exc)) from None
    return low


def _wrong_type(layer: LayerSpec, dialect: Dialect, exc: Exception) -> ModelFormatError:
    return bad(layer, dialect, f"a config value has the wrong type or is out of range "
                               f"({type(exc).__name__}: {exc})")


# --------------------------------------------------------------------------------------------
# Weights: shapes the config implies, checked before anything is read
# --------------------------------------------------------------------------------------------
def expected_weights(layer: LayerSpec, shapes: list, dialect: Dialect) -> dict[str, Any]:
    """{role: expected shape (tuple, `None` = any size) or element count (int)} implied by the
    layer's config and input shape; a stored array is read only if it fits. The sizes used
    are validated first, so an invalid one is reported as such."""
    found = registry.keras_layer(layer.class_name)
    return {} if found is None else found[1].expected(layer, shapes, dialect)


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
            raise bad(layer, dialect, f"weight {value.name!r} has shape {value.shape}, but "
                                      f"the layer's config and input {given} "
                                      f"imply {_describe_spec(spec)}")
        layer.weights[role] = value.read()


def _describe_spec(spec: Any) -> str:
    if isinstance(spec, tuple):
        dims = ["?" if not isinstance(d, int) else str(d) for d in spec]
        return "shape (" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"
    return f"{spec} values"


