"""Run a `Graph` on NumPy arrays, batch by batch, applying masks and recording in the same pass.

`Model.run` is the one streaming loop: every batch flows through the nodes in order, each
intermediate is dropped as soon as its last reader has run, and only the requested outputs are
kept. Convolution, dense, pooling and add run on the Numba kernels in `refdecomp.kernels` (engine
"numba", the default); engine "reference" runs the NumPy specification in
`refdecomp.ops.reference` instead. Both compute the same function.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence

import numpy as np

from .errors import DataError, RefdecompError
from .graph import Graph, Node
from .ops import reference as ref
from .transforms import optimize

ENGINES = ("numba", "reference")


class Recorder:
    """Per-group records of "value > 0" for conv2d / dense output nodes, written in the pass.

    Bits (default): `seen[name]` is a uint8 array of shape (n_groups, *node.shape); `Model.run`
    sets `seen[name][g, *pos] = 1` when an image of group g gives that node a value > 0 before
    its activation (after a folded batch norm).

    Counts (`counts=True`): `counts[name]` (same shape, uint32) is the number of images of
    group g that gave the node a value > 0; `seen` is then `counts > 0`.

    Each recording thread writes its own copy (1 byte per node and group for bits, 4 for
    counts), combined when `seen` / `counts` is read; read them once, not per node.
    """

    def __init__(self, graph: Graph | Model, n_groups: int, nodes: Iterable[str] | None = None,
                 *, counts: bool = False):
        from .kernels.epilogue import PerThreadRecord  # noqa: PLC0415

        graph = graph.graph if isinstance(graph, Model) else graph
        if int(n_groups) < 1:
            raise DataError(f"Recorder: n_groups must be >= 1, got {n_groups}")
        self.n_groups = int(n_groups)
        self.counting = bool(counts)
        names = [n.name for n in graph.weighted_nodes()] if nodes is None else list(nodes)
        self.shapes: dict[str, tuple[int, ...]] = {}
        for name in names:
            if name not in graph or not graph[name].weighted:
                raise DataError(f"Recorder: {name!r} is not a conv2d / dense node of the graph")
            self.shapes[name] = tuple(graph[name].shape)
        self._targets = {name: PerThreadRecord(self.n_groups, int(np.prod(shape)), self.counting)
                         for name, shape in self.shapes.items()}

    @property
    def nodes(self) -> list[str]:
        return list(self.shapes)

    def target(self, name: str):
        """What the kernels of node `name` record into (None when it is not recorded)."""
        return self._targets.get(name)

    def _combined(self) -> dict[str, np.ndarray]:
        return {name: t.total().reshape(self.n_groups, *self.shapes[name])
                for name, t in self._targets.items()}

    @property
    def counts(self) -> dict[str, np.ndarray]:
        """{node: (n_groups, *shape) uint32 image counts}; only for a counting recorder."""
        if not self.counting:
            raise RefdecompError("Recorder: counts are recorded only with Recorder(..., "
                                 "counts=True)")
        return self._combined()

    @property
    def seen(self) -> dict[str, np.ndarray]:
        """{node: (n_groups, *shape) uint8 bit map}: 1 where some image had a value > 0."""
        if not self.counting:
            return self._combined()
        return {name: (c > 0).astype(np.uint8) for name, c in self.counts.items()}

    def state_bytes_per_group(self, threads: int = 1) -> int:
        """Bytes the recording state takes per group and recording thread (times `threads`)."""
        per_node = (4 if self.counting else 1) * threads
        return per_node * sum(int(np.prod(s)) for s in self.shapes.values())

    def reset(self) -> None:
        for t in self._targets.values():
            t.reset()


class Model:
    """An executable model over a `Graph` (see docs/architecture.md, "Interpreter")."""

    def __init__(self, graph: Graph, fold: bool = True, *, engine: str = "numba"):
        if engine not in ENGINES:
            raise RefdecompError(f"Model: engine must be one of {ENGINES}, got {engine!r}")
        graph.validate()
        _check_shapes(graph)
        self.source_graph = graph
        self.fold = fold
        self.engine = engine
        if fold:
            self.graph, self.name_map = optimize(graph)
        else:
            self.graph, self.name_map = graph, {n.name: n.name for n in graph}
        # Graphs with open input dimensions are compiled per concrete shape in `run`.
        self._executor = None if self._open_dims() else _make_executor(self.graph, engine)
        self._audit: Model | None = None

    # -- public API ----------------------------------------------------------------------
    def with_graph(self, graph: Graph) -> Model:
        """A model over a modified graph (same folding and engine)."""
        return Model(graph, fold=self.fold, engine=self.engine)

    def predict(self, x, batch_size: int = 256, progress: bool = False):
        """Outputs for `x` (an array, or a list / dict of arrays for several inputs): one array,
        or a list of arrays when the graph has several outputs."""
        outs = self.run(x, batch_size, progress=progress)
        return outs[0] if len(outs) == 1 else outs

    def layer_outputs(self, x, names: Sequence[str] | None = None,
                      batch_size: int = 256) -> dict[str, np.ndarray]:
        """`{source layer name: output}` for auditing, computed on the unfolded source graph."""
        if self._audit is None:
            self._audit = Model(self.source_graph, fold=False, engine=self.engine)
        names = [n.name for n in self.source_graph] if names is None else list(names)
        return dict(zip(names, self._audit.run(x, batch_size, outputs=names)))

    def run(self, x, batch_size: int = 256, *, masks: dict[str, np.ndarray] | None = None,
            recorder: Recorder | None = None, groups=None, outputs: Sequence[str] | None = None,
            progress: bool = False) -> list[np.ndarray]:
        """Stream `x` through the graph in batches. Returns the arrays of `outputs` (execution
        node names; default the graph outputs) for all images, in order."""
        xs = self._check_inputs(x)
        if self._open_dims():
            return self._specialised([a.shape[1:] for a in xs]).run(
                xs, batch_size, masks=masks, recorder=recorder, groups=groups, outputs=outputs,
                progress=progress)
        n = len(xs[0]) if xs else 0
        batch_size = int(batch_size)
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        out_names = list(self.graph.outputs if outputs is None else outputs)
        for name in out_names:
            if name not in self.graph:
                raise DataError(f"outputs: {name!r} is not a node of the execution graph "
                                f"(use layer_outputs for source layer names)")
        masks = self._check_masks(masks)
        groups = self._check_groups(groups, recorder, n)
        from . import limits

        for m in out_names:
            limits.elements((n, *self.graph[m].shape), self.graph.source or "run",
                            f"the output {m!r} for {n} images")
        results = [np.empty((n, *self.graph[m].shape), dtype=np.float32) for m in out_names]
        # no intermediate of a batch above the per-tensor limit
        batch_size = max(1, min(batch_size, limits.current().max_tensor_bytes //
                                max(1, self._largest_per_image())))
        starts = range(0, n, batch_size)
        with self._parallel():
            self._stream(xs, n, batch_size, masks, recorder, groups, out_names, results,
                         _progress(starts, progress, total=len(starts)))
        return results

    def _largest_per_image(self) -> int:
        """Bytes of the largest float32 tensor one image produces in the execution graph."""
        return max((4 * int(np.prod(node.shape, dtype=object)) for node in self.graph.nodes),
                   default=4)

    def _parallel(self):
        """Kernels split batches over worker threads (single-threaded BLAS each)."""
        if self.engine == "numba":
            from .kernels.threads import blas_single_threaded  # noqa: PLC0415
            return blas_single_threaded()
        return contextlib.nullcontext()

    def _stream(self, xs, n, batch_size, masks, recorder, groups, out_names, results, starts):
        def run_part(start, stop):
            batch = [a[start:stop] for a in xs]
            g = None if groups is None else groups[start:stop]
            values = self._executor(batch, masks, recorder, g, out_names)
            for res, name in zip(results, out_names):
                res[start:stop] = values[name]

        if self.engine == "numba":
            from .kernels.threads import parallel_parts  # noqa: PLC0415
        else:
            def parallel_parts(fn, start, stop):
                fn(start, stop)
        for start in starts:
            parallel_parts(run_part, start, min(start + batch_size, n))

    def summary(self) -> str:
        """Text table of the source graph: layer, class, output shape, parameters, MACs."""
        rows = [("Layer", "Class", "Output shape", "Params", "MACs")]
        for node in self.source_graph:
            rows.append((node.name, node.keras_class or node.op, str((None, *node.shape)),
                         f"{node.n_params():,}", f"{node_macs(self.source_graph, node):,}"))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                           for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
        rule = "-" * len(lines[0])
        total_p = sum(n.n_params() for n in self.source_graph)
        lines = [f"Model: {self.source_graph.name}", rule, lines[0], rule, *lines[1:], rule,
                 f"Total params: {total_p:,}",
                 f"Total multiply-accumulates per image: {self.macs():,}"
                 + (" (per output position: the input has open dimensions)"
                    if self._open_dims() else "")]
        folded = [s for s, e in self.name_map.items() if s != e]
        if folded:
            lines.append(f"Folded into their producers for execution: {', '.join(folded)}")
        return "\n".join(lines)

    def macs(self) -> int:
        """Multiply-accumulates per image of all conv2d and dense layers."""
        return sum(node_macs(self.source_graph, n) for n in self.source_graph)

    # -- open dimensions (e.g. fully convolutional files with input shape (None, None, 3)) --
    def _open_dims(self) -> bool:
        return any(d is None for name in self.graph.inputs for d in self.graph[name].shape)

    def _specialised(self, shapes) -> Model:
        """The same model with its open input dimensions fixed to `shapes` (cached per shape)."""
        from .reader.shapes import with_input_shapes

        key = tuple(tuple(int(d) for d in s) for s in shapes)
        cache = self.__dict__.setdefault("_by_shape", {})
        if key not in cache:
            cache[key] = Model(with_input_shapes(self.source_graph, list(key)), fold=self.fold,
                               engine=self.engine)
        return cache[key]

    # -- checks --------------------------------------------------------------------------
    def _check_inputs(self, x) -> list[np.ndarray]:
        names = self.graph.inputs
        if isinstance(x, dict):
            missing = [k for k in names if k not in x]
            if missing:
                raise DataError(f"inputs {missing} missing from the dict (model inputs: {names})")
            x = [x[k] for k in names]
        elif not isinstance(x, (list, tuple)):
            x = [x]
        if len(x) != len(names):
            raise DataError(f"model {self.graph.name!r} has {len(names)} input(s) {names}, "
                            f"got {len(x)} array(s)")
        arrays = []
        for name, a in zip(names, x):
            a = np.asarray(a)
            want = self.graph[name].shape
            if a.ndim != len(want) + 1 or any(w is not None and w != s
                                              for w, s in zip(want, a.shape[1:])):
                hint = ""
                if a.ndim == 4 and tuple(want) == (a.shape[3], a.shape[1], a.shape[2]):
                    hint = ("; the model takes channels first (NCHW): give the images as NCHW "
                            "(command line: --channels-first)")
                raise DataError(f"input {name!r} expects shape {(None, *want)} "
                                f"(batch first), got {a.shape}{hint}")
            if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool) or \
                    np.issubdtype(a.dtype, np.complexfloating):
                raise DataError(f"input {name!r} must hold real numbers, got dtype {a.dtype}")
            arrays.append(np.ascontiguousarray(a, dtype=np.float32))
        if len({len(a) for a in arrays}) > 1:
            raise DataError(f"inputs {names} have different numbers of images "
                            f"{[len(a) for a in arrays]}")
        return arrays

    def _check_masks(self, masks) -> dict[str, np.ndarray]:
        out = {}
        for name, m in (masks or {}).items():
            if name not in self.graph or not self.graph[name].weighted:
                raise DataError(f"masks: {name!r} is not a conv2d / dense node of the execution "
                                f"graph")
            m = np.asarray(m)
            if m.shape != self.graph[name].shape:
                raise DataError(f"masks: mask for {name!r} has shape {m.shape}, expected "
                                f"{self.graph[name].shape}")
            out[name] = np.ascontiguousarray(m != 0, dtype=np.uint8)
        return out

    def _check_groups(self, groups, recorder: Recorder | None, n: int):
        if recorder is None:
            return None
        if groups is None:
            raise DataError("run: a recorder needs `groups` (one group id per image)")
        groups = np.asarray(groups)
        if groups.shape != (n,) or not np.issubdtype(groups.dtype, np.integer):
            raise DataError(f"groups must be integers of shape ({n},), got {groups.dtype} "
                            f"{groups.shape}")
        if n and (groups.min() < 0 or groups.max() >= recorder.n_groups):
            raise DataError(f"groups must lie in [0, {recorder.n_groups}), got "
                            f"[{groups.min()}, {groups.max()}]")
        for name in recorder.nodes:
            if name not in self.graph or not self.graph[name].weighted:
                raise DataError(f"recorder: {name!r} is not a conv2d / dense node of this "
                                f"model's execution graph")
        return np.ascontiguousarray(groups, dtype=np.int32)


def _check_shapes(graph: Graph) -> None:
    """Every node's attributes and weights must give the shape it declares: the kernels index
    their buffers by these shapes, so a graph built in memory (not by the reader, which
    infers them) is checked the same way before anything runs."""
    from .reader.shapes import infer

    shapes: dict[str, tuple] = {}
    for node in graph.nodes:
        if node.op != "input":
            got = infer(node, [shapes[i] for i in node.inputs], graph.source)
            if tuple(got) != tuple(node.shape):
                raise DataError(f"{graph.source or 'graph'}: node {node.name!r} declares shape "
                                f"{node.shape}, its op and inputs give {got}")
        shapes[node.name] = tuple(node.shape)


def node_macs(graph: Graph, node: Node) -> int:
    """Multiply-accumulates per image, by the op's rule (conv OH*OW*KH*KW*Cin*Cout, dense
    in*out per position, depthwise OH*OW*KH*KW*Cin*M, 0 for ops without weights).
    Open dimensions (None) count as 1: the figure is then per output position."""
    if any(d is None for d in node.shape):
        node = node.replace(shape=tuple(1 if d is None else d for d in node.shape))
    return int(node.spec.macs(node))


def _progress(it, enabled: bool, total: int):
    if not enabled:
        return it
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return it
    return tqdm(it, total=total, unit="batch")


# --------------------------------------------------------------------------------------------
# executors: one batch through the graph
# --------------------------------------------------------------------------------------------
def _make_executor(graph: Graph, engine: str):
    """A function (batch inputs, masks, recorder, groups, outputs) -> {name: array}."""
    consumers = graph.consumers()
    position = {n.name: i for i, n in enumerate(graph.nodes)}
    last_use = {n.name: max([position[c] for c in consumers[n.name]], default=-1)
                for n in graph.nodes}
    kernel_ops, pairs = None, {}
    if engine == "numba":
        # imports Numba: only when used
        from .ops.lowering import add_activation_pairs, lower  # noqa: PLC0415
        kernel_ops, pairs = lower(graph), add_activation_pairs(graph)

    def execute(batch, masks, recorder, groups, outputs, start=0, seed=None, stop=None,
                after=None):
        """Nodes at positions [start, stop) only. `seed` ({node: array}) holds every value read
        from before `start` (`batch` is then ignored); `after(position, env)` is called after
        each node has run. See refdecomp.compose."""
        keep = set(outputs)
        env: dict[str, np.ndarray] = dict(zip(graph.inputs, batch)) if seed is None \
            else dict(seed)
        done_with_producer: set[str] = set()
        for i, node in enumerate(graph.nodes):
            if stop is not None and i >= stop:
                break
            if i < start or node.op == "input" or node.name in done_with_producer:
                continue
            args = [env[s] for s in node.inputs]
            seen = None if recorder is None else recorder.target(node.name)
            mask = masks.get(node.name)
            if node.name in pairs and node.name not in keep:
                act_name, fused = pairs[node.name]
                env[act_name] = fused(args, None, None, None)
                done_with_producer.add(act_name)
            elif kernel_ops is not None and node.name in kernel_ops:
                env[node.name] = kernel_ops[node.name](args, mask, seen, groups)
            elif node.weighted:
                env[node.name] = _reference_weighted(node, args[0], mask, seen, groups)
            else:
                env[node.name] = ref.run_node(node, args)
            for s in set(node.inputs):
                if last_use[s] == i and s not in keep:
                    del env[s]
            if after is not None:
                after(i, env)
        return env

    return execute


def _reference_weighted(node: Node, x: np.ndarray, mask, seen, groups) -> np.ndarray:
    """A weighted op by the reference ops, with recording and masking."""
    pre = node.spec.linear(node, x)
    if seen is not None:
        positive = pre > 0
        own = seen.local().reshape(seen.shape[0], *pre.shape[1:])    # this thread's copy
        for g in np.unique(groups):
            if seen.counting:
                own[g] += positive[groups == g].sum(axis=0, dtype=np.uint32)
            else:
                own[g] |= positive[groups == g].any(axis=0)
    y = ref.activate(pre, node.activation, ref.describe_layer(node.name, node.keras_class))
    if mask is not None:
        y = y * mask
    return y.astype(np.float32, copy=False)
