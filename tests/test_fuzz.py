"""Hostile and broken inputs: every one gives a clean `RefdecompError` (naming the file, layer or
argument), within the memory limits, in bounded time, or a correct result.

The crafted cases are grouped by the class of input they stand for (memory safety, memory
bombs, hangs, silent wrong results, foreign exceptions, the command line, durability); add a
case to the class it belongs to. `test_mutation_campaign` runs a short seeded campaign of
`tools/fuzz.py` (byte flips, truncations, JSON and attribute mutations of small valid `.h5`,
`.keras` and module files) in a child process with a capped address space.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import shutil
import struct
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

import refdecomp
from refdecomp import limits
from refdecomp.errors import (
    DataError,
    InternalError,
    LimitError,
    ModelFormatError,
    ModuleFileError,
    OutputError,
    RefdecompError,
    UnsupportedLayerError,
)
from refdecomp.graph import Graph, Node

TOOLS = Path(__file__).resolve().parent.parent / "tools"
sys.path.insert(0, str(TOOLS))
import fuzz  # noqa: E402

X1 = np.zeros((1, 8, 8, 1), np.float32)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return fuzz.make_seeds(tmp_path_factory.mktemp("seeds"))


def _config(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["model_config"])


def h5_variant(seeds, tmp_path, edit_config=None, edit_file=None, name="v.h5") -> Path:
    """A copy of the seed `.h5` with its config and/or its HDF5 contents edited."""
    path = tmp_path / name
    shutil.copy(seeds["h5"], path)
    with h5py.File(path, "r+") as f:
        if edit_config is not None:
            config = json.loads(f.attrs["model_config"])
            edit_config(config)
            f.attrs["model_config"] = json.dumps(config)
        if edit_file is not None:
            edit_file(f)
    return path


def layer_config(config: dict, name: str) -> dict:
    return next(lay for lay in config["config"]["layers"] if lay["name"] == name)["config"]


def set_in(layer: str, key: str, value):
    return lambda c: layer_config(c, layer).__setitem__(key, value)


def refuses(path, error=RefdecompError, match: str = ""):
    with pytest.raises(error, match=match) as info:
        refdecomp.load_model(path).predict(X1)
    assert str(path) in str(info.value)
    return info.value


def replace_weight(f, layer: str, role: str, **dataset):
    g = f[f"model_weights/{layer}/{layer}"]
    del g[role]
    if "link" in dataset:
        g[role] = dataset["link"]
    else:
        g.create_dataset(role, **dataset)


# ============================================================ 1. memory safety
@pytest.mark.parametrize("layer,key,value", [
    ("conv1", "dilation_rate", [-1, -1]), ("conv1", "dilation_rate", 0),
    ("conv1", "strides", 0), ("conv1", "strides", [1, -2]), ("conv1", "kernel_size", [0, 3]),
    ("pool1", "pool_size", [0, 0]), ("pool1", "pool_size", -1), ("pool1", "strides", [0, 1]),
    ("conv1", "dilation_rate", 2 ** 40), ("conv1", "filters", -16), ("dense1", "units", 0),
])
def test_window_attributes_out_of_range_are_refused(seeds, tmp_path, layer, key, value):
    err = refuses(h5_variant(seeds, tmp_path, set_in(layer, key, value)), ModelFormatError,
                  key)
    assert repr(layer) in str(err)


def test_zero_padding_must_not_be_negative(seeds, tmp_path):
    def insert_padding(c):
        layers = c["config"]["layers"]
        pad = {"class_name": "ZeroPadding2D", "name": "pad",
               "config": {"name": "pad", "padding": [[-1, 0], [0, 0]]},
               "inbound_nodes": layers[2]["inbound_nodes"]}
        layers[2]["inbound_nodes"] = json.loads(json.dumps(layers[2]["inbound_nodes"])
                                                .replace('"preprocess"', '"pad"'))
        layers.insert(2, pad)
    refuses(h5_variant(seeds, tmp_path, insert_padding), ModelFormatError, "padding")


def test_in_memory_graph_with_bad_window_attributes_is_refused_before_running():
    k = np.ones((3, 3, 1, 2), np.float32)
    for dilation in ((-1, -1), (0, 1)):
        nodes = [Node("x", "input", [], (8, 8, 1)),
                 Node("c", "conv2d", ["x"], (8, 8, 2),
                      {"strides": (1, 1), "padding": "same", "dilation": dilation,
                       "activation": {"name": "linear"}}, {"kernel": k})]
        with pytest.raises(RefdecompError, match="dilation"):
            refdecomp.interpreter.Model(Graph(nodes, ["x"], ["c"]))
    nodes = [Node("x", "input", [], (8, 8, 1)),
             Node("p", "max_pool2d", ["x"], (8, 8, 1),        # declares a wrong shape
                  {"pool": (1, 1), "strides": (1, 1), "padding": "valid"})]
    refdecomp.interpreter.Model(Graph(nodes, ["x"], ["p"]))   # consistent: accepted
    nodes[1] = nodes[1].replace(shape=(9, 9, 1))
    with pytest.raises(DataError, match="declares shape"):
        refdecomp.interpreter.Model(Graph(nodes, ["x"], ["p"]))


# ============================================================ 2. memory bombs
def test_weight_shape_must_match_the_layer_config_before_it_is_read(seeds, tmp_path):
    # an unallocated chunked dataset: a tiny file declaring a large array
    path = h5_variant(seeds, tmp_path, edit_file=lambda f: replace_weight(
        f, "conv1", "kernel", shape=(3, 3, 4000, 16), dtype="f4", chunks=(3, 3, 100, 16)))
    assert path.stat().st_size < 200_000
    refuses(path, ModelFormatError, r"\(3, 3, 4000, 16\).*imply shape \(3, 3, 1, 16\)")


def test_declared_weight_above_the_tensor_limit_is_refused(seeds, tmp_path):
    path = h5_variant(seeds, tmp_path, edit_file=lambda f: replace_weight(
        f, "conv1", "kernel", shape=(3, 3, 10 ** 6, 10 ** 4), dtype="f4", chunks=(1, 1, 64, 64)))
    err = refuses(path, LimitError, "max_tensor_bytes")
    assert "kernel" in str(err)


@pytest.mark.parametrize("padding", [10 ** 6, [[1, 2 ** 31 - 1], [0, 0]]])
def test_config_declared_giant_activation_is_refused(seeds, tmp_path, padding):
    def insert_padding(c):
        layers = c["config"]["layers"]
        layers.insert(2, {"class_name": "ZeroPadding2D", "name": "pad",
                          "config": {"name": "pad", "padding": padding},
                          "inbound_nodes": layers[2]["inbound_nodes"]})
        layers[3]["inbound_nodes"] = json.loads(json.dumps(layers[3]["inbound_nodes"])
                                                .replace('"preprocess"', '"pad"'))
    refuses(h5_variant(seeds, tmp_path, insert_padding), ModelFormatError, "max_tensor_bytes")


def test_same_padding_with_huge_dilation_is_refused(seeds, tmp_path):
    path = h5_variant(seeds, tmp_path, set_in("conv1", "dilation_rate", 2 ** 30))
    refuses(path, ModelFormatError, "max_tensor_bytes")


def test_input_shape_whose_size_overflows_int64_is_refused(seeds, tmp_path):
    big = 2 ** 31 - 1
    path = h5_variant(seeds, tmp_path, set_in("image", "batch_shape", [None, big, big, big]))
    refuses(path, LimitError, "max_tensor_bytes")


def test_flatten_size_is_exact_and_limited():
    from refdecomp.reader.shapes import ShapeError, output_shape

    big = 2 ** 31 - 1
    with pytest.raises(ShapeError, match="max_tensor_bytes"):
        output_shape("flatten", {}, {}, [(big, big, big)])
    assert output_shape("flatten", {}, {}, [(2 ** 10, 2 ** 10, 2)]) == (2 ** 21,)


def test_batches_shrink_so_no_intermediate_exceeds_the_tensor_limit(seeds):
    model = refdecomp.load_model(seeds["h5"])
    x = np.random.default_rng(0).uniform(0, 255, (40, 8, 8, 1)).astype(np.float32)
    want = model.predict(x, batch_size=40)
    largest = model._largest_per_image()
    with limits.override(max_tensor_bytes=3 * largest):      # batches of 3 images
        # the same up to float32 summation order (kernels block batches differently)
        np.testing.assert_allclose(model.predict(x, batch_size=40), want, rtol=1e-5,
                                   atol=1e-7)
        with pytest.raises(LimitError, match="for 40 images"):
            with limits.override(max_tensor_bytes=4 * 10 * 39):
                model.predict(x)


def test_keras_member_above_the_file_limit_is_refused_before_it_is_read(seeds, tmp_path):
    members = fuzz.read_members(seeds["keras"])
    members["padding.bin"] = bytes(4 << 20)          # compresses to a few KB
    path = fuzz.write_keras(tmp_path / "bomb.keras", members)
    assert path.stat().st_size < 100_000
    with limits.override(max_file_bytes=2 << 20):
        refuses(path, LimitError, "padding.bin")
    members = fuzz.read_members(seeds["keras"])
    members["config.json"] = members["config.json"] + b" " * (2 << 20)
    with limits.override(max_json_bytes=1 << 20):
        refuses(fuzz.write_keras(tmp_path / "c.keras", members), LimitError, "config.json")


def test_limits_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("REFDECOMP_MAX_TENSOR_BYTES", "3M")
    try:
        assert limits.refresh().max_tensor_bytes == 3 << 20
        with limits.override(max_tensor_bytes=5):
            assert limits.current().max_tensor_bytes == 5
        assert limits.current().max_tensor_bytes == 3 << 20
        monkeypatch.setenv("REFDECOMP_MAX_TENSOR_BYTES", "lots")
        with pytest.raises(RefdecompError, match="REFDECOMP_MAX_TENSOR_BYTES"):
            limits.refresh()
    finally:
        monkeypatch.delenv("REFDECOMP_MAX_TENSOR_BYTES")
        limits.refresh()
    assert limits.current().max_tensor_bytes == 4 << 30


def _idx(shape, dtype_code=0x08, body=b"") -> bytes:
    return bytes([0, 0, dtype_code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + body


def test_idx_dimensions_whose_product_overflows_are_refused(tmp_path):
    from refdecomp.datasets import load_idx

    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(_idx((2 ** 32 - 1,) * 4))
    with pytest.raises(LimitError, match="max_tensor_bytes"):
        load_idx(p)


def test_gzip_bomb_stops_at_the_limit(tmp_path):
    from refdecomp.datasets import load_idx

    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(gzip.compress(_idx((4096, 32, 32)) + bytes(4096 * 1024)))
    with limits.override(max_tensor_bytes=1 << 20), pytest.raises(LimitError, match=str(p)):
        load_idx(p)
    assert load_idx(p).shape == (4096, 32, 32)       # within the default limit


def test_tar_bomb_is_refused_from_its_headers(tmp_path):
    from refdecomp.datasets import load_dataset

    p = tmp_path / "bomb.tar.gz"
    with tarfile.open(p, "w:gz") as tar:
        for split in ("train", "test"):
            data = bytes(3 << 20)
            info = tarfile.TarInfo(f"{split}/a/x.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with limits.override(max_file_bytes=4 << 20), pytest.raises(LimitError, match="member"):
        load_dataset(p, cache=False)


def test_image_folder_whose_stacked_images_exceed_the_limit_is_refused(tmp_path):
    from PIL import Image

    from refdecomp.datasets import load_image_folder

    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
        for i in range(3):
            Image.new("L", (64, 64)).save(tmp_path / split / "a" / f"{i}.png")
    assert load_image_folder(tmp_path).x_train.shape == (3, 64, 64, 1)
    with limits.override(max_tensor_bytes=10_000), pytest.raises(LimitError, match="3 images"):
        load_image_folder(tmp_path)
    from PIL import Image as PILImage
    old = PILImage.MAX_IMAGE_PIXELS
    PILImage.MAX_IMAGE_PIXELS = 1000
    try:
        with pytest.raises(LimitError, match="Pillow"):
            load_image_folder(tmp_path)
    finally:
        PILImage.MAX_IMAGE_PIXELS = old


def _cifar_tar(path: Path, batch: dict, meta: dict | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        files = {f"cifar-10-batches-py/data_batch_{i}": batch for i in range(1, 6)}
        files["cifar-10-batches-py/test_batch"] = batch
        if meta is not None:
            files["cifar-10-batches-py/batches.meta"] = meta
        for name, obj in files.items():
            data = pickle.dumps(obj, protocol=4)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_pickled_references_cannot_expand(tmp_path):
    from refdecomp.datasets import load_cifar_python

    row = np.zeros(3072, np.uint8)
    # the same row object referenced many times: tiny pickle, large array once converted
    with pytest.raises(DataError, match="'data' must be a numpy array"):
        load_cifar_python(_cifar_tar(tmp_path / "a.tar.gz",
                                     {b"data": [row] * 1000, b"labels": [0] * 1000}))
    labels = [[0] * 1000] * 1000
    with pytest.raises(DataError, match="labels must be integers"):
        load_cifar_python(_cifar_tar(tmp_path / "b.tar.gz",
                                     {b"data": np.zeros((2, 3072), np.uint8), b"labels": labels}))
    name = "n" * 100_000
    with pytest.raises(DataError, match="class names"):
        load_cifar_python(_cifar_tar(tmp_path / "c.tar.gz",
                                     {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]},
                                     {b"label_names": [name] * 1000}))


def test_a_huge_label_does_not_make_billions_of_class_names(tmp_path):
    from refdecomp.datasets import load_npz

    p = tmp_path / "d.npz"
    x = np.zeros((1, 2, 2, 1), np.uint8)
    np.savez(p, x_train=x, y_train=np.array([2 ** 40]), x_test=x, y_test=np.array([0]))
    with pytest.raises(LimitError, match="max_classes"):
        load_npz(p)


def test_npz_members_are_checked_before_they_are_inflated(tmp_path):
    from refdecomp.datasets import load_npz

    p = tmp_path / "d.npz"
    x = np.zeros((64, 32, 32, 3), np.uint8)
    np.savez_compressed(p, x_train=x, y_train=np.zeros(64, np.int64), x_test=x,
                        y_test=np.zeros(64, np.int64))
    with limits.override(max_file_bytes=100_000), pytest.raises(LimitError, match="x_train"):
        load_npz(p)


def _module_copy(seeds, tmp_path) -> Path:
    folder = tmp_path / "ms"
    folder.mkdir()
    shutil.copy(seeds["h5"], folder / "model.h5")
    shutil.copy(seeds["module"], folder / "modules.h5")
    return folder / "modules.h5"


def test_module_mask_shape_attribute_cannot_ask_for_terabytes(seeds, tmp_path):
    path = _module_copy(seeds, tmp_path)
    with h5py.File(path, "r+") as f:
        f["modules/0/masks/0"].attrs["shape"] = np.array([2 ** 23, 2 ** 23, 2 ** 20], np.int64)
    with pytest.raises(ModuleFileError, match="shape attribute"):
        refdecomp.load_modules(path)


# ============================================================ 3. hangs
def test_graph_building_is_linear_in_a_chain_listed_in_reverse():
    from refdecomp.reader.build import _call_order
    from refdecomp.reader.config import LayerSpec

    n = 30_000
    layers = [LayerSpec(f"l{i}", "Activation", {}, calls=[[(f"l{i - 1}", 0, 0)]])
              for i in range(1, n)]
    calls = [(layer, 0, layer.calls[0]) for layer in reversed(layers)]
    lookups = 0

    def key(ref):
        nonlocal lookups
        lookups += 1
        return ref

    order = _call_order(calls, {("l0", 0, 0): "l0"}, key)
    assert [calls[i][0].name for i in order] == [f"l{i}" for i in range(1, n)]
    assert lookups <= 2 * n


def _chain_model(path: Path, n: int, reverse: bool) -> Path:
    """A weightless Functional model: an input and `n` chained ReLU layers, listed forwards or
    backwards in the config."""
    layers = [{"class_name": "InputLayer", "name": "x",
               "config": {"name": "x", "batch_shape": [None, 4]}, "inbound_nodes": []}]
    for i in range(n):
        layers.append({"class_name": "ReLU", "name": f"r{i}", "config": {"name": f"r{i}"},
                       "inbound_nodes": [[[layers[-1]["name"], 0, 0, {}]]]})
    body = layers[:1] + (layers[1:][::-1] if reverse else layers[1:])
    config = {"class_name": "Functional",
              "config": {"name": "chain", "layers": body, "input_layers": [["x", 0, 0]],
                         "output_layers": [[f"r{n - 1}", 0, 0]]}}
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config)
        f.attrs["keras_version"] = "2.15.0"
        f.create_group("model_weights").attrs["layer_names"] = np.array([], "S1")
    return path


def test_reverse_listed_chain_reads_as_the_forward_one(tmp_path):
    forward = refdecomp.load_model(_chain_model(tmp_path / "f.h5", 2000, False))
    backward = refdecomp.load_model(_chain_model(tmp_path / "b.h5", 2000, True))
    assert [n.name for n in backward.source_graph] == [n.name for n in forward.source_graph]
    x = np.array([[-1.0, 0.0, 1.0, 2.0]], np.float32)
    np.testing.assert_array_equal(backward.predict(x), [[0, 0, 1, 2]])


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "model.h5"
    os.mkfifo(fifo)
    result = {}

    def read():
        try:
            refdecomp.load_model(fifo)
        except RefdecompError as exc:
            result["error"] = exc

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(30)
    if t.is_alive():                      # unblock the reader before failing
        with open(fifo, "wb"):
            pass
        pytest.fail("reading a FIFO blocked")
    assert "not a regular file" in str(result["error"])
    with pytest.raises(ModuleFileError, match="not a regular file"):
        refdecomp.load_modules(fifo)
    from refdecomp.datasets import load_npz
    with pytest.raises(DataError, match="not a regular file"):
        load_npz(fifo)


# ============================================================ 4. silent wrong results
def test_rescaling_with_more_scales_than_channels_is_refused(seeds, tmp_path):
    refuses(h5_variant(seeds, tmp_path, set_in("preprocess", "scale", [1.0, 2.0, 3.0])),
            ModelFormatError, "3 scale values")


def test_complex_weights_are_refused(seeds, tmp_path):
    def complex_kernel(f):
        k = f["model_weights/conv1/conv1/kernel"][()]
        replace_weight(f, "conv1", "kernel", data=k.astype(np.complex64))
    refuses(h5_variant(seeds, tmp_path, edit_file=complex_kernel), ModelFormatError, "complex")


@pytest.mark.parametrize("module", ["keras_payload", "kerasx.layers", "tf_keras_evil", None])
def test_keras_module_is_matched_exactly(seeds, tmp_path, module):
    def edit(c):
        next(lay for lay in c["config"]["layers"] if lay["name"] == "conv1")["module"] = module
    refuses(h5_variant(seeds, tmp_path, edit), UnsupportedLayerError, "custom")


def test_keras_submodules_are_keras(seeds, tmp_path):
    def edit(c):
        next(lay for lay in c["config"]["layers"] if lay["name"] == "conv1")["module"] = \
            "keras.src.layers"
    refdecomp.load_model(h5_variant(seeds, tmp_path, edit)).predict(X1)


def test_duplicate_archive_member_is_refused(seeds, tmp_path):
    members = fuzz.read_members(seeds["keras"])
    path = fuzz.write_keras(tmp_path / "dup.keras", members, duplicate="config.json")
    refuses(path, ModelFormatError, "two members named 'config.json'")


def test_external_links_and_external_storage_are_refused(seeds, tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.zeros(16, np.float32)
    path = h5_variant(seeds, tmp_path, edit_file=lambda f: replace_weight(
        f, "conv1", "bias", link=h5py.ExternalLink(str(other), "/x")))
    refuses(path, ModelFormatError, "external link")
    raw = tmp_path / "raw.bin"
    raw.write_bytes(bytes(64))
    path = h5_variant(seeds, tmp_path, name="w.h5", edit_file=lambda f: replace_weight(
        f, "conv1", "bias", shape=(16,), dtype="f4", external=[(str(raw), 0, 64)]))
    refuses(path, ModelFormatError, "other files")


def test_external_link_inside_keras_weights_is_refused(seeds, tmp_path):
    members = fuzz.read_members(seeds["keras"])
    buf = io.BytesIO(members["model.weights.h5"])
    with h5py.File(buf, "r+") as f:
        del f["layers/conv2d/vars/1"]
        f["layers/conv2d/vars/1"] = h5py.ExternalLink(str(tmp_path / "x.h5"), "/x")
    members["model.weights.h5"] = buf.getvalue()
    refuses(fuzz.write_keras(tmp_path / "l.keras", members), ModelFormatError, "external link")


@pytest.fixture(scope="module")
def module_set(seeds):
    return refdecomp.load_modules(seeds["module"])


@pytest.mark.parametrize("labels", [
    np.full(4, 10), np.full(4, -1), np.array([0.5, 1, 2, 3]), np.array([np.nan] * 4),
    np.zeros((4, 3)), np.array(["a", "b", "c", "d"]), np.zeros(5), np.array([True] * 4)])
def test_evaluate_refuses_bad_labels(module_set, labels):
    with pytest.raises(DataError, match="evaluate"):
        module_set.evaluate(np.zeros((4, 8, 8, 1), np.float32), labels)


def test_module_index_must_be_an_integer(module_set):
    assert module_set[3] is module_set[np.int64(3)]
    for bad in (3.7, "3", True, None):
        with pytest.raises(DataError, match="no module of class"):
            module_set[bad]


def test_complex_images_are_refused(seeds):
    model = refdecomp.load_model(seeds["h5"])
    with pytest.raises(DataError, match="real numbers"):
        model.predict(np.zeros((1, 8, 8, 1), np.complex64))


def test_degenerate_decomposition_data_is_refused_or_named(seeds):
    model = refdecomp.load_model(seeds["h5"])
    x = np.zeros((6, 8, 8, 1), np.float32)
    with pytest.warns(UserWarning, match=r"classes \[1, 2, 3, 4, 5, 6, 7, 8, 9\]"):
        refdecomp.decompose(model, x, np.zeros(6, int))       # one class
    with pytest.warns(UserWarning, match="observe no image"):
        refdecomp.decompose(model, x[:1], [4])                # one image
    x[2, 3, 3, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        refdecomp.decompose(model, x, np.arange(6))


# ============================================================ 5. foreign exceptions
@pytest.mark.parametrize("edit,match", [
    (lambda f: replace_weight(f, "conv1", "bias", data=np.zeros(15, np.float32)), "bias"),
    (lambda f: replace_weight(f, "dense1", "bias", data=np.zeros(65, np.float32)), "bias"),
    (lambda f: replace_weight(f, "conv1", "bias", data=np.array([b"x"] * 16)), "dtype"),
    (lambda f: replace_weight(f, "conv1", "bias", data=np.zeros(16, [("a", "f4"), ("b", "i4")])),
     "dtype"),
    (lambda f: replace_weight(f, "conv1", "bias", shape=(16,),
                              dtype=h5py.special_dtype(ref=h5py.Reference)), "dtype"),
    (lambda f: replace_weight(f, "conv1", "bias", data=h5py.Empty("f4")), "empty"),
    (lambda f: f.attrs.__setitem__("keras_version", np.bytes_(b"\xff\xfe")), "keras_version"),
    (lambda f: f.attrs.__setitem__("backend", np.bytes_(b"\xff")), "backend"),
    (lambda f: f["model_weights"].attrs.__setitem__("layer_names", np.array([b"\xc3("])),
     "layer_names"),
    (lambda f: f["model_weights/conv1"].attrs.__setitem__("weight_names", np.array([b"\xff"])),
     "weight_names"),
    (lambda f: replace_weight(f, "conv1", "bias",
                              link=h5py.SoftLink("/model_weights/conv1/conv1/bias")), "damaged"),
])
def test_damaged_weights_give_model_format_errors(seeds, tmp_path, edit, match):
    refuses(h5_variant(seeds, tmp_path, edit_file=edit), ModelFormatError, match)


@pytest.mark.parametrize("layer,key,value", [
    ("conv1", "filters", "16"), ("conv1", "kernel_size", "3"), ("conv1", "kernel_size", None),
    ("conv1", "strides", [1, 1, 1]), ("conv1", "strides", {"a": 1}), ("dense1", "units", 1e400),
    ("dense1", "units", 2 ** 70), ("conv1", "padding", ["same"]), ("conv1", "data_format", 5),
    ("conv1", "activation", {"class_name": 3}), ("conv1", "groups", "one"),
    ("preprocess", "scale", "big"), ("preprocess", "offset", [None]),
    ("flatten", "data_format", "x"), ("image", "batch_shape", [None, 8, "8", 1]),
    ("image", "batch_shape", "8x8"),
])
def test_config_values_of_the_wrong_type_are_refused(seeds, tmp_path, layer, key, value):
    err = refuses(h5_variant(seeds, tmp_path, set_in(layer, key, value)), RefdecompError)
    assert repr(layer) in str(err) or key in str(err)


@pytest.mark.parametrize("edit", [
    lambda c: c["config"].__setitem__("layers", {"a": 1}),
    lambda c: c["config"]["layers"][2].__setitem__("config", ["x"]),
    lambda c: c["config"]["layers"][2].__setitem__("inbound_nodes", "x"),
    lambda c: c["config"].__setitem__("input_layers", [["image", "0", 0]]),
    lambda c: c["config"].__setitem__("name", None),
    lambda c: c.__setitem__("config", None),
    lambda c: c["config"]["layers"][3]["inbound_nodes"][0]["args"][0]["config"].__setitem__(
        "keras_history", None),
])
def test_config_structure_of_the_wrong_type_is_refused(seeds, tmp_path, edit):
    refuses(h5_variant(seeds, tmp_path, edit), ModelFormatError)


def test_deeply_nested_json_is_refused_as_such(seeds, tmp_path):
    path = tmp_path / "deep.h5"
    shutil.copy(seeds["h5"], path)
    with h5py.File(path, "r+") as f:
        text = f.attrs["model_config"]
        f.attrs["model_config"] = text.replace('"trainable": true', '"x": ' + "[" * 100_000 +
                                               "]" * 100_000, 1)
    refuses(path, ModelFormatError, r"nests 1000\d\d levels")
    members = fuzz.read_members(seeds["keras"])
    members["config.json"] = b"[" * 100_000 + b"]" * 100_000
    refuses(fuzz.write_keras(tmp_path / "deep.keras", members), ModelFormatError, "nests")


def _patch_zip_member(path: Path, name: str, flag: int = 0, method: int | None = None):
    """Set general-purpose flag bits and / or the compression method of one member, in its
    local header (flags at +6, method at +8) and its central directory entry (+8, +10)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        local = z.getinfo(name).header_offset
    central = data.find(b"PK\x01\x02")
    while data[central + 46:central + 46 + len(name)] != name.encode():
        central = data.find(b"PK\x01\x02", central + 4)
    for flags_at, method_at in ((local + 6, local + 8), (central + 8, central + 10)):
        flags = struct.unpack_from("<H", data, flags_at)[0]
        struct.pack_into("<H", data, flags_at, flags | flag)
        if method is not None:
            struct.pack_into("<H", data, method_at, method)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("flag,method,match", [(1, None, "encrypted"), (0, 99, "compression")])
def test_encrypted_or_unknown_compression_members_are_refused(seeds, tmp_path, flag, method,
                                                              match):
    path = tmp_path / "z.keras"
    shutil.copy(seeds["keras"], path)
    _patch_zip_member(path, "config.json", flag, method)
    refuses(path, ModelFormatError, match)


def test_metadata_must_be_an_object(seeds, tmp_path):
    members = fuzz.read_members(seeds["keras"])
    members["metadata.json"] = b"[1, 2]"
    refuses(fuzz.write_keras(tmp_path / "m.keras", members), ModelFormatError, "metadata.json")


def test_lone_surrogate_names_are_refused_on_reading(seeds, tmp_path):
    def edit(c):
        entry = next(lay for lay in c["config"]["layers"] if lay["name"] == "conv1")
        entry["name"] = entry["config"]["name"] = "conv\ud800"
    refuses(h5_variant(seeds, tmp_path, edit), ModelFormatError, "surrogate")


@pytest.mark.parametrize("edit,match", [
    (lambda f: f.attrs.__delitem__("model_fingerprint"), "model_fingerprint"),
    (lambda f: f.attrs.__setitem__("options", "{"), "options"),
    (lambda f: f.attrs.__setitem__("format_version", "one"), "format_version"),
    (lambda f: f["modules/0"].attrs.__setitem__("class_index", 10), "class_index"),
    (lambda f: f["modules/1"].attrs.__setitem__("class_index", 0), "class_index"),
    (lambda f: f["modules/0"].attrs.__setitem__("info", "[1]"), "info"),
    (lambda f: (f["modules/0"].__delitem__("head_kernel"),
                f["modules/0"].create_dataset("head_kernel", data=np.zeros((3, 2)))),
     "head_kernel"),
    (lambda f: f["modules/0"].__delitem__("head_bias"), "head_bias"),
    (lambda f: f["modules/0/masks/0"].attrs.__setitem__("node", "nope"), "nope"),
    (lambda f: f["modules"].create_group("x"), "unexpected"),
])
def test_tampered_module_files_give_module_file_errors(seeds, tmp_path, edit, match):
    path = _module_copy(seeds, tmp_path)
    with h5py.File(path, "r+") as f:
        edit(f)
    with pytest.raises(ModuleFileError, match=match):
        refdecomp.load_modules(path).evaluate(np.zeros((2, 8, 8, 1), np.float32), [0, 1])


@pytest.mark.parametrize("kwargs,match", [
    ({"seed": -1}, "seed"), ({"seed": "abc"}, "seed"), ({"seed": 1.5}, "seed"),
    ({"delta": "big"}, "delta"), ({"delta": float("nan")}, "delta"),
    ({"y": ["a", "b"]}, "labels"), ({"y": [0.5, 1]}, "labels"),
])
def test_bad_decomposition_arguments_are_named(seeds, kwargs, match):
    model = refdecomp.load_model(seeds["h5"])
    args = {"y": [0, 1], **kwargs}
    with pytest.raises(DataError, match=match):
        refdecomp.decompose(model, np.zeros((2, 8, 8, 1), np.float32), **args)


def test_saving_onto_a_directory_names_the_target(module_set, tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(OutputError, match=repr(str(target))):
        module_set.save(target)
    assert list(target.iterdir()) == [] and not list(tmp_path.glob(".*"))


# ============================================================ 6. command line
def test_cli_missing_optional_dependency_is_one_line(seeds, monkeypatch, capsys):
    from refdecomp.cli import main

    monkeypatch.setitem(sys.modules, "keras", None)
    monkeypatch.setitem(sys.modules, "tf_keras", None)
    assert main(["audit", str(seeds["h5"]), "--against", "keras"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install" in err and "keras" in err


def test_cli_bug_is_reported_as_a_bug_with_its_traceback(monkeypatch, capsys, seeds):
    from refdecomp import cli

    def broken(args):
        raise InternalError("node 'x' reads 'y' before it is produced")
    monkeypatch.setattr(cli, "cmd_inspect", broken)
    assert cli.main(["inspect", str(seeds["h5"])]) == cli.EXIT_BUG
    err = capsys.readouterr().err
    assert "Traceback" in err and "bug in refdecomp" in err and "report" in err

    def crashes(args):
        return {}["missing"]
    monkeypatch.setattr(cli, "cmd_inspect", crashes)
    assert cli.main(["inspect", str(seeds["h5"])]) == cli.EXIT_BUG
    assert "KeyError" in capsys.readouterr().err


def test_cli_user_errors_stay_one_line_exit_2(tmp_path, capsys):
    from refdecomp.cli import main

    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err


# ============================================================ 7. durability
def test_atomic_writes_flush_the_file_and_the_folder(tmp_path, monkeypatch):
    from refdecomp import fileio

    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(
        f"/proc/self/fd/{fd}")), real(fd)))
    fileio.write_text(tmp_path / "a.txt", "hello")
    assert (tmp_path / "a.txt").read_text() == "hello"
    assert str(tmp_path) in synced and any(s.startswith(str(tmp_path / ".a.txt.")) for s in synced)


def test_module_file_names_its_model_relative_to_itself(seeds, tmp_path):
    path = _module_copy(seeds, tmp_path)
    with h5py.File(path, "r") as f:
        assert f.attrs["model_source"] == "model.h5"
    moved = tmp_path / "elsewhere"
    shutil.move(str(path.parent), moved)
    assert len(refdecomp.load_modules(moved / "modules.h5")) == 10
    (moved / "model.h5").unlink()
    with pytest.raises(ModuleFileError, match="model.h5"):
        refdecomp.load_modules(moved / "modules.h5")


def test_module_file_never_follows_an_absolute_model_path(seeds, tmp_path):
    path = _module_copy(seeds, tmp_path)
    with h5py.File(path, "r+") as f:
        f.attrs["model_source"] = str(seeds["h5"])
    with pytest.raises(ModuleFileError, match=f"absolute path {str(seeds['h5'])!r}"):
        refdecomp.load_modules(path)
    assert len(refdecomp.load_modules(path, model=seeds["h5"])) == 10
    other = tmp_path / "ms" / "model.h5"
    with h5py.File(other, "r+") as f:    # same graph, other bytes: not the recorded file
        f.attrs["note"] = "changed"
    with h5py.File(path, "r+") as f:
        f.attrs["model_source"] = "model.h5"
    with pytest.raises(ModuleFileError, match="sha256"):
        refdecomp.load_modules(path)


# ============================================================ the mutation campaign
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc: Linux")
def test_mutation_campaign(tmp_path):
    """Byte flips, truncations and JSON / attribute mutations of small valid files: each
    mutant gives a RefdecompError or a result, with 1 GiB of address space above what the
    warmed-up child maps, within 60 s per case."""
    outcomes = fuzz.campaign(40, seed=20261202, folder=tmp_path, memory_mb=1024, seconds=60,
                             timeout=600)
    failed = [o for o in outcomes if o[2].startswith("FAILED")]
    assert not failed, fuzz.summary(outcomes)
    assert len(outcomes) == 3 * 40
    kinds = {(k, o.split(":")[0]) for k, _, o in outcomes}
    assert {("h5", "result"), ("h5", "refused"), ("module", "refused")} <= kinds
