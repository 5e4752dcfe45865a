"""Numba kernels for the interpreter's hot ops (convolution, pooling, dense, add) with masking
and per-group recording fused into the same pass, plus the sliding-window index maps."""
from __future__ import annotations

from pathlib import Path

#: written into the kernels' Numba cache folder: the package name the caches were compiled under
CACHE_STAMP = "refdecomp-package.txt"


def drop_caches_of_other_package(cache_dir: Path, package: str) -> bool:
    """Delete Numba cache files in `cache_dir` compiled while this folder was imported under
    another package name, once. Numba names cache files after the source file only, so a
    checkout that used to import these files as a top-level `kernels` would load code that
    refers to that old name and fails. True when files were dropped; never raises (a
    read-only install simply keeps its caches)."""
    stamp = cache_dir / CACHE_STAMP
    try:
        if stamp.read_text() == package:
            return False
    except OSError:
        pass                                    # no stamp yet: caches of unknown origin
    try:
        stale = list(cache_dir.glob("*.nb[ic]"))
        for f in stale:
            f.unlink(missing_ok=True)
        stamp.write_text(package)
        return bool(stale)
    except OSError:
        return False


drop_caches_of_other_package(Path(__file__).with_name("__pycache__"), __name__)
