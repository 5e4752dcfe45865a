"""Every activation in one table: its NumPy definition, the kernels' code for it, how the reader
fills its parameters, and how it is written back to Keras.

An activation is a dict `{"name": str, **params}` (see `refdecomp.graph`). `ACTIVATIONS` maps
each name to an `Activation`; a name's dialect differences live in its row: hard_sigmoid is
clip(0.2 x + 0.5, 0, 1) in Keras 2 and clip(x / 6 + 0.5, 0, 1) in Keras 3 (param "dialect",
set by the reader from the file's Keras version), gelu is exact or tanh-approximated (param
"approximate"). The fused epilogue of the Numba kernels (`refdecomp.kernels.epilogue`)
implements the activations with a kernel code; the others (softmax, log_softmax) run on the
NumPy definitions after the kernel.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


# -- NumPy definitions (the executable specification; Keras formulas) ------------------------
def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype)


def relu(x: np.ndarray, max_value=None, negative_slope: float = 0.0,
         threshold: float = 0.0) -> np.ndarray:
    """Keras relu: x where x > threshold else 0, clipped to [0, max_value] when a max is given,
    minus negative_slope * relu(threshold - x)."""
    y = np.where(x > threshold, x, 0).astype(x.dtype) if threshold != 0 else np.maximum(x, 0)
    if max_value is not None:
        y = np.clip(y, 0, max_value)
    if negative_slope != 0:
        if max_value is None and threshold == 0:
            return np.where(x >= 0, x, negative_slope * x).astype(x.dtype)
        y = y - negative_slope * np.maximum(threshold - x, 0)
    return y.astype(x.dtype)


def softmax(x: np.ndarray, axis=-1) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / np.sum(e, axis=axis, keepdims=True)


def log_softmax(x: np.ndarray, axis=-1) -> np.ndarray:
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.float64])(x.astype(np.float64))


def gelu(x: np.ndarray, approximate: bool = False) -> np.ndarray:
    if approximate:
        c = math.sqrt(2.0 / math.pi)
        return (0.5 * x * (1.0 + np.tanh(c * (x + 0.044715 * x ** 3)))).astype(x.dtype)
    return (0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))).astype(x.dtype)


def elu(x: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0))).astype(x.dtype)


#: hard_sigmoid's slope per Keras dialect: clip(slope * x + 0.5, 0, 1)
HARD_SIGMOID_SLOPE = {"keras2": 0.2, "keras3": 1.0 / 6.0}


def hard_sigmoid(x: np.ndarray, dialect: str = "keras3") -> np.ndarray:
    """keras2: clip(0.2 x + 0.5, 0, 1); keras3: clip(x / 6 + 0.5, 0, 1)."""
    y = 0.2 * x + 0.5 if dialect == "keras2" else x / 6.0 + 0.5
    return np.clip(y, 0, 1).astype(x.dtype)


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0, x).astype(x.dtype)


# -- the table --------------------------------------------------------------------------------
KernelCode = tuple[int, float, float, float]
#: Keras form of an activation: (the layer's `activation` string, extra layers after the layer
#: as (Keras class, config)), valid in Keras 3 and tf_keras alike
KerasForm = tuple[str, list[tuple[str, dict]]]


@dataclass(frozen=True)
class Activation:
    """One activation. `reference(x, **params)` is its definition; `kernel(act)` gives the
    epilogue's (code, p0, p1, p2), None where the kernels do not implement it; `keras(act)`
    its Keras form, None where Keras 3 and tf_keras share no definition; `defaults`: the
    parameters the reader fills in for the bare name (`"dialect"` from the file's Keras
    version); `read`: whether a Keras file may name it."""

    reference: Callable[..., np.ndarray]
    kernel: Callable[[Mapping[str, Any]], KernelCode | None] = lambda act: None
    keras: Callable[[Mapping[str, Any]], KerasForm | None] | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    read: bool = True


def _code(n: int) -> Callable[[Mapping[str, Any]], KernelCode]:
    return lambda act: (n, 0.0, 0.0, 0.0)


def _string(keras_name: str) -> Callable[[Mapping[str, Any]], KerasForm]:
    return lambda act: (keras_name, [])


def _opt_float(v) -> float | None:
    return None if v is None else float(v)


def _relu_code(act) -> KernelCode:
    """relu: p0 = max_value (inf for none), p1 = negative_slope, p2 = threshold."""
    mv = act.get("max_value")
    return (1, math.inf if mv is None else float(mv), float(act.get("negative_slope") or 0.0),
            float(act.get("threshold") or 0.0))


def _relu_keras(act) -> KerasForm:
    cfg = {"max_value": _opt_float(act.get("max_value")),
           "negative_slope": float(act.get("negative_slope") or 0.0),
           "threshold": float(act.get("threshold") or 0.0)}
    if cfg["max_value"] is None and cfg["negative_slope"] == 0 and cfg["threshold"] == 0:
        return "relu", []
    return "linear", [("ReLU", cfg)]


def _leaky_keras(act) -> KerasForm:
    slope = float(act.get("negative_slope", act.get("alpha", 0.2)))
    return "linear", [("ReLU", {"max_value": None, "negative_slope": slope, "threshold": 0.0})]


def _elu_keras(act) -> KerasForm:
    alpha = float(act.get("alpha", 1.0))
    return ("elu", []) if alpha == 1.0 else ("linear", [("ELU", {"alpha": alpha})])


def _hard_sigmoid_keras(act) -> KerasForm:
    """Its meaning differs between Keras 2 and 3, so it is written as Rescaling + ReLU(max 1)."""
    scale = HARD_SIGMOID_SLOPE[act.get("dialect", "keras2")]
    return "linear", [("Rescaling", {"scale": scale, "offset": 0.5}),
                      ("ReLU", {"max_value": 1.0, "negative_slope": 0.0, "threshold": 0.0})]


def _gelu_keras(act) -> KerasForm | None:
    """Only the exact form: the string "gelu" means it in both Keras versions."""
    return None if act.get("approximate", False) else ("gelu", [])


ACTIVATIONS: dict[str, Activation] = {
    "linear": Activation(lambda x: x, _code(0), _string("linear")),
    "relu": Activation(relu, _relu_code, _relu_keras,
                       {"max_value": None, "negative_slope": 0.0, "threshold": 0.0}),
    "leaky_relu": Activation(
        lambda x, negative_slope=0.2: np.where(x >= 0, x, negative_slope * x).astype(x.dtype),
        lambda act: (2, 0.0, float(act.get("negative_slope", 0.2)), 0.0), _leaky_keras,
        {"negative_slope": 0.2}),
    "elu": Activation(elu, lambda act: (3, float(act.get("alpha", 1.0)), 0.0, 0.0), _elu_keras,
                      {"alpha": 1.0}),
    "selu": Activation(lambda x: (SELU_SCALE * elu(x, SELU_ALPHA)).astype(x.dtype), _code(4),
                       _string("selu")),
    "sigmoid": Activation(sigmoid, _code(5), _string("sigmoid")),
    "hard_sigmoid": Activation(
        hard_sigmoid, lambda act: ({"keras2": 6, "keras3": 7}[act.get("dialect", "keras3")],
                                   0.0, 0.0, 0.0),
        _hard_sigmoid_keras, {"dialect": None}),
    "tanh": Activation(np.tanh, _code(8), _string("tanh")),
    "softplus": Activation(_softplus, _code(9), _string("softplus")),
    "softsign": Activation(lambda x: x / (1 + np.abs(x)), _code(10), _string("softsign")),
    "exponential": Activation(np.exp, _code(11), _string("exponential")),
    "swish": Activation(lambda x: x * sigmoid(x), _code(12), _string("swish")),
    "silu": Activation(lambda x: x * sigmoid(x), _code(12), _string("swish")),
    "relu6": Activation(lambda x: np.clip(x, 0, 6), _code(13), lambda act: (
        "linear", [("ReLU", {"max_value": 6.0, "negative_slope": 0.0, "threshold": 0.0})])),
    "gelu": Activation(gelu, lambda act: (14 if act.get("approximate", False) else 15,
                                          0.0, 0.0, 0.0), _gelu_keras, {"approximate": False}),
    "mish": Activation(lambda x: x * np.tanh(np.logaddexp(0, x)).astype(x.dtype), _code(16),
                       read=False),
    "hard_silu": Activation(lambda x: x * hard_sigmoid(x, "keras3"), _code(17), read=False),
    "hard_swish": Activation(lambda x: x * hard_sigmoid(x, "keras3"), _code(17), read=False),
    "softmax": Activation(softmax, keras=lambda act: (
        "linear", [("Softmax", {"axis": int(act.get("axis", -1))})]), defaults={"axis": -1}),
    "log_softmax": Activation(log_softmax, read=False),
}

ACTIVATION_NAMES = frozenset(ACTIVATIONS)


def activation_code(act: Mapping[str, Any]) -> KernelCode | None:
    """(code, p0, p1, p2) of the kernels' epilogue for an activation dict, or None if the
    kernels do not implement it (the caller then applies `reference`)."""
    entry = ACTIVATIONS.get(act.get("name", "linear"))
    return None if entry is None else entry.kernel(act)


def keras_form(act: Mapping[str, Any]) -> KerasForm | None:
    """The activation's Keras form (see `KerasForm`), or None where Keras 3 and tf_keras share
    no definition of it."""
    entry = ACTIVATIONS.get(act.get("name", "linear"))
    return None if entry is None or entry.keras is None else entry.keras(act)


def from_keras(name: str, keras_major: int) -> dict[str, Any] | None:
    """The dict form of an activation a Keras file names (`"relu"`, ...), with the defaults of
    the file's Keras version filled in; None for names a file may not use."""
    entry = ACTIVATIONS.get(name)
    if entry is None or not entry.read:
        return None
    act = {"name": name, **entry.defaults}
    if "dialect" in act:
        act["dialect"] = "keras3" if keras_major >= 3 else "keras2"
    return act
