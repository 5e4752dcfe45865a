"""Keras' layer order of a Functional model, for position-based weight loading."""
from __future__ import annotations


def keras_layer_order(layers: list, inputs: list[str], outputs: list[str]) -> list[int]:
    """Indices of `layers` in the order a loaded Keras Functional model lists them.

    Same rule in Keras 3 (`ops.function.map_graph`) and tf_keras (`_map_graph_network`): a
    depth-first walk from the outputs gives each layer a first-visit index and a post-order;
    depth is the longest path to an output; layers sort by decreasing depth, then visit index.
    """
    by_name = {lay.name: i for i, lay in enumerate(layers)}
    visit_index: dict[str, int] = {}
    post: list[str] = []
    finished: set[str] = set()
    for out in outputs:
        if out in finished:
            continue
        visit_index.setdefault(out, len(visit_index))
        stack = [(out, iter(layers[by_name[out]].inbound))]
        while stack:
            name, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                finished.add(name)
                post.append(name)
            elif nxt not in finished:
                visit_index.setdefault(nxt, len(visit_index))
                stack.append((nxt, iter(layers[by_name[nxt]].inbound)))
    depth: dict[str, int] = {}
    for name in reversed(post):
        d = depth.setdefault(name, 0)
        for src in layers[by_name[name]].inbound:
            depth[src] = max(d + 1, depth.get(src, 0))
    for name in inputs:
        if name not in depth:
            depth[name], visit_index[name] = 0, -1
    ordered = sorted(depth, key=lambda n: (-depth[n], visit_index[n]))
    return [by_name[n] for n in ordered]
