"""File helpers shared by every writer: atomic replacement and content hashes.

Nothing refdecomp writes is ever half-written: each writer fills a temporary file in the target's
folder, flushes it to the disk (`fsync`) and renames it over the target only once it is
complete, then flushes the folder, so even a power loss leaves the old or the new file whole.
Every file refdecomp reads is first checked to be a regular file (`regular_file`): a FIFO or a
device would block or never end.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .errors import OutputError, RefdecompError


def regular_file(path: str | os.PathLike, error: type[RefdecompError], what: str = "") -> Path:
    """`path` if it names a regular file (links followed); else `error` naming it. Checked
    before opening, since opening a FIFO blocks until a writer appears."""
    p = Path(path)
    label = f"{what} {str(p)!r}" if what else str(p)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise error(f"{label}: no such file") from None
    except OSError as exc:
        raise error(f"{label}: cannot be read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{label}: is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{label}: is not a regular file (a FIFO, socket or device); refdecomp "
                    f"reads only regular files")
    return p


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success flush it to disk and rename it to
    `path`, else delete it. Failures name `path` (never the temporary file)."""
    target = Path(path)
    if target.is_dir():
        raise OutputError(f"cannot write {str(target)!r}: it is a directory; give a file name")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or ".tmp",
                                   dir=target.parent)
    except OSError as exc:
        raise OutputError(f"cannot write {str(target)!r}: {exc.strerror or exc}") from None
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
    try:
        yield tmp_path
        try:
            _fsync(tmp_path)
            os.replace(tmp_path, target)
            _fsync_dir(target.parent)
        except OSError as exc:
            raise OutputError(f"cannot write {str(target)!r}: {exc.strerror or exc}") from None
    except OSError as exc:
        if exc.filename is None or os.fspath(exc.filename) != str(tmp_path):
            raise        # not about the file being written (e.g. a failed download)
        raise OutputError(f"cannot write {str(target)!r}: {exc.strerror or exc}") from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _fsync(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX; folders cannot be opened on Windows)."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, sort_keys: bool = False) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=sort_keys, default=_jsonable)
    return write_text(path, text + "\n")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def file_digest(path: str | os.PathLike, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file's bytes, read in chunks (md5 only to check published checksums)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    return file_digest(path, "sha256")
