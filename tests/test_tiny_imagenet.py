"""Tiny ImageNet-200 in its published layout, on a miniature tree written here (three classes,
a few 64x64 images, grey ones among them), as a folder and as a zip archive; and the named
lookup that finds it (no machine-specific folder searched).

Oracle: the pixels and labels the test wrote (PNG bytes under the published .JPEG names, so
decoding is exact; one real grey JPEG checks the RGB conversion within JPEG error).
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from refdecomp import DataError
from refdecomp import datasets as D
from refdecomp import tiny_imagenet as T

WNIDS = ["n02124075", "n01443537", "n09999999"]        # deliberately not sorted
WORDS = {"n01443537": "goldfish, Carassius auratus", "n02124075": "Egyptian cat",
         "n09999999": "fake thing, other name", "n00000001": "entity"}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REFDECOMP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("REFDECOMP_DATA", raising=False)


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def write_tree(root: Path, rng) -> dict:
    """The published layout under root/tiny-imagenet-200; returns what it holds."""
    pytest.importorskip("PIL")
    base = root / "tiny-imagenet-200"
    files: dict[str, bytes] = {
        "wnids.txt": ("\n".join(WNIDS) + "\n").encode(),
        "words.txt": "".join(f"{k}\t{v}\n" for k, v in WORDS.items()).encode(),
    }
    train, val = {}, []
    for w in WNIDS:
        for k in range(3):
            arr = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            if k == 2:   # a grey image: stored with one channel, read as RGB
                arr = np.repeat(arr[..., :1], 3, axis=2)
                files[f"train/{w}/images/{w}_{k}.JPEG"] = _png(arr[..., 0])
            else:
                files[f"train/{w}/images/{w}_{k}.JPEG"] = _png(arr)
            train[(w, k)] = arr
        files[f"train/{w}/{w}_boxes.txt"] = b"ignored\t0\t0\t63\t63\n"
    lines = []
    for i, w in enumerate(WNIDS * 2):
        arr = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        files[f"val/images/val_{i}.JPEG"] = _png(arr)
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63\n")
        val.append((w, arr))
    files["val/val_annotations.txt"] = "".join(lines).encode()
    files["test/images/test_0.JPEG"] = _png(np.zeros((64, 64, 3), np.uint8))
    for rel, data in files.items():
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_bytes(data)
    return {"base": base, "files": files, "train": train, "val": val}


def _zip(tree: dict, path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for rel, data in tree["files"].items():
            z.writestr(f"tiny-imagenet-200/{rel}", data)
    return path


def _check(ds, tree) -> None:
    order = sorted(WNIDS)                                   # labels: sorted wnids
    assert ds.class_names == ("goldfish", "Egyptian cat", "fake thing")
    assert ds.x_train.shape == (9, 64, 64, 3) and ds.x_test.shape == (6, 64, 64, 3)
    assert np.bincount(ds.y_train).tolist() == [3, 3, 3]
    for i, (x, label) in enumerate(zip(ds.x_train, ds.y_train)):
        w = order[int(label)]
        np.testing.assert_array_equal(x, tree["train"][(w, i % 3)])
    for x, label, (w, arr) in zip(ds.x_test, ds.y_test, tree["val"]):   # annotation order
        assert order[int(label)] == w
        np.testing.assert_array_equal(x, arr)


def test_folder_and_its_parent(tmp_path):
    tree = write_tree(tmp_path, np.random.default_rng(0))
    _check(T.load_tiny_imagenet(tree["base"]), tree)
    _check(D.load_path(tmp_path), tree)          # the folder holding tiny-imagenet-200/


def test_zip_archive_read_in_place(tmp_path):
    tree = write_tree(tmp_path, np.random.default_rng(1))
    archive = _zip(tree, tmp_path / "tiny-imagenet-200.zip")
    ds = D.load_path(archive, name="tiny_imagenet")
    _check(ds, tree)
    assert ds.name == "tiny_imagenet"


def test_grey_jpeg_becomes_rgb(tmp_path):
    from PIL import Image

    tree = write_tree(tmp_path, np.random.default_rng(2))
    grey = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))
    buf = io.BytesIO()
    Image.fromarray(grey, mode="L").save(buf, format="JPEG", quality=95)
    w = WNIDS[0]
    (tree["base"] / f"train/{w}/images/{w}_0.JPEG").write_bytes(buf.getvalue())
    ds = T.load_tiny_imagenet(tree["base"])
    x = ds.x_train[np.flatnonzero(ds.y_train == sorted(WNIDS).index(w))[0]]
    assert x.shape == (64, 64, 3)
    assert np.array_equal(x[..., 0], x[..., 1]) and np.array_equal(x[..., 1], x[..., 2])
    assert np.abs(x[..., 0].astype(int) - grey).max() <= 3


def test_named_lookup_finds_it_in_data_dir_and_env(tmp_path, monkeypatch):
    tree = write_tree(tmp_path / "data", np.random.default_rng(3))
    _check(D.load_dataset("tiny_imagenet", data_dir=tmp_path / "data", download=False), tree)
    monkeypatch.setenv("REFDECOMP_DATA", str(tmp_path / "data"))
    _check(D.load_dataset("tiny-imagenet", download=False), tree)


def test_download_is_checksummed_and_then_found(tmp_path, monkeypatch):
    import hashlib

    tree = write_tree(tmp_path / "orig", np.random.default_rng(4))
    archive = _zip(tree, tmp_path / "server.zip")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    src = D._SOURCES["tiny_imagenet"]
    assert src.urls == ((T.URL, T.MD5),)
    monkeypatch.setitem(D._SOURCES, "tiny_imagenet",
                        D._Source(src.candidates, ((archive.as_uri(), md5),), src.download_as))
    _check(D.load_dataset("tiny_imagenet"), tree)
    assert (tmp_path / "cache" / "downloads" / "tiny-imagenet-200.zip").is_file()
    _check(D.load_dataset("tiny_imagenet", download=False), tree)
    monkeypatch.setitem(D._SOURCES, "tiny_imagenet",
                        D._Source(src.candidates, ((archive.as_uri(), "0" * 32),), "other.zip"))
    (tmp_path / "cache" / "downloads" / "tiny-imagenet-200.zip").unlink()
    with pytest.raises(DataError, match="expected 0{32}"):
        D.load_dataset("tiny_imagenet")


@pytest.mark.parametrize("damage, match", [
    (lambda b: (b / "val/val_annotations.txt").write_text("val_0.JPEG\tn07777777\n"),
     "wnid from wnids.txt"),
    (lambda b: (b / "words.txt").unlink(), "words.txt is missing"),
    (lambda b: (b / f"train/{WNIDS[1]}/images/{WNIDS[1]}_1.JPEG").write_bytes(b"not an image"),
     "not a readable image"),
    (lambda b: (b / "val/images/val_0.JPEG").write_bytes(_png(np.zeros((32, 32, 3), np.uint8))),
     "images are 64x64"),
])
def test_damaged_trees_give_one_clear_error(tmp_path, damage, match):
    tree = write_tree(tmp_path, np.random.default_rng(5))
    damage(tree["base"])
    with pytest.raises(DataError, match=match):
        T.load_tiny_imagenet(tree["base"])


def test_search_dirs_hold_no_machine_specific_folder(tmp_path, monkeypatch):
    assert D.search_dirs() == [tmp_path / "cache" / "downloads"]
    monkeypatch.setenv("REFDECOMP_DATA", str(tmp_path / "env"))
    assert D.search_dirs(tmp_path / "mine") == [tmp_path / "mine", tmp_path / "env",
                                               tmp_path / "cache" / "downloads"]


def test_archive_contents_are_held_to_the_limits(tmp_path):
    from refdecomp import limits
    from refdecomp.errors import LimitError

    tree = write_tree(tmp_path, np.random.default_rng(6))
    archive = _zip(tree, tmp_path / "tiny-imagenet-200.zip")
    with limits.override(max_file_bytes=2000):
        with pytest.raises(LimitError, match="max_file_bytes"):
            T.load_tiny_imagenet(archive)
    with limits.override(max_tensor_bytes=64 * 64 * 3 * 5):
        with pytest.raises(LimitError, match="train images"):
            T.load_tiny_imagenet(tree["base"])
