"""Figures of merit of a decomposition: composed accuracy, module size and Jaccard indices.

Definitions (see docs/algorithm.md):

- composed prediction: the class whose module gives the largest margin (concerned logit minus
  unconcerned logit, float32); ties (equal margins) go to the lowest class index (`np.argmax`
  order). top-k ranks the margins (stable). The margin orders exactly as the concerned
  probability does in exact arithmetic, but the float32 probability saturates at 1.0.
- a *node* is an output element (position x channel, or unit) of a conv2d / dense layer; a
  module keeps it when its mask is 1. The head (channeled output layer) is not counted.
- a *weight* is one kernel entry of a hidden conv2d / dense layer. A module keeps it when at
  least one connection through it joins a kept input node to a kept output node (for a
  convolution: some kept output (q, cout) reads a kept input (p, cin) through that tap). An input
  node counts as kept unless the conv2d / dense node producing it (directly or through
  element-wise, flatten or reshape layers) masks it. Biases are not weights here.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .graph import Graph, Node


# -- accuracy ---------------------------------------------------------------------------------
def composed_predict(scores: np.ndarray, classes: np.ndarray | None = None) -> np.ndarray:
    """Class of the highest score per row (ties: the first column, i.e. lowest class index)."""
    idx = np.argmax(scores, axis=1)
    return idx if classes is None else np.asarray(classes)[idx]


def top_k_accuracy(scores: np.ndarray, y: np.ndarray, k: int = 1,
                   classes: np.ndarray | None = None) -> float:
    """Fraction of rows whose true class is among the k highest scores (stable ranking, ties
    broken towards lower columns)."""
    scores = np.asarray(scores)
    y = np.asarray(y).reshape(-1)
    if y.size == 0:
        return float("nan")
    k = min(int(k), scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top = order if classes is None else np.asarray(classes)[order]
    return float(np.mean(np.any(top == y[:, None], axis=1)))


def margins(logits2: np.ndarray) -> np.ndarray:
    """(n,) float32 concerned - unconcerned logit of (n, 2) module logits."""
    logits2 = np.asarray(logits2, dtype=np.float32)
    return (logits2[:, 0] - logits2[:, 1]).astype(np.float32)


def softmax_rows(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax (float32, the largest entry factored out)."""
    z = np.asarray(z, dtype=np.float32)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


#: Entries below a row's largest margin are capped at this fraction of the largest one's
#: exponential, so that after normalising the row maximum stays unique (a float64 gap of
#: several ulps survives the division).
_BELOW_TOP = 1.0 - 2.0 ** -50


def margin_softmax(m: np.ndarray) -> np.ndarray:
    """(n, k) float64 softmax over margins whose row maximum is unique wherever the largest
    margin is: `argmax` of the result equals `argmax` of `m` for every row (`ModuleSet.predict`)."""
    m = np.asarray(m, dtype=np.float64)
    if m.size == 0:
        return m.copy()
    d = m - m.max(axis=1, keepdims=True)          # 0 exactly at the row's largest margins
    e = np.exp(d)
    e = np.where(d < 0, np.minimum(e, _BELOW_TOP), e)
    return e / e.sum(axis=1, keepdims=True)


def count_top_ties(scores: np.ndarray) -> int:
    """Rows whose largest score is shared by two or more columns (decided by column order)."""
    scores = np.asarray(scores)
    if scores.size == 0:
        return 0
    return int(np.sum((scores == scores.max(axis=1, keepdims=True)).sum(axis=1) > 1))


def binary_accuracy(margin: np.ndarray, y: np.ndarray, c: int) -> float:
    """Accuracy of a module as a binary classifier: concerned (margin >= 0, i.e.
    P(concerned) >= P(unconcerned)) <=> y == c. `margin` (n,) or (n, 2) probabilities/logits."""
    margin = np.asarray(margin)
    said = margin[:, 0] >= margin[:, 1] if margin.ndim == 2 else margin >= 0
    return float(np.mean(said == (np.asarray(y).reshape(-1) == c)))


def one_vs_rest_accuracy(probs: np.ndarray, y: np.ndarray, c: int) -> float:
    """The model's own accuracy on "is it class c": P_model(c) >= 0.5 <=> y == c."""
    said = np.asarray(probs)[:, c] >= 0.5
    return float(np.mean(said == (np.asarray(y).reshape(-1) == c)))


# -- module size ------------------------------------------------------------------------------
def kept_weights(graph: Graph, masks: Mapping[str, np.ndarray],
                 exclude: frozenset[str] = frozenset()) -> dict[str, np.ndarray]:
    """{node: bool array of its kernel's shape, True = weight kept} for weighted nodes (each
    op's `used_weights` rule)."""
    out = {}
    for node in graph.weighted_nodes():
        if node.name in exclude:
            continue
        kin = _kept_tensor(graph, node.inputs[0], masks)
        out[node.name] = node.spec.used_weights(node, kin, _mask(graph, node, masks))
    return out


def module_size(graph: Graph, masks: Mapping[str, np.ndarray],
                exclude: frozenset[str] = frozenset()) -> dict[str, float]:
    """Nodes and weights kept by a module, in counts and fractions (see module docstring)."""
    nodes_kept = nodes_total = 0
    for node in graph.weighted_nodes():
        if node.name not in exclude:
            nodes_total += int(np.prod(node.shape))
            nodes_kept += int(_mask(graph, node, masks).sum())
    used = kept_weights(graph, masks, exclude)
    w_kept = int(sum(u.sum() for u in used.values()))
    w_total = int(sum(u.size for u in used.values()))
    return {"nodes_kept": nodes_kept, "nodes_total": nodes_total,
            "nodes_fraction": nodes_kept / nodes_total if nodes_total else 1.0,
            "weights_kept": w_kept, "weights_total": w_total,
            "weights_fraction": w_kept / w_total if w_total else 1.0}


# -- Jaccard indices --------------------------------------------------------------------------
def jaccard_set(graph: Graph, masks: Mapping[str, np.ndarray],
                exclude: frozenset[str] = frozenset()) -> float:
    """Set Jaccard between the module's kept weights and the model's weights.

    The module's weights are a subset of the model's, so |A & B| / |A | B| = |kept| / |all|.
    """
    return module_size(graph, masks, exclude)["weights_fraction"]


def jaccard_values(a: np.ndarray, b: np.ndarray) -> float:
    """The prior work's (Pan & Rajan, FSE'20) value-based index between two weight lists.

    |distinct values common to both| / (len(a) + len(b) - that number). It compares weight
    *values*, not positions, and counts duplicates on one side only: it is not a set Jaccard.
    """
    a = np.asarray(a).reshape(-1)
    b = np.asarray(b).reshape(-1)
    common = np.intersect1d(a, b).size
    denom = a.size + b.size - common
    return common / denom if denom else 1.0


def effective_kernels(graph: Graph, masks: Mapping[str, np.ndarray],
                      exclude: frozenset[str] = frozenset()) -> np.ndarray:
    """All conv2d / dense kernels, flattened and concatenated in graph order, with the weights
    the module does not keep set to 0 (nodes in `exclude` are taken as they are)."""
    used = kept_weights(graph, masks, exclude)
    parts = []
    for node in graph.weighted_nodes():
        k = node.weights["kernel"]
        parts.append((k if node.name in exclude else np.where(used[node.name], k, 0)).ravel())
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def model_kernels(graph: Graph) -> np.ndarray:
    """All conv2d / dense kernels of a model, flattened and concatenated in graph order."""
    parts = [n.weights["kernel"].ravel() for n in graph.weighted_nodes()]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


# -- helpers ----------------------------------------------------------------------------------
def _mask(graph: Graph, node: Node, masks: Mapping[str, np.ndarray]) -> np.ndarray:
    m = masks.get(node.name)
    return np.ones(node.shape, dtype=bool) if m is None else np.asarray(m) != 0


def _kept_tensor(graph: Graph, name: str, masks: Mapping[str, np.ndarray]) -> np.ndarray:
    """Kept map of a tensor: its producer's mask, followed through the ops whose `kept` rule
    passes it on (element-wise, flatten, reshape); everything else counts as kept."""
    node = graph[name]
    if node.weighted:
        return _mask(graph, node, masks)
    rule = node.spec.kept
    if rule is not None:
        src = graph[node.inputs[0]]
        kept = rule(node, _kept_tensor(graph, src.name, masks), src.shape)
        if kept is not None:
            return kept
    return np.ones(node.shape, dtype=bool)
