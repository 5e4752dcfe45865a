"""Audit a decomposition made by any tool: module files (Keras files of the model's architecture)
checked against the model and the data, without TensorFlow.

The decompositions researchers publish ship each module as a full Keras file: the model with
weights zeroed or rewritten and the output layer kept N wide (Pan & Rajan FSE'20) or channeled
to two outputs. `audit_modules` reads such files (and refdecomp's own `Module.export_keras`
files, whose masks it turns back into the weights they zero) and reports, per module:

- per layer and weight array: entries unchanged, zeroed, rewritten against the model;
- units (dense units, conv channels) cut off: every incoming weight and the bias zero
  ("cut in"), every outgoing weight zero ("cut out"), both ("removed");
- the removal rule checked against the model's real forward pass: on how many images of the
  module's class (and of the other classes) each cut-off unit was active (> 0 before its
  activation, after a folded batch norm); units cut off although active on the module's own
  class come first;
- the module's own forward pass: binary accuracy as "is it class c" and whether any output
  differs from the model restricted to the class (the model's N outputs, or its head channeled
  to [concerned, unconcerned] for a two-output module);
- the Jaccard index with the model in refdecomp's two variants (`refdecomp.metrics`) and the
  prior work's "non-zero weights" size;

and per module set: composition by the FSE'20 / ICSE'22 voting rule and by margin ranking against
the model's accuracy (with the images decided by ties), and the Jaccard indices between modules.
See docs/algorithm.md ("Auditing other tools' modules") for every definition.
"""
from __future__ import annotations

import argparse
import json
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics
from .decompose.channeling import channel_weights, find_head
from .errors import DataError, ModelFormatError, RefdecompError, describe_layer
from .graph import Graph, Node
from .ops.reference import maps_zero_to_zero

# `import refdecomp` binds `audit_modules`, so the reader, the interpreter, the reports and the
# model loader are imported inside the functions that use them, keeping that import light.

#: Two outputs agree when they differ by at most this much (probabilities).
OUTPUT_TOLERANCE = 1e-5
#: How many cut-off units the Markdown report lists per module.
MARKDOWN_UNITS = 12


# -- module files ------------------------------------------------------------------------------
@dataclass
class ModuleFile:
    """One module file as read: its graph, the executable model, masks (refdecomp exports only,
    keyed by execution-graph names) and the class it stands for."""

    path: str
    class_index: int
    class_source: str
    graph: Graph
    model: Any
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    kind: str = "keras"


def class_from_file_name(path: str | Path) -> int | None:
    """The last number in the file name's stem (`module7.h5` -> 7, `MNIST-4_module0` -> 0)."""
    numbers = re.findall(r"\d+", Path(path).stem)
    return int(numbers[-1]) if numbers else None


def read_module_file(path: str | Path, class_index: int, class_source: str) -> ModuleFile:
    """Read a module file without TensorFlow. refdecomp exports (`NodeMask` layers) are read as
    the graph without the mask layers plus the masks they hold."""
    from .interpreter import Model
    from .reader import read_graph

    path = str(path)
    masked = _export_masks(path)
    if masked is None:
        graph = read_graph(path)
        return ModuleFile(path, class_index, class_source, graph, Model(graph))
    with tempfile.TemporaryDirectory(prefix="refdecomp-audit-") as tmp:
        plain, mask_by_layer = _strip_node_masks(path, Path(tmp) / "module.h5")
        graph = read_graph(plain)
    graph = Graph(graph.nodes, graph.inputs, graph.outputs, graph.name, path, graph.sha256,
                  graph.meta)
    model = Model(graph)
    masks = {}
    for layer, mask in mask_by_layer.items():
        node = _weighted_producer(graph, layer)
        masks[model.name_map[node.name]] = (mask != 0).astype(np.uint8)
    return ModuleFile(path, class_index, class_source, graph, model, masks, "refdecomp-export")


def _export_masks(path: str) -> bool | None:
    """True when `path` is an HDF5 model file holding `NodeMask` layers, else None."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
    except (OSError, ValueError):
        return None  # not HDF5: the reader gives the clear error
    if raw is None:
        return None
    raw = raw.decode() if isinstance(raw, bytes) else str(raw)
    return True if '"NodeMask"' in raw else None


def _strip_node_masks(path: str, out: Path) -> tuple[str, dict[str, np.ndarray]]:
    """Copy `path` to `out` with every NodeMask layer replaced by a pass-through layer (and its
    weight group dropped); return the copy and {masked layer name: mask}."""
    import h5py

    with h5py.File(path, "r") as src, h5py.File(out, "w") as dst:
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        config = json.loads(src.attrs["model_config"])
        layers = config["config"]["layers"]
        masks, dropped = {}, set()
        for layer in layers:
            if layer["class_name"] != "NodeMask":
                continue
            inbound = layer["inbound_nodes"][0][0][0]
            group = src["model_weights"][layer["name"]]
            names = [n.decode() if isinstance(n, bytes) else str(n)
                     for n in group.attrs["weight_names"]]
            masks[inbound] = np.asarray(group[names[0]][()])
            dropped.add(layer["name"])
            layer["class_name"] = "Dropout"
            layer["config"] = {"name": layer["name"], "rate": 0.0, "trainable": False}
        dst.attrs["model_config"] = json.dumps(config)
        weights = dst.create_group("model_weights")
        for key, value in src["model_weights"].attrs.items():
            weights.attrs[key] = value
        names = [n.decode() if isinstance(n, bytes) else str(n)
                 for n in src["model_weights"].attrs["layer_names"]]
        weights.attrs["layer_names"] = np.array([n for n in names if n not in dropped],
                                                dtype=h5py.string_dtype())
        for name in names:
            if name not in dropped:
                src.copy(src["model_weights"][name], weights, name=name)
    return str(out), masks


def _weighted_producer(graph: Graph, name: str) -> Node:
    """The conv2d / dense node whose value `name` carries (through element-wise layers)."""
    node = graph[name]
    while not node.weighted:
        if node.op not in ("activation", "identity") or len(node.inputs) != 1:
            raise ModelFormatError(f"{graph.source}: a NodeMask layer follows "
                                   f"{describe_layer(node.name, node.keras_class)}, not a "
                                   f"Conv2D / Dense layer")
        node = graph[node.inputs[0]]
    return node


# -- pairing a module's layers with the model's ------------------------------------------------
def _weighted(graph: Graph) -> list[Node]:
    return [n for n in graph.nodes if n.weights]


def _head(graph: Graph) -> Node:
    return find_head(graph)[0]


def pair_layers(model, module: ModuleFile) -> tuple[Graph | None, list[tuple[Node, Node]], str]:
    """Pair the module's layers with weights with the model's, in graph order.

    The module is compared with the model's graph as read (foreign files) or, failing that,
    with its execution graph (refdecomp exports are written folded). Returns (the model graph
    used, pairs, "") or (None, [], why they do not match)."""
    why = ""
    for reference in (model.source_graph, model.graph):
        why = _mismatch(reference, module.graph)
        if not why:
            return reference, list(zip(_weighted(reference), _weighted(module.graph))), ""
    return None, [], why


def _mismatch(reference: Graph, graph: Graph) -> str:
    """Why `graph` is not the architecture of `reference` ("" when it is)."""
    if reference.input_shapes() != graph.input_shapes():
        return (f"input shape {graph.input_shapes()} differs from the model's "
                f"{reference.input_shapes()}")
    a, b = _weighted(reference), _weighted(graph)
    if len(a) != len(b):
        return (f"{len(b)} layers with weights ({', '.join(n.name for n in b)}) where the model "
                f"has {len(a)} ({', '.join(n.name for n in a)})")
    head = _head(reference).name
    for m, n in zip(a, b):
        if m.op != n.op or sorted(m.weights) != sorted(n.weights):
            return (f"{describe_layer(n.name, n.keras_class)} is a {n.op} where the model has "
                    f"{describe_layer(m.name, m.keras_class)}, a {m.op}")
        for key in m.weights:
            s, t = m.weights[key].shape, n.weights[key].shape
            if m.name == head and s[:-1] == t[:-1] and t[-1] == 2:
                continue  # a channeled head: [concerned, unconcerned]
            if s != t:
                return (f"{describe_layer(n.name, n.keras_class)}: {key} of shape {t}, the "
                        f"model's {describe_layer(m.name, m.keras_class)} has {s}")
    return ""


# -- effective weights -------------------------------------------------------------------------
def effective_weights(module: ModuleFile) -> dict[str, dict[str, np.ndarray]]:
    """{layer: {weight: array}} the module computes with. A refdecomp export's masks become the
    weights they make useless: weights no kept connection uses (`metrics.kept_weights`), and the
    bias of a unit masked at every position."""
    out = {n.name: dict(n.weights) for n in _weighted(module.graph)}
    if not module.masks:
        return out
    exec_graph = module.model.graph
    kept = metrics.kept_weights(exec_graph, module.masks)
    by_exec = {module.model.name_map[name]: name for name in out}
    for exec_name, used in kept.items():
        name = by_exec.get(exec_name)
        if name is None:
            continue
        node = exec_graph[exec_name]
        w = dict(out[name])
        w["kernel"] = np.where(used, w["kernel"], 0).astype(np.float32)
        if "bias" in w and exec_name in module.masks:
            w["bias"] = np.where(_units_off(node, module.masks[exec_name]), 0,
                                 w["bias"]).astype(np.float32)
        out[name] = w
    return out


def _units_off(node: Node, mask: np.ndarray) -> np.ndarray:
    """Units (channels) of a conv2d / dense node masked at every position."""
    axis = _unit_axis(node)
    others = tuple(a for a in range(mask.ndim) if a != axis)
    return ~np.any(np.asarray(mask) != 0, axis=others)


def _unit_axis(node: Node) -> int:
    """Axis of a weighted node's output (without the batch axis) that indexes its units."""
    return node.spec.channel_axis(node)


# -- units cut off -----------------------------------------------------------------------------
def _outgoing_readers(graph: Graph, node: Node) -> list[tuple[str, np.ndarray, bool]] | None:
    """Where a unit's value goes: [(weighted consumer, unit index of each of its kernel's input
    rows / channels (-1 for rows fed by other units), whether those rows carry that unit alone
    and a zero stays zero on the way)], or None when some path reaches the output or an op whose
    mixing this analysis does not follow (units are then never "cut out")."""
    consumers = graph.consumers()
    axis = _unit_axis(node)
    unit = np.broadcast_to(np.arange(node.shape[axis]).reshape(
        [-1 if a == axis else 1 for a in range(len(node.shape))]), node.shape)
    found: list[tuple[str, np.ndarray, bool]] = []
    todo = [(node.name, unit, _keeps_zero(node.activation))]
    while todo:
        name, units, alone = todo.pop()
        if name in graph.outputs:
            return None
        for reader in consumers[name]:
            r = graph[reader]
            if r.weighted:
                found.append((reader, _rows_of(r, units), alone))
            else:   # the op's unit flow (refdecomp/ops/defs/), None: not followed
                flow = r.spec.units and r.spec.units(r, units, name, graph)
                if not flow:
                    return None
                todo.append((reader, flow[0], alone and flow[1]))
    return found


def _keeps_zero(act: Mapping[str, Any] | None) -> bool:
    """Whether an activation maps 0 to 0 (a unit with no input then outputs exactly 0)."""
    return not act or maps_zero_to_zero(act)


def _rows_of(reader: Node, units: np.ndarray) -> np.ndarray:
    """Unit index feeding each input row (a (in, out) kernel: dense) or input channel (a
    (KH, KW, Cin, ...) kernel: conv2d, depthwise_conv2d) of `reader`."""
    units = np.asarray(units)
    if reader.weights["kernel"].ndim == 2:
        return units.reshape(-1, reader.weights["kernel"].shape[0])[0]
    cf = reader.attrs.get("data_format") == "channels_first"
    return units[:, 0, 0] if cf else units.reshape(-1, units.shape[-1])[0]


def cut_units(graph: Graph, weights: Mapping[str, Mapping[str, np.ndarray]],
              exclude: frozenset[str] = frozenset()) -> dict[str, dict[str, Any]]:
    """{layer: {"cut_in", "cut_out": boolean per unit, "dead_rows": {reader: rows}}} for every
    conv2d / dense layer of `graph` evaluated with `weights`: cut in = every incoming kernel
    entry and the bias are 0; cut out = every kernel entry of the layers reading the unit is 0.
    `dead_rows`: the readers' input rows that carry only cut-in units whose output is 0."""
    out = {}
    for node in graph.weighted_nodes():
        if node.name in exclude:
            continue
        w = weights[node.name]
        kernel = np.asarray(w["kernel"])
        cut_in = ~np.any(kernel.reshape(-1, kernel.shape[-1]) != 0, axis=0)
        if "bias" in w:
            cut_in &= np.asarray(w["bias"]) == 0
        readers = _outgoing_readers(graph, node)
        n_units = kernel.shape[-1]
        cut_out = np.zeros(n_units, bool) if readers is None else np.ones(n_units, bool)
        dead_rows = {}
        for reader, rows, alone in readers or []:
            k = np.asarray(weights[reader]["kernel"])
            k = k.reshape(-1, k.shape[-2], k.shape[-1]) if k.ndim == 4 else k[None]
            reads = np.any(k != 0, axis=(0, 2))  # per input row / channel
            used = np.zeros(n_units, bool)
            ok = rows >= 0
            np.logical_or.at(used, rows[ok], reads[ok])
            cut_out &= ~used
            if alone:
                dead = np.zeros(rows.shape, bool)
                dead[ok] = cut_in[rows[ok]]
                dead_rows[reader] = dead
        out[node.name] = {"cut_in": cut_in, "cut_out": cut_out, "dead_rows": dead_rows}
    return out


def live_nonzero(graph: Graph, weights: Mapping[str, Mapping[str, np.ndarray]],
                 cut: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """{layer: non-zero weights that can still change an output}: kernel entries neither into
    a cut-out unit nor out of a cut-in unit whose output is 0, and biases of units not cut
    out (one step: units fed only by removed units are not followed further)."""
    dead_in: dict[str, np.ndarray] = {}
    for info in cut.values():
        for reader, rows in info["dead_rows"].items():
            dead_in[reader] = dead_in.get(reader, np.zeros(rows.shape, bool)) | rows
    out = {}
    for node in _weighted(graph):
        w = weights[node.name]
        if not node.weighted:
            out[node.name] = int(sum(int((np.asarray(a) != 0).sum()) for a in w.values()))
            continue
        kernel = np.asarray(w["kernel"])
        live = kernel != 0
        if node.name in cut:
            live &= ~cut[node.name]["cut_out"]
        if node.name in dead_in:
            shape = [1] * kernel.ndim
            shape[-2] = -1
            live &= ~dead_in[node.name].reshape(shape)
        count = int(live.sum())
        if "bias" in w:
            b = np.asarray(w["bias"]) != 0
            if node.name in cut:
                b &= ~cut[node.name]["cut_out"]
            count += int(b.sum())
        out[node.name] = count
    return out


# -- the model's activity on the data ----------------------------------------------------------
def unit_activity(model, x: np.ndarray, y: np.ndarray, n_classes: int, batch_size: int = 256,
                  progress: bool = False) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One pass of the model: ({exec layer: (n_classes, units) images of each class on which the
    unit was > 0 somewhere before its activation}, {exec layer: (n_classes, *shape) whether some
    image of the class made that node > 0})."""
    from .interpreter import Recorder, _progress

    names = [n.name for n in model.graph.weighted_nodes()]
    counts = {m: np.zeros((n_classes, model.graph[m].shape[_unit_axis(model.graph[m])]),
                          np.int64) for m in names}
    seen_by_class = {m: np.zeros((n_classes, *model.graph[m].shape), bool) for m in names}
    starts = range(0, len(y), batch_size)
    for start in _progress(starts, progress, total=len(starts)):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        rec = Recorder(model.graph, len(yb), names)
        model.run(xb, len(yb), recorder=rec, groups=np.arange(len(yb)))
        onehot = (yb[:, None] == np.arange(n_classes)[None, :]).astype(np.float32)
        seen_batch = rec.seen
        for m in names:
            node = model.graph[m]
            seen = seen_batch[m]
            axis = _unit_axis(node) + 1
            others = tuple(a for a in range(1, seen.ndim) if a != axis)
            active = seen.any(axis=others) if others else seen.astype(bool)
            counts[m] += (onehot.T @ active.astype(np.float32)).astype(np.int64)
            flat = seen.reshape(len(yb), -1).astype(np.float32)
            seen_by_class[m] |= ((onehot.T @ flat) > 0).reshape(seen_by_class[m].shape)
    return counts, seen_by_class


# -- forward passes and composition ------------------------------------------------------------
def logits_model(model, masks: Mapping[str, np.ndarray] | None = None):
    """A model over `model`'s execution graph that outputs the head's logits (softmax dropped)."""
    from .interpreter import Model

    graph = model.graph
    head, tail = find_head(graph)
    attrs = {**head.attrs, "activation": {"name": "linear"}}
    dropped = {n.name for n in tail}
    nodes = [head.replace(attrs=attrs) if n.name == head.name else n
             for n in graph.nodes if n.name not in dropped]
    g = Graph(nodes, list(graph.inputs), [head.name], graph.name, graph.source, graph.sha256,
              dict(graph.meta))
    g.validate()
    return Model(g, fold=False, engine=model.engine)


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def module_view(z: np.ndarray, c: int) -> dict[str, np.ndarray]:
    """A module's decision from its logits `z` (n, N or 2): whether it says "class c" (argmax is
    c; for two outputs, [concerned, unconcerned], concerned >= unconcerned), its own-class score
    (probability of c / of "concerned") and its margin (logit of c minus the best other)."""
    z = np.asarray(z, np.float64)
    p = softmax(z)
    if z.shape[1] == 2:
        return {"probs": p, "votes": p[:, 0] >= p[:, 1], "own": p[:, 0],
                "margin": z[:, 0] - z[:, 1]}
    others = np.delete(z, c, axis=1)
    return {"probs": p, "votes": np.argmax(p, axis=1) == c, "own": p[:, c],
            "margin": z[:, c] - others.max(axis=1)}


def vote(votes: np.ndarray, own: np.ndarray, classes: Sequence[int]) -> dict[str, Any]:
    """The FSE'20 / ICSE'22 voting rule over modules (columns).

    A module votes when it says its own class. One vote decides; with several voters the one
    with the highest own-class score wins; with none, the highest own-class score of all.
    Ties (equal highest scores) go to the first column. Returns predictions and how each image
    was decided."""
    votes = np.asarray(votes, bool)
    own = np.asarray(own, np.float64)
    classes = np.asarray(classes)
    n_votes = votes.sum(axis=1)
    candidates = np.where(n_votes[:, None] > 0, votes, True)
    score = np.where(candidates, own, -np.inf)
    best = score.max(axis=1, keepdims=True)
    at_best = (score == best) & candidates
    pick = np.argmax(at_best, axis=1)
    tie = (at_best.sum(axis=1) > 1) & (n_votes != 1)
    # The FSE'20 scripts (Reuse.py) return, when several modules vote, the position of the
    # winner among the voters rather than its class.
    rank_among_voters = np.cumsum(votes, axis=1)[np.arange(len(pick)), pick] - 1
    script = np.where(n_votes > 1, rank_among_voters, classes[pick])
    return {"pred": classes[pick], "pred_fse20_script": script,
            "one_vote": n_votes == 1, "several_votes": n_votes > 1, "no_vote": n_votes == 0,
            "tie": tie}


def rank_by_margin(margins: np.ndarray, classes: Sequence[int]) -> dict[str, Any]:
    """Each image goes to the module with the largest margin (ties: the first column)."""
    margins = np.asarray(margins, np.float64)
    best = margins.max(axis=1, keepdims=True)
    at_best = margins == best
    return {"pred": np.asarray(classes)[np.argmax(at_best, axis=1)],
            "tie": at_best.sum(axis=1) > 1}


# -- weight comparison -------------------------------------------------------------------------
def compare_arrays(model_w: np.ndarray, module_w: np.ndarray, *, close: bool = False
                   ) -> dict[str, int]:
    """Entries unchanged, zeroed (non-zero in the model, zero in the module) and rewritten."""
    a, b = np.asarray(model_w), np.asarray(module_w)
    same = np.isclose(a, b, rtol=1e-6, atol=1e-7) if close else a == b
    zeroed = ~same & (b == 0)
    return {"total": int(a.size), "unchanged": int(same.sum()), "zeroed": int(zeroed.sum()),
            "rewritten": int((~same & ~zeroed).sum()), "nonzero": int((b != 0).sum()),
            "nonzero_model": int((a != 0).sum())}


def _status(model_w: np.ndarray, module_w: np.ndarray, close: bool = False) -> np.ndarray:
    """Per entry: 0 unchanged, 1 zeroed, 2 rewritten."""
    a, b = np.asarray(model_w), np.asarray(module_w)
    same = np.isclose(a, b, rtol=1e-6, atol=1e-7) if close else a == b
    return np.where(same, 0, np.where(b == 0, 1, 2)).astype(np.int8)


def _present_kernels(weights: Mapping[str, Mapping[str, np.ndarray]], names: Sequence[str],
                     status: Mapping[str, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
    """Hidden-layer kernels flattened in order, and which entries the module has (not zeroed)."""
    values = np.concatenate([np.asarray(weights[n]["kernel"], np.float32).ravel()
                             for n in names]) if names else np.zeros(0, np.float32)
    if status is None:
        return values, np.ones(values.size, bool)
    present = np.concatenate([status[n].ravel() != 1 for n in names]) if names else \
        np.zeros(0, bool)
    return values, present


def set_jaccard(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    """Exact set Jaccard of two weight sets given as (values, present) over the same positions:
    an element is (position, value); zeroed weights are absent."""
    (va, pa), (vb, pb) = a, b
    both = int((pa & pb & (va == vb)).sum())
    union = int(pa.sum()) + int(pb.sum()) - both
    return both / union if union else 1.0


# -- the audit ---------------------------------------------------------------------------------
def audit_modules(model, module_files, x, y, *, classes=None, batch_size: int = 256,
                  progress: bool = False) -> dict[str, Any]:
    """Audit module files against `model` (a refdecomp `Model` or a model file path) on images
    `x` with labels `y`.

    `module_files`: a list of Keras files (one module set), or {set name: list of files} to
    audit several decompositions of the same model side by side. `classes`: the class of each
    file, in order (a list, or {set name: list}); by default the last number in each file name.
    Returns a JSON-ready dict (see `markdown_report` for the layout)."""
    from .loading import load_model

    model_path = ""
    if not hasattr(model, "graph"):
        model_path = str(model)
        model = load_model(model)
    else:
        model_path = model.source_graph.source
    x = np.asarray(x, np.float32)
    y = np.asarray(y).reshape(-1).astype(np.int64)
    if len(y) != len(x):
        raise DataError(f"audit-modules: {len(y)} labels for {len(x)} images")
    if len(y) == 0:
        raise DataError("audit-modules: no images to audit on")
    sets = _named_sets(module_files, classes)
    n_classes = int(_head(model.graph).weights["kernel"].shape[1])
    if y.min() < 0 or y.max() >= n_classes:
        raise DataError(f"audit-modules: labels range over [{y.min()}, {y.max()}], the model has "
                        f"{n_classes} outputs")

    model_z = logits_model(model).run(x, batch_size, progress=progress)[0].astype(np.float64)
    model_pred = np.argmax(model_z, axis=1)
    counts, seen_by_class = unit_activity(model, x, y, n_classes, batch_size, progress)
    class_sizes = np.bincount(y, minlength=n_classes)

    report_sets = []
    for set_name, files in sets.items():
        modules, views, per = [], [], []
        for path, c, source in files:
            if not 0 <= c < n_classes:
                raise DataError(f"module file {path!r}: class {c} ({source}) is not one of the "
                                f"model's {n_classes} classes")
            mod = read_module_file(path, c, source)
            entry, view, extra = _audit_one(model, mod, x, y, model_z, counts, seen_by_class,
                                            class_sizes, batch_size, progress)
            entry["set"] = set_name
            modules.append((mod, extra))
            views.append(view)
            per.append(entry)
        seen_classes = [m.class_index for m, _ in modules]
        if len(set(seen_classes)) != len(seen_classes):
            raise DataError(f"module set {set_name!r}: two files for the same class "
                            f"({seen_classes}); give --classes")
        report_sets.append({
            "name": set_name, "modules": per,
            "composition": _composition(views, seen_classes, y, model_pred),
            "between_modules": _between(modules)})
    return {
        "model": model_path, "model_sha256": model.source_graph.sha256,
        "n_images": int(len(y)), "n_classes": n_classes,
        "class_counts": class_sizes.tolist(),
        "model_top1": float(np.mean(model_pred == y)),
        "tolerance": OUTPUT_TOLERANCE, "sets": report_sets}


def _named_sets(module_files, classes) -> dict[str, list[tuple[str, int, str]]]:
    """{set name: [(file, class, where the class came from)]}."""
    if isinstance(module_files, (str, Path)):
        raise RefdecompError("audit_modules: module_files must be a list of files (or a dict of "
                             "lists), not one path")
    if isinstance(module_files, Mapping):
        named = {str(k): list(v) for k, v in module_files.items()}
    else:
        named = {"modules": list(module_files)}
    if classes is not None and not isinstance(classes, Mapping):
        if len(named) != 1:
            raise RefdecompError("audit_modules: with several module sets give classes as a "
                                 "dict {set name: list}")
        classes = {next(iter(named)): classes}
    out = {}
    for name, files in named.items():
        if not files:
            raise RefdecompError(f"module set {name!r}: no module files")
        given = None if classes is None else classes.get(name)
        if given is not None and len(given) != len(files):
            raise RefdecompError(f"module set {name!r}: {len(given)} classes for {len(files)} "
                                 f"module files")
        rows = []
        for i, path in enumerate(files):
            if given is not None:
                rows.append((str(path), int(given[i]), "given"))
                continue
            c = class_from_file_name(path)
            if c is None:
                raise RefdecompError(f"module file {str(path)!r}: no number in its name to take "
                                     f"the class from; give the classes (--classes 0,1,...)")
            rows.append((str(path), c, f"file name {Path(path).name!r}"))
        out[name] = rows
    return out


def _audit_one(model, mod: ModuleFile, x, y, model_z, counts, seen_by_class, class_sizes,
               batch_size, progress):
    c = mod.class_index
    if mod.graph.input_shapes() != model.source_graph.input_shapes():
        raise DataError(f"module file {mod.path!r} takes inputs of shape "
                        f"{mod.graph.input_shapes()}, the model {model.source_graph.input_shapes()}"
                        f": it is not a module of this model")
    reference, pairs, mismatch = pair_layers(model, mod)
    if mismatch and mod.kind == "refdecomp-export":
        mismatch += " (a compact export? audit the module exported without --compact)"
    weights = effective_weights(mod)
    mod_head = _head(mod.graph)
    width = int(mod_head.weights["kernel"].shape[1])
    n_classes = model_z.shape[1]
    if width not in (2, n_classes):
        raise DataError(f"module file {mod.path!r}: its output layer has {width} outputs; a "
                        f"module has 2 (channeled) or the model's {n_classes}")
    entry: dict[str, Any] = {
        "file": mod.path, "class": c, "class_source": mod.class_source, "kind": mod.kind,
        "outputs": width, "comparable": not mismatch, "mismatch": mismatch or None}

    # weights, layer by layer
    layers, status = [], {}
    if reference is not None:
        head = _head(reference).name
        for m, n in pairs:
            row = {"layer": n.name, "model_layer": m.name, "op": n.op}
            st = {}
            for key in sorted(m.weights):
                ref_w = m.weights[key]
                channeled = m.name == head and width == 2
                if channeled:
                    k2, b2 = channel_weights(m.weights["kernel"], m.weights.get("bias"), c)
                    ref_w = k2 if key == "kernel" else b2
                row[key] = compare_arrays(ref_w, weights[n.name][key], close=channeled)
                st[key] = _status(ref_w, weights[n.name][key], close=channeled)
            if m.name == head:
                row["head"] = "channeled" if width == 2 else "full"
            status[n.name] = st.get("kernel")
            layers.append(row)
    else:
        for n in _weighted(mod.graph):
            row = {"layer": n.name, "model_layer": None, "op": n.op}
            for key in sorted(n.weights):
                w = np.asarray(weights[n.name][key])
                row[key] = {"total": int(w.size), "nonzero": int((w != 0).sum())}
            layers.append(row)
    entry["layers"] = layers

    # units cut off, and the removal rule against the model's activity
    hidden = [n for n in mod.graph.weighted_nodes() if n.name != mod_head.name]
    cut = cut_units(mod.graph, weights, frozenset({mod_head.name}))
    model_cut = {}
    if reference is not None:
        ref_weights = {m.name: m.weights for m in _weighted(reference)}
        model_cut = cut_units(reference, ref_weights, frozenset({_head(reference).name}))
    to_model = {n.name: m.name for m, n in pairs}
    unit_rows, flagged_rows, totals = [], [], {"units": 0, "cut_in": 0, "cut_out": 0,
                                               "removed": 0, "cut_off": 0}
    for node in hidden:
        cin, cout = cut[node.name]["cut_in"], cut[node.name]["cut_out"]
        mname = to_model.get(node.name)
        if mname in model_cut:  # only what the module did, not what the model already had
            cin = cin & ~model_cut[mname]["cut_in"]
            cout = cout & ~model_cut[mname]["cut_out"]
        off = cin | cout
        for row in layers:
            if row["layer"] == node.name:
                row["units"] = {"total": int(cin.size), "cut_in": int(cin.sum()),
                                "cut_out": int(cout.sum()), "removed": int((cin & cout).sum()),
                                "cut_off": int(off.sum())}
        totals["units"] += int(cin.size)
        totals["cut_in"] += int(cin.sum())
        totals["cut_out"] += int(cout.sum())
        totals["removed"] += int((cin & cout).sum())
        totals["cut_off"] += int(off.sum())
        exec_name = model.name_map.get(mname) if mname is not None else None
        activity = counts.get(exec_name) if exec_name is not None else None
        if activity is not None and activity.shape[1] != cin.size:
            activity = None
        for u in np.flatnonzero(off):
            how = "removed" if cin[u] and cout[u] else ("cut in" if cin[u] else "cut out")
            r = {"layer": node.name, "unit": int(u), "how": how}
            if activity is not None:
                own = int(activity[c, u])
                r.update(active_own=own, own_images=int(class_sizes[c]),
                         active_other=int(activity[:, u].sum() - own),
                         other_images=int(class_sizes.sum() - class_sizes[c]))
            (flagged_rows if r.get("active_own") else unit_rows).append(r)
    flagged_rows.sort(key=lambda r: (-r["active_own"], r["layer"], r["unit"]))
    checked = reference is not None
    entry["units"] = {**totals, "checked_against_model": checked,
                      "cut_off_although_active": len(flagged_rows) if checked else None,
                      "list": flagged_rows + unit_rows}
    if mod.masks:
        to_model_exec = {mod.model.name_map[n.name]: model.name_map.get(m.name)
                         for m, n in pairs}
        entry["masked_nodes"] = _masked_nodes(mod, seen_by_class, to_model_exec)

    # the module's own forward pass
    z = logits_model(mod.model).run(x, batch_size, masks=mod.masks or None,
                                    progress=progress)[0]
    view = module_view(z, c)
    truth = y == c
    entry["binary_accuracy"] = float(np.mean(view["votes"] == truth))
    entry["says_class"] = int(view["votes"].sum())
    entry["top1_as_classifier"] = (float(np.mean(np.argmax(z, axis=1) == y))
                                   if width == n_classes else None)
    if reference is not None:
        ref_z = model_z if width == n_classes else np.stack(
            [model_z[:, c], np.delete(model_z, c, axis=1).mean(axis=1)], axis=1)
        ref = module_view(ref_z, c)
        diff = np.abs(view["probs"] - ref["probs"]).max(axis=1)
        entry["vs_model"] = {
            "reference": "model outputs" if width == n_classes
            else f"model head channeled to class {c}",
            "binary_accuracy_model": float(np.mean(ref["votes"] == truth)),
            "max_abs_difference": float(diff.max()),
            "images_differing": int((diff > OUTPUT_TOLERANCE).sum()),
            "decisions_differing": int((view["votes"] != ref["votes"]).sum()),
            "identical": bool((diff <= OUTPUT_TOLERANCE).all())}
    else:
        entry["vs_model"] = None

    # sizes and Jaccard indices with the model
    kernels = np.concatenate([np.asarray(weights[n.name]["kernel"], np.float32).ravel()
                              for n in mod.graph.weighted_nodes()])
    model_kernels = metrics.model_kernels(model.graph if reference is None else reference)
    nz_mod = int(sum(int((np.asarray(a) != 0).sum()) for w in weights.values()
                     for a in w.values()))
    live = live_nonzero(mod.graph, weights, cut)
    entry["nonzero_weights"] = {"module": nz_mod, "module_live": int(sum(live.values()))}
    for row in layers:
        row["live_nonzero"] = live.get(row["layer"])
    entry["jaccard_values"] = metrics.jaccard_values(kernels, model_kernels)
    entry["jaccard_set"] = None
    extra = {"weights": weights, "kernels": kernels, "hidden": None}
    if reference is not None:
        nz_model = int(sum(int((np.asarray(a) != 0).sum()) for m in _weighted(reference)
                           for a in m.weights.values()))
        entry["nonzero_weights"].update(
            model=nz_model, fraction=nz_mod / nz_model if nz_model else 1.0,
            fraction_live=entry["nonzero_weights"]["module_live"] / nz_model
            if nz_model else 1.0)
        names = [n.name for n in hidden]
        ref_names = [to_model[n] for n in names]
        ref_hidden = _present_kernels({m.name: m.weights for m in _weighted(reference)},
                                      ref_names, None)
        mine = _present_kernels(weights, names, status)
        entry["jaccard_set"] = set_jaccard(mine, ref_hidden)
        extra["hidden"] = mine
        k = [row["kernel"] for row in layers if row["layer"] in names]
        entry["hidden_kernels"] = {key: int(sum(r[key] for r in k))
                                   for key in ("total", "unchanged", "zeroed", "rewritten")}
    return entry, view, extra


def _masked_nodes(mod: ModuleFile, seen_by_class, to_model_exec) -> dict[str, int | None]:
    """For refdecomp exports: nodes (position x channel) masked, and how many of them some
    image of the module's class made > 0 in the model (None when not comparable)."""
    masked = active = 0
    for name, mask in mod.masks.items():
        off = np.asarray(mask) == 0
        masked += int(off.sum())
        seen = seen_by_class.get(to_model_exec.get(name))
        if seen is not None and seen.shape[1:] == off.shape:
            active += int((off & seen[mod.class_index]).sum())
    return {"masked": masked, "masked_although_active": active if to_model_exec else None}


def _composition(views, classes, y, model_pred) -> dict[str, Any] | None:
    if len(views) < 2:
        return None
    votes = np.stack([v["votes"] for v in views], axis=1)
    own = np.stack([v["own"] for v in views], axis=1)
    margins = np.stack([v["margin"] for v in views], axis=1)
    v = vote(votes, own, classes)
    r = rank_by_margin(margins, classes)
    return {
        "classes": list(classes),
        "model_top1": float(np.mean(model_pred == y)),
        "voting": {"top1": float(np.mean(v["pred"] == y)),
                   "top1_fse20_script": float(np.mean(v["pred_fse20_script"] == y)),
                   "one_vote": int(v["one_vote"].sum()),
                   "several_votes": int(v["several_votes"].sum()),
                   "no_vote": int(v["no_vote"].sum()), "ties": int(v["tie"].sum()),
                   "agrees_with_model": int((v["pred"] == model_pred).sum())},
        "margin": {"top1": float(np.mean(r["pred"] == y)), "ties": int(r["tie"].sum()),
                   "agrees_with_model": int((r["pred"] == model_pred).sum())}}


def _between(modules) -> dict[str, Any]:
    """Jaccard indices between every two modules of a set (value-based; set Jaccard where both
    have the model's architecture)."""
    n = len(modules)
    values = np.eye(n)
    sets = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            (_, ea), (_, eb) = modules[i], modules[j]
            values[i, j] = values[j, i] = metrics.jaccard_values(ea["kernels"], eb["kernels"])
            if ea["hidden"] is not None and eb["hidden"] is not None \
                    and ea["hidden"][0].shape == eb["hidden"][0].shape:
                sets[i, j] = sets[j, i] = set_jaccard(ea["hidden"], eb["hidden"])
            else:
                sets[i, j] = sets[j, i] = np.nan
    off = ~np.eye(n, dtype=bool)
    return {"classes": [m.class_index for m, _ in modules],
            "jaccard_values": values.tolist(),
            "jaccard_set": [[None if np.isnan(v) else float(v) for v in row] for row in sets],
            "mean_jaccard_values": float(values[off].mean()) if n > 1 else None,
            "mean_jaccard_set": (float(np.nanmean(sets[off]))
                                 if n > 1 and not np.isnan(sets[off]).all() else None)}


# -- reports -----------------------------------------------------------------------------------
def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _num(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def markdown_report(result: dict[str, Any]) -> str:
    """The audit as Markdown: one summary table over every module of every set, composition per
    set, then per module its layer table and the units it cut off (active ones first)."""
    from .report import markdown_table

    lines = [f"# Module audit of {result['model']}", "",
             f"{result['n_images']} images, model top-1 {_pct(result['model_top1'])}.", ""]
    rows = []
    for s in result["sets"]:
        for m in s["modules"]:
            hk = m.get("hidden_kernels") or {}
            total = hk.get("total") or 0
            u = m["units"]
            vs = m["vs_model"] or {}
            nz = m["nonzero_weights"]
            rows.append([
                s["name"], Path(m["file"]).name, m["class"], m["kind"], m["outputs"],
                _pct(hk["zeroed"] / total) if total else "-",
                _pct(hk["rewritten"] / total) if total else "-",
                f"{u['cut_off']}/{u['units']}",
                "-" if u["cut_off_although_active"] is None else u["cut_off_although_active"],
                _pct(m["binary_accuracy"]),
                "-" if not vs else ("yes" if vs["identical"] else
                                    f"no ({vs['images_differing']} images)"),
                _num(m["jaccard_values"]), _num(m["jaccard_set"]),
                _pct(nz.get("fraction")), _pct(nz.get("fraction_live"))])
    lines.append(markdown_table(
        ["set", "file", "class", "kind", "outputs", "hidden weights zeroed", "rewritten",
         "units cut off", "cut off though active", "binary accuracy", "same outputs as model",
         "JI (values)", "JI (set)", "non-zero weights", "live non-zero"], rows))
    for s in result["sets"]:
        m0 = s["modules"]
        mism = [m for m in m0 if m["mismatch"]]
        for m in mism:
            lines.append(f"- {Path(m['file']).name}: not the model's architecture: "
                         f"{m['mismatch']}; figures against the model are left out.")
        lines.append("")
        sources = ", ".join(f"{Path(m['file']).name} -> {m['class']} ({m['class_source']})"
                            for m in m0)
        lines.append(f"Classes of set {s['name']!r}: {sources}.")
        lines.append("")
        comp = s["composition"]
        if comp:
            v, r = comp["voting"], comp["margin"]
            lines.append(markdown_table(
                ["set", "model top-1", "voting top-1", "one vote", "several votes", "no vote",
                 "ties", "FSE'20 script indexing", "margin top-1", "margin ties"],
                [[s["name"], _pct(comp["model_top1"]), _pct(v["top1"]), v["one_vote"],
                  v["several_votes"], v["no_vote"], v["ties"], _pct(v["top1_fse20_script"]),
                  _pct(r["top1"]), r["ties"]]]))
        b = s["between_modules"]
        if b["mean_jaccard_values"] is not None:
            lines.append(f"Mean Jaccard index between the modules of {s['name']!r}: "
                         f"{_num(b['mean_jaccard_values'])} (values), "
                         f"{_num(b['mean_jaccard_set'])} (set).")
            lines.append("")
    for s in result["sets"]:
        for m in s["modules"]:
            lines += ["", f"## {s['name']}: {Path(m['file']).name} (class {m['class']})", ""]
            if m["mismatch"]:
                lines += [f"Not the model's architecture: {m['mismatch']}.", ""]
            lrows = []
            for row in m["layers"]:
                k, b = row.get("kernel", {}), row.get("bias", {})
                un = row.get("units", {})
                lrows.append([row["layer"], row["op"], k.get("total", "-"),
                              k.get("unchanged", "-"), k.get("zeroed", "-"),
                              k.get("rewritten", "-"),
                              k.get("nonzero", 0) + b.get("nonzero", 0),
                              row.get("live_nonzero", "-"),
                              b.get("unchanged", "-"), b.get("zeroed", "-"),
                              b.get("rewritten", "-"),
                              f"{un['cut_in']}/{un['cut_out']}/{un['removed']} of {un['total']}"
                              if un else row.get("head", "-")])
            lines.append(markdown_table(
                ["layer", "op", "kernel", "unchanged", "zeroed", "rewritten",
                 "non-zero (kernel + bias)", "live", "bias unchanged", "bias zeroed",
                 "bias rewritten", "units cut in/out/both"], lrows))
            if m.get("masked_nodes"):
                mn = m["masked_nodes"]
                lines.append(f"Masked nodes: {mn['masked']}, of which "
                             f"{mn['masked_although_active']} were > 0 on some image of class "
                             f"{m['class']} in the model.")
                lines.append("")
            listed = m["units"]["list"][:MARKDOWN_UNITS]
            if listed and "active_own" in listed[0]:
                lines.append(markdown_table(
                    ["layer", "unit", "how", f"active on class {m['class']}", "of",
                     "active on others", "of"],
                    [[r["layer"], r["unit"], r["how"], r["active_own"], r["own_images"],
                      r["active_other"], r["other_images"]] for r in listed]))
                more = len(m["units"]["list"]) - len(listed)
                if more > 0:
                    lines.append(f"... and {more} more units (all in the JSON report).")
            nz = m["nonzero_weights"]
            lines.append(f"Non-zero weights (kernels and biases): {nz['module']}, of which "
                         f"{nz['module_live']} can still change an output"
                         + (f"; the model has {nz['model']}." if "model" in nz else "."))
            if m.get("top1_as_classifier") is not None:
                lines.append(f"As a {m['outputs']}-class classifier the module scores "
                             f"{_pct(m['top1_as_classifier'])} top-1.")
            vs = m["vs_model"]
            if vs:
                lines.append(f"Binary accuracy {_pct(m['binary_accuracy'])} (the "
                             f"{vs['reference']}: {_pct(vs['binary_accuracy_model'])}); "
                             f"largest output difference {vs['max_abs_difference']:.3g}, "
                             f"{vs['decisions_differing']} decisions differ.")
    return "\n".join(lines).rstrip() + "\n"


def write_audit_report(result: dict[str, Any], out_dir: str | Path,
                       name: str = "audit-modules") -> dict[str, Path]:
    """JSON, Markdown and a plot (binary accuracy, non-zero weights, Jaccard indices and the
    share of cut-off units that were active, per module) into `out_dir`."""
    from .report import bar_plots, command_line, write_report

    paths = write_report(out_dir, name, result, markdown_report(result))
    labels, series = [], {"binary accuracy": [], "non-zero weights": [], "JI (values)": [],
                          "JI (set)": [], "cut off though active": []}
    for s in result["sets"]:
        for m in s["modules"]:
            labels.append(f"{s['name']}: {m['class']}")
            u = m["units"]
            series["binary accuracy"].append(m["binary_accuracy"])
            series["non-zero weights"].append(m["nonzero_weights"].get("fraction") or 0.0)
            series["JI (values)"].append(m["jaccard_values"])
            series["JI (set)"].append(m["jaccard_set"] or 0.0)
            series["cut off though active"].append(
                (u["cut_off_although_active"] or 0) / u["cut_off"] if u["cut_off"] else 0.0)
    plot = bar_plots(Path(out_dir) / f"{name}.png", f"module audit of {Path(result['model']).name}",
                     labels, series, command=command_line())
    if plot is not None:
        paths["plot"] = plot
    return paths


# -- command line ------------------------------------------------------------------------------
def add_arguments(p) -> None:
    """Options of `refdecomp audit-modules` (the model and data options come from the CLI)."""
    p.add_argument("--modules", nargs="+", action="append", required=True, metavar="FILE",
                   help="module files (Keras files of the model's architecture, 2 or N outputs); "
                        "repeat --modules to audit several decompositions side by side")
    p.add_argument("--classes", action="append", metavar="C,C,...",
                   help="class of each module file, in order (one --classes per --modules); "
                        "default: the last number in each file name")
    p.add_argument("--labels", metavar="NAME,NAME,...",
                   help="names of the module sets in the report (default: set 1, set 2, ...)")
    p.add_argument("--split", default="test", choices=["train", "test"],
                   help="dataset split to audit on (default: test)")
    p.add_argument("--report-dir", help="write JSON, Markdown and a plot here")
    try:  # the shared data options may already offer it
        p.add_argument("--scale", type=float, default=1.0,
                       help="multiply the pixels by this before the model sees them "
                            "(default: 1, raw 0..255 pixels)")
    except argparse.ArgumentError:
        pass


def _described(pre) -> str:
    if pre is None or pre.is_identity:
        return ""
    if pre.subtract == "none" and pre.divide == "none" and not pre.channels_first:
        return f", pixels x {pre.scale:g}"
    return f", preprocessing {pre.describe()}"


def run_command(args, dataset, preprocessing=None) -> tuple[dict[str, Any], str, int]:
    """`refdecomp audit-modules`: (JSON data, text, exit status) for parsed `args`, a loaded
    dataset and the fitted `Preprocessing` the options state (None: raw pixels)."""
    from .experiments import parse_classes

    if args.labels:
        labels = [s.strip() for s in args.labels.split(",")]
        if len(labels) != len(args.modules):
            raise RefdecompError(f"argument --labels {args.labels!r}: {len(labels)} names for "
                                 f"{len(args.modules)} --modules lists")
    else:
        labels = [f"set {i + 1}" for i in range(len(args.modules))]
    if len(set(labels)) != len(labels):
        raise RefdecompError(f"argument --labels {args.labels!r}: names must differ")
    classes = None
    if args.classes:
        if len(args.classes) != len(args.modules):
            raise RefdecompError(f"argument --classes: {len(args.classes)} lists for "
                                 f"{len(args.modules)} --modules lists; give one per --modules")
        classes = {name: parse_classes(text, "--classes")
                   for name, text in zip(labels, args.classes)}
    x, y = dataset.split(args.split)
    if preprocessing is None and not isinstance(getattr(args, "scale", None), str):
        from .preprocessing import Preprocessing  # the audit's own --scale option

        preprocessing = Preprocessing(scale=float(getattr(args, "scale", 1.0) or 1.0))
    x = np.asarray(x, np.float32) if preprocessing is None else preprocessing(x)
    from .loading import load_model

    model = load_model(args.model, architecture=getattr(args, "architecture", None))
    result = audit_modules(model, dict(zip(labels, args.modules)), x, y, classes=classes,
                           batch_size=args.batch_size, progress=not args.no_progress)
    result["data"] = f"{dataset.name} {args.split} split" + _described(preprocessing)
    text = markdown_report(result)
    if args.report_dir:
        paths = write_audit_report(result, args.report_dir)
        result["reports"] = {k: str(v) for k, v in paths.items()}
        text += "\nwrote " + ", ".join(str(v) for v in paths.values()) + "\n"
    return result, text, 0
