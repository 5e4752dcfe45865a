"""Read Keras model files into refdecomp's `Graph`, without Keras and without executing anything.

`read_graph(path, architecture=None)` accepts legacy HDF5 full-model files (standalone Keras
2.0-2.3, tf.keras 2.x / tf_keras, Keras 3), `.keras` archives (Keras 3, tf.keras 2.13+), and
weights-only files (`save_weights` `.h5`, Keras 3 `.weights.h5`) together with an
`architecture`: a JSON file (`model.to_json()`, an archive's `config.json`) or a full model file.
See docs/formats.md for the dialects and traps handled.
"""
from __future__ import annotations

import json
import os
from contextlib import ExitStack
from typing import Any

from ..errors import ModelFormatError
from ..fileio import regular_file, sha256_file
from ..graph import Graph
from .archive import read_archive
from .build import build_nodes, check_supported
from .config import load_json, parse_model
from .hdf5 import Contents, _looks_keras1, keras_major, open_hdf5, read_hdf5, refuse_keras1
from .layers import Dialect

__all__ = ["read_graph"]

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_LFS_PREFIX = b"version https://git-lfs"


def read_graph(path: str | os.PathLike, architecture: str | os.PathLike | None = None) -> Graph:
    """Read the model in `path` (with the architecture from `architecture` for weights-only
    files, or to override the file's own) into a validated `Graph`."""
    path = os.fspath(path)
    source = path
    with ExitStack() as stack:
        contents = _open(path, source, stack)
        config, version = contents.config, contents.keras_version
        if architecture is not None:
            config, arch_version = _read_architecture(os.fspath(architecture), stack)
            version = arch_version or version
        elif config is None:
            raise ModelFormatError(
                f"{source}: this is a weights-only file (written by save_weights; it holds no "
                f"model architecture). Pass the architecture too: "
                f"read_graph(weights, architecture=<model.to_json() file or full model file>)"
                f" (command line: --architecture)")
        model = parse_model(config, source)
        dialect = Dialect(keras_major(version) or _guess_major(config),
                          (contents.backend or "tensorflow").lower(), source)
        check_supported(model, dialect)
        try:
            contents.assign(model)
        except HDF5_ERRORS as exc:
            raise ModelFormatError(f"{source}: cannot read the weights ({exc}); the file is "
                                   f"probably truncated or damaged") from None
        nodes, inputs, outputs = build_nodes(model, dialect)   # reads each weight it uses
    meta = {"format": contents.format, "keras_version": version or "",
            "backend": dialect.backend, "keras_major": dialect.keras_major,
            "architecture": os.fspath(architecture) if architecture is not None else ""}
    graph = Graph(nodes, inputs, outputs, name=model.name, source=path,
                  sha256=sha256_file(path), meta=meta)
    graph.validate()
    return graph


#: What h5py raises on damaged files (wrong offsets, soft-link cycles, bad messages): libhdf5
#: errors surface as OSError, KeyError, RuntimeError or ValueError depending on where they hit.
HDF5_ERRORS = (OSError, KeyError, RuntimeError, ValueError)


def _open(path: str, source: str, stack: ExitStack) -> Contents:
    """Sniff the file type and return its contents (HDF5 files stay open on `stack`)."""
    if os.path.isdir(path):
        raise ModelFormatError(f"{source}: is a directory; a SavedModel directory is not "
                               f"supported, pass a .h5 or .keras file")
    regular_file(path, ModelFormatError)
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        raise ModelFormatError(f"{source}: cannot be read ({exc})") from None
    if not head:
        raise ModelFormatError(f"{source}: the file is empty")
    if head.startswith(_LFS_PREFIX):
        raise ModelFormatError(
            f"{source}: this is a Git LFS pointer (a small text file standing in for the real "
            f"model), not the model itself; fetch the real file with `git lfs pull`")
    if head.startswith(_HDF5_SIGNATURE):
        f = stack.enter_context(open_hdf5(path, source))
        try:
            return read_hdf5(f, source)
        except ModelFormatError:
            raise
        except HDF5_ERRORS as exc:
            raise ModelFormatError(f"{source}: the HDF5 file cannot be read ({exc}); it is "
                                   f"probably truncated or damaged") from None
    if head.startswith(b"PK"):
        return read_archive(path, source, stack)
    kind = "a text file" if _is_text(head) else "an unknown binary format"
    raise ModelFormatError(f"{source}: not a Keras model file (neither HDF5 nor a .keras zip "
                           f"archive; it is {kind}, starting {head[:24]!r})")


def _is_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c >= 32 or c in (9, 10, 13) for c in head)


def _read_architecture(arch: str, stack: ExitStack) -> tuple[dict, str | None]:
    """The model entry and Keras version of an architecture: JSON text or a full model file."""
    regular_file(arch, ModelFormatError, "the architecture file")
    try:
        with open(arch, "rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        raise ModelFormatError(f"{arch}: the architecture file cannot be read ({exc})") from None
    if head.startswith(_HDF5_SIGNATURE) or head.startswith(b"PK"):
        contents = _open(arch, arch, stack)
        if contents.config is None:
            raise ModelFormatError(f"{arch}: the architecture file is itself weights-only; pass "
                                   f"a JSON architecture or a full model file")
        return contents.config, contents.keras_version
    from .. import limits

    with open(arch, "rb") as fh:
        text = fh.read(limits.current().max_json_bytes + 1)
    what = "the architecture (neither a Keras model file nor JSON from model.to_json())"
    data: Any = load_json(text, arch, what)
    if isinstance(data, dict) and "model_config" in data and "class_name" not in data:
        data = data["model_config"]
    if isinstance(data, str):                 # JSON holding the JSON text
        data = load_json(data, arch, what)
    if not isinstance(data, dict) or "class_name" not in data:
        raise ModelFormatError(f"{arch}: the JSON is not a Keras model architecture (expected "
                               f"an object with 'class_name' and 'config')")
    version = data.get("keras_version")
    if version is not None and not isinstance(version, str):
        raise ModelFormatError(f"{arch}: keras_version {str(version)[:40]!r} is not a string")
    if keras_major(version) == 1 or (version is None and _looks_keras1(data)):
        raise refuse_keras1(arch, "this architecture")
    return data, version


def _guess_major(config: Any) -> int:
    """Keras 3 configs carry `module` keys and `{"args", "kwargs"}` inbound nodes."""
    try:
        text = json.dumps(config)
    except (TypeError, ValueError, RecursionError):
        return 2
    return 3 if ('"__keras_tensor__"' in text or '"batch_shape"' in text) else 2
