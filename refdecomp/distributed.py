"""Scale-out on dask.distributed: the recording pass and the composition as maps over partitions.

The recording pass is a map over images with an OR reduction per group (bits) and a sum
(counts): each worker records its partitions with the same kernels, and the partial records are
reduced pairwise in a tree. The tangling samples are drawn on the client from the labels alone
(`plan_groups`), and each partition receives its images' group ids, so the result is the same
for any partitioning. The model (and a module set) travels once per worker as file bytes
(one node of the task graph that every task reads), and is loaded once per worker process.
The composition is a map over partitions of images: margins and the model's probabilities per
partition, concatenated in order on the client and reduced to the same figures as
`ModuleSet.evaluate`.

Partitions are given as a dask array (its chunks along the first axis), a list of `.npz` shard
files (arrays `x` and `y` in each), or a NumPy array split into `partitions` pieces. dask is an
optional dependency (`pip install refdecomp[distributed]`), imported only here.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .decompose import Observation, _hidden
from .decompose.channeling import find_head
from .decompose.recording import check_labels, plan_groups
from .errors import DataError, RefdecompError
from .interpreter import Model, Recorder
from .loading import load_model
from .modules import load_modules
from .progress import progress

#: dask retries of a task that raised (a worker that dies has its tasks rescheduled anyway)
RETRIES = 2


def _dask():
    try:
        import distributed  # noqa: PLC0415
    except ImportError:
        raise RefdecompError("client=: dask.distributed is not installed; "
                             "pip install 'refdecomp[distributed]'") from None
    return distributed


# -- partitions -----------------------------------------------------------------------------
@dataclass
class Partition:
    """Rows [start, start + size) of the data: from a shard file, a dask chunk or an array."""

    start: int
    size: int
    source: Any  # str (shard path) | dask delayed / future of an array


def partitions_of(client, x, y=None, *, partitions: int | None = None
                  ) -> tuple[list[Partition], np.ndarray | None]:
    """(partitions, labels on the client or None). `x`: dask array, list of `.npz` shard
    paths, or a NumPy array (cut into `partitions` pieces, default 2 per worker)."""
    if isinstance(x, (list, tuple)) and x and all(isinstance(p, (str, os.PathLike)) for p in x):
        return _shard_partitions(x, y)
    try:
        import dask.array as da  # noqa: PLC0415
    except ImportError:  # pragma: no cover - dask is installed with distributed
        da = None
    if da is not None and isinstance(x, da.Array):
        if any(len(c) > 1 for c in x.chunks[1:]):
            x = x.rechunk({i: -1 for i in range(1, x.ndim)})
        parts, start = [], 0
        for block, size in zip(x.to_delayed().ravel(), x.chunks[0]):
            parts.append(Partition(start, int(size), block))
            start += int(size)
        return parts, _labels(y)
    x = np.asarray(x)
    if x.ndim == 0 or len(x) == 0:
        raise DataError("x holds no images")
    n_workers = max(1, len(client.scheduler_info().get("workers", {})))
    k = int(partitions or 2 * n_workers)
    if k < 1:
        raise RefdecompError(f"argument partitions={partitions!r}: expected >= 1")
    import dask  # noqa: PLC0415

    bounds = np.linspace(0, len(x), min(k, len(x)) + 1).astype(int)
    parts = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        # part of the task graph (not scattered), so a worker's death cannot lose it
        parts.append(Partition(int(a), int(b - a), dask.delayed(x[a:b], pure=True)))
    return parts, _labels(y)


def _labels(y) -> np.ndarray | None:
    if y is None:
        return None
    if hasattr(y, "compute"):
        y = y.compute()
    return np.asarray(y)


def _shard_partitions(paths, y) -> tuple[list[Partition], np.ndarray]:
    parts, labels, start = [], [], 0
    for p in paths:
        ys = _read_shard(str(p), "y")
        parts.append(Partition(start, len(ys), str(p)))
        labels.append(ys)
        start += len(ys)
    return parts, (np.concatenate(labels) if y is None else _labels(y))


def _read_shard(path: str, key: str) -> np.ndarray:
    """Array `key` of an `.npz` shard; a DataError naming the shard when it cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if key not in f.files:
                raise DataError(f"shard {path!r}: no array {key!r} (found {f.files}); shards are "
                                f".npz files with arrays 'x' and 'y'")
            return f[key]
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to read is the shard's
        raise DataError(f"shard {path!r} cannot be read: {type(e).__name__}: {e}") from None


def submit_on(client, fn, *args):
    """Run `fn(*args)` on the cluster as a task graph: arguments that are dask delayed objects
    (a partition's chunk, the model's file bytes) are computed inside the graph, so nothing is
    materialised before the task that needs it runs, and whatever a dead worker held can be
    recomputed from the graph (data scattered to one worker could not be)."""
    import dask  # noqa: PLC0415

    return client.compute(dask.delayed(fn, pure=False)(*args), retries=RETRIES)


def literal(value):
    """`value` as a node of the task graph, shipped once to each worker that needs it."""
    import dask  # noqa: PLC0415

    return dask.delayed(value, pure=True)


def _as_delayed(source):
    return source if hasattr(source, "dask") else literal(source)


def _partition_array(source) -> np.ndarray:
    """On a worker: the images of one partition."""
    if isinstance(source, str):
        return _read_shard(source, "x")
    return np.asarray(source)


# -- the model on the workers ----------------------------------------------------------------
_WORKER_CACHE: dict[str, Any] = {}
_WORKER_LOCK = threading.Lock()


def _file_bytes(path: str | os.PathLike) -> bytes:
    return Path(path).read_bytes()


def model_file(model) -> str:
    """The file a model was read from (workers load it from its bytes)."""
    if isinstance(model, (str, os.PathLike)):
        return str(model)
    if isinstance(model, Model) and model.source_graph.source and \
            Path(model.source_graph.source).is_file():
        return model.source_graph.source
    raise RefdecompError("client=: the model must come from a file (pass its path) so that "
                         "the workers can load it")


def _on_worker(kind: str, data: bytes, suffix: str, model_key: str | None = None):
    """Load a model ("model") or module set ("modules", over the model `model_key`) from file
    bytes, once per worker process."""
    key = hashlib.sha256(data).hexdigest()
    with _WORKER_LOCK:
        if key not in _WORKER_CACHE:
            fd, path = tempfile.mkstemp(suffix=suffix, prefix="refdecomp-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            try:
                if kind == "model":
                    _WORKER_CACHE[key] = load_model(path)
                else:
                    _WORKER_CACHE[key] = load_modules(path, model=_WORKER_CACHE[model_key])
            finally:
                os.unlink(path)
        return _WORKER_CACHE[key], key


# -- the recording pass ----------------------------------------------------------------------
def _record_task(model_bytes, suffix, source, groups, n_groups, hidden, batch_size):
    model, _ = _on_worker("model", model_bytes, suffix)
    x = _partition_array(source)
    if len(x) != len(groups):
        raise DataError(f"partition of {len(groups)} labels holds {len(x)} images")
    recorder = Recorder(model.graph, n_groups, nodes=hidden)
    model.run(x.astype(np.float32, copy=False), batch_size, recorder=recorder,
              groups=np.asarray(groups))
    return {name: np.packbits(a.reshape(-1)) for name, a in recorder.seen.items()}


def _merge(a: dict, b: dict) -> dict:
    """OR of two partial records (bit-packed): associative and commutative, hence exact."""
    return {name: np.bitwise_or(a[name], b[name]) for name in a}


def tree_reduce(client, futures: list, fn=_merge):
    """Reduce futures pairwise, level by level, on the cluster; returns the final future."""
    level = list(futures)
    while len(level) > 1:
        nxt = [client.submit(fn, level[i], level[i + 1], retries=RETRIES, pure=False)
               for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def observe_distributed(client, model, x, y=None, *, tangling: str | int = "balanced",
                        seed: int = 0, batch_size: int = 256, progress: bool = False,
                        partitions: int | None = None):
    """`refdecomp.observe` with the images processed as partitions on a dask cluster."""
    _dask()
    path = model_file(model)
    local = model if not isinstance(model, (str, os.PathLike)) else load_model(path)
    head, _ = find_head(local.graph)
    n_classes = head.weights["kernel"].shape[1]
    parts, labels = partitions_of(client, x, y, partitions=partitions)
    n = sum(p.size for p in parts)
    if labels is None:
        raise DataError("client=: give the labels y (or .npz shards holding 'y')")
    labels = check_labels(labels, n, n_classes)
    if n == 0:
        raise DataError("decompose: x holds no images")
    plan = plan_groups(labels, n_classes, tangling, seed)
    hidden = _hidden(local.graph, head)
    blob = literal(_file_bytes(path))
    suffix = "".join(Path(path).suffixes[-1:]) or ".h5"
    futures = [submit_on(client, _record_task, blob, suffix, _as_delayed(p.source),
                         plan.groups[p.start:p.start + p.size], plan.n_groups, hidden,
                         batch_size) for p in parts]
    _show_progress(futures, progress, "record")
    packed = tree_reduce(client, futures).result()
    seen = {name: np.unpackbits(packed[name], count=plan.n_groups * int(
        np.prod(local.graph[name].shape))).reshape(plan.n_groups, *local.graph[name].shape)
        for name in hidden}
    return Observation(plan, seen, n, tangling, int(seed))


# -- composition -----------------------------------------------------------------------------
def _compose_task(model_bytes, suffix, modules_bytes, source, batch_size):
    model, model_key = _on_worker("model", model_bytes, suffix)
    ms, _ = _on_worker("modules", modules_bytes, ".h5", model_key)
    x = _partition_array(source).astype(np.float32, copy=False)
    return ms.decision_function(x, batch_size), model.predict(x, batch_size)


def compose_distributed(client, ms, x, *, batch_size: int = 256, progress: bool = False,
                        partitions: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(margins (n, n_modules), model probabilities (n, N)) over partitions on the cluster."""
    _dask()
    path = model_file(ms.model)
    with tempfile.TemporaryDirectory() as tmp:
        modules_bytes = _file_bytes(ms.save(Path(tmp) / "modules.h5"))
    parts, _ = partitions_of(client, x, None, partitions=partitions)
    model_blob, modules_blob = literal(_file_bytes(path)), literal(modules_bytes)
    suffix = "".join(Path(path).suffixes[-1:]) or ".h5"
    futures = [submit_on(client, _compose_task, model_blob, suffix, modules_blob,
                         _as_delayed(p.source), batch_size) for p in parts]
    _show_progress(futures, progress, "compose")
    results = client.gather(futures)
    return (np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results]))


def _show_progress(futures: Sequence, enabled: bool, what: str) -> None:
    if not enabled:
        return

    distributed = _dask()
    for _ in progress(distributed.as_completed(futures), total=len(futures),
                      desc=f"{what} (partitions)", unit="partition"):
        pass


def start_client(scheduler: str | None = None, workers: int | None = None):
    """A `Client` of a running cluster (`scheduler` address) or of a new `LocalCluster` of
    `workers` processes with one thread each (and one kernel thread each)."""
    distributed = _dask()
    if scheduler:
        return distributed.Client(scheduler)
    n = int(workers or 1)
    if n < 1:
        raise RefdecompError(f"--workers {workers}: expected >= 1")
    cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                       dashboard_address=None,
                                       env={"REFDECOMP_THREADS": "1"})
    return distributed.Client(cluster)
