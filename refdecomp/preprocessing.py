"""Input preprocessing for models trained by others: scale, subtract, divide, channels first.

Datasets hold raw uint8 NHWC pixels. A model whose file carries its preprocessing (a
`Rescaling` layer, as every model in `weights/` does) takes them as they are; many published
models do not, and expect what their training script fed them, e.g. the Keras CIFAR ResNet
example's ``x / 255 - mean_of_training_images``. A `Preprocessing` states that once:

    pre = Preprocessing(scale=1 / 255, subtract="pixel-mean").fit(ds.x_train)
    x = pre(ds.x_test)                    # float32, what the model takes

The steps run in this order, each optional:

1. ``scale``: multiply by S;
2. ``subtract``: ``"pixel-mean"`` (the mean training image, one value per row, column and
   channel), ``"channel-mean"`` (one value per channel) or explicit per-channel values (in
   the units after scaling);
3. ``divide``: ``"channel-std"`` (per channel, the standard deviation over all training
   images and positions of the values after step 2) or explicit per-channel values;
4. ``channels_first``: NHWC -> NCHW, for models that take channels first.

Statistics come from the training split (`fit`); they are then fixed, recorded in module files
(`state` / `from_state`) and reports, and re-applied by every command that reads the modules, so
the same numbers are used whatever subset of the data a later command reads.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any

import numpy as np

from .errors import DataError, RefdecompError

__all__ = ["Preprocessing", "SUBTRACT_MODES", "DIVIDE_MODES", "parse_scale", "parse_mode"]

#: Named statistics each step can use (besides "none" and explicit values).
SUBTRACT_MODES = ("none", "pixel-mean", "channel-mean")
DIVIDE_MODES = ("none", "channel-std")

#: Images per chunk when computing statistics and applying the steps (bounded temporaries).
_CHUNK = 4096


def parse_scale(text: str | float) -> float:
    """`"0.5"`, `"1/255"` or a number -> float; `RefdecompError` naming --scale otherwise."""
    try:
        value = float(Fraction(str(text).strip())) if isinstance(text, str) else float(text)
    except (ValueError, ZeroDivisionError):
        value = float("nan")
    if not np.isfinite(value) or value == 0:
        raise RefdecompError(f"argument --scale {text!r}: expected a non-zero number or a "
                             "fraction, e.g. 1/255 or 0.00392156862745098")
    return value


def parse_mode(text: str, modes: Sequence[str], argument: str) -> str | tuple[float, ...]:
    """One of `modes`, or comma-separated numbers (``"0.49,0.48,0.45"``) -> a tuple."""
    text = str(text).strip()
    if text in modes:
        return text
    try:
        values = tuple(float(Fraction(v.strip())) for v in text.split(","))
    except (ValueError, ZeroDivisionError):
        values = ()
    if not values or not all(np.isfinite(values)):
        raise RefdecompError(f"argument {argument} {text!r}: expected one of "
                             f"{', '.join(modes)} or per-channel numbers V,V,V")
    return values


@dataclass(frozen=True, eq=False)
class Preprocessing:
    """What turns raw uint8 NHWC pixels into a model's input (see the module docstring).

    `subtract` / `divide`: a mode name or explicit per-channel values. `statistics` holds the
    fitted values of named modes ("subtract", "divide"); `fit` fills it."""

    scale: float = 1.0
    subtract: str | tuple[float, ...] = "none"
    divide: str | tuple[float, ...] = "none"
    channels_first: bool = False
    statistics: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", parse_scale(self.scale))
        for name, modes in (("subtract", SUBTRACT_MODES), ("divide", DIVIDE_MODES)):
            value = getattr(self, name)
            value = (parse_mode(value, modes, f"--{name}") if isinstance(value, str)
                     else tuple(float(v) for v in value))
            if isinstance(value, tuple) and name == "divide" and 0.0 in value:
                raise RefdecompError(f"argument --divide {value}: cannot divide by zero")
            object.__setattr__(self, name, value)
        object.__setattr__(self, "statistics", {k: np.asarray(v, dtype=np.float32)
                                                for k, v in self.statistics.items()})

    # -- what it does ---------------------------------------------------------------------
    @property
    def is_identity(self) -> bool:
        """True when the images go through unchanged (only converted to float32)."""
        return (self.scale == 1.0 and self.subtract == "none" and self.divide == "none"
                and not self.channels_first)

    @property
    def needs_fit(self) -> bool:
        """True while a named statistic has not been computed from training images yet."""
        return any(isinstance(getattr(self, k), str) and getattr(self, k) != "none"
                   and k not in self.statistics for k in ("subtract", "divide"))

    def fit(self, x_train: np.ndarray) -> Preprocessing:
        """A copy with the named statistics computed from the training images `x_train`
        (raw NHWC). Statistics already present are kept, so fitting twice changes nothing."""
        x_train = _as_images(x_train, "fit")
        if not len(x_train):
            raise DataError("preprocessing: no training images to compute statistics from")
        stats = dict(self.statistics)
        if self.subtract in ("pixel-mean", "channel-mean") and "subtract" not in stats:
            axes = (0,) if self.subtract == "pixel-mean" else (0, 1, 2)
            stats["subtract"] = (self.scale * _mean(x_train, axes)).astype(np.float32)
        if self.divide == "channel-std" and "divide" not in stats:
            partial = replace(self, divide="none", channels_first=False, statistics=stats)
            std = _channel_std(partial, x_train)
            if np.any(std == 0):
                raise DataError(f"preprocessing --divide channel-std: channels "
                                f"{np.flatnonzero(std == 0).tolist()} are constant in the "
                                "training images (standard deviation 0)")
            stats["divide"] = std
        return replace(self, statistics=stats)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """float32 model input from raw NHWC images (NCHW when `channels_first`)."""
        x = _as_images(x, "apply")
        sub, div = self._values("subtract", x.shape), self._values("divide", x.shape)
        if self.is_identity:
            return np.asarray(x, dtype=np.float32)
        out = np.empty(x.shape, dtype=np.float32)
        for start in range(0, len(x), _CHUNK):
            chunk = np.multiply(x[start:start + _CHUNK], np.float32(self.scale),
                                dtype=np.float32)
            if sub is not None:
                chunk -= sub
            if div is not None:
                chunk /= div
            out[start:start + _CHUNK] = chunk
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2)) if self.channels_first else out

    def _values(self, step: str, shape: tuple[int, ...]) -> np.ndarray | None:
        mode = getattr(self, step)
        if mode == "none":
            return None
        if isinstance(mode, str):
            if step not in self.statistics:
                raise DataError(f"preprocessing --{step} {mode}: the statistics have not been "
                                "computed; call .fit(x_train) first")
            values = self.statistics[step]
        else:
            values = np.asarray(mode, dtype=np.float32)
        channels = shape[-1]
        if values.ndim == 1 and values.size == 1:
            return values
        if values.ndim == 1 and values.size != channels:
            raise DataError(f"preprocessing --{step}: {values.size} values for images with "
                            f"{channels} channels; give one value or {channels}")
        if values.ndim == 3 and values.shape != tuple(shape[1:]):
            raise DataError(f"preprocessing --{step} {mode}: the statistics are for images "
                            f"{values.shape}, these images are {tuple(shape[1:])}")
        return values

    # -- records --------------------------------------------------------------------------
    def describe(self) -> str:
        """One line saying what is applied, e.g. ``x * 0.00392157 - pixel mean (32x32x3)``."""
        if self.is_identity:
            return "none (raw pixel values 0..255 as float32)"
        steps = [f"x * {self.scale:.9g}" if self.scale != 1.0 else "x"]
        for step, word in (("subtract", "-"), ("divide", "/")):
            mode = getattr(self, step)
            if mode == "none":
                continue
            if isinstance(mode, str):
                stat = self.statistics.get(step)
                if stat is not None and stat.ndim == 1:
                    what = f"{mode} {_fmt(stat)}"
                elif stat is not None:
                    what = f"{mode} ({'x'.join(map(str, stat.shape))}, training split)"
                else:
                    what = f"{mode} (not fitted)"
            else:
                what = _fmt(mode)
            steps.append(f"{word} {what}")
        text = " ".join(steps)
        return text + ", then channels first (NCHW)" if self.channels_first else text

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary for reports: the options and every per-channel statistic (a
        pixel mean is summarised by its shape and mean; the module file keeps it whole)."""
        out: dict[str, Any] = {"scale": self.scale, "subtract": _json_mode(self.subtract),
                               "divide": _json_mode(self.divide),
                               "channels_first": self.channels_first,
                               "description": self.describe()}
        for step, stat in self.statistics.items():
            out[f"{step}_values"] = (stat.tolist() if stat.ndim <= 1 else
                                     {"shape": list(stat.shape), "mean": float(stat.mean())})
        return out

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(options as JSON-ready dict, fitted statistics) for module files: the options go
        into a JSON attribute, the statistics (a pixel mean can be large) into datasets."""
        spec = {"scale": self.scale, "subtract": _json_mode(self.subtract),
                "divide": _json_mode(self.divide), "channels_first": self.channels_first}
        return spec, dict(self.statistics)

    @classmethod
    def from_state(cls, spec: dict[str, Any], statistics: dict[str, np.ndarray] | None = None,
                   ) -> Preprocessing:
        """Inverse of `state` (what a module file recorded); unknown keys are an error."""
        known = {"scale", "subtract", "divide", "channels_first"}
        if not isinstance(spec, dict) or set(spec) - known:
            raise DataError(f"preprocessing record {spec!r}: expected the keys {sorted(known)}")
        args = {k: (tuple(v) if isinstance(v, list) else v) for k, v in spec.items()}
        return cls(**args, statistics=dict(statistics or {}))

    def __repr__(self) -> str:
        return f"Preprocessing({self.describe()})"


# -- helpers --------------------------------------------------------------------------------
def _as_images(x, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 4:
        raise DataError(f"preprocessing ({what}): expected images of shape (N, H, W, C), got "
                        f"shape {x.shape}")
    return x


def _mean(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Mean of raw images over `axes`, accumulated in float64 chunk by chunk."""
    total = None
    for start in range(0, len(x), _CHUNK):
        part = x[start:start + _CHUNK].sum(axis=axes, dtype=np.float64)
        total = part if total is None else total + part
    count = len(x) * (1 if axes == (0,) else x.shape[1] * x.shape[2])
    return total / count


def _channel_std(partial: Preprocessing, x: np.ndarray) -> np.ndarray:
    """Per-channel standard deviation of `partial(x)` (two passes, float64 sums)."""
    n = len(x) * x.shape[1] * x.shape[2]
    total = np.zeros(x.shape[-1])
    for start in range(0, len(x), _CHUNK):
        total += partial(x[start:start + _CHUNK]).sum(axis=(0, 1, 2), dtype=np.float64)
    mean = total / n
    sq = np.zeros(x.shape[-1])
    for start in range(0, len(x), _CHUNK):
        d = partial(x[start:start + _CHUNK]).astype(np.float64) - mean
        sq += np.einsum("nhwc,nhwc->c", d, d)
    return np.sqrt(sq / n).astype(np.float32)


def _json_mode(mode):
    return list(mode) if isinstance(mode, tuple) else mode


def _fmt(values) -> str:
    return "[" + ", ".join(f"{float(v):.6g}" for v in np.asarray(values).reshape(-1)) + "]"
