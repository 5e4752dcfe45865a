"""Modules and module sets: what `refdecomp.decompose` returns, and their files.

A `Module` of class c is the source model with (a) its conv2d / dense nodes masked (mask 0 forces
the node's output to 0 after its activation) and (b) the head channeled to two outputs
[concerned, unconcerned]. A `ModuleSet` holds one module per class over one shared model and
composes them: the predicted class is the one whose module is most confident that the input is
its own.

Module files (HDF5, written atomically) hold the channeled heads, the bit-packed masks
(`np.packbits`) and provenance; they refer to the source model file rather than copying it: the
model is shared by all modules, and a fingerprint of its execution graph (names, ops, shapes and
weight bytes) checks on loading that the same model is used.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import operator
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import metrics
from ._version import __version__
from .compact import compact_fractions, compact_module, graph_macs
from .decompose.channeling import (
    CHANNELINGS,
    channeled_graph,
    check_channeling,
    find_head,
    head_logits,
)
from .decompose.recording import check_labels
from .errors import DataError, ModuleFileError, RefdecompError
from .export import export_keras
from .fileio import atomic_path, regular_file, sha256_file
from .graph import Graph
from .interpreter import Model
from .loading import load_model
from .preprocessing import Preprocessing
from .reader import HDF5_ERRORS
from .reader.weights import text as attribute_text

FORMAT = "refdecomp-modules"
#: 2: a module's `channeling` ("mean" | "logsumexp"; a "logsumexp" head is N wide).
#: Version 1 files (no channeling attribute, "mean" heads) still load.
FORMAT_VERSION = 2


class Module:
    """The module of one class: masks on the shared model plus a channeled head.

    `channeling` is "mean" (the paper's rule; `head_kernel` (in, 2)) or "logsumexp"
    (`head_kernel` the model's full (in, N) head; see `refdecomp.decompose.channeling`).
    """

    def __init__(self, model, class_index: int, head_kernel: np.ndarray, head_bias: np.ndarray,
                 masks: Mapping[str, np.ndarray], *, class_name: str | None = None,
                 info: dict[str, Any] | None = None,
                 active: Mapping[str, np.ndarray] | None = None, channeling: str = "mean"):
        check_channeling(channeling)
        self.source_model = model
        self.class_index = int(class_index)
        self.class_name = class_name
        self.channeling = channeling
        self.head_kernel = np.asarray(head_kernel, dtype=np.float32)
        self.head_bias = np.asarray(head_bias, dtype=np.float32)
        self.masks = {k: np.asarray(v, dtype=np.uint8) for k, v in masks.items()}
        # Observed activity (concern + tangling identification, before backtracking): what an
        # update (Section 3.5) adds to before re-deriving the masks. Defaults to the masks.
        self.active = ({k: np.asarray(v, dtype=np.uint8) for k, v in active.items()}
                       if active is not None else dict(self.masks))
        self.info = dict(info or {})
        # What turns raw images into this module's input (`refdecomp.preprocessing`); set by
        # the module set it belongs to. `predict` takes model input, as the model does.
        self.preprocessing = None
        self._head, self._tail = find_head(model.graph)
        width = 2 if channeling == "mean" else self._head.weights["kernel"].shape[1]
        if self.head_kernel.shape != (self._head.weights["kernel"].shape[0], width) or \
                self.head_bias.shape != (width,):
            raise ModuleFileError(
                f"module of class {self.class_index}: head kernel {self.head_kernel.shape} / "
                f"bias {self.head_bias.shape} do not fit the model's head "
                f"{self._head.name!r} with {channeling!r} channeling "
                f"(expected ({self._head.weights['kernel'].shape[0]}, {width}) / ({width},))")
        self._graph: Graph | None = None
        self._model = None
        self._compact = None

    def __repr__(self) -> str:
        name = f" {self.class_name!r}" if self.class_name else ""
        return f"<Module class {self.class_index}{name}: {len(self.masks)} masked layers>"

    @property
    def head_name(self) -> str:
        return self._head.name

    @property
    def head_input(self) -> str:
        """Name of the execution-graph node whose output the head reads (the features)."""
        return self._head.inputs[0]

    @property
    def graph(self) -> Graph:
        """The model's execution graph with this module's channeled head."""
        if self._graph is None:
            self._graph = channeled_graph(self.source_model.graph, self._head, self._tail,
                                          self.head_kernel, self.head_bias, self.channeling,
                                          self.class_index)
        return self._graph

    @property
    def model(self):
        """An executable model of this module's graph (apply `self.masks` when running)."""
        if self._model is None:
            self._model = self.source_model.with_graph(self.graph)
        return self._model

    def features(self, x, batch_size: int = 256, progress: bool = False) -> np.ndarray:
        """(n, ...) float32 values of the head's input (`head_input`) with this module's masks.
        Computed by the compact module when it is smaller than the model (the same values,
        to float32 rounding), so composition and reuse run the compact modules."""
        if self.runs_compact():
            return self.compact().features(x, batch_size, progress)
        return self.source_model.run(x, batch_size, masks=self.masks,
                                     outputs=[self.head_input], progress=progress)[0]

    def head_logits(self, features: np.ndarray) -> np.ndarray:
        """(n, 2) float32 logits [concerned, unconcerned] of the channeled head on `features`."""
        return head_logits(features, self.head_kernel, self.head_bias, self.class_index,
                           self.channeling)

    def logits(self, x, batch_size: int = 256, progress: bool = False) -> np.ndarray:
        """(n, 2) float32 logits [concerned, unconcerned] for images `x`."""
        return self.head_logits(self.features(x, batch_size, progress))

    def decision_function(self, x, batch_size: int = 256, progress: bool = False) -> np.ndarray:
        """(n,) float32 margins: concerned logit - unconcerned logit (> 0: "concerned").

        Orders images exactly as P(concerned) does, without the float32 saturation of the
        probability (which is exactly 1.0 for margins above about 17)."""
        return metrics.margins(self.logits(x, batch_size, progress))

    def predict(self, x, batch_size: int = 256, progress: bool = False) -> np.ndarray:
        """(n, 2) probabilities [concerned, unconcerned] for images `x` (softmax of `logits`)."""
        return metrics.softmax_rows(self.logits(x, batch_size, progress))

    def compact(self):
        """A `refdecomp.compact.CompactModule`: this module with the filters / units it removed
        entirely physically dropped (and the next layers' input channels sliced); its
        `predict` equals this module's."""
        if self._compact is None or self._compact[0] is not self.masks:  # masks reassigned

            self._compact = (self.masks, compact_module(self))
        return self._compact[1]

    def runs_compact(self) -> bool:
        """Whether `features` (and so `predict`, `decision_function`, composition) runs the
        compact module: it drops some multiply-accumulates."""
        return self.compact().macs() < graph_macs(self.graph)

    def size(self) -> dict[str, float]:
        """Nodes and weights kept (see `refdecomp.metrics` for the definitions), and the
        compact module's `flops_fraction` and `params_fraction` of the model."""
        return {**metrics.module_size(self.graph, self.masks, frozenset({self.head_name})),
                **compact_fractions(self, self.compact())}

    def jaccard(self) -> dict[str, float]:
        """Jaccard index with the source model: "values" (the prior work's value-based formula)
        and "set" (exact set Jaccard over kept weights)."""
        ex = frozenset({self.head_name})
        values = metrics.jaccard_values(metrics.effective_kernels(self.graph, self.masks, ex),
                                        metrics.model_kernels(self.source_model.graph))
        return {"values": values, "set": metrics.jaccard_set(self.graph, self.masks, ex)}

    def export_keras(self, path, compact: bool = False):
        """Write this module as a Keras file (see `refdecomp.export.export_keras`)."""
        return export_keras(self.graph, path, masks=self.masks, compact=compact)

    def save(self, path) -> Path:
        """Write a module file holding this module alone."""
        return ModuleSet([self], self.source_model, preprocessing=self.preprocessing).save(path)


class ModuleSet:
    """Modules over one shared model, indexed by class: `ms[c]` is the module of class c."""

    def __init__(self, modules: Sequence[Module], model, *, options: dict | None = None,
                 data: dict | None = None, class_names: list[str] | None = None,
                 preprocessing=None):
        self.modules = list(modules)
        self.model = model
        self.options = dict(options or {})
        self.data = dict(data or {})
        self.class_names = class_names
        self._by_class = {m.class_index: m for m in self.modules}
        if len(self._by_class) != len(self.modules):
            raise RefdecompError("ModuleSet: two modules of the same class")
        self.preprocessing = preprocessing

    @property
    def preprocessing(self):
        """The `refdecomp.preprocessing.Preprocessing` the modules' inputs were made with
        (None: raw pixel values as float32). Saved in the module file; setting it sets it on
        every module."""
        return self._preprocessing

    @preprocessing.setter
    def preprocessing(self, value) -> None:
        self._preprocessing = value
        for m in self.modules:
            m.preprocessing = value

    def __getitem__(self, c: int) -> Module:
        try:
            if isinstance(c, bool):
                raise TypeError
            return self._by_class[operator.index(c)]   # 3 or np.int64(3); never 3.7
        except (KeyError, TypeError, ValueError):
            raise DataError(f"no module of class {c!r}; this module set has classes "
                            f"{self.classes.tolist()}") from None

    def __len__(self) -> int:
        return len(self.modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self.modules)

    def __repr__(self) -> str:
        return f"<ModuleSet of {len(self)} modules, options {self.options}>"

    @property
    def classes(self) -> np.ndarray:
        """Class index of each module, in column order of `predict`."""
        return np.array([m.class_index for m in self.modules], dtype=np.int64)

    def decision_function(self, x, batch_size: int = 256, progress: bool = False, *,
                          client=None, shared_pass: bool = True) -> np.ndarray:
        """(n, n_modules) float32 margins (`Module.decision_function`); column j belongs to
        class `classes[j]`. Composition ranks these. With a dask `client`, partitions of `x`
        are processed on the cluster (`refdecomp.distributed`).

        `shared_pass` (default): one pass of the model shared by all modules, with exact
        partial recomputation where a module's masks change something (`refdecomp.compose`);
        the same values as running the modules one by one (`shared_pass=False`)."""
        if client is not None:
            from .distributed import compose_distributed

            return compose_distributed(client, self, x, batch_size=batch_size,
                                       progress=progress)[0]
        return self._margins(x, batch_size, progress, shared_pass)[0]

    def _margins(self, x, batch_size, progress, shared_pass):
        """(margins, per-module fraction of images needing a real pass or None,
        per-module recomputed work in full passes or None)."""
        if not self.modules:
            return np.zeros((_n(x), 0), np.float32), None, None
        if shared_pass:
            from .compose import compose_margins  # Numba loads when composing, not on import

            res = compose_margins(self.modules, x, batch_size, progress)
            return res.margins, res.flagged_fraction, res.recomputed_fraction
        cols = [m.decision_function(x, batch_size, progress) for m in self.modules]
        return np.stack(cols, axis=1), None, None

    def predict(self, x, batch_size: int = 256, progress: bool = False, *,
                client=None, shared_pass: bool = True) -> np.ndarray:
        """(n, n_modules) composed scores: a softmax over the modules' margins (float64).

        A ranking score, not a calibrated probability: rows sum to 1 and `argmax` along axis 1
        gives the composed class column exactly as `decision_function(x).argmax(1)` does
        (`refdecomp.metrics.margin_softmax`)."""
        return metrics.margin_softmax(self.decision_function(x, batch_size, progress,
                                                             client=client,
                                                             shared_pass=shared_pass))

    def predict_classes(self, x, batch_size: int = 256, *, shared_pass: bool = True) -> np.ndarray:
        """Composed prediction: the class of the module with the largest margin (ties: lowest
        column)."""
        return metrics.composed_predict(
            self.decision_function(x, batch_size, shared_pass=shared_pass), self.classes)

    def evaluate(self, x, y, batch_size: int = 256, progress: bool = False, *,
                 client=None, shared_pass: bool = True) -> dict[str, Any]:
        """Composed top-1 / top-5 accuracy (modules ranked by margin) and, per module: binary
        accuracy beside the model's own one-vs-rest accuracy (P_model(c) >= 0.5), size,
        Jaccard and, with the shared pass, `needed_pass_fraction` (the fraction of images on
        which the module's masks changed a value, so that it needed a real, partial pass) and
        `recomputed_passes` (the work of those recomputations in full model passes per
        image). With a dask `client`, the images are processed as partitions on the cluster."""
        n_classes = self.modules[0]._head.weights["kernel"].shape[1] if self.modules else 0
        y = check_labels(y, _n(x), n_classes, "evaluate")
        flagged = work = None
        if client is not None:
            from .distributed import compose_distributed

            margins, model_probs = compose_distributed(client, self, x, batch_size=batch_size,
                                                       progress=progress)
        else:
            model_probs = self.model.predict(x, batch_size)
            margins, flagged, work = self._margins(x, batch_size, progress, shared_pass)
        return self.figures(margins, model_probs, y, flagged, work)

    def figures(self, margins: np.ndarray, model_probs: np.ndarray, y: np.ndarray,
                needed_pass=None, recomputed=None) -> dict[str, Any]:
        """What `evaluate` reports, from the margins and the model's probabilities (and, when
        given, the shared pass's per-module fractions: see `evaluate`)."""
        per = []
        for j, m in enumerate(self.modules):
            cost = {} if needed_pass is None else {
                "needed_pass_fraction": float(needed_pass[j]),
                "recomputed_passes": float(recomputed[j])}
            per.append({"class": m.class_index, "class_name": m.class_name,
                        "binary_accuracy": metrics.binary_accuracy(margins[:, j], y,
                                                                   m.class_index),
                        "model_binary_accuracy": metrics.one_vs_rest_accuracy(
                            model_probs, y, m.class_index),
                        **cost,
                        **m.size(), **{f"jaccard_{k}": v for k, v in m.jaccard().items()}})
        return {"top1": metrics.top_k_accuracy(margins, y, 1, self.classes),
                "top5": metrics.top_k_accuracy(margins, y, 5, self.classes),
                "n_images": int(y.size),
                "model": {"top1": metrics.top_k_accuracy(model_probs, y, 1),
                          "top5": metrics.top_k_accuracy(model_probs, y, 5)},
                "ties_top1": metrics.count_top_ties(margins),
                "mean_jaccard_values": float(np.mean([r["jaccard_values"] for r in per])),
                "mean_jaccard_set": float(np.mean([r["jaccard_set"] for r in per])),
                "modules": per}

    # -- files ----------------------------------------------------------------------------
    def save(self, path) -> Path:
        """Write all modules to one HDF5 module file (atomically)."""
        g = self.model.graph
        src = self.model.source_graph
        with atomic_path(path, suffix=".h5") as tmp:
            # HDF5 1.10 object headers carry checksums and fletcher32 guards the data, so a
            # damaged module file is detected by libhdf5 instead of being misread (or crashing
            # it: libhdf5 does not survive every damaged pre-1.10 header)
            with h5py.File(tmp, "w", libver=("v110", "latest")) as f:
                a = f.attrs
                a["format"] = FORMAT
                a["format_version"] = FORMAT_VERSION
                a["refdecomp_version"] = __version__
                a["created"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
                a["model_fingerprint"] = graph_fingerprint(g)
                a["model_source"] = _relative_source(src.source, path)
                a["model_sha256"] = src.sha256 or ""
                a["model_name"] = src.name
                a["options"] = json.dumps(self.options, default=str)
                a["data"] = json.dumps(self.data, default=str)
                a["class_names"] = json.dumps(self.class_names)
                if self.preprocessing is not None:
                    spec, stats = self.preprocessing.state()
                    a["preprocessing"] = json.dumps(spec)
                    for name, values in stats.items():
                        f.create_dataset(f"preprocessing/{name}", data=values,
                                         fletcher32=True)
                for i, m in enumerate(self.modules):
                    grp = f.create_group(f"modules/{i}")
                    grp.attrs["class_index"] = m.class_index
                    grp.attrs["class_name"] = json.dumps(m.class_name)
                    grp.attrs["channeling"] = m.channeling
                    grp.attrs["info"] = json.dumps(m.info, default=str)
                    grp.create_dataset("head_kernel", data=m.head_kernel, fletcher32=True)
                    grp.create_dataset("head_bias", data=m.head_bias, fletcher32=True)
                    for kind, maps in (("masks", m.masks), ("active", m.active)):
                        for j, (node, mask) in enumerate(maps.items()):
                            d = grp.create_dataset(f"{kind}/{j}", data=np.packbits(mask != 0),
                                                   compression="gzip", fletcher32=True)
                            d.attrs["node"] = node
                            d.attrs["shape"] = np.asarray(mask.shape, dtype=np.int64)
        return Path(path)


def _relative_source(model_path: str, module_path) -> str:
    """The model file as a path relative to the module file's folder (what `load_modules`
    resolves it against); "" when there is none or no relative path exists (another drive)."""
    if not model_path:
        return ""
    try:
        return os.path.relpath(Path(model_path).resolve(), Path(module_path).resolve().parent)
    except ValueError:
        return ""


def load_modules(path, model=None) -> ModuleSet:
    """Read a module file written by `ModuleSet.save` / `Module.save`.

    `model`: the source model (a `Model` or a model file path); by default the model file
    recorded in the module file, resolved relative to the module file's folder (an absolute
    path recorded there is never followed). Its execution graph must match the fingerprint
    stored there. Every part of the file is checked against that model before use, so a
    damaged or tampered file gives a ModuleFileError naming the part.
    """
    path = regular_file(path, ModuleFileError, "module file")
    label = f"module file {str(path)!r}"
    try:
        f = h5py.File(path, "r")
    except HDF5_ERRORS as e:
        raise ModuleFileError(f"{label} cannot be read as HDF5: {e}") from None
    try:
        with f:
            return _read_module_file(f, path, label, model)
    except RefdecompError:
        raise
    except (*HDF5_ERRORS, TypeError, AttributeError, IndexError, UnicodeError) as exc:
        raise ModuleFileError(f"{label} is damaged or was altered ({type(exc).__name__}: "
                              f"{exc})") from None


def _attr(f, key: str, label: str, kind: type = str):
    """A required root or group attribute, as text, int or parsed JSON (kind=dict)."""
    if key not in f.attrs:
        raise ModuleFileError(f"{label}: attribute {key!r} is missing; the file is damaged")
    value = f.attrs[key]
    if kind is int:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise ModuleFileError(f"{label}: attribute {key!r} is {value!r}, not an integer")
        return int(value)
    value = attribute_text(value, label, f"attribute {key!r}")
    if kind is dict:
        try:
            return json.loads(value)
        except (ValueError, RecursionError) as exc:
            raise ModuleFileError(f"{label}: attribute {key!r} is not valid JSON ({exc})") \
                from None
    return value


def _source_model(f, path: Path, label: str):
    """The model file a module file names: relative to the module file's folder only."""
    source = _attr(f, "model_source", label)
    if not source:
        raise ModuleFileError(f"{label}: its source model is not available (it records no "
                              f"model file); pass model=<the model or its file> (command line: "
                              f"--model)")
    if Path(source).is_absolute():
        raise ModuleFileError(f"{label} names its source model by the absolute path "
                              f"{source!r}, which refdecomp does not follow on its own; pass "
                              f"model={source!r} (command line: --model) if that is the model")
    resolved = path.resolve().parent / source
    if not resolved.is_file():
        raise ModuleFileError(f"{label}: its source model {source!r} is not available "
                              f"(looked for at {str(resolved)!r}, relative to the module "
                              f"file); pass model=<the model or its file> (command line: "
                              f"--model)")
    want = _attr(f, "model_sha256", label)
    if want:
        if sha256_file(resolved) != want:
            raise ModuleFileError(f"{label}: the file at {str(resolved)!r} is not the model "
                                  f"it was made from (sha256 differs); pass model=<the model> "
                                  f"(command line: --model)")
    return str(resolved)


def _read_module_file(f, path: Path, label: str, model) -> ModuleSet:
    if f.attrs.get("format") != FORMAT:
        raise ModuleFileError(f"{label} is not a refdecomp module file (format attribute "
                              f"{f.attrs.get('format')!r})")
    version = _attr(f, "format_version", label, int)
    if version > FORMAT_VERSION:
        raise ModuleFileError(f"{label} has format version {version}; this refdecomp reads "
                              f"up to {FORMAT_VERSION}: upgrade refdecomp")
    if model is None:
        model = _source_model(f, path, label)
    if not isinstance(model, Model):
        model = load_model(model)
    want = _attr(f, "model_fingerprint", label)
    if graph_fingerprint(model.graph) != want:
        raise ModuleFileError(
            f"{label} was made from model {_attr(f, 'model_name', label)!r} (sha256 "
            f"{_attr(f, 'model_sha256', label) or 'n/a'}); the model given is a different "
            f"model (its graph or weights differ)")
    head, _ = find_head(model.graph)
    n_features, n_classes = head.weights["kernel"].shape

    groups = f.get("modules")
    if not isinstance(groups, h5py.Group):
        raise ModuleFileError(f"{label}: it has no 'modules' group; the file is damaged")
    keys = list(groups.keys())
    if not all(k.isdigit() for k in keys):
        raise ModuleFileError(f"{label}: unexpected members {keys[:5]} in 'modules'")
    modules, seen = [], set()
    for key in sorted(keys, key=int):
        grp = groups[key]
        where = f"{label}, module {key}"
        if not isinstance(grp, h5py.Group):
            raise ModuleFileError(f"{where}: not a group; the file is damaged")
        c = _attr(grp, "class_index", where, int)
        if not 0 <= c < n_classes or c in seen:
            raise ModuleFileError(f"{where}: class_index {c} is not a new class of the "
                                  f"model's {n_classes}")
        seen.add(c)
        channeling = _attr(grp, "channeling", where) if "channeling" in grp.attrs else "mean"
        if channeling not in CHANNELINGS:
            raise ModuleFileError(f"{where}: channeling {channeling[:40]!r} is not one of "
                                  f"{CHANNELINGS}")
        width = 2 if channeling == "mean" else n_classes
        kernel = _array(grp, "head_kernel", where, (n_features, width))
        bias = _array(grp, "head_bias", where, (width,))
        maps = {kind: _read_bitmaps(grp[kind], model.graph, f"{where}, {kind}")
                if kind in grp else {} for kind in ("masks", "active")}
        class_name = _attr(grp, "class_name", where, dict)
        info = _attr(grp, "info", where, dict)
        if class_name is not None and not isinstance(class_name, str) or \
                not isinstance(info, dict):
            raise ModuleFileError(f"{where}: class_name / info attributes have the wrong type")
        modules.append(Module(model, c, kernel, bias, maps["masks"], class_name=class_name,
                              info=info, active=maps["active"] or None, channeling=channeling))
    options, data = _attr(f, "options", label, dict), _attr(f, "data", label, dict)
    class_names = _attr(f, "class_names", label, dict)
    if not isinstance(options, dict) or not isinstance(data, dict) or not (
            class_names is None or (isinstance(class_names, list) and
                                    all(isinstance(n, str) for n in class_names))):
        raise ModuleFileError(f"{label}: options / data / class_names attributes have the "
                              f"wrong type")
    return ModuleSet(modules, model, options=options, data=data, class_names=class_names,
                     preprocessing=_read_preprocessing(f, label))


def _read_preprocessing(f, label: str):
    """The `Preprocessing` a module file records (attribute "preprocessing", a JSON object of
    options, and the fitted statistics as datasets under "preprocessing/"), or None for files
    that record none (those written before preprocessing existed are read as raw pixels)."""
    if "preprocessing" not in f.attrs:
        return None
    spec = _attr(f, "preprocessing", label, dict)
    where = f"{label}, preprocessing"
    stats = {}
    group = f.get("preprocessing")
    if group is not None:
        if not isinstance(group, h5py.Group) or not set(group) <= {"subtract", "divide"}:
            raise ModuleFileError(f"{where}: unexpected members; the file is damaged")
        for key, d in group.items():
            # a mean image (H, W, C) or per-channel values (C,): small, finite reals
            if not isinstance(d, h5py.Dataset) or d.ndim not in (1, 3) or \
                    d.size > (1 << 24) or d.dtype.kind not in "fiu":
                raise ModuleFileError(f"{where}: statistic {key!r} has shape {d.shape}; "
                                      "expected per-channel values or a mean image")
            stats[key] = np.asarray(d[()], dtype=np.float32)
            if not np.all(np.isfinite(stats[key])):
                raise ModuleFileError(f"{where}: statistic {key!r} holds non-finite values")
    try:
        return Preprocessing.from_state(spec, stats)
    except (ValueError, TypeError, RefdecompError) as e:
        raise ModuleFileError(f"{where}: unreadable record ({e})") from None


def _array(grp, key: str, where: str, shape: tuple) -> np.ndarray:
    """A float dataset of exactly `shape` (read only after its shape and dtype are checked)."""
    d = grp.get(key)
    if not isinstance(d, h5py.Dataset):
        raise ModuleFileError(f"{where}: dataset {key!r} is missing")
    if tuple(d.shape or ()) != shape or d.dtype.kind not in "fiu":
        raise ModuleFileError(f"{where}: {key} has shape {d.shape} and dtype {d.dtype}; the "
                              f"model needs real numbers of shape {shape}")
    a = np.asarray(d[()], dtype=np.float32)
    if not np.all(np.isfinite(a)):
        raise ModuleFileError(f"{where}: {key} holds NaN or infinite values")
    return a


def _read_bitmaps(group, graph: Graph, where: str) -> dict[str, np.ndarray]:
    """{node: uint8 0/1 map} from datasets written with np.packbits and a `shape` attribute;
    each shape must be the node's own, checked before anything is unpacked."""
    if not isinstance(group, h5py.Group):
        raise ModuleFileError(f"{where}: not a group")
    out = {}
    for d in group.values():
        if not isinstance(d, h5py.Dataset):
            raise ModuleFileError(f"{where}: {d.name!r} is not a dataset")
        node = attribute_text(d.attrs["node"], where, "a mask's node name") \
            if "node" in d.attrs else ""
        if node not in graph or not graph[node].weighted:
            raise ModuleFileError(f"{where}: mask for {node!r}, which is not a conv2d / dense "
                                  f"node of the model")
        want = tuple(graph[node].shape)
        shape = tuple(int(s) for s in np.asarray(d.attrs.get("shape", [])).reshape(-1))
        if shape != want:
            raise ModuleFileError(f"{where}: mask for {node!r} has shape attribute "
                                  f"{shape[:8]}; the node's shape is {want}")
        count = int(np.prod(want))
        if tuple(d.shape or ()) != (-(-count // 8),) or d.dtype != np.uint8:
            raise ModuleFileError(f"{where}: mask for {node!r} holds {d.shape} {d.dtype}; "
                                  f"{-(-count // 8)} packed bytes (uint8) expected")
        if node in out:
            raise ModuleFileError(f"{where}: two masks for {node!r}")
        bits = np.unpackbits(d[()], count=count)
        out[node] = bits.reshape(want).astype(np.uint8)
    return out


def graph_fingerprint(graph: Graph) -> str:
    """sha256 over the node names, ops, shapes, inputs and weight bytes of a graph."""
    h = hashlib.sha256()
    for n in graph.nodes:
        h.update(json.dumps([n.name, n.op, list(n.shape), n.inputs]).encode())
        for key in sorted(n.weights):
            w = np.ascontiguousarray(n.weights[key])
            h.update(f"{key}:{w.dtype.str}:{w.shape}".encode())
            h.update(w.tobytes())
    return h.hexdigest()


def _n(x) -> int:
    first = x[0] if isinstance(x, (list, tuple)) else x
    return int(np.shape(first)[0])
