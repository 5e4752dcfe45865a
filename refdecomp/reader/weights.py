"""Find each layer's weight arrays in the file and attach them to the `LayerSpec`s by role.

Two layouts exist:

- legacy HDF5 (`save` to `.h5` and `save_weights` to `.h5`, all Keras versions): one group per
  top-level layer listing its arrays in the `weight_names` attribute. The dataset paths need not
  match the layer name (`H1/H1_1/kernel:0`, `conv2d_1/kernel` without `:0`), so
  `weight_names` is the only reliable index. Keras matches layers that have weights to groups
  that have weights *by position*, and so do we. A nested model's group holds all its layers'
  arrays in the order of `model.weights` (trainable ones first).
- Keras 3 (`.keras` archives and `.weights.h5`): `layers/<snake_case class>[_k]/vars/<i>`, the
  suffix `k` counting earlier layers of the same class in `model.layers`; nested models repeat
  the pattern below their own group. tf.keras 2.13-2.15 wrote the container as
  `_layer_checkpoint_dependencies` and counted layers that have weights twice; on Windows the
  path separators in group names are backslashes.
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np

from .. import limits
from ..errors import ModelFormatError
from .config import LayerSpec, ModelSpec
from .layers import n_weights, weight_roles
from .stored import StoredArray, member

KNOWN_ROLES = frozenset({"kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance",
                         "alpha", "mean", "variance", "count"})


def text(value: Any, source: str = "", what: str = "an attribute") -> str:
    """HDF5 attributes are bytes under old h5py / old writers and str under new ones."""
    if isinstance(value, (bytes, np.bytes_)):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise ModelFormatError(f"{source}: {what} is not UTF-8 text "
                                   f"({bytes(value)[:40]!r}); the file is damaged") from None
    return str(value)


def name_list(value: Any, source: str = "", what: str = "a name list") -> list[str]:
    """A list attribute; an empty list is stored as an empty float array."""
    if value is None:
        return []
    return [text(v, source, what) for v in np.asarray(value).reshape(-1)
            if not isinstance(v, float)]


# --------------------------------------------------------------------------------------------
# Legacy HDF5
# --------------------------------------------------------------------------------------------
def legacy_groups(group, source: str) -> list[tuple[str, list[tuple[str, np.ndarray]]]]:
    """[(layer group name, [(weight name, array), ...]), ...] in the file's `layer_names` order."""
    out = []
    budget = limits.Budget(source)
    for lname in name_list(group.attrs.get("layer_names"), source, "the layer_names attribute"):
        if lname not in group:
            raise ModelFormatError(f"{source}: the file lists layer {lname!r} but has no group "
                                   f"for it; the file is damaged or truncated")
        g = member(group, lname, source)
        arrays = []
        for wname in name_list(g.attrs.get("weight_names"), source,
                               f"the weight_names attribute of layer {lname!r}"):
            if wname not in g:
                raise ModelFormatError(f"{source}: weight {wname!r} of layer {lname!r} is "
                                       f"missing from the file; it is damaged or truncated")
            arrays.append((wname, _stored(member(g, wname, source), source, budget)))
        out.append((lname, arrays))
    return out


def _stored(dataset, source: str, budget: limits.Budget) -> StoredArray:
    arr = StoredArray(dataset, source)
    budget.take(int(np.prod(arr.shape, dtype=object)) * arr.dtype.itemsize,
                f"weight {arr.name!r}")
    return arr


def _role_of(weight_name: str) -> str:
    """`conv1_1/kernel:0` -> `kernel`."""
    base = weight_name.replace("\\", "/").rsplit("/", 1)[-1]
    return re.sub(r":\d+$", "", base)


def legacy_order(model: ModelSpec, trainable: bool = True) -> list[tuple[LayerSpec, str]]:
    """(layer, role) in the order Keras lists a nested model's `weights`: every sublayer's
    trainable weights first, then the non-trainable ones (frozen layers count as
    non-trainable)."""
    t, nt = _split_trainable(model, trainable and model.trainable)
    return t + nt


def _split_trainable(model: ModelSpec, trainable: bool):
    t: list[tuple[LayerSpec, str]] = []
    nt: list[tuple[LayerSpec, str]] = []
    for layer in model.layers:
        on = trainable and layer.trainable
        if layer.model is not None:
            a, b = _split_trainable(layer.model, on and layer.model.trainable)
            t += a
            nt += b
            continue
        tr, ntr = weight_roles(layer)
        if on:
            t += [(layer, r) for r in tr]
            nt += [(layer, r) for r in ntr]
        else:
            nt += [(layer, r) for r in tr + ntr]
    return t, nt


def assign_legacy(model: ModelSpec, groups: list, source: str) -> None:
    """Attach arrays of a legacy HDF5 file, matching layers with weights by position."""
    layers = [layer for layer in model.layers if n_weights(layer)]
    filled = [(name, arrays) for name, arrays in groups if arrays]
    if len(layers) != len(filled):
        raise ModelFormatError(
            f"{source}: the model has {len(layers)} layers with weights "
            f"({', '.join(l.name for l in layers[:6])}{'...' if len(layers) > 6 else ''}) but the "
            f"weights file has {len(filled)} "
            f"({', '.join(n for n, _ in filled[:6])}{'...' if len(filled) > 6 else ''}); the "
            f"architecture does not match these weights")
    for layer, (gname, arrays) in zip(layers, filled):
        if layer.model is not None:
            slots = legacy_order(layer.model, layer.trainable)
        else:
            tr, ntr = weight_roles(layer)
            slots = [(layer, r) for r in tr + ntr]
        if len(slots) != len(arrays):
            raise ModelFormatError(
                f"{source}: {layer.describe()} expects {len(slots)} weight arrays "
                f"({', '.join(r for _, r in slots)}) but file group {gname!r} has {len(arrays)} "
                f"({', '.join(n for n, _ in arrays)})")
        for (target, role), (wname, arr) in zip(slots, arrays):
            found = _role_of(wname)
            if found in KNOWN_ROLES and found != role:
                raise ModelFormatError(
                    f"{source}: {target.describe()} expects its {role!r} array, the file gives "
                    f"{wname!r} from group {gname!r}; the architecture does not match")
            target.weights[role] = arr


# --------------------------------------------------------------------------------------------
# Keras 3 layout (.keras archives, .weights.h5)
# --------------------------------------------------------------------------------------------
def to_snake_case(name: str) -> str:
    """Keras' own rule for naming saved objects after their class."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    name = re.sub("([a-z])([A-Z])", r"\1_\2", name)
    return name.lower()


def _resolve(group, parts: list[str], source: str):
    """Descend `parts`, accepting groups whose names joined several parts with backslashes
    (files written on Windows). Returns None if absent."""
    if not parts:
        return group
    if not hasattr(group, "keys"):
        return None
    for j in range(len(parts), 0, -1):
        key = "\\".join(parts[:j])
        if key in group:
            found = _resolve(member(group, key, source), parts[j:], source)
            if found is not None:
                return found
    return None


def _has_prefix(group, parts: list[str], source: str) -> bool:
    """Whether `parts` leads to a group, or begins the backslash-joined name of a member."""
    if not parts:
        return True
    joined = "\\".join(parts) + "\\"
    if any(isinstance(key, str) and key.startswith(joined) for key in group):
        return True
    for j in range(len(parts), 0, -1):
        key = "\\".join(parts[:j])
        if key in group and hasattr(member(group, key, source), "keys") and \
                _has_prefix(group[key], parts[j:], source):
            return True
    return False


_CONTAINERS = ("layers", "_layer_checkpoint_dependencies")


def assign_v3(model: ModelSpec, root, source: str) -> None:
    """Attach arrays stored in the Keras 3 layout below `root` (an h5py group)."""
    _assign_v3_model(model, root, [], source, limits.Budget(source))


def _class_key(layer: LayerSpec) -> str:
    if layer.model is not None:
        return "sequential" if layer.model.sequential else "functional"
    return to_snake_case(layer.class_name)


def _assign_v3_model(model: ModelSpec, root, path: list[str], source: str,
                     budget: limits.Budget) -> None:
    container = next((c for c in _CONTAINERS if _has_prefix(root, path + [c], source)), None)
    if container is None:
        if any(n_weights(layer) for layer in model.layers):
            raise ModelFormatError(f"{source}: no weights for model {model.name!r} (group "
                                   f"{'/'.join(path + ['layers'])!r} is missing)")
        return
    twice = container == "_layer_checkpoint_dependencies"
    used: dict[str, int] = {}
    for layer in model.layers:
        key = _class_key(layer)
        if key in used:
            used[key] += 1
            name = f"{key}_{used[key]}"
        else:
            used[key] = 0
            name = key
        has_weights = n_weights(layer) > 0
        if twice and has_weights:
            # tf.keras 2.13-2.15 listed a layer with weights twice, and counted both.
            used[key] += 1
        where = path + [container, name]
        if layer.model is not None:
            _assign_v3_model(layer.model, root, where, source, budget)
            continue
        tr, ntr = weight_roles(layer)
        roles = tr + ntr
        if not roles:
            continue
        vars_group = _resolve(root, where + ["vars"], source)
        if vars_group is None or not hasattr(vars_group, "keys"):
            raise ModelFormatError(f"{source}: no weights for {layer.describe()} (expected "
                                   f"group {'/'.join(where + ['vars'])!r})")
        saved_name = vars_group.attrs.get("name")
        if saved_name is not None:
            saved_name = text(saved_name, source, f"the name of group {'/'.join(where)!r}")
        if saved_name is not None and saved_name != layer.name:
            raise ModelFormatError(
                f"{source}: group {'/'.join(where)!r} holds the weights of layer "
                f"{saved_name!r}, expected {layer.describe()}; the architecture does not "
                f"match these weights")
        for i, role in enumerate(roles):
            if str(i) not in vars_group:
                raise ModelFormatError(f"{source}: {layer.describe()} expects {len(roles)} "
                                       f"arrays ({', '.join(roles)}); "
                                       f"{'/'.join(where + ['vars', str(i)])!r} is missing")
            layer.weights[role] = _stored(member(vars_group, str(i), source), source, budget)
        if str(len(roles)) in vars_group:
            raise ModelFormatError(f"{source}: {layer.describe()} expects {len(roles)} arrays "
                                   f"({', '.join(roles)}) but the file has more")
