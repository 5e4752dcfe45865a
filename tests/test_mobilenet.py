"""MobileNet-family layers against Keras 3 and tf_keras, and a MobileNet-v2-style CIFAR model
decomposed end to end.

Oracles: Keras `predict` on the model Keras built (channels_first models: their channels_last
twin with the same weights, as in test_keras_oracle.py, because TensorFlow's CPU kernels run
depthwise convolution as NHWC only), Keras 3 loading refdecomp's exports of the modules, and
for the decomposition the invariants the paper's rules promise: backtracking ("input" mode,
through depthwise and pointwise convolutions) changes no module output, compact modules
compute what masked modules compute.
"""
from __future__ import annotations

import logging
import os
import warnings

import numpy as np
import pytest
from hypothesis import Phase, assume, given, settings
from hypothesis import strategies as st
from keras_models import randomize_weights

import refdecomp
from refdecomp.decompose.backtrack import prune_masks
from refdecomp.interpreter import Model

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

pytestmark = [pytest.mark.keras, pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

RTOL = 1e-5


def _oracle(n):
    return settings(max_examples=n, deadline=None,
                    phases=[Phase.explicit, Phase.reuse, Phase.generate])


def _relative_error(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-30))


@pytest.fixture(scope="module", params=["keras3", "tf_keras"])
def K(request):
    return request.getfixturevalue(request.param)


layer_cases = st.fixed_dictionaries({
    "kind": st.sampled_from(["depthwise", "separable"]),
    "h": st.integers(3, 9), "w": st.integers(3, 9), "c": st.integers(1, 6),
    "kernel": st.integers(1, 4), "stride": st.sampled_from([1, 2]),
    "dilation": st.sampled_from([1, 2]), "mult": st.integers(1, 3),
    "padding": st.sampled_from(["valid", "same"]), "bias": st.booleans(),
    "act": st.sampled_from(["linear", "relu", "relu6_layer", "relu_max4"]),
    "upsample": st.sampled_from([None, (2, 2), (1, 3)]),
    "channels_first": st.booleans(), "seed": st.integers(0, 2**16),
})


def _window_fits(c) -> bool:
    span = (c["kernel"] - 1) * c["dilation"] + 1
    return (c["stride"] == 1 or c["dilation"] == 1) and (
        c["padding"] == "same" or (span <= c["h"] and span <= c["w"]))


def _layers(K, c, fmt):
    L = K.layers
    common = dict(kernel_size=c["kernel"], strides=c["stride"], padding=c["padding"],
                  dilation_rate=c["dilation"], depth_multiplier=c["mult"], use_bias=c["bias"],
                  data_format=fmt)
    out = [L.DepthwiseConv2D(**common) if c["kind"] == "depthwise"
           else L.SeparableConv2D(filters=c["c"] + 2, **common)]
    if c["act"] == "relu":
        out.append(L.Activation("relu"))
    elif c["act"] == "relu6_layer":
        out.append(L.ReLU(max_value=6.0))
    elif c["act"] == "relu_max4":
        out.append(L.ReLU(max_value=4.0))
    if c["upsample"]:
        out.append(L.UpSampling2D(size=c["upsample"], data_format=fmt,
                                  interpolation="nearest"))
    return out


def _build(K, c, fmt):
    shape = (c["c"], c["h"], c["w"]) if fmt == "channels_first" else (c["h"], c["w"], c["c"])
    inp = K.Input(shape)
    x = inp
    for layer in _layers(K, c, fmt):
        x = layer(x)
    return K.Model(inp, x)


def _save(K, model, folder) -> list:
    """[(file, architecture or None)]: legacy .h5; a weights-only file with the model's JSON;
    for Keras 3 a .keras archive too."""
    logging.getLogger("absl").setLevel(logging.ERROR)
    files = [(folder / "m.h5", None)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(files[0][0])
        (folder / "m.json").write_text(model.to_json())
        if K.__name__ == "keras":
            model.save(folder / "m.keras")
            model.save_weights(folder / "m.weights.h5")
            files += [(folder / "m.keras", None), (folder / "m.weights.h5", folder / "m.json")]
        else:
            model.save_weights(folder / "weights.h5")
            files.append((folder / "weights.h5", folder / "m.json"))
    return files


@_oracle(12)
@given(c=layer_cases)
def test_mobilenet_layers_match_keras(K, c, tmp_path_factory):
    """DepthwiseConv2D / SeparableConv2D (strides, dilation, depth_multiplier, both data
    formats), ReLU(max_value) and relu6, UpSampling2D: refdecomp's reading of Keras' files
    computes what Keras computes."""
    assume(_window_fits(c))
    folder = tmp_path_factory.mktemp("mobilenet")
    fmt = "channels_first" if c["channels_first"] else "channels_last"
    model = _build(K, c, fmt)
    randomize_weights(model, c["seed"])
    twin = _build(K, c, "channels_last") if c["channels_first"] else model
    if c["channels_first"]:
        twin.set_weights(model.get_weights())      # kernels are layout-independent
    x = np.random.default_rng(c["seed"]).standard_normal(
        (3, *model.input_shape[1:])).astype(np.float32)
    x_last = np.moveaxis(x, 1, -1) if c["channels_first"] else x
    want = np.asarray(twin.predict(x_last, verbose=0))
    if c["channels_first"]:
        want = np.moveaxis(want, -1, 1)
    for path, architecture in _save(K, model, folder):
        got = refdecomp.load_model(path, architecture).predict(x)
        assert got.shape == want.shape, (path.name, c)
        assert _relative_error(got, want) <= RTOL, (path.name, c, _relative_error(got, want))


def test_relu6_activation_string_matches_keras3(keras3, tmp_path):
    """activation="relu6" (a Keras 3 name) on a depthwise convolution, fused in the kernel."""
    L = keras3.layers
    inp = keras3.Input((6, 6, 4))
    model = keras3.Model(inp, L.DepthwiseConv2D(3, padding="same", activation="relu6")(inp))
    randomize_weights(model, 3)
    for v in model.weights:                        # large values, so the cap at 6 matters
        v.assign(np.asarray(v) * 8)
    x = np.random.default_rng(0).standard_normal((4, 6, 6, 4)).astype(np.float32)
    model.save(tmp_path / "m.keras")
    want = model.predict(x, verbose=0)
    got = refdecomp.load_model(tmp_path / "m.keras").predict(x)
    assert (want == 6).any() and _relative_error(got, want) <= RTOL


# -- a MobileNet-v2-style CIFAR model, end to end -----------------------------------------------
def _inverted_residual(L, x, expand: int, out: int, stride: int, name: str):
    """Expansion 1x1 conv + BN + relu6, depthwise 3x3 + BN + relu6, linear bottleneck 1x1 + BN,
    Add when the shapes allow (MobileNetV2's block)."""
    cin = x.shape[-1]
    y = L.Conv2D(cin * expand, 1, use_bias=False, name=f"{name}_expand")(x)
    y = L.BatchNormalization(name=f"{name}_expand_bn")(y)
    y = L.ReLU(6.0, name=f"{name}_expand_relu")(y)
    y = L.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False,
                          name=f"{name}_depthwise")(y)
    y = L.BatchNormalization(name=f"{name}_depthwise_bn")(y)
    y = L.ReLU(6.0, name=f"{name}_depthwise_relu")(y)
    y = L.Conv2D(out, 1, use_bias=False, name=f"{name}_project")(y)
    y = L.BatchNormalization(name=f"{name}_project_bn")(y)
    if stride == 1 and cin == out:
        y = L.Add(name=f"{name}_add")([x, y])
    return y


def mobilenet_v2_cifar(K, seed: int = 0):
    """A small MobileNetV2 for 32x32x3 images (random weights and batch-norm statistics)."""
    L = K.layers
    inp = K.Input((32, 32, 3))
    x = L.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="stem")(inp)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.ReLU(6.0, name="stem_relu")(x)
    for i, (expand, out, stride) in enumerate([(1, 8, 1), (4, 12, 2), (4, 12, 1), (4, 16, 2)]):
        x = _inverted_residual(L, x, expand, out, stride, f"block{i}")
    x = L.Conv2D(32, 1, use_bias=False, name="head_conv")(x)
    x = L.BatchNormalization(name="head_bn")(x)
    x = L.ReLU(6.0, name="head_relu")(x)
    x = L.GlobalAveragePooling2D(name="pool")(x)
    out = L.Dense(10, activation="softmax", name="logits")(x)
    model = K.Model(inp, out, name="mobilenet_v2_cifar")
    randomize_weights(model, seed)
    return model


@pytest.fixture(scope="module")
def mobilenet(keras3, tmp_path_factory):
    """(Keras model, its .h5 file, refdecomp model, CIFAR-sized images, labels)."""
    model = mobilenet_v2_cifar(keras3)
    path = tmp_path_factory.mktemp("mobilenet") / "mobilenet.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(path)
    ours = refdecomp.load_model(path)
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (120, 32, 32, 3)).astype(np.float32)
    y = np.argmax(model.predict(x, verbose=0), axis=1)        # the model's own labels
    return model, path, ours, x, y


def test_mobilenet_model_matches_keras(mobilenet):
    keras_model, _, ours, x, _ = mobilenet
    kinds = {n.op for n in ours.graph}
    assert {"depthwise_conv2d", "conv2d", "add", "dense"} <= kinds
    assert "batch_norm" not in kinds                  # every batch norm folded
    assert _relative_error(ours.predict(x), keras_model.predict(x, verbose=0)) <= RTOL
    # the depthwise kernel and the reference engine agree as well
    ref = Model(ours.source_graph, engine="reference")
    assert _relative_error(ours.predict(x[:16]), ref.predict(x[:16])) <= RTOL


@pytest.mark.parametrize("backtrack", ["last_conv", "input"])
def test_mobilenet_decomposes_end_to_end(mobilenet, backtrack, keras3, tmp_path):
    _, _, ours, x, y = mobilenet
    ms = refdecomp.decompose(ours, x, y, backtrack=backtrack, seed=0)
    assert len(ms) == 10
    scores = ms.decision_function(x)
    assert scores.shape == (len(x), 10) and np.isfinite(scores).all()
    depthwise = [n.name for n in ours.graph if n.op == "depthwise_conv2d"]
    for c in (int(y[0]), int(y[-1])):
        module = ms[c]
        assert set(depthwise) <= set(module.masks)       # depthwise nodes are masked too
        p = module.predict(x[:24])
        # backtracking again removes nothing that matters: same outputs
        pruned = prune_masks(module.graph, module.masks, "input",
                             exclude=frozenset({module.head_name}))
        run = Model(module.graph, fold=False)
        kept = {**module.masks, **pruned}
        np.testing.assert_allclose(run.run(x[:24], masks=kept)[0],
                                   run.run(x[:24], masks=module.masks)[0], rtol=1e-5, atol=1e-6)
        # the compact module computes the masked module
        np.testing.assert_allclose(module.compact().predict(x[:24]), p, rtol=1e-4, atol=1e-6)
        # Keras 3 runs the exported module (masks as NodeMask layers)
        path = module.export_keras(tmp_path / f"module{c}.h5")
        loaded = keras3.models.load_model(str(path), compile=False,
                                          custom_objects=refdecomp.keras_objects(backend="keras"))
        np.testing.assert_allclose(loaded.predict(x[:24], verbose=0),
                                   run.run(x[:24], masks=module.masks)[0], rtol=1e-4, atol=1e-5)
