"""Progress bars for long work: tqdm when it is installed (the `cli` extra), silent otherwise."""
from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], *, total: int | None = None, desc: str = "",
             enabled: bool = True, unit: str = "it") -> Iterator[T]:
    """Wrap `items` in a progress bar on stderr when `enabled` and stderr is a terminal-like
    stream; returns the items unchanged otherwise."""
    if not enabled:
        return iter(items)
    try:
        from tqdm.auto import tqdm
    except ImportError:  # optional dependency
        return iter(items)
    return iter(tqdm(items, total=total, desc=desc, unit=unit, file=sys.stderr, leave=False,
                     dynamic_ncols=True))
