"""Unit tests of the reader: every bad-input case gets its specific error, config dialects are
normalised, and small files written by Keras itself read back to what Keras computes.

Oracles: NumPy written out by hand for hand-built files (h5py, no Keras), and Keras'
own predictions for files Keras writes (imported inside the tests only).
"""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from refdecomp import ModelFormatError, UnsupportedLayerError
from refdecomp.interpreter import Model
from refdecomp.reader import read_graph
from refdecomp.reader.shapes import with_input_shapes
from refdecomp.reader.weights import to_snake_case

RTOL = 1e-5


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape
    return float(np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-30))


def predict(graph, *xs):
    out = Model(graph).predict(list(xs) if len(xs) > 1 else xs[0])
    return out


# --------------------------------------------------------------------------------------------
# Hand-built legacy HDF5 files (h5py only)
# --------------------------------------------------------------------------------------------
def write_legacy(path: Path, config: dict | None, weights: dict[str, list[tuple[str, np.ndarray]]],
                 keras_version: str | None = "2.2.4", backend: str = "tensorflow",
                 as_bytes: bool = True) -> Path:
    """A legacy Keras HDF5 file: full model if `config` is given, else weights-only."""
    enc = (lambda s: s.encode()) if as_bytes else (lambda s: s)
    with h5py.File(path, "w") as f:
        if keras_version is not None:
            f.attrs["keras_version"] = enc(keras_version)
            f.attrs["backend"] = enc(backend)
        if config is not None:
            f.attrs["model_config"] = enc(json.dumps(config))
            g = f.create_group("model_weights")
        else:
            g = f
        g.attrs["layer_names"] = [enc(n) for n in weights]
        for lname, arrays in weights.items():
            lg = g.create_group(lname)
            if arrays:
                lg.attrs["weight_names"] = [enc(n) for n, _ in arrays]
            else:
                lg.attrs["weight_names"] = np.array([], dtype=np.float64)
            for wname, arr in arrays:
                lg.create_dataset(wname, data=arr)
    return path


def dense_layer(name, units, activation="linear", **extra):
    return {"class_name": "Dense", "config": {"name": name, "units": units,
                                              "activation": activation, "use_bias": True,
                                              **extra}}


RNG = np.random.default_rng(7)
K1, B1 = RNG.standard_normal((4, 3)).astype(np.float32), RNG.standard_normal(3).astype(np.float32)
K2, B2 = RNG.standard_normal((3, 2)).astype(np.float32), RNG.standard_normal(2).astype(np.float32)


def mlp_ref(x):
    return np.maximum(x @ K1 + B1, 0) @ K2 + B2


def mlp_weights(prefix=""):
    return {"d1": [(f"{prefix}d1/kernel:0", K1), (f"{prefix}d1/bias:0", B1)],
            "d2": [(f"{prefix}d2/kernel:0", K2), (f"{prefix}d2/bias:0", B2)]}


X4 = RNG.random((5, 4), dtype=np.float32)


@pytest.mark.parametrize("dialect", ["bare_list", "dict", "keras3_batch_shape", "input_layer"])
def test_sequential_dialects(tmp_path, dialect):
    first = dense_layer("d1", 3, "relu")
    if dialect == "bare_list":          # Keras <= 2.2.2
        config = {"class_name": "Sequential",
                  "config": [{**first, "config": {**first["config"],
                                                  "batch_input_shape": [None, 4]}},
                             dense_layer("d2", 2)]}
    elif dialect == "dict":
        config = {"class_name": "Sequential", "config": {"name": "s", "layers": [
            {**first, "config": {**first["config"], "batch_input_shape": [None, 4]}},
            dense_layer("d2", 2)]}}
    elif dialect == "keras3_batch_shape":
        config = {"class_name": "Sequential", "config": {"name": "s", "layers": [
            {"class_name": "InputLayer", "config": {"name": "inp", "batch_shape": [None, 4]}},
            first, dense_layer("d2", 2)]}}
    else:
        config = {"class_name": "Sequential", "config": {"name": "s", "layers": [
            {"class_name": "InputLayer", "config": {"name": "inp",
                                                    "batch_input_shape": [None, 4]}},
            first, dense_layer("d2", 2)]}}
    path = write_legacy(tmp_path / "m.h5", config, mlp_weights(),
                        as_bytes=dialect != "dict")
    graph = read_graph(path)
    assert [n.op for n in graph] == ["input", "dense", "dense"]
    assert graph.output_shapes() == [(2,)]
    assert rel_err(predict(graph, X4), mlp_ref(X4)) <= RTOL


def _functional(inbound_style: str, offset_nested: bool = False) -> dict:
    def ref(name, node=0):
        if inbound_style == "keras1":
            return [[name, node, 0]]
        if inbound_style == "keras2":
            return [[name, node, 0, {}]]
        return {"args": [{"class_name": "__keras_tensor__",
                          "config": {"shape": [None, 4], "keras_history": [name, node, 0]}}],
                "kwargs": {}}
    layers = [
        {"class_name": "InputLayer", "name": "x",
         "config": {"name": "x", "batch_input_shape": [None, 4]}, "inbound_nodes": []},
        {**dense_layer("d1", 3, "relu"), "name": "d1", "inbound_nodes": [ref("x")]},
        {**dense_layer("d2", 2), "name": "d2", "inbound_nodes": [ref("d1")]},
    ]
    outputs = ["d2", 0, 0] if inbound_style == "keras3" else [["d2", 0, 0]]
    return {"class_name": "Functional" if inbound_style == "keras3" else "Model",
            "config": {"name": "f", "layers": layers, "input_layers": [["x", 0, 0]],
                       "output_layers": outputs}}


@pytest.mark.parametrize("style", ["keras1", "keras2", "keras3"])
def test_inbound_node_dialects(tmp_path, style):
    path = write_legacy(tmp_path / "m.h5", _functional(style), mlp_weights(),
                        keras_version="3.4.1" if style == "keras3" else "2.2.4")
    graph = read_graph(path)
    assert graph.inputs == ["x"] and graph.outputs == ["d2"]
    assert rel_err(predict(graph, X4), mlp_ref(X4)) <= RTOL


def test_weight_paths_need_not_match_layer_names(tmp_path):
    """`H1/H1_1/kernel:0`: only `weight_names` says where a layer's arrays are."""
    weights = {"d1": [("d1_1/kernel:0", K1), ("d1_1/bias:0", B1)],
               "d2": [("seq/d2_7/kernel", K2), ("seq/d2_7/bias", B2)]}
    path = write_legacy(tmp_path / "m.h5", _functional("keras2"), weights)
    assert rel_err(predict(read_graph(path), X4), mlp_ref(X4)) <= RTOL


def test_weights_only_needs_architecture_then_loads(tmp_path):
    weights = write_legacy(tmp_path / "w.h5", None, mlp_weights())
    with pytest.raises(ModelFormatError, match="weights-only file.*architecture"):
        read_graph(weights)
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps({**_functional("keras2"), "keras_version": "2.2.4"}))
    graph = read_graph(weights, architecture=arch)
    assert rel_err(predict(graph, X4), mlp_ref(X4)) <= RTOL
    # a full model file also serves as the architecture
    full = write_legacy(tmp_path / "full.h5", _functional("keras2"), mlp_weights())
    assert rel_err(predict(read_graph(weights, architecture=full), X4), mlp_ref(X4)) <= RTOL


def test_architecture_that_does_not_fit_the_weights(tmp_path):
    weights = write_legacy(tmp_path / "w.h5", None, {"d1": mlp_weights()["d1"]})
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps(_functional("keras2")))
    with pytest.raises(ModelFormatError, match="2 layers with weights.*has 1"):
        read_graph(weights, architecture=arch)


# --------------------------------------------------------------------------------------------
# Files that are not readable models
# --------------------------------------------------------------------------------------------
def test_git_lfs_pointer(tmp_path):
    p = tmp_path / "model.h5"
    p.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 +
                 "\nsize 123456\n")
    with pytest.raises(ModelFormatError, match="Git LFS pointer") as err:
        read_graph(p)
    assert str(p) in str(err.value)


def test_text_file(tmp_path):
    p = tmp_path / "model.h5"
    p.write_text("this is not a model\n")
    with pytest.raises(ModelFormatError, match="not a Keras model file.*text file"):
        read_graph(p)


def test_empty_and_missing_files(tmp_path):
    p = tmp_path / "empty.h5"
    p.write_bytes(b"")
    with pytest.raises(ModelFormatError, match="empty"):
        read_graph(p)
    with pytest.raises(ModelFormatError, match="no such file"):
        read_graph(tmp_path / "missing.h5")


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_truncated_hdf5(tmp_path, fraction):
    full = write_legacy(tmp_path / "full.h5", _functional("keras2"), mlp_weights())
    data = full.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ModelFormatError, match="truncated") as err:
        read_graph(cut)
    assert str(cut) in str(err.value)


def test_truncated_keras_archive(tmp_path):
    full = tmp_path / "m.keras"
    with zipfile.ZipFile(full, "w") as z:
        z.writestr("config.json", json.dumps(_functional("keras3")))
        z.writestr("metadata.json", json.dumps({"keras_version": "3.4.1"}))
        z.writestr("model.weights.h5", b"\0" * 4096)
    data = full.read_bytes()
    cut = tmp_path / "cut.keras"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFormatError, match="truncated"):
        read_graph(cut)


def test_zip_that_is_not_a_keras_archive(tmp_path):
    p = tmp_path / "m.keras"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(ModelFormatError, match="no config.json"):
        read_graph(p)


def test_keras1_model_and_weights(tmp_path):
    k1 = {"class_name": "Sequential", "config": [
        {"class_name": "Dense", "config": {"name": "dense_1", "output_dim": 3, "init": "glorot",
                                           "batch_input_shape": [None, 4]}}]}
    model = write_legacy(tmp_path / "k1.h5", k1, {"dense_1": [("dense_1_W", K1),
                                                              ("dense_1_b", B1)]},
                         keras_version="1.2.2")
    with pytest.raises(ModelFormatError, match="Keras 1"):
        read_graph(model)
    no_version = write_legacy(tmp_path / "k1b.h5", k1, {"dense_1": [("dense_1_W", K1)]},
                              keras_version=None)
    with pytest.raises(ModelFormatError, match="Keras 1"):
        read_graph(no_version)
    weights = write_legacy(tmp_path / "k1w.h5", None, {"dense_1": [("dense_1_W", K1)]},
                           keras_version=None)
    with pytest.raises(ModelFormatError, match="Keras 1"):
        read_graph(weights)


def test_hdf5_that_is_not_a_model(tmp_path):
    p = tmp_path / "data.h5"
    with h5py.File(p, "w") as f:
        f["inputs"] = np.zeros(3)
    with pytest.raises(ModelFormatError, match="not a Keras model or weights file"):
        read_graph(p)


# --------------------------------------------------------------------------------------------
# Refusals: code, custom classes, unsupported layers and options
# --------------------------------------------------------------------------------------------
def _with_layer(extra: dict, version="2.2.4") -> dict:
    cfg = _functional("keras2")
    cfg["config"]["layers"].insert(2, {**extra, "inbound_nodes": [[["d1", 0, 0, {}]]]})
    cfg["config"]["layers"][3]["inbound_nodes"] = [[[extra["name"], 0, 0, {}]]]
    return cfg


@pytest.mark.parametrize("extra, error, message", [
    ({"class_name": "Lambda", "name": "lam", "config": {"name": "lam", "function": ["c\x00"]}},
     UnsupportedLayerError, "'lam' (Lambda): a Lambda layer holds (marshalled) Python code"),
    ({"class_name": "TFOpLambda", "name": "tfop", "config": {"name": "tfop",
                                                             "function": "math.add"}},
     UnsupportedLayerError, "'tfop' (TFOpLambda)"),
    ({"class_name": "MyLayer", "name": "mine", "config": {"name": "mine"}},
     UnsupportedLayerError, "'mine' (MyLayer): layer class 'MyLayer' is not supported"),
    ({"class_name": "Dense", "name": "cust", "module": "my_package.layers",
      "registered_name": "my_package>Dense", "config": dense_layer("cust", 3)["config"]},
     UnsupportedLayerError, "'cust' (Dense): a custom"),
    ({"class_name": "Activation", "name": "act", "config": {"name": "act",
                                                           "activation": "hard_silu"}},
     UnsupportedLayerError, "activation 'hard_silu' is not supported"),
])
def test_refused_layers(tmp_path, extra, error, message):
    path = write_legacy(tmp_path / "m.h5", _with_layer(extra), mlp_weights())
    with pytest.raises(error) as err:
        read_graph(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_subclassed_model_refused(tmp_path):
    p = tmp_path / "m.keras"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("config.json", json.dumps({
            "module": None, "class_name": "MyModel", "registered_name": "pkg>MyModel",
            "config": {"name": "my_model"}}))
        z.writestr("metadata.json", "{}")
        z.writestr("model.weights.h5", b"")
    with pytest.raises(UnsupportedLayerError, match="'MyModel', a subclassed or custom model"):
        read_graph(p)


# --------------------------------------------------------------------------------------------
# Theano kernels, shapes
# --------------------------------------------------------------------------------------------
def test_theano_kernels_are_rotated(tmp_path):
    kernel = RNG.standard_normal((3, 2, 2, 4)).astype(np.float32)
    bias = RNG.standard_normal(4).astype(np.float32)
    cfg = {"class_name": "Sequential", "config": [{"class_name": "Conv2D", "config": {
        "name": "c", "filters": 4, "kernel_size": [3, 2], "strides": [1, 1], "padding": "valid",
        "data_format": "channels_last", "dilation_rate": [1, 1], "activation": "linear",
        "use_bias": True, "batch_input_shape": [None, 6, 5, 2]}}]}
    weights = {"c": [("c/kernel", kernel), ("c/bias", bias)]}
    theano = read_graph(write_legacy(tmp_path / "t.h5", cfg, weights, backend="theano"))
    tf = read_graph(write_legacy(tmp_path / "f.h5", cfg, weights, backend="tensorflow"))
    np.testing.assert_array_equal(theano["c"].weights["kernel"], kernel[::-1, ::-1])
    np.testing.assert_array_equal(tf["c"].weights["kernel"], kernel)
    # brute-force true convolution (Theano's) of the file's kernel
    x = RNG.random((2, 6, 5, 2), dtype=np.float32)
    ref = np.zeros((2, 4, 4, 4), np.float32) + bias
    for i in range(4):
        for j in range(4):
            patch = x[:, i:i + 3, j:j + 2, :]
            ref[:, i, j] += np.einsum("nhwc,hwcf->nf", patch[:, ::-1, ::-1], kernel)
    assert rel_err(predict(theano, x), ref) <= RTOL


def test_open_dimensions_and_with_input_shapes(tmp_path):
    kernel = RNG.standard_normal((3, 3, 2, 4)).astype(np.float32)
    cfg = {"class_name": "Sequential", "config": {"name": "fcn", "layers": [
        {"class_name": "InputLayer", "config": {"name": "i", "batch_input_shape":
                                                [None, None, None, 2]}},
        {"class_name": "Conv2D", "config": {
            "name": "c", "filters": 4, "kernel_size": [3, 3], "strides": [2, 2],
            "padding": "same", "activation": "relu", "use_bias": False}},
        {"class_name": "MaxPooling2D", "config": {"name": "p", "pool_size": [2, 2],
                                                  "padding": "valid"}}]}}
    graph = read_graph(write_legacy(tmp_path / "f.h5", cfg, {"c": [("c/kernel:0", kernel)]}))
    assert graph["c"].shape == (None, None, 4)
    fixed = with_input_shapes(graph, [(9, 12, 2)])
    assert fixed["c"].shape == (5, 6, 4) and fixed["p"].shape == (2, 3, 4)
    assert "bias" not in fixed["c"].weights
    with pytest.raises(Exception, match="does not fit"):
        with_input_shapes(graph, [(9, 12, 3)])


def test_snake_case_names():
    assert [to_snake_case(c) for c in ("Conv2D", "MaxPooling2D", "BatchNormalization", "ReLU",
                                       "PReLU", "InputLayer", "GlobalAveragePooling2D")] == [
        "conv2d", "max_pooling2d", "batch_normalization", "re_lu", "p_re_lu", "input_layer",
        "global_average_pooling2d"]


# --------------------------------------------------------------------------------------------
# Files written by Keras itself
# --------------------------------------------------------------------------------------------
def _keras_outputs(model, x):
    out = model(x, training=False)
    return [np.asarray(o) for o in out] if isinstance(out, (list, tuple)) else np.asarray(out)


def _randomise(model, seed=3):
    """Random weights everywhere; variances positive (named `*variance*` in both dialects)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        names = [v.name for v in layer.weights]
        ws = layer.get_weights()
        if ws:
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(w.dtype)
                               if "variance" in n else
                               (rng.standard_normal(w.shape) * 0.5).astype(w.dtype)
                               for n, w in zip(names, ws)])


@pytest.mark.keras
@pytest.mark.parametrize("which", ["keras3", "tf_keras"])
def test_activation_dialects_written_by_keras(tmp_path, request, which):
    """LeakyReLU (alpha vs negative_slope), hard_sigmoid (two formulas), ReLU options,
    BatchNormalization with a positive (Keras 3) or list (Keras 2) axis, channels_first Flatten,
    Normalization."""
    K = request.getfixturevalue(which)
    inp = K.Input((4, 5, 3))
    x = K.layers.Conv2D(6, 3, padding="same", activation="hard_sigmoid")(inp)
    x = K.layers.BatchNormalization(axis=3 if which == "keras3" else [3])(x)
    x = K.layers.LeakyReLU(**({"negative_slope": 0.15} if which == "keras3" else
                              {"alpha": 0.15}))(x)
    x = K.layers.ReLU(max_value=1.5, negative_slope=0.1, threshold=0.2)(x)
    x = K.layers.Normalization(axis=-1, mean=[0.1] * 6, variance=[2.0] * 6)(x)
    x = K.layers.Flatten(data_format="channels_first")(x)
    out = K.layers.Dense(3, activation="softmax")(x)
    model = K.Model(inp, out)
    _randomise(model)
    xs = np.random.default_rng(0).random((2, 4, 5, 3), dtype=np.float32)
    ref = _keras_outputs(model, xs)
    model.save(tmp_path / "m.h5")
    paths = [tmp_path / "m.h5"]
    model.save(tmp_path / "m.keras")
    paths.append(tmp_path / "m.keras")
    for path in paths:
        graph = read_graph(path)
        assert graph.meta["keras_major"] == (3 if which == "keras3" else 2)
        assert rel_err(predict(graph, xs), ref) <= RTOL, path.name


@pytest.mark.keras
def test_keras3_nested_and_shared_archive(tmp_path, keras3):
    """A nested Sequential called twice and a nested Functional: node names `outer/inner`,
    calls `name@k`, weights read from `layers/sequential/layers/...`."""
    K = keras3
    inner = K.Sequential([K.Input((4,)), K.layers.Dense(3, activation="relu", name="d1"),
                          K.layers.BatchNormalization(name="bn")], name="inner")
    fin = K.Input((3,))
    innerf = K.Model(fin, K.layers.Dense(2, name="fd")(fin), name="innerf")
    a, b = K.Input((4,), name="a"), K.Input((4,), name="b")
    y = K.layers.Add()([innerf(inner(a)), innerf(inner(b))])
    model = K.Model([a, b], y)
    _randomise(model)
    for layer in inner.layers + innerf.layers:
        ws = layer.get_weights()
        if ws:
            rng = np.random.default_rng(len(layer.name))
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(np.float32) for w in ws])
    xa, xb = (np.random.default_rng(s).random((3, 4), dtype=np.float32) for s in (1, 2))
    ref = _keras_outputs(model, [xa, xb])
    for name in ("m.keras", "m.h5"):
        model.save(tmp_path / name)
        graph = read_graph(tmp_path / name)
        assert "inner/d1" in graph and "inner@1/d1" in graph and "innerf@1/fd" in graph
        assert rel_err(predict(graph, xa, xb), ref) <= RTOL, name
    model.save_weights(tmp_path / "m.weights.h5")
    (tmp_path / "arch.json").write_text(model.to_json())
    graph = read_graph(tmp_path / "m.weights.h5", architecture=tmp_path / "arch.json")
    assert rel_err(predict(graph, xa, xb), ref) <= RTOL


@pytest.mark.keras
def test_tf_keras_nested_offsets_and_weights_only(tmp_path, tf_keras):
    """Keras 2 references a nested model's first outer call as node 1."""
    K = tf_keras
    inner = K.Sequential([K.layers.InputLayer((4,)), K.layers.Dense(3, name="d1"),
                          K.layers.BatchNormalization(name="bn")], name="inner")
    a = K.Input((4,), name="a")
    y = K.layers.Dense(2, name="head")(inner(a))
    model = K.Model(a, y)
    _randomise(model)
    for layer in inner.layers:
        rng = np.random.default_rng(11)
        layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(np.float32)
                           for w in layer.get_weights()])
    config = model.get_config()
    head = next(l for l in config["layers"] if l["name"] == "head")
    assert head["inbound_nodes"][0][0][1] == 1          # the Keras 2 offset this test is about
    x = np.random.default_rng(4).random((3, 4), dtype=np.float32)
    ref = _keras_outputs(model, x)
    model.save(tmp_path / "m.h5")
    assert rel_err(predict(read_graph(tmp_path / "m.h5"), x), ref) <= RTOL
    model.save_weights(tmp_path / "w.h5")
    (tmp_path / "arch.json").write_text(model.to_json())
    graph = read_graph(tmp_path / "w.h5", architecture=tmp_path / "arch.json")
    assert rel_err(predict(graph, x), ref) <= RTOL


def _rewrite_archive(src: Path, dst: Path, rename) -> None:
    """Copy a .keras archive, moving every weights group `path` to `rename(path)`."""
    import io

    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    old = h5py.File(io.BytesIO(members["model.weights.h5"]), "r")
    buf = io.BytesIO()
    with h5py.File(buf, "w") as new:
        def copy(name, obj):
            if isinstance(obj, h5py.Dataset):
                new.create_dataset(rename(name), data=obj[()])
        old.visititems(copy)
    members["model.weights.h5"] = buf.getvalue()
    with zipfile.ZipFile(dst, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)


@pytest.mark.keras
def test_tf_keras_213_layout_with_windows_backslashes(tmp_path, keras3):
    """tf.keras 2.13-2.15 wrote `_layer_checkpoint_dependencies\\<name>` (counting layers
    with weights twice); rebuild that layout from a Keras 3 archive and read it back."""
    K = keras3
    inp = K.Input((6, 6, 2))
    x = K.layers.Conv2D(3, 3, name="c1")(inp)
    x = K.layers.MaxPooling2D(name="p1")(x)
    x = K.layers.Conv2D(2, 1, name="c2")(x)
    x = K.layers.MaxPooling2D(name="p2")(x)
    out = K.layers.Flatten()(x)
    model = K.Model(inp, out)
    _randomise(model)
    xs = np.random.default_rng(9).random((2, 6, 6, 2), dtype=np.float32)
    ref = _keras_outputs(model, xs)
    model.save(tmp_path / "m.keras")
    # Keras 3: layers/conv2d, layers/conv2d_1; tf.keras 2.13: conv2d, conv2d_2 (double count)
    moves = {"layers/conv2d_1/": "layers/conv2d_2/"}

    def rename(path: str) -> str:
        for a, b in moves.items():
            path = path.replace(a, b)
        return path.replace("layers/", "_layer_checkpoint_dependencies\\", 1)

    _rewrite_archive(tmp_path / "m.keras", tmp_path / "w.keras", rename)
    with zipfile.ZipFile(tmp_path / "w.keras") as z:
        weights = h5py.File(__import__("io").BytesIO(z.read("model.weights.h5")), "r")
        assert "_layer_checkpoint_dependencies\\conv2d_2" in weights
    assert rel_err(predict(read_graph(tmp_path / "w.keras"), xs), ref) <= RTOL
    shutil.copy(tmp_path / "m.keras", tmp_path / "copy.keras")
    assert rel_err(predict(read_graph(tmp_path / "copy.keras"), xs), ref) <= RTOL
