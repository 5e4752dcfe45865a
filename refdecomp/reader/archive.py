"""`.keras` zip archives (Keras 3, and tf.keras 2.13+): `config.json`, `metadata.json` and
`model.weights.h5` (weights in the Keras 3 layout, see `weights.py`).

Members are never extracted to a path. Each member's declared uncompressed size is checked
against `refdecomp.limits` before it is read (zipfile stops at the declared size, so a lying
header cannot deliver more); `model.weights.h5` is streamed into an anonymous temporary file
rather than memory. An archive listing a member twice is refused: which copy a reader takes is
not defined, so a check of one copy would prove nothing about the other.
"""
from __future__ import annotations

import shutil
import tempfile
import zipfile
import zlib
from contextlib import ExitStack

from .. import limits
from ..errors import ModelFormatError
from .config import load_json
from .hdf5 import Contents
from .weights import assign_v3

_ZIP_ERRORS = (zipfile.BadZipFile, EOFError, OSError, zipfile.LargeZipFile, RuntimeError,
               NotImplementedError, ValueError, zlib.error)


def read_archive(path: str, source: str, stack: ExitStack) -> Contents:
    try:
        z = stack.enter_context(zipfile.ZipFile(path))
        infos = {}
        for info in z.infolist():
            if info.filename in infos:
                raise ModelFormatError(f"{source}: the archive holds two members named "
                                       f"{info.filename!r}; refusing an ambiguous archive")
            infos[info.filename] = info
        if "config.json" not in infos:
            raise ModelFormatError(f"{source}: this zip file has no config.json, so it is not "
                                   f"a .keras model archive (members: "
                                   f"{', '.join(sorted(infos)[:6])})")
        budget = limits.Budget(source)
        for info in infos.values():
            budget.take(info.file_size, f"archive member {info.filename!r}")
        config = load_json(_read_small(z, infos["config.json"], source), source,
                           "config.json")
        meta = load_json(_read_small(z, infos["metadata.json"], source), source,
                         "metadata.json") if "metadata.json" in infos else {}
        if not isinstance(meta, dict):
            raise ModelFormatError(f"{source}: metadata.json is not a JSON object")
        if "model.weights.h5" not in infos:
            raise ModelFormatError(f"{source}: the archive has no model.weights.h5 (members: "
                                   f"{', '.join(sorted(infos))}); refdecomp reads archives "
                                   f"with HDF5 weights")
        weights = stack.enter_context(tempfile.TemporaryFile(prefix="refdecomp-"))  # noqa: SIM115
        with z.open(infos["model.weights.h5"]) as member:
            shutil.copyfileobj(member, weights, 1 << 20)
        weights.seek(0)
    except ModelFormatError:
        raise
    except _ZIP_ERRORS as exc:
        raise ModelFormatError(f"{source}: the .keras archive cannot be read ({exc}); it is "
                               f"truncated, damaged, encrypted or uses a compression refdecomp "
                               f"cannot read") from None
    version = meta.get("keras_version")
    if version is not None and not isinstance(version, str):
        raise ModelFormatError(f"{source}: metadata.json's keras_version "
                               f"{str(version)[:40]!r} is not a string")

    def assign(model) -> None:
        import h5py

        try:
            f = stack.enter_context(h5py.File(weights, "r"))
        except (OSError, RuntimeError, ValueError) as exc:
            raise ModelFormatError(f"{source}: model.weights.h5 inside the archive cannot be "
                                   f"opened ({exc}); the archive is damaged") from None
        assign_v3(model, f, source)

    return Contents(config, version, None, "keras", assign)


def _read_small(z: zipfile.ZipFile, info: zipfile.ZipInfo, source: str) -> bytes:
    """A JSON member, refused above `max_json_bytes` before it is decompressed."""
    limits.check_bytes(info.file_size, source, f"archive member {info.filename!r}",
                       "max_json_bytes")
    return z.read(info)
