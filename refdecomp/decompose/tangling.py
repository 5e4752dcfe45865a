"""Tangling Identification (paper Section 3.3): how many inputs of each unconcerned class a
module observes besides its own class.

The paper adds concerned and unconcerned inputs at a 1:1 ratio: a module whose class has E
inputs observes floor(E / (N - 1)) inputs of each of the other N - 1 classes.
"""
from __future__ import annotations

import numpy as np

from ..errors import RefdecompError

#: Accepted values of the `tangling` option besides a non-negative int.
TANGLING_RULES = ("balanced", "none")


def tangling_counts(class_counts: np.ndarray, tangling: str | int = "balanced") -> np.ndarray:
    """Number K_m of inputs of *each* unconcerned class the module of class m observes.

    `class_counts[m]` is E_m, the number of inputs of class m available. `tangling`:
    "balanced" (paper: K_m = floor(E_m / (N - 1))), "none" (Concern Identification only,
    K_m = 0), or an int (the same fixed K for every module).
    """
    counts = np.asarray(class_counts, dtype=np.int64)
    n = counts.size
    if isinstance(tangling, (bool, np.bool_)):
        raise RefdecompError(f"argument tangling={tangling!r}: expected "
                             f"'balanced', 'none' or a non-negative int")
    if isinstance(tangling, (int, np.integer)):
        if tangling < 0:
            raise RefdecompError(f"argument tangling={tangling}: must be >= 0")
        return np.full(n, int(tangling), dtype=np.int64)
    if tangling == "none":
        return np.zeros(n, dtype=np.int64)
    if tangling == "balanced":
        if n < 2:
            return np.zeros(n, dtype=np.int64)
        return counts // (n - 1)
    raise RefdecompError(f"argument tangling={tangling!r}: expected one of {TANGLING_RULES} "
                         f"or a non-negative int")
