"""Property tests: random Keras models, written to disk by Keras, read back by refdecomp, compute
what Keras computes.

Hypothesis draws CNNs (tests/keras_models.py: Sequential and Functional with Add / Concatenate
branches and shared layers, nested models, two inputs and two outputs; random kernel sizes,
strides, `same`/`valid` padding including `same` with stride 2 on odd sizes, dilations,
activations, pooling, batch norm with random moving statistics on any axis, Normalization,
PReLU, Rescaling, ZeroPadding2D, Reshape, DepthwiseConv2D and SeparableConv2D (depth
multipliers), UpSampling2D, dropout-like layers, channels_first) and random
weights. Each model is saved in every format its dialect writes (Keras 3: legacy `.h5`,
`.keras`, `.weights.h5` + `to_json()`; tf_keras: `.h5`, `.keras`, `save_weights` `.h5` +
`to_json()`), loaded with `refdecomp.load_model`, and its predictions on a random batch compared
with the in-memory Keras model's `predict`.

Bound: relative error max|ours - keras| / max(max|keras|, tiny) <= 1e-5 per output. Both sides
compute in float32 but accumulate in different orders (oneDNN's blocked GEMMs vs our direct
convolution micro-kernels and Numba loops), so a K-term dot product differs by about
sqrt(K) * eps32 ~ sqrt(K) * 6e-8 relative to its magnitude (a random walk of rounding errors).
Here K <= 3*3*18 for convolutions and at most a few thousand for a dense layer after Flatten,
i.e. <= ~4e-6 in the worst case and ~1e-7 typically (measured), while any semantic slip (a
padding offset, a wrong axis, a missed bias or moving statistic) gives errors of order 1e-2..1.

Channels_first: the reference for a channels_first model is its channels_last twin (see
`keras_models.Builder`: same layers and weights, layout-dependent layers run between Permutes),
because TensorFlow 2.21's own NCHW path on CPU is not a trustworthy oracle: it runs, but e.g. a
channels_first Conv2D with kernel (1, 2), dilation (1, 2), `same`, on a (4, 5, 5) input inside a
larger graph, or (Keras 3 eager call) kernel 2, stride 2 on a (2, 8, 12) input, gives relative
errors of ~0.2 against a brute-force NumPy convolution, which refdecomp matches to 1e-7.
The reference is always `predict`, never an eager call.
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import Phase, assume, given, note, settings
from hypothesis import strategies as st
from keras_models import (
    Builder,
    build_model,
    build_multi_io,
    copy_weights,
    dialect_of,
    model_specs,
    multi_io_specs,
    random_inputs,
    randomize_weights,
)

import refdecomp
from refdecomp.interpreter import Model

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
    format and the first diverging layer instead. REFDECOMP_ORACLE_SCALE=k multiplies the counts
    (with HYPOTHESIS_PROFILE=explore for fresh randomness) when hunting bugs."""
    scale = int(os.environ.get("REFDECOMP_ORACLE_SCALE", "1"))
    return settings(max_examples=max_examples * scale,
                    phases=[Phase.explicit, Phase.reuse, Phase.generate])


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    """max|ours - ref| / max(max|ref|, tiny), in float64."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    scale = max(np.max(np.abs(ref), initial=0.0), TINY)
    return float(np.max(np.abs(ours - ref), initial=0.0) / scale)


def keras_outputs(model, xs: list[np.ndarray], dtype=np.float32) -> list[np.ndarray]:
    """The in-memory Keras model's `predict` outputs as a list of arrays of `dtype`.

    `predict`, not an eager `model(x)`: with Keras 3 on TensorFlow 2.21 (CPU), the eager call of
    a channels_first Conv2D with strides 2 computes wrong values for some shapes (e.g. input
    (2, 8, 12), kernel 2, stride 2: relative error ~0.2 against a brute-force NumPy
    convolution), while `predict` (a traced graph) and tf_keras agree with NumPy."""
    out = model.predict(xs[0] if len(xs) == 1 else xs, verbose=0)
    outs = out if isinstance(out, (list, tuple)) else [out]
    return [np.asarray(o, dtype=dtype) for o in outs]


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
        layers = [l for l in model.layers if l.__class__.__name__ != "InputLayer"]
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


def check_model(K, model, xs: list[np.ndarray], formats=("h5", "keras", "weights+json"),
                oracle=None, exact=None) -> None:
    """Save `model` in `formats`, load each with refdecomp, and compare predictions on `xs`
    with the `oracle` Keras model's (default `model`), also through the unfolded NumPy
    reference engine for one format.

    `exact()` (optional) gives the same model's outputs computed by Keras in float64; it is
    only consulted when the 1e-5 bound fails, to tell rounding from semantics (see
    `within_rounding`)."""
    oracle = model if oracle is None else oracle
    ref = keras_outputs(oracle, xs)
    assume(all(np.all(np.isfinite(r)) for r in ref))
    x = xs[0] if len(xs) == 1 else xs
    exact_outputs: list[np.ndarray] = []
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
                    if err <= RTOL:
                        continue
                    if exact is not None:
                        exact_outputs = exact_outputs or exact()
                        ok, why = within_rounding(o, r, exact_outputs[i])
                        if ok:
                            continue
                    else:
                        why = ""
                    diagnosis = (first_divergence(K, model, m, xs) if oracle is model
                                 else "(channels_first: compared with the twin)")
                    pytest.fail(f"{where}: relative error {err:.3g} > {RTOL}{why}; {diagnosis}")


def within_rounding(ours: np.ndarray, keras32: np.ndarray, exact: np.ndarray) -> tuple[bool, str]:
    """Whether ours is as close to the float64 evaluation as Keras's own float32 result.

    An output that is a small difference of large terms (e.g. a linear Dense over sigmoid
    features whose weights nearly cancel) amplifies float32 rounding far beyond 1e-5 of the
    output's magnitude, in Keras as much as in refdecomp. Then the test asks that
    |ours - exact| <= 1e-5 * max|exact| + 8 * |keras32 - exact| (max over the output): ours is
    within a small factor of Keras's own rounding error, which a semantic slip is not."""
    e_ours = float(np.max(np.abs(ours.astype(np.float64) - exact), initial=0.0))
    e_keras = float(np.max(np.abs(keras32.astype(np.float64) - exact), initial=0.0))
    bound = RTOL * float(np.max(np.abs(exact), initial=0.0)) + 8.0 * e_keras
    return e_ours <= bound, (f" (vs Keras in float64: ours off by {e_ours:.3g}, Keras float32 "
                             f"off by {e_keras:.3g}, allowed {bound:.3g})")


@contextlib.contextmanager
def default_dtype(K, name: str):
    """Layers built inside compute in `name` (Keras 3: the global dtype policy; tf_keras:
    floatx)."""
    keras3 = dialect_of(K) == "keras3"
    previous = K.config.dtype_policy().name if keras3 else K.backend.floatx()
    (K.config.set_dtype_policy if keras3 else K.backend.set_floatx)(name)
    try:
        yield
    finally:
        (K.config.set_dtype_policy if keras3 else K.backend.set_floatx)(previous)


def build_with_oracle(K, spec, build):
    """(model, oracle, exact): the model of `spec` with random weights; the Keras model whose
    `predict` is the reference (the model itself, or for channels_first its channels_last twin
    with the same weights); and a function giving that reference computed in float64."""
    K.backend.clear_session()
    builder = Builder(K)
    model = build(K, spec, builder)
    randomize_weights(model, spec.seed)
    twin = spec.data_format == "channels_first"

    def copy(dtype_name: str):
        copy_builder = Builder(K, twin=twin)
        with default_dtype(K, dtype_name):
            clone = build(K, spec, copy_builder)
        copy_weights(builder, copy_builder)
        return clone

    def exact(xs):
        clone = copy("float64")
        return keras_outputs(clone, [x.astype(np.float64) for x in xs], np.float64)

    return model, (copy("float32") if twin else model), exact


def run_spec(K, data, strategy, build=build_model) -> None:
    """Draw a spec from `strategy` (noted for the failure report), build it and check it."""
    spec = data.draw(strategy)
    note(f"spec: {spec!r}")
    model, oracle, exact = build_with_oracle(K, spec, build)
    shapes = [tuple(int(d) for d in t.shape[1:]) for t in model.inputs]
    xs = random_inputs(shapes, spec.seed)
    check_model(K, model, xs, oracle=oracle, exact=lambda: exact(xs))


# --------------------------------------------------------------------------------------------
# Both dialects: Keras 3 and tf_keras (the Keras 2 dialect)
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["keras3", "tf_keras"])
def dialect(request):
    """(name, module) for each Keras dialect; skips a dialect that is not installed."""
    return request.param, request.getfixturevalue(request.param)


@oracle_settings(20)
@given(data=st.data())
def test_sequential(dialect, data):
    name, K = dialect
    run_spec(K, data, model_specs(name, functional=False))


@oracle_settings(20)
@given(data=st.data())
def test_functional(dialect, data):
    name, K = dialect
    run_spec(K, data, model_specs(name, functional=True))


@oracle_settings(10)
@given(data=st.data())
def test_nested(dialect, data):
    name, K = dialect
    run_spec(K, data, model_specs(name, functional=True, nested=True))


@oracle_settings(8)
@given(data=st.data())
def test_two_inputs_two_outputs(dialect, data):
    name, K = dialect
    run_spec(K, data, multi_io_specs(name), build_multi_io)
