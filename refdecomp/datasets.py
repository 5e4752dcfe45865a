"""Image classification datasets as plain arrays: uint8 NHWC images, int64 labels, class names.

Sources understood:

* the canonical CIFAR-10 / CIFAR-100 python tarballs (``cifar-10-python.tar.gz``,
  ``cifar-100-python.tar.gz``) or their extracted folders. Their batches are Python pickles;
  they are read with an unpickler that admits exactly the three numpy callables an array needs
  (``_reconstruct``, ``ndarray``, ``dtype``) and refuses every other global, so a tampered
  file cannot run code;
* the canonical MNIST / Fashion-MNIST IDX files, plain or gzipped;
* image-folder trees ``<split>/<class>/<image>`` (split ``train`` / ``test``, any image format
  Pillow reads), as a folder or a ``.tar`` / ``.tar.gz`` archive of one. Class names are the
  folder names, labels their rank in sorted order;
* ``.npz`` files with ``x_train``, ``y_train``, ``x_test``, ``y_test`` and optionally
  ``class_names`` (read with ``allow_pickle=False``);
* Tiny ImageNet-200 in its published layout, as the folder or ``tiny-imagenet-200.zip``
  (`refdecomp.tiny_imagenet`);
* scikit-learn's bundled ``digits`` (8x8 grey, values 0..16, scaled to 0..255 by
  ``round(v * 255 / 16)``; no canonical split exists: the first 1437 images (80 %) are the
  training split, the last 360 the test split).

Named datasets (``cifar10``, ``cifar100``, ``mnist``, ``fashion_mnist``, ``tiny_imagenet``,
``digits``) are looked up in ``data_dir``, then ``$REFDECOMP_DATA``, then in the download
folder of the cache, and finally downloaded from the canonical address and checked against its
published md5. No other place is searched: a copy elsewhere is named by ``data_dir`` or
``$REFDECOMP_DATA``.
Decoded arrays are cached as ``.npz`` under ``$REFDECOMP_CACHE`` (default
``~/.cache/refdecomp``), keyed by the source file's path, size and modification time.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import limits
from . import tiny_imagenet as _tiny
from .errors import DataError, LimitError, RefdecompError
from .fileio import atomic_path, file_digest, regular_file

__all__ = [
    "Dataset",
    "DATASET_NAMES",
    "load_dataset",
    "load_cifar_python",
    "load_idx",
    "load_idx_dataset",
    "load_image_folder",
    "load_npz",
    "load_digits",
    "save_npz",
    "cache_dir",
    "search_dirs",
]

#: Bumped whenever decoding changes, so stale cache entries are not reused.
_CACHE_VERSION = 1

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Dataset:
    """A labelled train/test split. Images are uint8 NHWC (raw pixel values 0..255), labels
    int64 class indices into `class_names`."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        for split in SPLITS:
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dtype != np.uint8 or x.ndim != 4:
                raise DataError(
                    f"dataset {self.name!r}: x_{split} must be uint8 of shape (N, H, W, C), "
                    f"got {x.dtype} {x.shape}"
                )
            if y.shape != (len(x),):
                raise DataError(
                    f"dataset {self.name!r}: y_{split} has shape {y.shape}, expected "
                    f"({len(x)},) to match x_{split}"
                )
            if len(y) and (y.min() < 0 or y.max() >= len(self.class_names)):
                raise DataError(
                    f"dataset {self.name!r}: y_{split} holds labels outside "
                    f"0..{len(self.class_names) - 1} ({len(self.class_names)} class names)"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DataError(
                f"dataset {self.name!r}: train images {self.x_train.shape[1:]} and test images "
                f"{self.x_test.shape[1:]} differ in shape"
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    def split(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        """`(x, y)` of the ``"train"`` or ``"test"`` split."""
        if which not in SPLITS:
            raise DataError(f"split must be 'train' or 'test', got {which!r}")
        return getattr(self, f"x_{which}"), getattr(self, f"y_{which}")


def _make(name, x_train, y_train, x_test, y_test, class_names) -> Dataset:
    return Dataset(
        name,
        np.ascontiguousarray(x_train, dtype=np.uint8),
        np.asarray(y_train, dtype=np.int64),
        np.ascontiguousarray(x_test, dtype=np.uint8),
        np.asarray(y_test, dtype=np.int64),
        tuple(str(c) for c in class_names),
    )


# --------------------------------------------------------------------------- CIFAR pickles

# The only callables a pickled array needs. Older files name numpy.core (numpy 1), newer
# ones numpy._core (numpy 2); both resolve to the installed numpy's own function.
_RECONSTRUCT = np.zeros(0).__reduce__()[0]
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler for data files: dicts, lists, strings, numbers and numpy arrays only."""

    def __init__(self, file, source: str):
        super().__init__(file, encoding="bytes")
        self._source = source

    def find_class(self, module: str, name: str):
        if (module, name) in _NUMPY_GLOBALS:
            return _NUMPY_GLOBALS[module, name]
        raise DataError(
            f"{self._source}: refusing to load the pickled object {module}.{name}; a CIFAR "
            "batch holds only dicts, lists, strings and numpy arrays, so this file is not a "
            "canonical CIFAR batch (it may have been tampered with)"
        )


def _unpickle(data: bytes, source: str) -> dict:
    try:
        obj = _ArrayOnlyUnpickler(io.BytesIO(data), source).load()
    except DataError:
        raise
    except Exception as exc:  # truncated or not a pickle at all
        raise DataError(f"{source}: not a readable CIFAR batch ({exc})") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{source}: a CIFAR batch must be a dict, got {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _text(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _cifar_members(path: Path) -> dict[str, bytes]:
    """Base name -> bytes of every regular file in a CIFAR tarball or extracted folder."""
    out: dict[str, bytes] = {}
    budget = limits.Budget(str(path))
    if path.is_dir():
        for f in sorted(path.rglob("*")):
            if f.is_file():
                budget.take(f.stat().st_size, f"member {f.name!r}")
                out[f.name] = f.read_bytes()
        return out
    for name, data in _iter_tar(path):
        out[Path(name).name] = data
    return out


def _cifar_images(batch: dict, source: str) -> np.ndarray:
    data = batch.get("data")
    if not isinstance(data, np.ndarray):   # a list could repeat one object a million times
        raise DataError(f"{source}: 'data' must be a numpy array, got {type(data).__name__}")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(
            f"{source}: 'data' must be a uint8 array of shape (N, 3072), got "
            f"{data.dtype} {data.shape}"
        )
    # Rows hold the red, green and blue 32x32 planes one after another.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def load_cifar_python(path: str | os.PathLike, name: str | None = None) -> Dataset:
    """Read a canonical CIFAR-10 or CIFAR-100 python tarball (or its extracted folder).
    CIFAR-100 gives the 100 fine labels."""
    path = Path(path)
    files = _cifar_members(path)
    if "data_batch_1" in files:  # CIFAR-10
        train = [_unpickle(files[f"data_batch_{i}"], f"{path}:data_batch_{i}")
                 for i in range(1, 6) if f"data_batch_{i}" in files]
        if len(train) != 5 or "test_batch" not in files:
            raise DataError(f"{path}: CIFAR-10 archive lacks some of data_batch_1..5 / test_batch")
        test = [_unpickle(files["test_batch"], f"{path}:test_batch")]
        key, meta_file, names_key = "labels", "batches.meta", "label_names"
        default_name = "cifar10"
    elif "train" in files and "test" in files and "meta" in files:  # CIFAR-100
        train = [_unpickle(files["train"], f"{path}:train")]
        test = [_unpickle(files["test"], f"{path}:test")]
        key, meta_file, names_key = "fine_labels", "meta", "fine_label_names"
        default_name = "cifar100"
    else:
        raise DataError(
            f"{path}: not a CIFAR python archive (expected data_batch_1..5 and test_batch, or "
            "train, test and meta)"
        )
    meta = _unpickle(files[meta_file], f"{path}:{meta_file}") if meta_file in files else {}
    class_names = _checked_names(meta.get(names_key, []), f"{path}:{meta_file}")

    def stack(batches, split):
        for b in batches:
            if key not in b:
                raise DataError(f"{path}: {split} batch has no {key!r} entry")
        x = np.concatenate([_cifar_images(b, f"{path}:{split}") for b in batches])
        y = np.concatenate([_checked_labels(b[key], f"{path}:{split}") for b in batches])
        if len(y) != len(x):
            raise DataError(f"{path}: {split} has {len(x)} images but {len(y)} labels")
        return x, y

    x_train, y_train = stack(train, "train")
    x_test, y_test = stack(test, "test")
    if not class_names:
        class_names = _names_for_labels(y_train, y_test, str(path))
    return _make(name or default_name, x_train, y_train, x_test, y_test, class_names)


def _checked_labels(labels, source: str) -> np.ndarray:
    """Labels from a pickle: an int array, or a list of ints (never of nested objects, which
    could repeat one large object many times)."""
    if isinstance(labels, list):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in labels):
            raise DataError(f"{source}: labels must be integers")
        labels = np.asarray(labels, dtype=np.int64)
    if not isinstance(labels, np.ndarray) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{source}: labels must be a list or array of integers")
    return labels.astype(np.int64).reshape(-1)


def _checked_names(names, source: str) -> list[str]:
    """Class names from a pickle: at most `max_classes` short strings."""
    if not isinstance(names, (list, tuple)):
        raise DataError(f"{source}: class names must be a list")
    cap = limits.current().max_classes
    if len(names) > cap:
        raise LimitError(f"{source}: {len(names)} class names, above the limit max_classes = "
                         f"{cap} (refdecomp.limits)")
    if not all(isinstance(n, (bytes, str)) and len(n) <= 1024 for n in names):
        raise DataError(f"{source}: class names must be strings of at most 1024 characters")
    return [_text(n) for n in names]


def _names_for_labels(*label_arrays: np.ndarray, source: str = "") -> list[str]:
    """Names "0".."max" for labels without names, refused above `max_classes` (a single huge
    label would otherwise ask for billions of names)."""
    top = max((int(y.max()) for y in label_arrays if y.size), default=0)
    cap = limits.current().max_classes
    if top >= cap:
        raise LimitError(f"{source}: a label is {top}, implying {top + 1} classes, above the "
                         f"limit max_classes = {cap} (refdecomp.limits)")
    return [str(i) for i in range(top + 1)]


# --------------------------------------------------------------------------- IDX (MNIST)

_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_maybe_gzip(path: Path) -> bytes:
    """The file's bytes, gunzipped if gzipped, never more than `max_tensor_bytes` (a gzip
    bomb stops at the limit instead of filling the memory)."""
    regular_file(path, DataError)
    cap = limits.current().max_tensor_bytes
    try:
        with open(path, "rb") as fh:
            gz = fh.read(2) == b"\x1f\x8b"
            fh.seek(0)
            stream = gzip.GzipFile(fileobj=fh) if gz else fh
            data = stream.read(cap + 1)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    limits.check_bytes(len(data), str(path), "the decompressed file")
    return data


def load_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (plain or gzipped) into an array of its stored type and shape."""
    path = Path(path)
    data = _read_maybe_gzip(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: IDX header truncated")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_TYPES[data[2]])
    # exact integer arithmetic: a product of four 32-bit dimensions overflows int64
    expected = header + limits.elements(shape, str(path), "the IDX array",
                                        dtype.itemsize) * dtype.itemsize
    if len(data) != expected:
        raise DataError(
            f"{path}: IDX body holds {len(data) - header} bytes, the header {shape} needs "
            f"{expected - header}; the file is truncated or corrupt"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))


_IDX_FILES = {
    "x_train": "train-images",
    "y_train": "train-labels",
    "x_test": "t10k-images",
    "y_test": "t10k-labels",
}


def _find_idx(folder: Path, stem: str) -> Path | None:
    hits = sorted(p for p in folder.glob(stem + "*") if p.is_file())
    return hits[0] if hits else None


def load_idx_dataset(folder: str | os.PathLike, name: str | None = None,
                     class_names: Iterable[str] | None = None) -> Dataset:
    """Read an MNIST-style folder: ``{train,t10k}-{images,labels}*`` IDX files."""
    folder = Path(folder)
    arrays = {}
    for key, stem in _IDX_FILES.items():
        f = _find_idx(folder, stem)
        if f is None:
            raise DataError(f"{folder}: no {stem}-* IDX file (MNIST layout expected)")
        arrays[key] = load_idx(f)
    for split in SPLITS:
        x = arrays[f"x_{split}"]
        if x.ndim != 3 or x.dtype != np.uint8:
            raise DataError(f"{folder}: {split} images must be uint8 (N, H, W), got "
                            f"{x.dtype} {x.shape}")
        arrays[f"x_{split}"] = x[..., None]
    if class_names is None:
        class_names = _names_for_labels(arrays["y_train"], arrays["y_test"],
                                        source=str(folder))
    return _make(name or folder.name, arrays["x_train"], arrays["y_train"], arrays["x_test"],
                 arrays["y_test"], class_names)


# --------------------------------------------------------------------------- image folders

def _pil():
    try:
        from PIL import Image
    except ImportError as exc:  # optional `cli` extra
        raise DataError(
            "reading image folders needs Pillow: pip install 'refdecomp[cli]' (or pillow)"
        ) from exc
    return Image


def _iter_folder(root: Path) -> Iterator[tuple[str, bytes]]:
    budget = limits.Budget(str(root))
    for f in sorted(root.rglob("*")):
        if f.is_file():
            budget.take(f.stat().st_size, f"file {f.name!r}")
            yield f.relative_to(root).as_posix(), f.read_bytes()


def _iter_tar(path: Path) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each regular member. Members are read into memory, never extracted, so
    hostile member names cannot escape; each member's declared size is checked against the
    limits before it is read (tarfile delivers exactly that many bytes)."""
    regular_file(path, DataError)
    budget = limits.Budget(str(path))
    try:
        with tarfile.open(path, "r:*") as tar:
            for m in tar:
                if m.isfile():
                    budget.take(m.size, f"member {m.name!r}")
                    yield m.name, tar.extractfile(m).read()  # type: ignore[union-attr]
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable tar archive ({exc})") from exc


def load_image_folder(path: str | os.PathLike, name: str | None = None) -> Dataset:
    """Read ``<split>/<class>/<image>`` from a folder or a tar archive (a leading wrapper
    folder is allowed). Other files (e.g. a ``classes.csv``) are ignored. Images are stored
    grey (one channel) when the first image is grey, else RGB."""
    path = Path(path)
    Image = _pil()
    entries = _iter_folder(path) if path.is_dir() else _iter_tar(path)
    found: dict[str, list[tuple[str, str, bytes]]] = {s: [] for s in SPLITS}
    for member, data in entries:
        parts = member.split("/")
        if len(parts) >= 3 and parts[-3] in found and not parts[-1].startswith("."):
            found[parts[-3]].append((parts[-2], member, data))
    if not found["train"] or not found["test"]:
        raise DataError(
            f"{path}: no images under train/<class>/ and test/<class>/ (image-folder layout "
            "<split>/<class>/<image> expected)"
        )
    class_names = sorted({c for c, _, _ in found["train"]})
    unknown = sorted({c for c, _, _ in found["test"]} - set(class_names))
    if unknown:
        raise DataError(f"{path}: test classes {unknown} have no training images")
    index = {c: i for i, c in enumerate(class_names)}
    mode: str | None = None
    out = {}
    for split in SPLITS:
        items = sorted(found[split], key=lambda t: (index[t[0]], t[1]))
        images, labels = [], []
        for cls, member, data in items:
            try:
                with Image.open(io.BytesIO(data)) as im:
                    if mode is None:
                        mode = "L" if im.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"
                    _check_image_size(im.size, 1 if mode == "L" else 3, len(items), path,
                                      member, Image.MAX_IMAGE_PIXELS)
                    arr = np.asarray(im.convert(mode), dtype=np.uint8)
            except RefdecompError:
                raise
            except Image.DecompressionBombError as exc:
                raise LimitError(f"{path}: {member} is above Pillow's limit on image size "
                                 f"({exc})") from None
            except Exception as exc:
                raise DataError(f"{path}: {member} is not a readable image ({exc})") from exc
            if images and arr.shape != images[0].shape:
                raise DataError(
                    f"{path}: {member} is {arr.shape}, other images are {images[0].shape}; all "
                    "images must have the same size"
                )
            images.append(arr)
            labels.append(index[cls])
        x = np.stack(images)
        out[split] = (x[..., None] if x.ndim == 3 else x, np.asarray(labels, dtype=np.int64))
    if out["train"][0].shape[1:] != out["test"][0].shape[1:]:
        raise DataError(f"{path}: train and test images differ in size")
    return _make(name or _stem(path), *out["train"], *out["test"], class_names)


def _check_image_size(size, channels: int, n_images: int, path: Path, member: str,
                      max_pixels) -> None:
    """Refuse, before decoding, an image above Pillow's decompression-bomb limit or a split
    whose stacked array would exceed `max_tensor_bytes`."""
    w, h = size
    if max_pixels and w * h > max_pixels:
        raise LimitError(f"{path}: {member} is {w}x{h} pixels, above Pillow's limit "
                         f"({max_pixels} pixels, PIL.Image.MAX_IMAGE_PIXELS)")
    limits.check_bytes(n_images * w * h * channels, str(path),
                       f"{n_images} images of {w}x{h}x{channels} (starting with {member})")


# --------------------------------------------------------------------------- npz / digits

def load_npz(path: str | os.PathLike, name: str | None = None) -> Dataset:
    """Read an ``.npz`` with ``x_train``, ``y_train``, ``x_test``, ``y_test`` (images uint8
    NHWC, or NHW for grey) and optionally ``class_names``."""
    path = regular_file(path, DataError)
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in z]
            if missing:
                raise DataError(f"{path}: missing arrays {missing} (need x_train, y_train, "
                                "x_test, y_test)")
            budget = limits.Budget(str(path))
            for info in z.zip.infolist():   # declared sizes, before anything is inflated
                budget.take(info.file_size, f"array {info.filename!r}")
            arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
            names = [str(c) for c in z["class_names"]] if "class_names" in z else None
    except RefdecompError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from exc
    for split in SPLITS:
        x = arrays[f"x_{split}"]
        if x.dtype != np.uint8:
            raise DataError(f"{path}: x_{split} must be uint8 pixel values, got {x.dtype}")
        if x.ndim == 3:
            arrays[f"x_{split}"] = x[..., None]
    for key in ("y_train", "y_test"):
        if not np.issubdtype(arrays[key].dtype, np.integer) or arrays[key].ndim != 1:
            raise DataError(f"{path}: {key} must be a 1-D array of integer labels, got "
                            f"{arrays[key].dtype} {arrays[key].shape}")
    if names is None:
        names = _names_for_labels(arrays["y_train"], arrays["y_test"], source=str(path))
    return _make(name or path.stem, arrays["x_train"], arrays["y_train"], arrays["x_test"],
                 arrays["y_test"], names)


def save_npz(dataset: Dataset, path: str | os.PathLike, compress: bool = False) -> Path:
    """Write `dataset` as an ``.npz`` that `load_npz` reads back (atomically)."""
    path = Path(path)
    arrays = dict(
        x_train=dataset.x_train, y_train=dataset.y_train, x_test=dataset.x_test,
        y_test=dataset.y_test, class_names=np.asarray(dataset.class_names, dtype=str),
    )
    _atomic_write(path, lambda f: (np.savez_compressed if compress else np.savez)(f, **arrays))
    return path


DIGITS_TRAIN = 1437


def load_digits() -> Dataset:
    """scikit-learn's bundled 8x8 digits (no download), scaled 0..16 -> 0..255."""
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError as exc:
        raise DataError(
            "the digits dataset comes with scikit-learn: pip install 'refdecomp[cli]' "
            "(or scikit-learn)"
        ) from exc
    d = sk_digits()
    x = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    y = d.target.astype(np.int64)
    return _make("digits", x[:DIGITS_TRAIN], y[:DIGITS_TRAIN], x[DIGITS_TRAIN:],
                 y[DIGITS_TRAIN:], [str(i) for i in range(10)])


# --------------------------------------------------------------------------- files, cache

def _atomic_write(path: Path, write: Callable[[io.BufferedWriter], object]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar", ".npz", ".gz"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def cache_dir() -> Path:
    """Where decoded arrays and downloads are kept: ``$REFDECOMP_CACHE`` or
    ``~/.cache/refdecomp``."""
    env = os.environ.get("REFDECOMP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "refdecomp"


def _cached(source: Path, name: str, decode: Callable[[], Dataset], use_cache: bool) -> Dataset:
    """Decode `source` once; later calls read the cached ``.npz`` (keyed by path, size, mtime)."""
    if not use_cache:
        return decode()
    st = source.stat()
    key = hashlib.sha1(
        f"{_CACHE_VERSION}|{name}|{source.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()
    ).hexdigest()[:16]
    entry = cache_dir() / "datasets" / f"{name}-{key}.npz"
    if entry.is_file():
        try:
            return load_npz(entry, name=name)
        except DataError:
            pass  # a damaged cache entry is simply rebuilt
    ds = decode()
    try:
        save_npz(ds, entry)
    except OSError as exc:
        warnings.warn(f"could not cache decoded {name} at {entry}: {exc}", stacklevel=3)
    return ds


def _is_tar(path: Path) -> bool:
    try:
        return path.is_file() and tarfile.is_tarfile(path)
    except OSError:
        return False


def _tar_is_cifar_python(path: Path) -> bool:
    """True for a CIFAR python tarball, False for an image-folder tree (first evidence wins)."""
    try:
        with tarfile.open(path, "r:*") as tar:
            for m in tar:
                parts = m.name.split("/")
                if parts[-1] in ("data_batch_1", "test_batch", "meta", "batches.meta"):
                    return True
                if m.isfile() and len(parts) >= 3 and parts[-3] in SPLITS:
                    return False
    except (tarfile.TarError, OSError, EOFError):
        return False
    return False


def load_path(path: str | os.PathLike, name: str | None = None, *, cache: bool = True,
              class_names: Iterable[str] | None = None) -> Dataset:
    """Read a dataset file or folder of any supported format, chosen by its content."""
    path = Path(path).expanduser()
    label = name or _stem(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if _tiny.is_tiny_imagenet(path):
        return _cached(_tiny.cache_source(path), label,
                       lambda: _tiny.load_tiny_imagenet(path, label), cache)
    if path.is_dir():
        if _find_idx(path, "train-images") is not None:
            return _cached(path / _find_idx(path, "train-images").name, label,
                           lambda: load_idx_dataset(path, label, class_names), cache)
        if (path / "data_batch_1").is_file() or (path / "meta").is_file():
            return load_cifar_python(path, label)
        if (path / "train").is_dir():
            return load_image_folder(path, label)
        raise DataError(
            f"{path}: folder holds no known dataset layout (MNIST IDX files, CIFAR batches, "
            "or train/<class>/<image>)"
        )
    if path.suffix == ".npz":
        return load_npz(path, label)
    if _is_tar(path):
        if _tar_is_cifar_python(path):
            return _cached(path, label, lambda: load_cifar_python(path, label), cache)
        return _cached(path, label, lambda: load_image_folder(path, label), cache)
    raise DataError(
        f"{path}: unknown dataset format (expected .npz, a tar archive, a Tiny ImageNet folder "
        "or .zip, or a folder of MNIST IDX files / CIFAR batches / train/<class>/<image> "
        "images)"
    )


# --------------------------------------------------------------------------- named datasets

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")


@dataclass(frozen=True)
class _Source:
    """Where a named dataset may be found locally, and its canonical download."""

    candidates: tuple[str, ...]          # file or folder names, in order of preference
    urls: tuple[tuple[str, str], ...]    # (url, md5 of the downloaded file)
    download_as: str                     # folder or file name the download is stored as
    class_names: tuple[str, ...] | None = None


_MNIST_BASE = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_BASE = ("https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/"
                 "data/fashion/")

_SOURCES: dict[str, _Source] = {
    "cifar10": _Source(
        ("cifar-10-python.tar.gz", "cifar-10-batches-py", "cifar10-jpeg.tar.gz", "cifar10.npz",
         "cifar10"),
        (("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
          "c58f30108f718f92721af3b95e74349a"),),
        "cifar-10-python.tar.gz",
    ),
    "cifar100": _Source(
        ("cifar-100-python.tar.gz", "cifar-100-python", "cifar100.tar.gz", "cifar100.npz",
         "cifar100"),
        (("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
          "eb9058c3a382ffc7106e4002c42a8d85"),),
        "cifar-100-python.tar.gz",
    ),
    "mnist": _Source(
        ("mnist", "mnist.npz"),
        tuple((_MNIST_BASE + f, md5) for f, md5 in (
            ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
            ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
            ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
        )),
        "mnist",
    ),
    "fashion_mnist": _Source(
        ("fashion-mnist", "fashion_mnist", "fashion-mnist.npz", "fashion_mnist.npz"),
        tuple((_FASHION_BASE + f, md5) for f, md5 in (
            ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
            ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
            ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
        )),
        "fashion-mnist",
        FASHION_MNIST_CLASSES,
    ),
    "tiny_imagenet": _Source(
        ("tiny-imagenet-200", "tiny-imagenet-200.zip", "tiny_imagenet.npz"),
        ((_tiny.URL, _tiny.MD5),),
        "tiny-imagenet-200.zip",
    ),
}

DATASET_NAMES = (*_SOURCES, "digits")


def search_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for named datasets, in order: `data_dir`, ``$REFDECOMP_DATA``, the
    cache's download folder."""
    dirs = []
    if data_dir is not None:
        dirs.append(Path(data_dir).expanduser())
    if os.environ.get("REFDECOMP_DATA"):
        dirs.append(Path(os.environ["REFDECOMP_DATA"]).expanduser())
    dirs.append(cache_dir() / "downloads")
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def _md5(path: Path) -> str:
    return file_digest(path, "md5")


def _download(src: _Source, timeout: float = 60.0) -> Path:
    """Fetch the canonical files of `name` into the cache's download folder, checking md5.
    Several files are gathered in a ``.partial`` folder that is renamed when complete, so an
    interrupted download never looks like a dataset."""
    target = cache_dir() / "downloads" / src.download_as
    multi = len(src.urls) > 1
    partial = target.with_name(target.name + ".partial")
    for url, md5 in src.urls:
        dest = partial / url.rsplit("/", 1)[1] if multi else target
        if dest.is_file() and _md5(dest) == md5:
            continue

        def fetch(f, url=url):
            with urllib.request.urlopen(url, timeout=timeout) as r:
                while block := r.read(1 << 20):
                    f.write(block)

        _atomic_write(dest, fetch)
        got = _md5(dest)
        if got != md5:
            dest.unlink()
            raise DataError(f"{url}: downloaded file has md5 {got}, expected {md5}; removed it")
    if multi:
        os.replace(partial, target)
    return target


def load_dataset(name_or_path: str | os.PathLike, *, data_dir: str | os.PathLike | None = None,
                 download: bool = True, cache: bool = True) -> Dataset:
    """Load a named dataset (one of `DATASET_NAMES`) or a dataset file / folder.

    Named datasets are looked for in `search_dirs(data_dir)`; when none is found and
    `download` is true, the canonical files are downloaded (md5-checked) into the cache.
    """
    key = str(name_or_path).lower().replace("-", "_")
    if key == "digits":
        return load_digits()
    if key not in _SOURCES:
        if Path(name_or_path).expanduser().exists():
            return load_path(name_or_path, cache=cache)
        raise DataError(
            f"dataset {str(name_or_path)!r}: neither a known name ({', '.join(DATASET_NAMES)}) "
            "nor an existing file or folder"
        )
    src = _SOURCES[key]
    dirs = search_dirs(data_dir)
    for d in dirs:
        for cand in src.candidates:
            p = d / cand
            if p.exists():
                return load_path(p, name=key, cache=cache, class_names=src.class_names)
    where = ", ".join(str(d) for d in dirs)
    wanted = " or ".join(src.candidates[:2])
    if not download:
        raise DataError(
            f"dataset {key!r} not found: put {wanted} into one of {where} (or pass data_dir / "
            f"set REFDECOMP_DATA); download is disabled"
        )
    try:
        got = _download(src)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise DataError(
            f"dataset {key!r} not found locally and the download from {src.urls[0][0]} failed "
            f"({exc}); put {wanted} into one of {where} (or pass data_dir / set REFDECOMP_DATA)"
        ) from exc
    return load_path(got, name=key, cache=cache, class_names=src.class_names)
