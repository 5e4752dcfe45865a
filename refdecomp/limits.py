"""Size limits on what a file may make refdecomp allocate or read.

Every size a file declares (an array's shape, an archive member's uncompressed size, a
dataset's image count, a module file's mask shape) is checked against these limits *before*
anything is allocated or read, so a small hostile file cannot make refdecomp allocate gigabytes.

- `max_tensor_bytes` (default 4 GiB): one array: a weight, one image's activation tensor of a
  layer, a mask, a dataset array, an archive member;
- `max_file_bytes` (default 16 GiB): everything one file may expand to (the sum of its arrays,
  or of an archive's members);
- `max_json_bytes` (default 64 MiB) and `max_json_depth` (default 100): a model config or any
  other JSON text refdecomp reads;
- `max_classes` (default 100,000): the number of classes a dataset's labels may imply.

Override them with environment variables (`REFDECOMP_MAX_TENSOR_BYTES`,
`REFDECOMP_MAX_FILE_BYTES`, `REFDECOMP_MAX_JSON_BYTES`, `REFDECOMP_MAX_JSON_DEPTH`,
`REFDECOMP_MAX_CLASSES`; plain integers, or with a K/M/G/T suffix for powers of 1024; read
when first needed, again after `refresh()`) or, in Python, with
`with refdecomp.limits.override(max_tensor_bytes=...)`.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace

from .errors import LimitError, RefdecompError

_GIB = 1 << 30


@dataclass(frozen=True)
class Limits:
    max_tensor_bytes: int = 4 * _GIB
    max_file_bytes: int = 16 * _GIB
    max_json_bytes: int = 64 << 20
    max_json_depth: int = 100
    max_classes: int = 100_000


_overrides: list[Limits] = []
_from_environment: Limits | None = None
_SUFFIX = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _parse(name: str, text: str) -> int:
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = _SUFFIX.get(t[-1:], 1)
    try:
        value = int(t[:-1] if scale != 1 else t) * scale
    except ValueError:
        value = -1
    if value < 1:
        raise RefdecompError(f"environment variable {name}={text!r}: expected a positive "
                             f"integer, optionally with a K, M, G or T suffix")
    return value


def current() -> Limits:
    """The limits in force: the innermost `override`, else the environment, else defaults."""
    global _from_environment
    if _overrides:
        return _overrides[-1]
    if _from_environment is None:
        changes = {}
        for f in fields(Limits):
            name = f"REFDECOMP_{f.name.upper()}"
            if os.environ.get(name):
                changes[f.name] = _parse(name, os.environ[name])
        _from_environment = replace(Limits(), **changes)
    return _from_environment


def refresh() -> Limits:
    """Read the environment variables again (after changing them in this process)."""
    global _from_environment
    _from_environment = None
    return current()


@contextlib.contextmanager
def override(**changes: int) -> Iterator[Limits]:
    """Use other limits inside a `with` block (e.g. `override(max_tensor_bytes=8 << 30)`)."""
    limits = replace(current(), **changes)
    _overrides.append(limits)
    try:
        yield limits
    finally:
        _overrides.remove(limits)


def _size(n: int) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def check_bytes(nbytes: int, where: str, what: str, limit: str = "max_tensor_bytes") -> int:
    """Refuse `nbytes` (Python int: never wraps) above the named limit; `where` names the
    file, `what` the tensor or member."""
    cap = getattr(current(), limit)
    if nbytes > cap:
        env = f"REFDECOMP_{limit.upper()}"
        raise LimitError(f"{where}: {what} would need {_size(nbytes)}, above the limit "
                         f"{limit} = {_size(cap)}; if the file is trusted, raise the limit "
                         f"(environment variable {env}, or refdecomp.limits.override)")
    return nbytes


def elements(shape, where: str, what: str, itemsize: int = 4,
             limit: str = "max_tensor_bytes") -> int:
    """Number of elements of `shape` (exact integer arithmetic), refused when `itemsize` times
    it exceeds the limit or a dimension is negative."""
    n = 1
    for d in shape:
        d = int(d)
        if d < 0:
            raise LimitError(f"{where}: {what} has a negative dimension in shape {tuple(shape)}")
        n *= d
    check_bytes(n * itemsize, where, f"{what} of shape {tuple(shape)}", limit)
    return n


class Budget:
    """Running total of what one file has expanded to, against `max_file_bytes`."""

    def __init__(self, where: str):
        self.where = where
        self.used = 0

    def take(self, nbytes: int, what: str) -> None:
        check_bytes(nbytes, self.where, what)
        self.used += int(nbytes)
        check_bytes(self.used, self.where, f"the file's contents so far (with {what})",
                    "max_file_bytes")
