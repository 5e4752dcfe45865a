"""The fused epilogue of conv2d and dense: bias, per-group recording of "value > 0", the
activation and the mask, in one parallel pass over the layer's linear output.

The output is a 2-D array (rows = image * positions + position, columns = channels). Masks and
bit maps are flat per image; their element for (position p, channel c) is at p * sp + c * sc,
so channels_first layouts are addressed without copies.
"""
from __future__ import annotations

import math
import threading

import numpy as np
from numba import njit

# The codes of `apply_activation` are those of refdecomp.activations.ACTIVATIONS (its
# `activation_code` maps an activation dict to (code, p0, p1, p2)); a test checks every row.
from ..activations import SELU_ALPHA, SELU_SCALE


@njit(inline="always")
def _sigmoid(v):
    if v >= 0:
        return 1.0 / (1.0 + math.exp(-v))
    e = math.exp(v)
    return e / (1.0 + e)


@njit(inline="always")
def _softplus(v):
    return max(v, 0.0) + math.log1p(math.exp(-abs(v)))


@njit(inline="always")
def is_plain_relu(code, p0, p1, p2):
    """max(v, 0): relu without max value, slope or threshold (gets its own vector loop)."""
    return code == 1 and p0 == math.inf and p1 == 0.0 and p2 == 0.0


@njit(inline="always")
def relu_cap(code, p0, p1, p2):
    """The cap c of an activation that is min(max(v, 0), c): relu with a max value and
    neither slope nor threshold, or relu6 (MobileNets); -1 for any other. Such activations
    get their own vector loop (a branch per value costs a misprediction on mixed signs)."""
    if code == 13:
        return np.float32(6.0)
    if code == 1 and p0 != math.inf and p1 == 0.0 and p2 == 0.0:
        return np.float32(p0)
    return np.float32(-1.0)


@njit(inline="always")
def apply_activation(v, code, p0, p1, p2):
    """Scalar activation of kernel code `code` (Keras formulas, see refdecomp.activations)."""
    if code == 0:
        return v
    if code == 1:
        if p2 != 0.0:
            y = v if v > p2 else 0.0
        else:
            y = v if v > 0.0 else 0.0
        if p0 != math.inf:
            y = min(max(y, 0.0), p0)
        if p1 != 0.0:
            if p0 == math.inf and p2 == 0.0:
                return v if v >= 0.0 else p1 * v
            y -= p1 * max(p2 - v, 0.0)
        return y
    if code == 2:
        return v if v >= 0.0 else p1 * v
    if code == 3:
        return v if v > 0.0 else p0 * math.expm1(v)
    if code == 4:
        return SELU_SCALE * (v if v > 0.0 else SELU_ALPHA * math.expm1(v))
    if code == 5:
        return _sigmoid(v)
    if code == 6:
        return min(max(0.2 * v + 0.5, 0.0), 1.0)
    if code == 7:
        return min(max(v / 6.0 + 0.5, 0.0), 1.0)
    if code == 8:
        return math.tanh(v)
    if code == 9:
        return _softplus(v)
    if code == 10:
        return v / (1.0 + abs(v))
    if code == 11:
        return math.exp(v)
    if code == 12:
        return v * _sigmoid(v)
    if code == 13:
        return min(max(v, 0.0), 6.0)
    if code == 14:
        return 0.5 * v * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v ** 3)))
    if code == 15:
        return 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0)))
    if code == 16:
        return v * math.tanh(_softplus(v))
    if code == 17:
        return v * min(max(v / 6.0 + 0.5, 0.0), 1.0)
    return v


#: floats per block of the flat epilogue: a multiple of the channel count, at least this long so
#: that the inner loops are long enough to vectorise, short enough to stay in L1 between passes.
FLAT_BLOCK = 512


class PerThreadRecord:
    """Recording state of one node: (n_groups, node size), one copy per recording thread,
    combined when read (`total`): uint8 bit maps are OR-ed, uint32 image counters summed.
    Each thread only ever writes its own copy, so the epilogue can update bits with plain
    vector read-modify-write stores (AVX2 has no byte-masked store) and counters without
    atomics, and the result does not depend on thread timing. Memory: 1 byte (bits) or 4
    bytes (counts) per node, group and recording thread, independent of the number of images."""

    def __init__(self, n_groups: int, size: int, counting: bool = False):
        self.shape = (int(n_groups), int(size))
        self.counting = bool(counting)
        self.dtype = np.uint32 if self.counting else np.uint8
        self._copies: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def local(self) -> np.ndarray:
        """This thread's copy (created at its first use)."""
        key = threading.get_ident()
        arr = self._copies.get(key)
        if arr is None:
            with self._lock:
                arr = self._copies.setdefault(key, np.zeros(self.shape, self.dtype))
        return arr

    def total(self) -> np.ndarray:
        """The copies combined, (n_groups, size): counts summed, bits OR-ed."""
        out = np.zeros(self.shape, self.dtype)
        for arr in list(self._copies.values()):
            if self.counting:
                out += arr
            else:
                out |= arr
        return out

    def reset(self) -> None:
        with self._lock:
            self._copies.clear()


def recording_target(seen):
    """What the epilogue writes into: this thread's copy of a `PerThreadRecord`, or an array
    as it is (callers that record from one thread only)."""
    return seen.local() if isinstance(seen, PerThreadRecord) else seen


@njit(nogil=True, cache=True)
def epilogue(y, bias, code, p0, p1, p2, positions, mask, msp, msc, seen, ssp, ssc, groups):
    """In place on y (rows, C): y = act(y + bias) * mask, and, where y + bias > 0,
    seen[group, p*ssp + c*ssc] = 1 (a uint8 bit map) or += 1 (uint32 counters of images).
    `positions` = rows per image; empty `mask` / `seen` disable them; `groups[i]` is the group
    of the chunk's i-th image. Serial and GIL-free: callers run chunks on several threads, each
    recording into its own copy (`PerThreadRecord`), so no two threads write one array."""
    C = y.shape[1]
    if (seen.shape[0] == 0 or (ssc == 1 and ssp == C)) and \
            (mask.shape[0] == 0 or (msc == 1 and msp == C)):
        _epilogue_flat(y, bias, code, p0, p1, p2, positions, mask, seen, groups)
    else:
        _epilogue_rows(y, bias, code, p0, p1, p2, positions, mask, msp, msc, seen, ssp, ssc,
                       groups)


@njit(nogil=True, cache=True)
def _epilogue_flat(y, bias, code, p0, p1, p2, positions, mask, seen, groups):
    """The epilogue when mask and bit maps are laid out like an image of y (channels last):
    each image is one flat run of positions * C floats, processed in blocks of a multiple of C
    with simple passes (bias, record, activate, mask) that vectorise."""
    rows, C = y.shape
    has_mask = mask.shape[0] > 0
    has_seen = seen.shape[0] > 0
    counting = seen.itemsize > 1                 # uint32 counters, else uint8 bits
    plain_relu = is_plain_relu(code, p0, p1, p2)
    cap = relu_cap(code, p0, p1, p2)
    T = C * max(1, FLAT_BLOCK // C)
    bt = np.empty(T, np.float32)                 # bias tiled over a block
    for k in range(T):
        bt[k] = bias[k % C]
    L = positions * C
    yf = y.reshape(-1)
    for i in range(rows // positions):
        img = yf[i * L:(i + 1) * L]
        s = seen[groups[i]] if has_seen else seen.reshape(-1)
        for e0 in range(0, L, T):
            v = img[e0:min(e0 + T, L)]
            n = v.shape[0]
            for k in range(n):
                v[k] += bt[k]
            if has_seen:
                sv = s[e0:e0 + n]
                if counting:
                    for k in range(n):
                        sv[k] += v[k] > np.float32(0.0)
                else:
                    # First look, with loads only, for a positive value whose bit is still 0:
                    # once a group's bits fill up, most blocks store nothing. Then OR the
                    # block in with full-width stores (this thread's own copy: no races).
                    fresh = False
                    for k in range(n):
                        fresh |= (v[k] > np.float32(0.0)) & (sv[k] == 0)
                    if fresh:
                        for k in range(n):
                            sv[k] |= np.uint8(v[k] > np.float32(0.0))
            if plain_relu:
                for k in range(n):
                    v[k] = max(v[k], np.float32(0.0))
            elif cap >= 0:
                for k in range(n):
                    v[k] = min(max(v[k], np.float32(0.0)), cap)
            elif code != 0:
                for k in range(n):
                    v[k] = apply_activation(v[k], code, p0, p1, p2)
            if has_mask:
                mv = mask[e0:e0 + n]
                for k in range(n):
                    if mv[k] == 0:
                        v[k] = 0.0


@njit(nogil=True, cache=True)
def _epilogue_rows(y, bias, code, p0, p1, p2, positions, mask, msp, msc, seen, ssp, ssc, groups):
    """The epilogue for any mask / bit map layout (channels first: strided addressing)."""
    rows, C = y.shape
    has_mask = mask.shape[0] > 0
    has_seen = seen.shape[0] > 0
    counting = seen.itemsize > 1
    plain_relu = is_plain_relu(code, p0, p1, p2)
    cap = relu_cap(code, p0, p1, p2)
    for r in range(rows):
        p = r % positions
        if has_seen:
            g = groups[r // positions]
            base = p * ssp
            for c in range(C):
                if y[r, c] + bias[c] > 0:
                    if counting:
                        seen[g, base + c * ssc] += 1
                    else:
                        seen[g, base + c * ssc] = 1
        if plain_relu:
            for c in range(C):
                y[r, c] = max(y[r, c] + bias[c], np.float32(0.0))
        elif cap >= 0:
            for c in range(C):
                y[r, c] = min(max(y[r, c] + bias[c], np.float32(0.0)), cap)
        elif code == 0:
            for c in range(C):
                y[r, c] += bias[c]
        else:
            for c in range(C):
                y[r, c] = apply_activation(y[r, c] + bias[c], code, p0, p1, p2)
        if has_mask:
            for c in range(C):
                if mask[p * msp + c * msc] == 0:
                    y[r, c] = 0.0
