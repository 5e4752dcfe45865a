"""The one table of activations (`refdecomp.activations`): for every row, the kernels' epilogue,
the NumPy definition and Keras agree, in both Keras dialects where they differ, and the Keras
form that export writes computes the same in Keras 3 and tf_keras.

Oracles: Keras's own activation functions (Keras 3 and tf_keras, the Keras 2 dialect), and the
Keras layers of each exported form built in memory.
"""
from __future__ import annotations

import numpy as np
import pytest

from refdecomp.activations import (
    ACTIVATIONS,
    activation_code,
    from_keras,
    hard_sigmoid,
    keras_form,
)
from refdecomp.kernels.epilogue import apply_activation
from refdecomp.ops.reference import activate

#: every form of every row: the bare name with the reader's defaults, and parameter variants
FORMS = [
    {"name": "linear"},
    {"name": "relu", "max_value": None, "negative_slope": 0.0, "threshold": 0.0},
    {"name": "relu", "max_value": 1.5, "negative_slope": 0.0, "threshold": 0.0},
    {"name": "relu", "max_value": 2.0, "negative_slope": 0.1, "threshold": 0.5},
    {"name": "leaky_relu", "negative_slope": 0.2}, {"name": "leaky_relu", "negative_slope": 0.3},
    {"name": "elu", "alpha": 1.0}, {"name": "elu", "alpha": 0.7},
    {"name": "selu"}, {"name": "sigmoid"},
    {"name": "hard_sigmoid", "dialect": "keras2"}, {"name": "hard_sigmoid", "dialect": "keras3"},
    {"name": "tanh"}, {"name": "softplus"}, {"name": "softsign"}, {"name": "exponential"},
    {"name": "swish"}, {"name": "silu"}, {"name": "relu6"},
    {"name": "gelu", "approximate": False}, {"name": "gelu", "approximate": True},
    {"name": "mish"}, {"name": "hard_silu"}, {"name": "hard_swish"},
    {"name": "softmax", "axis": -1}, {"name": "log_softmax", "axis": -1},
]

_ID = lambda a: "-".join(str(v) for v in a.values())  # noqa: E731

#: inputs around every kink (0, +-3, +-2.5, thresholds) and in the tails
X = np.linspace(-8, 8, 641).astype(np.float32).reshape(1, -1)


def test_every_row_has_a_form_here():
    """A new row of the table gets these checks (this list is not allowed to lag behind)."""
    assert {f["name"] for f in FORMS} == set(ACTIVATIONS)


@pytest.mark.parametrize("act", FORMS, ids=_ID)
def test_kernel_epilogue_equals_reference(act):
    code = activation_code(act)
    if code is None:  # applied by the caller, on the NumPy definition
        assert act["name"] in ("softmax", "log_softmax")
        return
    got = np.array([[apply_activation(v, *code) for v in X[0]]], np.float32)
    np.testing.assert_allclose(got, activate(X, act), rtol=1e-5, atol=1e-6)


def test_hard_sigmoid_dialects_differ_and_map_to_their_kernel_codes():
    x = np.array([1.0], np.float32)
    assert hard_sigmoid(x, "keras2")[0] == pytest.approx(0.7)
    assert hard_sigmoid(x, "keras3")[0] == pytest.approx(1 / 6 + 0.5)
    assert activation_code({"name": "hard_sigmoid", "dialect": "keras2"})[0] != \
        activation_code({"name": "hard_sigmoid", "dialect": "keras3"})[0]
    assert from_keras("hard_sigmoid", 2)["dialect"] == "keras2"
    assert from_keras("hard_sigmoid", 3)["dialect"] == "keras3"


def test_reader_defaults_are_forms_tested_here():
    for name, entry in ACTIVATIONS.items():
        act = from_keras(name, 3)
        assert (act is None) == (not entry.read), name
        if act is not None and name != "hard_sigmoid":
            assert act in FORMS, act


def _keras_function(K, act: dict, dialect: str):
    """Keras's own function for `act`, in Keras 3 (`dialect` keras3) or tf_keras (keras2);
    None where that Keras has no such function."""
    name, a = act["name"], K.activations
    keras2 = dialect == "keras2"
    if name == "relu":
        slope = {"alpha" if keras2 else "negative_slope": act["negative_slope"]}
        return lambda x: a.relu(x, max_value=act["max_value"], threshold=act["threshold"],
                                **slope)
    if name == "leaky_relu":
        return (lambda x: K.layers.LeakyReLU(act["negative_slope"])(x)) if keras2 else \
            (lambda x: a.leaky_relu(x, negative_slope=act["negative_slope"]))
    if name == "elu":
        return lambda x: a.elu(x, alpha=act["alpha"])
    if name == "gelu":
        return lambda x: a.gelu(x, approximate=act["approximate"])
    if name in ("softmax", "log_softmax"):
        return None if keras2 and name == "log_softmax" else (
            lambda x: getattr(a, name)(x, axis=act["axis"]))
    if name == "relu6" and keras2:
        return lambda x: a.relu(x, max_value=6.0)
    fn = getattr(a, name, None)
    return fn


def _dialects(act: dict) -> list[str]:
    return [act["dialect"]] if "dialect" in act else ["keras3", "keras2"]


@pytest.mark.keras
@pytest.mark.parametrize("act", FORMS, ids=_ID)
def test_reference_equals_keras(act, keras3, tf_keras):
    for dialect in _dialects(act):
        K = keras3 if dialect == "keras3" else tf_keras
        fn = _keras_function(K, act, dialect)
        if fn is None:
            continue  # this Keras has no such activation (e.g. mish in tf_keras)
        x = K.ops.convert_to_tensor(X) if dialect == "keras3" else K.backend.constant(X)
        want = np.asarray(fn(x))
        np.testing.assert_allclose(activate(X, act), want, rtol=2e-5, atol=2e-6,
                                   err_msg=f"{act} against {dialect}")


def _apply_form(K, form, x):
    string, layers = form
    y = K.activations.get(string)(x)
    for cls, cfg in layers:
        y = getattr(K.layers, cls)(**cfg)(y)
    return np.asarray(y)


@pytest.mark.keras
@pytest.mark.parametrize("act", FORMS, ids=_ID)
def test_exported_form_computes_the_activation_in_both_kerases(act, keras3, tf_keras):
    """What export writes for `act` (an activation string plus layers) means the same in Keras 3
    and tf_keras, and equals the reference; forms without a shared definition are refused."""
    form = keras_form(act)
    if form is None:
        assert act["name"] in ("mish", "hard_silu", "hard_swish", "log_softmax") or \
            (act["name"] == "gelu" and act["approximate"]), act
        return
    want = activate(X, act)
    for K in (keras3, tf_keras):
        np.testing.assert_allclose(_apply_form(K, form, X), want, rtol=2e-5, atol=2e-6,
                                   err_msg=f"{act} as {form} in {K.__name__}")
