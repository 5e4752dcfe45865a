"""Property tests: random Keras models, written to disk by Keras, read back by refdecomp, compute
what Keras computes.

Hypothesis draws CNNs (tests/keras_models.py: Sequential and Functional with Add / Concatenate
branches and shared layers, nested models, two inputs and two outputs; random kernel sizes,
strides, `same`/`valid` padding including `same` with stride 2 on odd sizes, dilations,
activations, pooling, batch norm with random moving statistics on any axis, PReLU, Rescaling,
ZeroPadding2D, Reshape, dropout-like layers, channels_first) and random weights. Each model is
saved in every format its dialect writes (Keras 3: legacy `.h5`, `.keras`, `.weights.h5` +
`to_json()`; tf_keras: `.h5`, `.keras`, `save_weights` `.h5` + `to_json()`), loaded with
`refdecomp.load_model`, and its predictions on a random batch compared with the in-memory Keras
model's.

Bound: relative error max|ours - keras| / max(max|keras|, tiny) <= 1e-5 per output. Both sides
compute in float32 but accumulate in different orders (oneDNN's blocked GEMMs vs our im2col /
Numba loops), so a K-term dot product differs by about sqrt(K) * eps32 ~ sqrt(K) * 6e-8 relative
to its magnitude; with K <= 3*3*12 for convolutions and K <= 12*12*6 for dense layers here, and a
few layers of compounding, that stays well below 1e-5, while any semantic slip (a padding
offset, a wrong axis, a missed bias or moving statistic) gives errors of order 1e-2..1.

Channels_first: TensorFlow 2.21 on CPU runs channels_first Conv2D / pooling (Keras 3 transposes,
oneDNN handles NCHW), which `_channels_first_runs` checks once per dialect; where it cannot,
specs draw only channels_last.
"""
from __future__ import annotations

import functools
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import Phase, assume, given, note, settings
from hypothesis import strategies as st

import refdecomp
from refdecomp.interpreter import Model

from keras_models import (
    build_model, build_multi_io, dialect_of, model_specs, multi_io_specs, random_inputs,
    randomize_weights,
)

pytestmark = [
    pytest.mark.keras,
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

RTOL = 1e-5
TINY = float(np.finfo(np.float32).tiny)


def oracle_settings(max_examples: int):
    """Modest example counts (each example builds, saves and loads a Keras model: ~0.5-1.5 s).
    No shrinking: it would rebuild models for minutes; the failure message names the spec, the
    format and the first diverging layer instead."""
    return settings(max_examples=max_examples, phases=[Phase.explicit, Phase.reuse, Phase.generate])


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    """max|ours - ref| / max(max|ref|, tiny), in float64."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(ours - ref), initial=0.0) / max(np.max(np.abs(ref), initial=0.0), TINY))


def keras_outputs(model, xs: list[np.ndarray]) -> list[np.ndarray]:
    """The in-memory Keras model's `predict` outputs as a list of float32 arrays.

    `predict`, not an eager `model(x)`: with Keras 3 on TensorFlow 2.21 (CPU), the eager call of
    a channels_first Conv2D with strides 2 computes wrong values for some shapes (e.g. input
    (2, 8, 12), kernel 2, stride 2: relative error ~0.2 against a brute-force NumPy
    convolution), while `predict` (a traced graph) and tf_keras agree with NumPy."""
    out = model.predict(xs[0] if len(xs) == 1 else xs, verbose=0)
    outs = out if isinstance(out, (list, tuple)) else [out]
    return [np.asarray(o, dtype=np.float32) for o in outs]


def as_list(pred) -> list[np.ndarray]:
    return list(pred) if isinstance(pred, (list, tuple)) else [pred]


def save_all_formats(K, model, folder: Path) -> dict[str, tuple[Path, Path | None]]:
    """Write `model` in every format its dialect produces: {format: (path, architecture)}."""
    keras3 = dialect_of(K) == "keras3"
    files: dict[str, tuple[Path, Path | None]] = {}
    logging.getLogger("absl").setLevel(logging.ERROR)  # the legacy-HDF5 nag on every save
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        h5 = folder / "model.h5"
        model.save(h5)
        files["h5"] = (h5, None)
        archive = folder / "model.keras"
        model.save(archive)
        files["keras"] = (archive, None)
        weights = folder / ("model.weights.h5" if keras3 else "weights.h5")
        model.save_weights(weights)
        config = folder / "architecture.json"
        config.write_text(model.to_json())
        files["weights+json"] = (weights, config)
    return files


def first_divergence(K, model, loaded, xs) -> str:
    """Best-effort diagnosis for a failure message: the first Keras layer (in the order of
    `model.layers`) whose output refdecomp does not reproduce. Needs a flat model."""
    try:
        layers = [l for l in model.layers if not l.__class__.__name__ == "InputLayer"]
        if any(hasattr(l, "layers") for l in layers):
            return "(nested model: no per-layer diagnosis)"
        probe = K.Model(model.inputs, [l.output for l in layers])
        ref = keras_outputs(probe, xs)
        ours = loaded.layer_outputs(xs[0] if len(xs) == 1 else xs, [l.name for l in layers])
        for layer, r in zip(layers, ref):
            o = ours[layer.name]
            if o.shape != r.shape or relative_error(o, r) > RTOL:
                err = relative_error(o, r) if o.shape == r.shape else "shape"
                return (f"first divergence at layer {layer.name!r} ({layer.__class__.__name__}) "
                        f"config={layer.get_config()}: ours {o.shape} vs keras {r.shape}, "
                        f"rel err {err}")
        return "(every layer matches individually)"
    except Exception as exc:  # diagnosis only: never hide the real failure
        return f"(no per-layer diagnosis: {type(exc).__name__}: {exc})"


def check_model(K, model, xs: list[np.ndarray], formats=("h5", "keras", "weights+json")) -> None:
    """Save `model` in `formats`, load each with refdecomp, and compare predictions on `xs`
    with Keras's (also through the unfolded NumPy reference engine, for one format)."""
    ref = keras_outputs(model, xs)
    assume(all(np.all(np.isfinite(r)) for r in ref))
    x = xs[0] if len(xs) == 1 else xs
    with tempfile.TemporaryDirectory() as tmp:
        files = save_all_formats(K, model, Path(tmp))
        for fmt in formats:
            path, architecture = files[fmt]
            loaded = refdecomp.load_model(path, architecture=architecture)
            engines = [("numba/folded", loaded)]
            if fmt == formats[0]:
                engines.append(("reference/unfolded",
                                Model(loaded.source_graph, fold=False, engine="reference")))
            for engine, m in engines:
                ours = as_list(m.predict(x))
                assert len(ours) == len(ref), f"{fmt}: {len(ours)} outputs, Keras has {len(ref)}"
                for i, (o, r) in enumerate(zip(ours, ref)):
                    where = f"{dialect_of(K)} {fmt} [{engine}] output {i}"
                    assert o.shape == r.shape, f"{where}: shape {o.shape} != Keras {r.shape}"
                    err = relative_error(o, r)
                    if err > RTOL:
                        pytest.fail(f"{where}: relative error {err:.3g} > {RTOL}; "
                                    f"{first_divergence(K, model, m, xs)}")


@functools.lru_cache(maxsize=None)
def _channels_first_runs(K) -> bool:
    """Whether this TensorFlow build runs channels_first Conv2D and pooling on CPU."""
    try:
        model = K.Sequential([
            K.Input(shape=(2, 5, 5)),
            K.layers.Conv2D(2, 3, padding="same", data_format="channels_first"),
            K.layers.MaxPooling2D(2, data_format="channels_first"),
            K.layers.AveragePooling2D(2, padding="same", data_format="channels_first"),
        ])
        model(np.zeros((1, 2, 5, 5), np.float32), training=False)
        return True
    except Exception:
        return False
    finally:
        K.backend.clear_session()


def draw_spec(K, data, strategy):
    """Draw a spec; re-draw channels_first ones where TensorFlow cannot run them."""
    spec = data.draw(strategy)
    if spec.data_format == "channels_first":
        assume(_channels_first_runs(K))
    note(f"spec: {spec!r}")
    return spec


def run_spec(K, spec, formats=("h5", "keras", "weights+json")) -> None:
    K.backend.clear_session()
    model = build_model(K, spec)
    randomize_weights(model, spec.seed)
    check_model(K, model, random_inputs([spec.input_shape], spec.seed), formats)


# --------------------------------------------------------------------------------------------
# Keras 3
# --------------------------------------------------------------------------------------------
@oracle_settings(20)
@given(data=st.data())
def test_keras3_sequential(keras3, data):
    run_spec(keras3, draw_spec(keras3, data, model_specs("keras3", functional=False)))


@oracle_settings(20)
@given(data=st.data())
def test_keras3_functional(keras3, data):
    run_spec(keras3, draw_spec(keras3, data, model_specs("keras3", functional=True)))


@oracle_settings(10)
@given(data=st.data())
def test_keras3_nested(keras3, data):
    run_spec(keras3, draw_spec(keras3, data, model_specs("keras3", functional=True, nested=True)))


@oracle_settings(8)
@given(data=st.data())
def test_keras3_two_inputs_two_outputs(keras3, data):
    spec = draw_spec(keras3, data, multi_io_specs("keras3"))
    keras3.backend.clear_session()
    model = build_multi_io(keras3, spec)
    randomize_weights(model, spec.seed)
    shapes = [tuple(int(d) for d in t.shape[1:]) for t in model.inputs]
    check_model(keras3, model, random_inputs(shapes, spec.seed))


# --------------------------------------------------------------------------------------------
# tf_keras (the Keras 2 dialect)
# --------------------------------------------------------------------------------------------
@oracle_settings(15)
@given(data=st.data())
def test_tf_keras_sequential(tf_keras, data):
    run_spec(tf_keras, draw_spec(tf_keras, data, model_specs("tf_keras", functional=False)))


@oracle_settings(20)
@given(data=st.data())
def test_tf_keras_functional(tf_keras, data):
    run_spec(tf_keras, draw_spec(tf_keras, data, model_specs("tf_keras", functional=True)))


@oracle_settings(10)
@given(data=st.data())
def test_tf_keras_nested(tf_keras, data):
    run_spec(tf_keras, draw_spec(tf_keras, data,
                                 model_specs("tf_keras", functional=True, nested=True)))


@oracle_settings(8)
@given(data=st.data())
def test_tf_keras_two_inputs_two_outputs(tf_keras, data):
    spec = draw_spec(tf_keras, data, multi_io_specs("tf_keras"))
    tf_keras.backend.clear_session()
    model = build_multi_io(tf_keras, spec)
    randomize_weights(model, spec.seed)
    shapes = [tuple(int(d) for d in t.shape[1:]) for t in model.inputs]
    check_model(tf_keras, model, random_inputs(shapes, spec.seed))
