"""Tiny ImageNet-200 (the paper's third dataset) in its published layout.

The distribution (``tiny-imagenet-200.zip``, md5 90528d7ca1a48142e341f4ef8d21d0de) holds,
under ``tiny-imagenet-200/``:

* ``wnids.txt``: the 200 WordNet ids of the classes, one per line;
* ``words.txt``: ``wnid<TAB>name, synonym, ...`` for all of ImageNet (a superset);
* ``train/<wnid>/images/<wnid>_<k>.JPEG``: 500 training images per class (the
  ``<wnid>_boxes.txt`` beside them are ignored);
* ``val/images/val_<k>.JPEG`` and ``val/val_annotations.txt`` (``file<TAB>wnid<TAB>box``):
  10,000 labelled validation images, 50 per class;
* ``test/images/``: unlabelled, ignored.

Every image is 64x64; a few are grey JPEGs, which are converted to RGB like the rest.
Decisions: labels are the ranks of the wnids in sorted order (the order an image-folder loader
gives, and most published Tiny ImageNet models use), not the order of ``wnids.txt``; a class's
name is the first name in ``words.txt``; the labelled validation split is the test split.
The folder or the zip archive is read in place (members read into memory, never extracted).
"""
from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np

from . import limits
from .errors import DataError

__all__ = ["load_tiny_imagenet", "is_tiny_imagenet", "IMAGE_SHAPE", "URL", "MD5"]

URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
IMAGE_SHAPE = (64, 64, 3)

#: Largest member read (uncompressed): words.txt is about 2.7 MB, an image a few kB. What all
#: members expand to together is held to `refdecomp.limits` (max_file_bytes).
_MAX_MEMBER_BYTES = 32 << 20


class _Tree:
    """Read access to the files under the dataset root, in a folder or a zip archive."""

    def __init__(self, path: Path):
        self.path = path
        self.budget = limits.Budget(str(path))
        self._zip: zipfile.ZipFile | None = None
        if path.is_dir():
            root = path if (path / "wnids.txt").is_file() else path / "tiny-imagenet-200"
            if not (root / "wnids.txt").is_file():
                raise DataError(f"{path}: no wnids.txt (Tiny ImageNet layout expected)")
            self._root = root
            self._names = None
        else:
            try:
                self._zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as exc:
                raise DataError(f"{path}: not a readable zip archive ({exc})") from exc
            wnids = [n for n in self._zip.namelist() if n.rsplit("/", 1)[-1] == "wnids.txt"]
            if not wnids:
                raise DataError(f"{path}: no wnids.txt in the archive (Tiny ImageNet layout "
                                "expected)")
            self._prefix = min(wnids, key=len)[: -len("wnids.txt")]
            self._members = {n[len(self._prefix):]: n for n in self._zip.namelist()
                             if n.startswith(self._prefix) and not n.endswith("/")}

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def read(self, rel: str) -> bytes:
        if self._zip is None:
            f = self._root / rel
            if not f.is_file():
                raise DataError(f"{self.path}: {rel} is missing (Tiny ImageNet layout expected)")
            if f.stat().st_size > _MAX_MEMBER_BYTES:
                raise DataError(f"{self.path}: {rel} is larger than {_MAX_MEMBER_BYTES} bytes")
            self.budget.take(f.stat().st_size, rel)
            return f.read_bytes()
        name = self._members.get(rel)
        if name is None:
            raise DataError(f"{self.path}: {rel} is missing (Tiny ImageNet layout expected)")
        info = self._zip.getinfo(name)
        if info.file_size > _MAX_MEMBER_BYTES:
            raise DataError(f"{self.path}: {rel} declares {info.file_size} bytes, more than "
                            f"{_MAX_MEMBER_BYTES}; not a Tiny ImageNet archive")
        self.budget.take(info.file_size, rel)
        try:
            with self._zip.open(name) as f:
                return f.read(_MAX_MEMBER_BYTES + 1)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise DataError(f"{self.path}: cannot read {rel} ({exc})") from exc

    def listdir(self, rel: str) -> list[str]:
        """Names of the files directly in folder `rel` (sorted)."""
        rel = rel.rstrip("/") + "/"
        if self._zip is None:
            d = self._root / rel
            return sorted(f.name for f in d.iterdir() if f.is_file()) if d.is_dir() else []
        return sorted(n[len(rel):] for n in self._members
                      if n.startswith(rel) and "/" not in n[len(rel):])


def is_tiny_imagenet(path: str | os.PathLike) -> bool:
    """True for a folder (or zip archive) in the Tiny ImageNet layout."""
    path = Path(path)
    if path.is_dir():
        return ((path / "wnids.txt").is_file()
                or (path / "tiny-imagenet-200" / "wnids.txt").is_file())
    if path.is_file() and zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                return any(n.rsplit("/", 1)[-1] == "wnids.txt" for n in z.namelist())
        except (zipfile.BadZipFile, OSError):
            return False
    return False


def _lines(data: bytes, path: Path, rel: str) -> list[str]:
    try:
        return [ln.strip() for ln in data.decode("utf-8").splitlines() if ln.strip()]
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: {rel} is not UTF-8 text ({exc})") from exc


def load_tiny_imagenet(path: str | os.PathLike, name: str = "tiny_imagenet"):
    """Read Tiny ImageNet-200 from its folder (``tiny-imagenet-200/`` or its parent) or from
    ``tiny-imagenet-200.zip`` into a `refdecomp.datasets.Dataset` (train: the training
    images; test: the labelled validation images)."""
    from .datasets import _make, _pil

    path = Path(path)
    Image = _pil()
    tree = _Tree(path)
    try:
        wnids = sorted(set(_lines(tree.read("wnids.txt"), path, "wnids.txt")))
        if not wnids:
            raise DataError(f"{path}: wnids.txt lists no classes")
        index = {w: i for i, w in enumerate(wnids)}
        words = {}
        for ln in _lines(tree.read("words.txt"), path, "words.txt"):
            wnid, _, text = ln.partition("\t")
            words[wnid] = text.split(",")[0].strip()
        names = [words.get(w) or w for w in wnids]

        def decode(rel: str) -> np.ndarray:
            data = tree.read(rel)
            try:
                with Image.open(io.BytesIO(data)) as im:
                    if im.size != IMAGE_SHAPE[1::-1]:
                        raise DataError(f"{path}: {rel} is {im.size[0]}x{im.size[1]}; Tiny "
                                        "ImageNet images are 64x64")
                    return np.asarray(im.convert("RGB"), dtype=np.uint8)
            except DataError:
                raise
            except Exception as exc:
                raise DataError(f"{path}: {rel} is not a readable image ({exc})") from exc

        train = [(f"train/{w}/images/{f}", index[w]) for w in wnids
                 for f in tree.listdir(f"train/{w}/images") if not f.startswith(".")]
        if not train:
            raise DataError(f"{path}: no images under train/<wnid>/images/")
        val = []
        for ln in _lines(tree.read("val/val_annotations.txt"), path, "val/val_annotations.txt"):
            fields = ln.split("\t")
            if len(fields) < 2 or fields[1] not in index:
                raise DataError(f"{path}: val/val_annotations.txt line {ln!r}: expected "
                                "file<TAB>wnid with a wnid from wnids.txt")
            val.append((f"val/images/{fields[0]}", index[fields[1]]))
        if not val:
            raise DataError(f"{path}: val/val_annotations.txt lists no images")
        split = {}
        for key, items in (("train", train), ("test", val)):
            limits.check_bytes(len(items) * int(np.prod(IMAGE_SHAPE)), str(path),
                               f"the {key} images ({len(items)} x 64x64x3)")
            x = np.stack([decode(rel) for rel, _ in items])
            split[key] = (x, np.array([label for _, label in items], dtype=np.int64))
    finally:
        tree.close()
    return _make(name, *split["train"], *split["test"], names)


def cache_source(path: str | os.PathLike) -> Path:
    """The file whose path, size and time key the decoded-array cache of `path`."""
    path = Path(path)
    if path.is_dir():
        root = path if (path / "wnids.txt").is_file() else path / "tiny-imagenet-200"
        return root / "val" / "val_annotations.txt"
    return path
