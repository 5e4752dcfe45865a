"""Compose many modules in one shared pass of the model, exactly.

All modules of a set share the model's weights; a module differs from the model only by its
masks (mask 0 forces a conv2d / dense node's output to 0 after its activation) and its head.
If on image x every node that module m masks already has the value its mask would give it (0)
in the model's own pass, then by induction over the graph every activation of m on x equals
the model's, and m's features at the head input are the model's. So, per batch:

1. one pass of the model, in parts of about 32 images per worker thread; as soon as a masked
   node is computed, a small Numba scan over the flat indices each module masks there finds
   the images on which the mask changes its value ("flagged" pairs, first such node in
   execution order), and the values a restart from there reads are copied for those images
   only (memory per part only);
2. unflagged (image, module) pairs take the model's features at the head input;
3. flagged pairs are recomputed in the same worker, per module and start node: the masked
   node's value is the model's with the mask applied, and the graph runs from the next node
   on, reading the model's activations for everything computed before it (the interpreter's
   own executor and kernels, so the values are the ones `Model.run(x, masks=module.masks)`
   gives).

Non-ReLU activations (linear, leaky, tanh, ...) rarely output exactly 0, so a module that masks
such nodes is flagged on almost every image and those pairs fall back to the recomputation.
Flagging errs on the safe side only: a pair is taken from the model's pass only when the mask
provably changes nothing (bit for bit), so over-flagging costs time, never exactness.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit

from . import metrics
from .activations import activation_code
from .errors import DataError, InternalError, RefdecompError
from .interpreter import _progress, node_macs
from .kernels.threads import parallel_parts

#: default images per batch (the features of every module are held per batch)
DEFAULT_BATCH = 256

NOT_FLAGGED = np.iinfo(np.int64).max


@njit(nogil=True, cache=True)
def scan_masked(bits, idx, care, position, first):
    """first[b] = position for every image b not flagged yet (first[b] == NOT_FLAGGED) where
    some masked element `idx` of the node's flat values `bits` (images, elements; uint32 views
    of float32) has `bits & care != 0`, i.e. differs from the value the mask gives it."""
    for b in range(bits.shape[0]):
        if first[b] != NOT_FLAGGED:
            continue
        row = bits[b]
        for i in idx:
            if row[i] & care:
                first[b] = position
                break


@dataclass
class MaskedNode:
    """One node a module masks, as the scan and the restarts use it."""
    position: int                 # in model.graph.nodes
    name: str
    idx: np.ndarray               # int64 flat indices (per image) where the mask is 0
    care: int                     # bits that must be 0 for the mask to change nothing
    mask: np.ndarray              # the module's mask of the node (uint8, node shape)
    fused: bool                   # masked in the kernels' epilogue (stores +0.0)


@dataclass
class ComposedBatch:
    """One batch of `Composer.batches`: images [start, stop)."""
    start: int
    stop: int
    features: list[np.ndarray]    # per module: (stop - start, *head input shape) float32
    first: np.ndarray             # (stop - start, n_modules) int64: position of the first node
    #                               whose mask changes its value; NOT_FLAGGED where none does
    recomputed_macs: np.ndarray   # (n_modules,) multiply-accumulates of the recomputations

    @property
    def flagged(self) -> np.ndarray:
        """(images, n_modules) bool: pairs that needed a real (partial) masked pass."""
        return self.first != NOT_FLAGGED


@dataclass
class Composition:
    """What `compose_features` returns."""
    features: list[np.ndarray]    # per module: (n, *head input shape) float32
    flagged_fraction: np.ndarray  # (n_modules,): images whose pair needed a real pass
    recomputed_fraction: np.ndarray  # (n_modules,): recomputed MACs / MACs of a full pass
    #                                  over all images (what the restarts cost)
    n_images: int = 0


class Composer:
    """The plan of a shared pass for `modules` over `model` (see the module docstring).

    `model`: the modules' shared `refdecomp.interpreter.Model`; `modules`: objects with
    `masks` ({execution node: uint8 map}) and `head_input` (the node feeding the head); all
    must read the same head input."""

    def __init__(self, model, modules: Sequence):
        self.model = model
        self.modules = list(modules)
        if not self.modules:
            raise DataError("compose: no modules given")
        heads = {m.head_input for m in self.modules}
        if len(heads) != 1:
            raise RefdecompError(f"compose: the modules read different head inputs {heads}")
        self.head_input = heads.pop()
        g = model.graph
        if self.head_input not in g:
            raise DataError(f"compose: head input {self.head_input!r} is not a node of the "
                            f"model's execution graph")
        self.names = [n.name for n in g.nodes]
        self.position = {name: i for i, name in enumerate(self.names)}
        ancestors = _ancestors(g, self.head_input)
        self.masked = [self._masked_nodes(m, ancestors) for m in self.modules]
        macs = [node_macs(g, n) for n in g.nodes]
        self.pass_macs = int(sum(macs))
        #: restarts run the nodes up to the head input: positions [start, stop)
        self.stop = self.position[self.head_input] + 1
        #: MACs of a restart whose first recomputed node is at position i
        upto = np.array(macs[:self.stop] + [0] * (len(macs) - self.stop + 1), np.int64)
        self.suffix_macs = np.cumsum(upto[::-1])[::-1]
        consumers = g.consumers()
        self.last_read = {n: max([self.position[c] for c in consumers[n]], default=-1)
                          for n in self.names}
        starts = sorted({mn.position for ms in self.masked for mn in ms})
        self.seeds = {p: self._seed_names(p) for p in starts}
        #: (module column, masked node) per node position, for the scan during the pass
        self.at_position: dict[int, list[tuple[int, MaskedNode]]] = {}
        for j, masked in enumerate(self.masked):
            for mn in masked:
                self.at_position.setdefault(mn.position, []).append((j, mn))
        # Seeds are read from the pass's values; an add the executor would fuse with its
        # activation has no value of its own, so adds among the seeds are asked for.
        seeded = {s for names in self.seeds.values() for s in names}
        self.pass_outputs = [self.head_input] + sorted(
            s for s in seeded if g[s].spec.lowering == "add" and s != self.head_input)

    def _masked_nodes(self, module, ancestors) -> list[MaskedNode]:
        """The module's masked nodes that can reach the head input, in execution order."""
        g = self.model.graph
        out = []
        for name, mask in module.masks.items():
            if name not in g or not g[name].weighted:
                raise DataError(f"compose: module mask for {name!r}: not a conv2d / dense node "
                                f"of the model's execution graph")
            mask = np.asarray(mask)
            if mask.shape != g[name].shape:
                raise DataError(f"compose: mask for {name!r} has shape {mask.shape}, expected "
                                f"{g[name].shape}")
            idx = np.flatnonzero(mask.reshape(-1) == 0).astype(np.int64)
            if idx.size == 0 or name not in ancestors:
                continue
            # The kernels' fused epilogue stores +0.0 at a masked element; elsewhere the
            # interpreter multiplies by the mask, which keeps a zero's sign (+-0.0 unchanged).
            fused = self.model.engine == "numba" and \
                activation_code(g[name].activation) is not None
            out.append(MaskedNode(self.position[name], name, idx,
                                  0xFFFFFFFF if fused else 0x7FFFFFFF,
                                  np.ascontiguousarray(mask != 0, dtype=np.uint8), fused))
        return sorted(out, key=lambda mn: mn.position)

    def _seed_names(self, p: int) -> list[str]:
        """Nodes a restart after node p reads from the model's pass: node p itself and every
        earlier node read at or after p + 1 (or the head input when it lies before)."""
        names = [n for n in self.names[:p + 1] if self.last_read[n] > p]
        names.append(self.names[p])
        if self.position[self.head_input] <= p:
            names.append(self.head_input)
        return list(dict.fromkeys(names))

    # -- running -------------------------------------------------------------------------
    def batches(self, x, batch_size: int = DEFAULT_BATCH,
                progress: bool = False) -> Iterator[ComposedBatch]:
        """`ComposedBatch`es covering the images of `x` in order (memory per batch only)."""
        xs = self.model._check_inputs(x)
        model = self.model
        if model._open_dims():
            model = model._specialised([a.shape[1:] for a in xs])
            if [n.name for n in model.graph.nodes] != self.names:
                raise InternalError("compose: the graph specialised to the input shape has other "
                                    "nodes than the model's")
        n = len(xs[0]) if xs else 0
        batch_size = int(batch_size)
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        starts = range(0, n, batch_size)
        for start in _progress(starts, progress, total=len(starts)):
            stop = min(start + batch_size, n)
            yield self._batch(model, [a[start:stop] for a in xs], start, stop)

    def _batch(self, model, xb, start, stop) -> ComposedBatch:
        """One batch: parts of it run on the worker threads, each through `_part`."""
        b, k = stop - start, len(self.modules)
        shape = model.graph[self.head_input].shape
        feats = [np.empty((b, *shape), np.float32) for _ in range(k)]
        first = np.full((k, b), NOT_FLAGGED, dtype=np.int64)
        macs: list[np.ndarray] = []

        def part(a, c):
            macs.append(self._part(model, [x[a:c] for x in xb], feats, first, a, c))

        with model._parallel():
            if model.engine == "numba":
                parallel_parts(part, 0, b)
            else:
                part(0, b)
        return ComposedBatch(start, stop, feats, np.ascontiguousarray(first.T),
                             sum(macs, np.zeros(k, np.int64)))

    def _part(self, model, xs, feats, first, a, c) -> np.ndarray:
        """Images [a, c) of the batch: the model's pass, scanning each masked node as soon as
        it is computed and copying the restart seeds of the images it flags; then, per
        module, the restarts of its flagged images. Fills feats[j][a:c] and first[:, a:c];
        returns the MACs recomputed per module."""
        n = c - a
        f = first[:, a:c]
        snapshots: dict[int, tuple[np.ndarray, dict[str, np.ndarray]]] = {}

        def scan(i, env):
            here = self.at_position.get(i)
            if here is None:
                return
            bits = env[self.names[i]].reshape(n, -1).view(np.uint32)
            for j, mn in here:
                scan_masked(bits, mn.idx, np.uint32(mn.care), i, f[j])
            rows = np.flatnonzero((f == i).any(axis=0))
            if rows.size:
                snapshots[i] = (rows, {s: env[s][rows] for s in self.seeds[i]})

        env = model._executor(xs, {}, None, None, self.pass_outputs, after=scan,
                              stop=self.stop)
        base = env[self.head_input]
        macs = np.zeros(len(self.modules), np.int64)
        for j, masked in enumerate(self.masked):
            out = feats[j][a:c]
            out[:] = base
            by_position = {mn.position: mn for mn in masked}
            for p in np.unique(f[j][f[j] != NOT_FLAGGED]):
                rows = np.flatnonzero(f[j] == p)
                out[rows] = self._restart(model, self.modules[j].masks, by_position[int(p)],
                                          snapshots[int(p)], rows)
                macs[j] += int(self.suffix_macs[p + 1]) * rows.size
        return macs

    def _restart(self, model, masks, mn: MaskedNode, snapshot, rows) -> np.ndarray:
        """Head-input values of images `rows` (of the part) under `masks`, recomputed from
        after node `mn`, the first node whose value the masks change on them."""
        snap_rows, values = snapshot
        at = np.searchsorted(snap_rows, rows)
        seed = {s: v[at] for s, v in values.items()}
        y = seed[mn.name]
        seed[mn.name] = np.where(mn.mask == 0, np.float32(0.0), y) if mn.fused \
            else (y * mn.mask).astype(np.float32, copy=False)
        env = model._executor(None, masks, None, None, [self.head_input], start=mn.position + 1,
                              stop=self.stop, seed=seed)
        return env[self.head_input]


def compose_features(model, modules: Sequence, x, batch_size: int = DEFAULT_BATCH,
                     progress: bool = False) -> Composition:
    """Per module, its features at the head input for images `x` (float32, the values
    `model.run(x, masks=module.masks, outputs=[module.head_input])` gives), computed in one
    shared pass plus partial recomputations; and per module the fraction of images that
    needed a real pass and the recomputed work as a fraction of full passes."""
    comp = Composer(model, modules)
    parts = list(comp.batches(x, batch_size, progress))
    n = parts[-1].stop if parts else 0
    k = len(comp.modules)
    shape = model.graph[comp.head_input].shape
    feats = [np.concatenate([p.features[j] for p in parts]) if parts
             else np.zeros((0, *shape), np.float32) for j in range(k)]
    flagged = np.zeros(k) if not n else \
        np.concatenate([p.flagged for p in parts]).mean(axis=0)
    macs = sum((p.recomputed_macs for p in parts), np.zeros(k, np.int64))
    work = macs / max(1, comp.pass_macs * n)
    return Composition(feats, flagged, work, n)


def _ancestors(graph, name: str) -> set[str]:
    """`name` and every node it (transitively) reads."""
    seen, todo = set(), [name]
    while todo:
        cur = todo.pop()
        if cur not in seen:
            seen.add(cur)
            todo.extend(graph[cur].inputs)
    return seen


@dataclass
class ComposedMargins:
    """What `compose_margins` returns."""
    margins: np.ndarray           # (n, n_modules) float32, as `Module.decision_function` gives
    flagged_fraction: np.ndarray  # (n_modules,): images whose pair needed a real pass
    recomputed_fraction: np.ndarray  # (n_modules,): recomputed MACs / MACs of full passes


def compose_margins(modules: Sequence, x, batch_size: int = DEFAULT_BATCH,
                    progress: bool = False) -> ComposedMargins:
    """Margins (concerned - unconcerned logit) of every module on images `x`, column j for
    `modules[j]`, through one shared pass per source model (modules picked from several
    models get one pass each). Memory: one batch of activations per model, plus the result."""
    modules = list(modules)
    n = _n_images(x)
    k = len(modules)
    margins = np.zeros((n, k), np.float32)
    flagged = np.zeros(k)
    work = np.zeros(k)
    groups: dict[int, list[int]] = {}
    for j, m in enumerate(modules):
        groups.setdefault(id(m.source_model), []).append(j)
    for cols in groups.values():
        comp = Composer(modules[cols[0]].source_model, [modules[j] for j in cols])
        macs = np.zeros(len(cols), np.int64)
        for part in comp.batches(x, batch_size, progress):
            for i, j in enumerate(cols):
                logits = modules[j].head_logits(part.features[i])
                margins[part.start:part.stop, j] = metrics.margins(logits)
            flagged[cols] += part.flagged.sum(axis=0)
            macs += part.recomputed_macs
        work[cols] = macs / max(1, comp.pass_macs * n)
    return ComposedMargins(margins, flagged / max(1, n), work)


def _n_images(x) -> int:
    if isinstance(x, dict):
        x = next(iter(x.values()))
    first = x[0] if isinstance(x, (list, tuple)) else x
    return int(np.shape(first)[0])
