"""tools/train.py and tools/architectures.py: augmentation against a brute-force reference,
the paper's ResNet layout, in-model preprocessing against its formula, and a tiny end-to-end
training run (resume must reproduce an uninterrupted run; the manifest must describe the
file it names)."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

TOOLS = Path(__file__).resolve().parent.parent / "tools"
sys.path.insert(0, str(TOOLS))

keras = pytest.importorskip("keras", reason="the training tool needs Keras")
pytestmark = pytest.mark.keras

import architectures  # noqa: E402
import train  # noqa: E402


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5), st.integers(1, 6), st.integers(1, 6), st.integers(1, 3),
       st.integers(0, 3), st.booleans(), st.integers(0, 2**16))
def test_augment_is_a_padded_crop_with_optional_flip(n, h, w, c, pad, flip, seed):
    x = np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)
    out = train.augment(x, np.random.default_rng(seed + 1), pad, flip)
    assert out.shape == x.shape and out.dtype == np.uint8
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    for i in range(n):
        candidates = [padded[i, dy:dy + h, dx:dx + w] for dy in range(2 * pad + 1)
                      for dx in range(2 * pad + 1)]
        if flip:
            candidates += [cand[:, ::-1] for cand in candidates]
        assert any(np.array_equal(out[i], cand) for cand in candidates)


def test_augment_covers_all_offsets_and_flips():
    x = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1).repeat(2000, axis=0)
    out = train.augment(x, np.random.default_rng(0), pad=1, flip=True)
    assert len({o.tobytes() for o in out}) == 18  # 9 offsets x 2 orientations


def test_topk_against_brute_force():
    rng = np.random.default_rng(1)
    probs, y = rng.random((50, 7)), rng.integers(0, 7, 50)
    for k in (1, 3, 7):
        ref = np.mean([y[i] in np.argsort(-probs[i])[:k] for i in range(50)])
        assert train.topk(probs, y, k) == pytest.approx(ref)


@pytest.mark.parametrize("depth,n", [(20, 3), (32, 5)])
def test_resnet_layout_matches_the_paper(depth, n):
    m = architectures.resnet_v1(depth, (32, 32, 3), 10)
    convs = [l for l in m.layers if isinstance(l, keras.layers.Conv2D)]
    assert len([c for c in convs if c.kernel_size == (3, 3)]) == 6 * n + 1
    shortcuts = [c for c in convs if c.kernel_size == (1, 1)]
    assert [(c.filters, c.strides) for c in shortcuts] == [(32, (2, 2)), (64, (2, 2))]
    assert all(c.use_bias for c in convs)
    assert not any(isinstance(l, keras.layers.BatchNormalization) for l in m.layers)
    assert len([l for l in m.layers if isinstance(l, keras.layers.Add)]) == 3 * n
    assert m.output_shape == (None, 10)
    assert isinstance(m.layers[-3], keras.layers.AveragePooling2D)
    assert m.layers[-3].pool_size == (8, 8)
    bn = architectures.resnet_v1(depth, (32, 32, 3), 10, batch_norm=True)
    assert len([l for l in bn.layers if isinstance(l, keras.layers.BatchNormalization)]) \
        == 6 * n + 1


@pytest.mark.parametrize("depth", [20, 32, 56])
def test_resnet_for_tiny_imagenet_pools_the_whole_16x16_map(depth):
    m = architectures.build(f"resnet{depth}", (64, 64, 3), 200)
    assert m.output_shape == (None, 200)
    pool = m.layers[-3]
    assert isinstance(pool, keras.layers.AveragePooling2D) and pool.pool_size == (16, 16)
    assert pool.output.shape[1:] == (1, 1, 64)
    small = architectures.build(f"resnet{depth}", (32, 32, 3), 200)
    assert m.count_params() == small.count_params()      # same network, larger input


def test_preprocessing_standardises_per_channel():
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (4, 3, 3, 3)).astype(np.float32)
    mean, std = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]
    got = np.asarray(architectures.preprocessing(mean, std)(x))
    ref = (x / 255.0 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_lr_schedule():
    lrs = [train.lr_at(s, 100, 10, 0.1, "cosine") for s in range(100)]
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.1)
    assert max(lrs) == pytest.approx(0.1) and lrs[-1] < 0.001
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))


def _run(tmp_path, name, *extra):
    train.main(["--dataset", "digits", "--arch", "small_cnn", "--filters", "4", "--dense", "8",
                "--epochs", "2", "--batch-size", "64", "--optimizer", "adamw", "--lr", "0.01",
                "--warmup-epochs", "1", "--eval-every", "0", "--augment", "--crop-pad", "1",
                "--no-flip", "--out", str(tmp_path / f"{name}.h5"), "--checkpoint-dir",
                str(tmp_path / f"ckpt_{name}"), "--manifest", str(tmp_path / "MANIFEST.json"),
                *extra])


@pytest.mark.slow
def test_train_resume_and_manifest(tmp_path):
    _run(tmp_path, "straight")
    _run(tmp_path, "resumed", "--time-limit", "0")  # stops after epoch 1
    assert not (tmp_path / "resumed.h5").exists()
    assert json.loads((tmp_path / "ckpt_resumed" / "state.json").read_text())["epoch"] == 1
    _run(tmp_path, "resumed", "--resume")

    a = keras.models.load_model(tmp_path / "straight.h5", compile=False)
    b = keras.models.load_model(tmp_path / "resumed.h5", compile=False)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-6)

    entry = json.loads((tmp_path / "MANIFEST.json").read_text())["models"]["straight.h5"]
    data = (tmp_path / "straight.h5").read_bytes()
    assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert entry["dataset"] == "digits" and entry["epochs"] == 2
    from refdecomp.datasets import load_dataset

    ds = load_dataset("digits")
    probs = a.predict(ds.x_test.astype(np.float32), verbose=0)
    assert entry["keras_test_top1"] == pytest.approx(np.mean(probs.argmax(1) == ds.y_test))
    assert 0.0 <= entry["test_top1"] <= entry["test_top5"] <= 1.0
    with __import__("h5py").File(tmp_path / "straight.h5", "r") as f:
        assert "optimizer_weights" not in f  # shipped files hold no optimizer state
