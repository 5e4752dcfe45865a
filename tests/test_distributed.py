"""The recording pass and the composition on a dask LocalCluster (2 worker processes, 1 thread
each) give exactly what one process gives, for any partitioning; failures are clean."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import refdecomp
from refdecomp.errors import DataError, RefdecompError

distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")

MODEL = Path(__file__).resolve().parent.parent / "weights" / "digits_cnn.h5"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client():
    from refdecomp.distributed import start_client

    c = start_client(workers=2)
    yield c
    cluster = c.cluster
    c.close()
    cluster.close()


@pytest.fixture(scope="module")
def digits():
    from refdecomp.datasets import load_dataset

    ds = load_dataset("digits")
    return ds.x_train.astype(np.float32), ds.y_train, ds.x_test.astype(np.float32), ds.y_test


@pytest.fixture(scope="module")
def local(digits):
    x, y, _, _ = digits
    return refdecomp.observe(str(MODEL), x, y, seed=3)


def _same_observation(a, b):
    np.testing.assert_array_equal(a.plan.groups, b.plan.groups)
    assert a.seen.keys() == b.seen.keys() and a.n_images == b.n_images
    for name in a.seen:
        np.testing.assert_array_equal(a.seen[name], b.seen[name])


@pytest.mark.parametrize("partitions", [1, 3, 7])
def test_array_partitions_record_what_one_process_records(client, digits, local, partitions):
    x, y, _, _ = digits
    obs = refdecomp.observe(str(MODEL), x, y, seed=3, client=client)
    _same_observation(obs, local)
    from refdecomp.distributed import observe_distributed

    obs = observe_distributed(client, str(MODEL), x, y, seed=3, partitions=partitions)
    _same_observation(obs, local)


def test_uneven_dask_chunks_and_one_class_shards(client, digits, local, tmp_path):
    x, y, _, _ = digits
    n = len(y)
    chunks = (5, 400, 1, n - 406)
    obs = refdecomp.observe(str(MODEL), da.from_array(x, chunks=(chunks, 8, 8, 1)),
                            da.from_array(y, chunks=(chunks,)), seed=3, client=client)
    _same_observation(obs, local)
    # shards holding one class each, in an order unrelated to the images' order
    order = np.argsort(y, kind="stable")
    paths, perm = [], []
    for c in np.unique(y)[::-1]:
        idx = order[y[order] == c]
        np.savez(tmp_path / f"shard{c}.npz", x=x[idx], y=y[idx])
        paths.append(str(tmp_path / f"shard{c}.npz"))
        perm.append(idx)
    perm = np.concatenate(perm)
    obs = refdecomp.observe(str(MODEL), paths, None, seed=3, client=client)
    want = refdecomp.observe(str(MODEL), x[perm], y[perm], seed=3)
    _same_observation(obs, want)
    ms_a = refdecomp.build_modules(str(MODEL), obs)
    ms_b = refdecomp.build_modules(str(MODEL), want)
    for a, b in zip(ms_a, ms_b):
        for name in a.masks:
            np.testing.assert_array_equal(a.masks[name], b.masks[name])


def test_composition_on_the_cluster_equals_in_process(client, digits, local):
    _, _, xt, yt = digits
    ms = refdecomp.build_modules(str(MODEL), local)
    here = ms.evaluate(xt, yt)
    there = ms.evaluate(xt, yt, client=client)
    assert {k: here[k] for k in ("top1", "top5", "model", "ties_top1")} == \
           {k: there[k] for k in ("top1", "top5", "model", "ties_top1")}
    # the same up to float32 rounding (BLAS blocks a partition's rows differently)
    np.testing.assert_allclose(ms.decision_function(xt, client=client),
                               ms.decision_function(xt), rtol=1e-5, atol=1e-5)


def test_unreadable_shard_fails_the_run_naming_it(client, digits, tmp_path):
    x, y, _, _ = digits
    good = tmp_path / "good.npz"
    np.savez(good, x=x[:100], y=y[:100])
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=x[100:200], y=y[100:200])
    data = bad.read_bytes()
    # keep the labels readable on the client, damage the images member
    cut = data.find(b"x.npy")
    bad.write_bytes(data[:cut + 200] + b"\0" * 64 + data[cut + 264:])
    with pytest.raises(DataError, match="bad.npz"):
        refdecomp.observe(str(MODEL), [str(good), str(bad)], None, client=client)
    with pytest.raises(DataError, match="missing.npz"):
        refdecomp.observe(str(MODEL), [str(tmp_path / "missing.npz")], None, client=client)


def test_in_memory_model_is_refused_with_a_clear_error(client, digits):
    x, y, _, _ = digits
    model = refdecomp.load_model(MODEL)
    from refdecomp.graph import Graph

    g = model.source_graph
    mem = refdecomp.interpreter.Model(Graph(g.nodes, g.inputs, g.outputs, g.name))
    with pytest.raises(RefdecompError, match="from a file"):
        refdecomp.observe(mem, x, y, client=client)


def test_a_worker_killed_mid_pass_has_its_partitions_recomputed(client, digits):
    x, y, _, _ = digits
    x, y = np.concatenate([x] * 12), np.concatenate([y] * 12)
    want = refdecomp.observe(str(MODEL), x, y, seed=1)
    pids = client.run(os.getpid)
    victim = sorted(pids.values())[0]
    killed = threading.Event()

    def kill_when_busy():
        deadline = time.time() + 60
        while time.time() < deadline:
            if any(client.processing().values()):
                os.kill(victim, signal.SIGKILL)
                killed.set()
                return
            time.sleep(0.01)

    t = threading.Thread(target=kill_when_busy)
    t.start()
    from refdecomp.distributed import observe_distributed

    got = observe_distributed(client, str(MODEL), x, y, seed=1, partitions=48)
    t.join()
    assert killed.is_set()
    _same_observation(got, want)
    client.wait_for_workers(2, timeout=60)


def test_command_line_runs_on_a_local_cluster(tmp_path, digits, capsys):
    from refdecomp.cli import main

    out = tmp_path / "m.h5"
    assert main(["decompose", str(MODEL), "--data", "digits", "--out", str(out), "--workers", "2",
                 "--no-progress"]) == 0
    x, y, xt, yt = digits
    want = refdecomp.decompose(str(MODEL), x, y)
    got = refdecomp.load_modules(out)
    for a, b in zip(got, want):
        for name in b.masks:
            np.testing.assert_array_equal(a.masks[name], b.masks[name])
    capsys.readouterr()
    assert main(["evaluate", str(out), "--data", "digits", "--workers", "2", "--json",
                 "--no-progress"]) == 0
    import json

    report = json.loads(capsys.readouterr().out)
    assert report["composed"]["top1"] == pytest.approx(want.evaluate(xt, yt)["top1"])
