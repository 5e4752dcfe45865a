"""refdecomp.datasets: every loader on small files written here, the pickle guard, named
lookup, the cache, and the real shared data when present."""
from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA as SHARED  # noqa: E402  ($REFDECOMP_DATA, ../shared/data)
from hypothesis import given, settings
from hypothesis import strategies as st

from refdecomp import DataError
from refdecomp import datasets as D


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test gets its own cache and no REFDECOMP_DATA from the environment."""
    monkeypatch.setenv("REFDECOMP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("REFDECOMP_DATA", raising=False)


# --------------------------------------------------------------------------- CIFAR pickles

def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _planar(images: np.ndarray) -> np.ndarray:
    """NHWC -> the canonical CIFAR row layout (R plane, G plane, B plane)."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def write_fake_cifar10(path: Path, rng, per_batch=3):
    """A tarball shaped like cifar-10-python.tar.gz: pickles of dicts with byte keys, uint8
    arrays and label lists, as the canonical files hold. (Protocol 3: Python 3's protocol 2
    writes bytes through _codecs.encode, which the canonical Python 2 files never use.)"""
    images, labels = {}, {}
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "cifar-10-batches-py/readme.html", b"<html></html>")  # as the real one has
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            x = rng.integers(0, 256, size=(per_batch, 32, 32, 3), dtype=np.uint8)
            y = rng.integers(0, 10, size=per_batch).tolist()
            images[name], labels[name] = x, y
            batch = {b"batch_label": b"x", b"labels": y, b"data": _planar(x),
                     b"filenames": [b"f%d.png" % i for i in range(per_batch)]}
            _add(tar, f"cifar-10-batches-py/{name}", pickle.dumps(batch, protocol=3))
        meta = {b"label_names": [f"c{i}".encode() for i in range(10)], b"num_vis": 3072}
        _add(tar, "cifar-10-batches-py/batches.meta", pickle.dumps(meta, protocol=3))
    return images, labels


def test_cifar10_python_tarball(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = write_fake_cifar10(tmp_path / "cifar-10-python.tar.gz", rng)
    ds = D.load_cifar_python(tmp_path / "cifar-10-python.tar.gz")
    train = [f"data_batch_{i}" for i in range(1, 6)]
    np.testing.assert_array_equal(ds.x_train, np.concatenate([images[b] for b in train]))
    np.testing.assert_array_equal(ds.y_train, sum((labels[b] for b in train), []))
    np.testing.assert_array_equal(ds.x_test, images["test_batch"])
    np.testing.assert_array_equal(ds.y_test, labels["test_batch"])
    assert ds.class_names == tuple(f"c{i}" for i in range(10))
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    assert ds.name == "cifar10" and ds.image_shape == (32, 32, 3)


def test_cifar100_python_tarball_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    x_tr = rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    x_te = rng.integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    with tarfile.open(tmp_path / "c100.tar.gz", "w:gz") as tar:
        for split, x, fine in (("train", x_tr, [5, 99, 0, 7]), ("test", x_te, [1, 2])):
            d = {b"data": _planar(x), b"fine_labels": fine, b"coarse_labels": [0] * len(fine)}
            _add(tar, f"cifar-100-python/{split}", pickle.dumps(d, protocol=3))
        meta = {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                b"coarse_label_names": [b"c"] * 20}
        _add(tar, "cifar-100-python/meta", pickle.dumps(meta, protocol=3))
    ds = D.load_path(tmp_path / "c100.tar.gz", cache=False)
    np.testing.assert_array_equal(ds.x_train, x_tr)
    np.testing.assert_array_equal(ds.y_train, [5, 99, 0, 7])
    np.testing.assert_array_equal(ds.x_test, x_te)
    assert ds.num_classes == 100 and ds.class_names[99] == "f99"


class _Exploit:
    """Pickles as a call of os.system: what a tampered batch would hold."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("payload", [
    {b"data": _Exploit()},
    _Exploit(),
    {b"labels": [1], b"data": np.zeros((1, 3072), np.uint8), b"x": pickle.loads},
])
def test_malicious_pickle_is_refused(tmp_path, monkeypatch, payload):
    monkeypatch.chdir(tmp_path)
    blob = pickle.dumps(payload, protocol=3)
    with tarfile.open(tmp_path / "evil.tar.gz", "w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            _add(tar, f"cifar-10-batches-py/{name}", blob)
    with pytest.raises(DataError, match="refusing to load"):
        D.load_cifar_python(tmp_path / "evil.tar.gz")
    assert not (tmp_path / "pwned").exists()


def test_cifar_bad_layout(tmp_path):
    with tarfile.open(tmp_path / "x.tar", "w") as tar:
        _add(tar, "something/else", b"hello")
    with pytest.raises(DataError, match="not a CIFAR python archive"):
        D.load_cifar_python(tmp_path / "x.tar")


# --------------------------------------------------------------------------- IDX

def idx_bytes(arr: np.ndarray) -> bytes:
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int16): 0x0B, np.dtype(np.int32): 0x0C,
            np.dtype(np.float32): 0x0D}[arr.dtype]
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


@settings(max_examples=25, deadline=None)
@given(st.sampled_from([np.uint8, np.int16, np.int32, np.float32]),
       st.lists(st.integers(1, 4), min_size=1, max_size=3), st.booleans(), st.integers(0, 2**16))
def test_idx_round_trip(tmp_path_factory, dtype, shape, gz, seed):
    rng = np.random.default_rng(seed)
    arr = (rng.standard_normal(shape) * 100).astype(dtype)
    data = idx_bytes(arr)
    path = tmp_path_factory.mktemp("idx") / ("a.idx.gz" if gz else "a.idx")
    path.write_bytes(gzip.compress(data) if gz else data)
    out = D.load_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)


def test_idx_truncated_and_bad_magic(tmp_path):
    good = idx_bytes(np.arange(12, dtype=np.uint8).reshape(3, 4))
    (tmp_path / "t").write_bytes(good[:-1])
    with pytest.raises(DataError, match="truncated"):
        D.load_idx(tmp_path / "t")
    (tmp_path / "m").write_bytes(b"\x01\x02" + good[2:])
    with pytest.raises(DataError, match="magic"):
        D.load_idx(tmp_path / "m")


def write_mnist_folder(folder: Path, rng, n_train=6, n_test=4, gz=True):
    folder.mkdir(parents=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.array([9] + [0] * (n_test - 1), np.uint8),
    }
    for name, arr in arrays.items():
        data = idx_bytes(arr)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_dataset_folder(tmp_path, gz):
    arrays = write_mnist_folder(tmp_path / "mnist", np.random.default_rng(2), gz=gz)
    ds = D.load_path(tmp_path / "mnist")
    np.testing.assert_array_equal(ds.x_train[..., 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte"])
    assert ds.image_shape == (28, 28, 1) and ds.class_names == tuple("0123456789")


# --------------------------------------------------------------------------- image folders

def _png(arr: np.ndarray, fmt="PNG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr).save(buf, format=fmt)
    return buf.getvalue()


def write_image_tree(rng, channels=3, prefix=""):
    """{archive member: bytes} for <split>/<class>/<image>, plus the expected arrays."""
    members, expected = {}, {}
    for split, n in (("train", 3), ("test", 2)):
        xs, ys = [], []
        for label, cls in enumerate(["ant", "bee", "cat"]):
            for i in range(n):
                img = rng.integers(0, 256, (5, 7, channels), dtype=np.uint8)
                members[f"{prefix}{split}/{cls}/{i:04d}.png"] = _png(img)
                xs.append(img)
                ys.append(label)
        expected[split] = (np.stack(xs), np.array(ys))
    members[f"{prefix}classes.csv"] = b"0,ant\n1,bee\n2,cat\n"
    return members, expected


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("kind", ["folder", "tar", "tar.gz"])
def test_image_folder(tmp_path, channels, kind):
    members, expected = write_image_tree(np.random.default_rng(3), channels,
                                         prefix="./" if kind == "tar.gz" else "")
    if kind == "folder":
        src = tmp_path / "tree"
        for name, data in members.items():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes(data)
    else:
        src = tmp_path / f"tree.{kind}"
        with tarfile.open(src, "w:gz" if kind == "tar.gz" else "w") as tar:
            for name, data in reversed(list(members.items())):  # order must not matter
                _add(tar, name, data)
    ds = D.load_path(src)
    assert ds.class_names == ("ant", "bee", "cat")
    for split in D.SPLITS:
        x, y = ds.split(split)
        np.testing.assert_array_equal(x, expected[split][0])
        np.testing.assert_array_equal(y, expected[split][1])


def test_image_folder_jpeg_matches_pillow_decode(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(4)
    img = np.repeat(np.repeat(rng.integers(0, 256, (2, 2, 3), dtype=np.uint8), 8, 0), 8, 1)
    jpeg = _png(img, "JPEG")
    with tarfile.open(tmp_path / "j.tar", "w") as tar:
        for split in D.SPLITS:
            _add(tar, f"{split}/a/0.jpg", jpeg)
    ds = D.load_path(tmp_path / "j.tar", cache=False)
    np.testing.assert_array_equal(ds.x_train[0], np.asarray(Image.open(io.BytesIO(jpeg))))
    assert np.abs(ds.x_train[0].astype(int) - img).mean() < 20  # lossy, but the same picture


def test_image_folder_errors(tmp_path):
    with tarfile.open(tmp_path / "mixed.tar", "w") as tar:
        _add(tar, "train/a/0.png", _png(np.zeros((4, 4, 3), np.uint8)))
        _add(tar, "train/a/1.png", _png(np.zeros((5, 4, 3), np.uint8)))
        _add(tar, "test/a/0.png", _png(np.zeros((4, 4, 3), np.uint8)))
    with pytest.raises(DataError, match="same size"):
        D.load_path(tmp_path / "mixed.tar", cache=False)
    with tarfile.open(tmp_path / "bad.tar", "w") as tar:
        _add(tar, "train/a/0.png", b"not an image")
        _add(tar, "test/a/0.png", b"not an image")
    with pytest.raises(DataError, match="train/a/0.png"):
        D.load_path(tmp_path / "bad.tar", cache=False)
    with tarfile.open(tmp_path / "unseen.tar", "w") as tar:
        _add(tar, "train/a/0.png", _png(np.zeros((4, 4, 3), np.uint8)))
        _add(tar, "test/b/0.png", _png(np.zeros((4, 4, 3), np.uint8)))
    with pytest.raises(DataError, match="no training images"):
        D.load_path(tmp_path / "unseen.tar", cache=False)


# --------------------------------------------------------------------------- npz, cache, names

def _random_dataset(rng, name="toy"):
    return D.Dataset(name, rng.integers(0, 256, (5, 3, 3, 2), dtype=np.uint8),
                     rng.integers(0, 4, 5), rng.integers(0, 256, (2, 3, 3, 2), dtype=np.uint8),
                     rng.integers(0, 4, 2), ("a", "b", "c", "d"))


def test_npz_round_trip(tmp_path):
    ds = _random_dataset(np.random.default_rng(5))
    D.save_npz(ds, tmp_path / "toy.npz")
    back = D.load_npz(tmp_path / "toy.npz")
    for f in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(back, f), getattr(ds, f))
    assert back.class_names == ds.class_names and back.name == "toy"
    assert not any(p.suffix == ".tmp" for p in tmp_path.iterdir())


def test_npz_rejects_float_images_and_missing_arrays(tmp_path):
    np.savez(tmp_path / "f.npz", x_train=np.zeros((1, 2, 2, 1)), y_train=[0],
             x_test=np.zeros((1, 2, 2, 1)), y_test=[0])
    with pytest.raises(DataError, match="uint8"):
        D.load_npz(tmp_path / "f.npz")
    np.savez(tmp_path / "m.npz", x_train=np.zeros((1, 2, 2, 1), np.uint8))
    with pytest.raises(DataError, match="missing arrays"):
        D.load_npz(tmp_path / "m.npz")


def test_dataset_validates_labels():
    x = np.zeros((2, 2, 2, 1), np.uint8)
    with pytest.raises(DataError, match="outside"):
        D.Dataset("t", x, np.array([0, 3]), x, np.array([0, 1]), ("a", "b"))
    with pytest.raises(DataError, match="uint8"):
        D.Dataset("t", x.astype(np.float32), np.array([0, 1]), x, np.array([0, 1]), ("a", "b"))


def test_cache_is_used_and_invalidated(tmp_path):
    rng = np.random.default_rng(6)
    write_fake_cifar10(tmp_path / "c.tar.gz", rng)
    first = D.load_path(tmp_path / "c.tar.gz")
    entries = list((tmp_path / "cache" / "datasets").glob("*.npz"))
    assert len(entries) == 1
    # A cache hit must not touch the source: prove it by making the source unreadable data
    # with the same size and modification time.
    st = (tmp_path / "c.tar.gz").stat()
    (tmp_path / "c.tar.gz").write_bytes(b"\0" * st.st_size)
    os.utime(tmp_path / "c.tar.gz", ns=(st.st_atime_ns, st.st_mtime_ns))
    np.testing.assert_array_equal(D.load_path(tmp_path / "c.tar.gz").x_train, first.x_train)
    # A changed source (new mtime) is decoded afresh.
    write_fake_cifar10(tmp_path / "c.tar.gz", np.random.default_rng(7))
    os.utime(tmp_path / "c.tar.gz", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert not np.array_equal(D.load_path(tmp_path / "c.tar.gz").x_train, first.x_train)


def test_named_lookup_in_data_dir(tmp_path):
    arrays = write_mnist_folder(tmp_path / "data" / "fashion-mnist", np.random.default_rng(8))
    ds = D.load_dataset("fashion-mnist", data_dir=tmp_path / "data", download=False)
    assert ds.name == "fashion_mnist" and ds.class_names[9] == "Ankle boot"
    np.testing.assert_array_equal(ds.y_train, arrays["train-labels-idx1-ubyte"])


def test_named_lookup_env_var(tmp_path, monkeypatch):
    write_fake_cifar10(tmp_path / "cifar-10-python.tar.gz", np.random.default_rng(9))
    monkeypatch.setenv("REFDECOMP_DATA", str(tmp_path))
    assert D.search_dirs()[0] == tmp_path
    assert len(D.load_dataset("cifar10", download=False).x_test) == 3


def test_missing_dataset_message(monkeypatch, tmp_path):
    monkeypatch.setattr(D, "search_dirs", lambda data_dir=None: [tmp_path / "nowhere"])
    with pytest.raises(DataError, match=r"put cifar-100-python\.tar\.gz .* into one of"):
        D.load_dataset("cifar100", download=False)
    with pytest.raises(DataError, match="neither a known name"):
        D.load_dataset("no_such_set")


def test_failed_download_is_a_data_error(monkeypatch, tmp_path):
    monkeypatch.setattr(D, "search_dirs", lambda data_dir=None: [tmp_path / "nowhere"])
    src = D._SOURCES["mnist"]
    bad = D._Source(src.candidates, (("http://127.0.0.1:9/none.gz", "0" * 32),),
                    src.download_as)
    monkeypatch.setitem(D._SOURCES, "mnist", bad)
    with pytest.raises(DataError, match="download from http://127.0.0.1:9/none.gz failed"):
        D.load_dataset("mnist")


def _file_sources(tmp_path, arrays, md5s=None):
    """A copy of the mnist source whose URLs are file:// paths to files written here."""
    import hashlib

    urls = []
    for i, (name, arr) in enumerate(arrays.items()):
        f = tmp_path / "server" / (name + ".gz")
        f.parent.mkdir(exist_ok=True)
        f.write_bytes(gzip.compress(idx_bytes(arr)))
        md5 = hashlib.md5(f.read_bytes()).hexdigest() if md5s is None else md5s[i]
        urls.append((f.as_uri(), md5))
    src = D._SOURCES["mnist"]
    return D._Source(src.candidates, tuple(urls), src.download_as)


def test_download_checks_md5_and_is_found_afterwards(monkeypatch, tmp_path):
    arrays = write_mnist_folder(tmp_path / "orig", np.random.default_rng(10))
    monkeypatch.setitem(D._SOURCES, "mnist", _file_sources(tmp_path, arrays))
    monkeypatch.setattr(D, "search_dirs", lambda data_dir=None: [tmp_path / "cache" / "downloads"])
    ds = D.load_dataset("mnist")
    np.testing.assert_array_equal(ds.x_test[..., 0], arrays["t10k-images-idx3-ubyte"])
    assert (tmp_path / "cache" / "downloads" / "mnist").is_dir()
    assert not (tmp_path / "cache" / "downloads" / "mnist.partial").exists()
    D.load_dataset("mnist", download=False)  # now found locally


def test_download_with_wrong_md5_leaves_no_dataset(monkeypatch, tmp_path):
    arrays = write_mnist_folder(tmp_path / "orig", np.random.default_rng(11))
    bad = _file_sources(tmp_path, arrays, md5s=["0" * 32] * 4)
    monkeypatch.setitem(D._SOURCES, "mnist", bad)
    monkeypatch.setattr(D, "search_dirs", lambda data_dir=None: [tmp_path / "cache" / "downloads"])
    with pytest.raises(DataError, match="expected 0{32}"):
        D.load_dataset("mnist")
    assert not (tmp_path / "cache" / "downloads" / "mnist").exists()
    with pytest.raises(DataError, match="not found"):
        D.load_dataset("mnist", download=False)


def test_digits():
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    ds = D.load_dataset("digits")
    ref = load_digits()
    assert ds.x_train.shape == (1437, 8, 8, 1) and ds.x_test.shape == (360, 8, 8, 1)
    x = np.concatenate([ds.x_train, ds.x_test])[..., 0]
    np.testing.assert_array_equal(x, np.rint(ref.images * 255 / 16))
    np.testing.assert_array_equal(np.concatenate([ds.y_train, ds.y_test]), ref.target)
    assert x.max() == 255


# --------------------------------------------------------------------------- real data

def _shared(name):
    if not (SHARED / name).exists():
        pytest.skip(f"{SHARED / name} not present (set REFDECOMP_DATA to the real data)")
    return SHARED / name


@pytest.mark.shared
@pytest.mark.parametrize("name,folder,n_train,classes", [
    ("mnist", "mnist", 60000, 10), ("fashion_mnist", "fashion-mnist", 60000, 10)])
def test_real_mnist_like(name, folder, n_train, classes):
    _shared(folder)
    ds = D.load_dataset(name, data_dir=SHARED, download=False)
    assert ds.x_train.shape == (n_train, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert np.bincount(ds.y_test).tolist() == np.bincount(ds.y_test, minlength=classes).tolist()
    assert ds.num_classes == classes and ds.x_train.max() == 255


@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.parametrize("name,archive,classes", [
    ("cifar10", "cifar10-jpeg.tar.gz", 10), ("cifar100", "cifar100.tar.gz", 100)])
def test_real_cifar(name, archive, classes, monkeypatch):
    _shared(archive)
    # The user's cache (if any) is fine here: decoding 60k images takes ~10-30 s.
    monkeypatch.setenv("REFDECOMP_CACHE", str(D.Path.home() / ".cache" / "refdecomp"))
    ds = D.load_path(SHARED / archive, name=name)
    assert ds.x_train.shape == (50000, 32, 32, 3) and ds.x_test.shape == (10000, 32, 32, 3)
    assert np.bincount(ds.y_train).tolist() == [50000 // classes] * classes
    assert np.bincount(ds.y_test).tolist() == [10000 // classes] * classes
    if name == "cifar10":
        assert ds.class_names[:3] == ("airplane", "automobile", "bird")
    else:
        assert ds.class_names[0] == "apple" and ds.class_names[-1] == "worm"
