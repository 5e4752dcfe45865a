"""Every file of the real-world Keras corpus (../shared/keras-corpus) either predicts like Keras
or is refused with the specific error a user should get.

Bound: max|ours - golden| / max|golden| <= 1e-5 per output (float32 arithmetic in a different
order than TensorFlow's; measured worst case about 1e-6).

Goldens: the tf_keras golden is used for Keras 2 files (Keras 3 mis-loads several of them, see
the corpus README), the Keras 3 golden for Keras 3 files.

Theano files: Keras 2 rotated convolution kernels of `backend="theano"` files by 180 degrees
when loading them under TensorFlow (Theano convolves, TensorFlow correlates); neither modern
loader does, so the goldens are *not* what the Theano model computed. We assert (1) the read
kernel is the file's kernel rotated 180 degrees, (2) with the kernels rotated back the graph
reproduces the golden (so everything else matches Keras), and (3) the flip changes the output.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from refdecomp import ModelFormatError, UnsupportedLayerError
from refdecomp.interpreter import Model
from refdecomp.reader import read_graph
from refdecomp.reader.shapes import with_input_shapes

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "keras-corpus"
RTOL = 1e-5

pytestmark = pytest.mark.skipif(not CORPUS.is_dir(),
                                reason=f"Keras corpus not found at {CORPUS}")

MATCH = "match"

# file -> ("match", golden suffix) | ("theano", golden suffix) | ("read", why no golden)
#       | (error class, substring of the message)
EXPECTED: dict[str, tuple] = {
    "decomposeDNNintoModules__MNIST-1_mnist.h5": (MATCH, "tfkeras"),
    "decomposeDNNintoModules__MNIST-4_module0.h5": (MATCH, "tfkeras"),
    "mnist-NCS__model.h5": (MATCH, "tfkeras"),
    "dl4j-test-resources__cnn_batch_norm.h5": (MATCH, "tfkeras"),
    "dl4j-test-resources__12net.h5": (MATCH, "tfkeras"),
    "dl4j-test-resources__ReLU_0_model.h5": (MATCH, "tfkeras"),
    "digit-recognizer__my_model.h5": (MATCH, "tfkeras"),
    "CNN-Analysis__resnet.h5": (MATCH, "tfkeras"),
    "Multi-Tower-Model__MT-Model.h5": (MATCH, "keras3"),
    "Multi-Tower-Model__best_model.keras": (MATCH, "keras3"),
    "Digit-Recognition__model.keras": (MATCH, "keras3"),
    "CMP7239CW2__resnet.keras": (MATCH, "keras3"),
    "dl4j-test-resources__conv2d_theano_2.h5": ("theano", "tfkeras"),
    "dl4j-test-resources__batch_to_conv2d_theano_2.h5": ("theano", "tfkeras"),
    # channels_first Conv2D: TensorFlow on CPU cannot run it, so there is no golden; the
    # Keras-built channels_last equivalent in test_simpleconv2d_channels_first is the oracle.
    "dl4j-test-resources__simpleconv2d_model.hdf5": ("read", "no golden (NCHW conv on CPU)"),
    "dl4j-test-resources__cnn_tf_model_keras1.h5": (ModelFormatError, "Keras 1"),
    "happy-and-you-know-it__resnet20_keras1_weights.h5": (ModelFormatError, "Keras 1"),
    "HandwritingComparison__siamese_model.h5": (ModelFormatError, "Git LFS pointer"),
    "dl4j-test-resources__ReLU_0_inputs_and_outputs.h5": (
        ModelFormatError, "not a Keras model or weights file"),
    "Credit-Card-Fraud__model.h5": (ModelFormatError, "weights-only file"),
    "simple_cnn__weights.h5": (ModelFormatError, "weights-only file"),
    "MNIST_Keras__weights.h5": (ModelFormatError, "weights-only file"),
    "keras_bug__weights.h5": (ModelFormatError, "weights-only file"),
    "poker-algo__test.h5": (ModelFormatError, "weights-only file"),
    "mc-dropout__weights.h5": (ModelFormatError, "weights-only file"),
    "handwritten-digits-recognizer__model.weights.h5": (ModelFormatError, "weights-only file"),
    "dl4j-test-resources__model_lambda.h5": (
        UnsupportedLayerError, "'lambda_3' (Lambda): a Lambda layer holds (marshalled) Python "
                               "code, which refdecomp never executes"),
    "dl4j-test-resources__tfkeras_cnn2d_66.h5": (   # its UpSampling2D layers are read
        UnsupportedLayerError, "'cropping2d_76' (Cropping2D): layer class 'Cropping2D' "
                               "is not supported"),
    "dl4j-test-resources__tfkeras_issue_9349.hdf5": (
        UnsupportedLayerError, "'embedding' (Embedding): layer class 'Embedding'"),
    "dl4j-test-resources__keras-attention.h5": (
        UnsupportedLayerError, "'attention' (Attention): layer class 'Attention'"),
    "Online-Signature-Verification__siamese_model.h5": (
        UnsupportedLayerError, "'LSTM_layer_1_input' (LSTM): layer class 'LSTM'"),
    "image-compression__autoencoder.keras": (
        UnsupportedLayerError, "'conv2d_transpose' (Conv2DTranspose): layer class "
                               "'Conv2DTranspose'"),
    "keras__pre_pr22362_nested_container.keras": (
        UnsupportedLayerError, "'NestedDenseModel', a subclassed or custom model"),
}


def _corpus_files() -> list[str]:
    if not CORPUS.is_dir():
        return []
    return sorted(p.name for p in CORPUS.iterdir()
                  if p.is_file() and p.suffix in (".h5", ".hdf5", ".keras"))


def test_every_corpus_file_has_an_expectation():
    assert set(_corpus_files()) == set(EXPECTED)


def _golden(name: str, suffix: str):
    data = np.load(CORPUS / "golden" / f"{name}.{suffix}.npz")
    xs = [data[k] for k in sorted(k for k in data.files if k.startswith("x"))]
    ys = [data[k] for k in sorted(k for k in data.files if k.startswith("y"))]
    return xs, ys


def _predict(graph, xs):
    if any(d is None for shape in graph.input_shapes() for d in shape):
        graph = with_input_shapes(graph, [x.shape[1:] for x in xs])
    out = Model(graph).predict(xs if len(xs) > 1 else xs[0])
    return out if isinstance(out, list) else [out]


def _rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    assert ours.shape == ref.shape
    return float(np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-30))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_file(name):
    kind, detail = EXPECTED[name]
    path = CORPUS / name
    if isinstance(kind, type):
        with pytest.raises(kind) as err:
            read_graph(path)
        message = str(err.value)
        assert detail in message
        assert name in message                      # every message names the file
        return
    graph = read_graph(path)
    graph.validate()
    assert graph.source == str(path) and len(graph.sha256) == 64
    if kind == "read":
        return
    xs, ys = _golden(name, detail)
    if kind == MATCH:
        for ours, ref in zip(_predict(graph, xs), ys, strict=True):
            assert _rel_err(ours, ref) <= RTOL
        return
    assert kind == "theano"
    _check_theano(path, graph, xs, ys)


def _check_theano(path: Path, graph, xs, ys) -> None:
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "r") as f:
        assert f.attrs["backend"] in ("theano", b"theano")
        convs = graph.nodes_of(["conv2d"])
        assert convs
        for node in convs:
            raw = f["model_weights"][node.name][node.name]
            raw_kernel = next(raw[k][()] for k in raw if k.startswith("kernel"))
            np.testing.assert_array_equal(node.weights["kernel"], raw_kernel[::-1, ::-1])
    unflipped = graph.with_nodes([
        n.replace(weights={**n.weights, "kernel": n.weights["kernel"][::-1, ::-1].copy()})
        if n.op == "conv2d" else n for n in graph.nodes])
    for ours, ref in zip(_predict(unflipped, xs), ys, strict=True):
        assert _rel_err(ours, ref) <= RTOL
    for ours, ref in zip(_predict(graph, xs), ys, strict=True):
        assert _rel_err(ours, ref) > 1e-3


def test_cnn_batch_norm_matches_original_keras_predictions():
    """The DL4J authors' own inputs and Keras 2.1.3 predictions for this file."""
    name = "dl4j-test-resources__cnn_batch_norm.h5"
    x = np.load(CORPUS / "golden" / f"{name}.dl4j_input.npy")
    y = np.load(CORPUS / "golden" / f"{name}.dl4j_predictions.npy")
    (ours,) = _predict(read_graph(CORPUS / name), [x.astype(np.float32)])
    assert _rel_err(ours, y.reshape(ours.shape)) <= RTOL


def test_simpleconv2d_channels_first(tf_keras):
    """channels_first Conv2D followed by channels_last layers: the oracle is the same network
    built in Keras with the first convolution done in NHWC between two Permute layers."""
    K = tf_keras
    name = "dl4j-test-resources__simpleconv2d_model.hdf5"
    graph = read_graph(CORPUS / name)
    original = K.models.load_model(CORPUS / name, compile=False)
    conv1 = original.get_layer("conv2d_1")
    assert conv1.data_format == "channels_first"
    inp = K.Input((1, 28, 28))
    x = K.layers.Permute((2, 3, 1))(inp)
    x = K.layers.Conv2D(conv1.filters, conv1.kernel_size, activation=conv1.activation,
                        weights=conv1.get_weights())(x)
    x = K.layers.Permute((3, 1, 2))(x)
    for layer in original.layers[2:]:
        x = layer(x)
    oracle = K.Model(inp, x)
    xs = np.random.default_rng(5).random((3, 1, 28, 28), dtype=np.float32)
    (ours,) = _predict(graph, [xs])
    assert graph["conv2d_1"].attrs["data_format"] == "channels_first"
    assert graph["max_pooling2d_1"].attrs["data_format"] == "channels_last"
    assert _rel_err(ours, oracle.predict(xs, verbose=0)) <= RTOL


def test_weights_only_corpus_file_with_handwritten_architecture(tmp_path):
    """poker-algo is a tf.keras weights-only file (three Dense layers). With an architecture
    whose shapes fit it, it loads; the oracle is NumPy on the file's own arrays."""
    import json

    h5py = pytest.importorskip("h5py")
    path = CORPUS / "poker-algo__test.h5"
    with h5py.File(path, "r") as f:
        arrays = [[f[n][w][()] for w in f[n].attrs["weight_names"]]
                  for n in ("dense", "dense_1", "dense_2")]
    layers = [{"class_name": "InputLayer",
               "config": {"name": "x", "batch_input_shape": [None, arrays[0][0].shape[0]]}}]
    for i, (k, _) in enumerate(arrays):
        layers.append({"class_name": "Dense", "config": {
            "name": f"d{i}", "units": int(k.shape[1]),
            "activation": "relu" if i < 2 else "linear", "use_bias": True}})
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps({"class_name": "Sequential", "keras_version": "2.2.4-tf",
                                "config": {"name": "poker", "layers": layers}}))
    graph = read_graph(path, architecture=arch)
    x = np.random.default_rng(0).random((4, arrays[0][0].shape[0]), dtype=np.float32)
    ref = x
    for i, (k, b) in enumerate(arrays):
        ref = ref @ k + b
        ref = np.maximum(ref, 0) if i < 2 else ref
    (ours,) = _predict(graph, [x])
    assert _rel_err(ours, ref) <= RTOL


def test_tf_keras_213_windows_archive_weights(tmp_path):
    """image-compression (tf.keras 2.13, saved on Windows) is refused for its decoder layers;
    its encoder alone reads, and each Conv2D gets the arrays tf.keras stored for it under
    `_layer_checkpoint_dependencies\\<name>` (layers with weights counted twice)."""
    import io
    import json
    import zipfile

    h5py = pytest.importorskip("h5py")
    src = CORPUS / "image-compression__autoencoder.keras"
    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    config = json.loads(members["config.json"])
    layers = config["config"]["layers"]
    cut = [l["name"] for l in layers].index("Code") + 1
    config["config"]["layers"] = layers[:cut]
    config["config"]["output_layers"] = [["Code", 0, 0]]
    members["config.json"] = json.dumps(config).encode()
    encoder = tmp_path / "encoder.keras"
    with zipfile.ZipFile(encoder, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    graph = read_graph(encoder)
    assert graph.output_shapes() == [(4, 4, 8)]
    with h5py.File(io.BytesIO(members["model.weights.h5"]), "r") as f:
        for layer, group in (("conv2d", "conv2d"), ("conv2d_1", "conv2d_2"),
                             ("conv2d_2", "conv2d_4")):
            stored = f[f"_layer_checkpoint_dependencies\\{group}"]["vars"]
            np.testing.assert_array_equal(graph[layer].weights["kernel"], stored["0"][()])
            np.testing.assert_array_equal(graph[layer].weights["bias"], stored["1"][()])
