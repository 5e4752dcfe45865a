"""Input preprocessing (`refdecomp.preprocessing`), its record in module files and its use by
the command line, and the stratified `--limit` subset.

Oracles: the steps written out in NumPy float64 in the test; the model's own predictions on
inputs preprocessed by hand; counting labels of the subsets.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refdecomp
from refdecomp import DataError, RefdecompError
from refdecomp.cli import main
from refdecomp.datasets import Dataset, save_npz
from refdecomp.experiments import SubsetWarning, limit_dataset, stratified_indices
from refdecomp.preprocessing import Preprocessing

ROOT = Path(__file__).resolve().parent.parent
DIGITS_MODEL = ROOT / "weights" / "digits_cnn.h5"


def _images(seed: int, n=12, h=5, w=4, c=3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, c), dtype=np.uint8)


# --------------------------------------------------------------------------- the steps

@settings(max_examples=25)
@given(seed=st.integers(0, 1000), scale=st.sampled_from([1.0, 1 / 255, 0.5, 2.0]),
       subtract=st.sampled_from(["none", "pixel-mean", "channel-mean", (10.0, -2.5, 0.25)]),
       divide=st.sampled_from(["none", "channel-std", (2.0, 0.5, 4.0)]),
       channels_first=st.booleans())
def test_steps_match_numpy_in_order(seed, scale, subtract, divide, channels_first):
    x_train, x = _images(seed), _images(seed + 1, n=7)
    pre = Preprocessing(scale, subtract, divide, channels_first).fit(x_train)
    # brute force, float64, the documented order: scale, subtract, divide, channels first
    t = x_train.astype(np.float64) * scale
    ref = x.astype(np.float64) * scale
    if subtract == "pixel-mean":
        sub = t.mean(axis=0)
    elif subtract == "channel-mean":
        sub = t.mean(axis=(0, 1, 2))
    else:
        sub = np.zeros(3) if subtract == "none" else np.array(subtract)
    t, ref = t - sub, ref - sub
    if divide == "channel-std":
        ref = ref / t.std(axis=(0, 1, 2))
    elif divide != "none":
        ref = ref / np.array(divide)
    if channels_first:
        ref = ref.transpose(0, 3, 1, 2)
    out = pre(x)
    assert out.dtype == np.float32 and out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=2e-6, atol=2e-5 * max(1.0, np.abs(ref).max()))


def test_identity_and_fraction_scale():
    x = _images(3)
    assert Preprocessing().is_identity
    np.testing.assert_array_equal(Preprocessing()(x), x.astype(np.float32))
    pre = Preprocessing(scale="1/255")
    assert pre.scale == pytest.approx(1 / 255) and not pre.needs_fit
    np.testing.assert_allclose(pre(x), x / 255.0, rtol=1e-6)


def test_statistics_needed_before_use_and_fit_keeps_them():
    pre = Preprocessing(subtract="channel-mean")
    assert pre.needs_fit
    with pytest.raises(DataError, match="fit"):
        pre(_images(0))
    fitted = pre.fit(_images(1))
    again = fitted.fit(_images(2))            # statistics already present are kept
    np.testing.assert_array_equal(fitted.statistics["subtract"], again.statistics["subtract"])


@pytest.mark.parametrize("kwargs, match", [
    ({"scale": "0"}, "--scale"), ({"scale": "a/b"}, "--scale"),
    ({"subtract": "median"}, "--subtract"), ({"divide": "1,0,1"}, "divide by zero"),
    ({"divide": "channel-mean"}, "--divide"),
])
def test_bad_options_name_the_argument(kwargs, match):
    with pytest.raises(RefdecompError, match=match):
        Preprocessing(**kwargs)


def test_value_count_and_constant_channels_are_refused():
    with pytest.raises(DataError, match="2 values for images with 3 channels"):
        Preprocessing(subtract=(1.0, 2.0))(_images(0))
    flat = np.full((4, 2, 2, 1), 7, np.uint8)
    with pytest.raises(DataError, match="standard deviation 0"):
        Preprocessing(divide="channel-std").fit(flat)
    with pytest.raises(DataError, match=r"statistics are for images \(5, 4, 3\)"):
        Preprocessing(subtract="pixel-mean").fit(_images(0))(_images(1, h=6))


def test_state_round_trip_and_description():
    pre = Preprocessing(1 / 255, "pixel-mean", "channel-std", True).fit(_images(5))
    spec, stats = pre.state()
    json.dumps(spec)                               # the module file's JSON attribute
    back = Preprocessing.from_state(json.loads(json.dumps(spec)), stats)
    np.testing.assert_array_equal(back(_images(6)), pre(_images(6)))
    text = pre.describe()
    assert "x * 0.00392156863" in text and "pixel-mean (5x4x3" in text and "channels first" in text
    with pytest.raises(DataError, match="expected the keys"):
        Preprocessing.from_state({"scale": 1, "mean": 3})


# --------------------------------------------------------------------------- stratified --limit

@settings(max_examples=30)
@given(counts=st.lists(st.integers(0, 40), min_size=1, max_size=8), limit=st.integers(1, 200),
       seed=st.integers(0, 5))
def test_stratified_indices_are_proportional(counts, limit, seed):
    y = np.repeat(np.arange(len(counts)), counts)
    np.random.default_rng(seed).shuffle(y)
    keep = stratified_indices(y, limit, seed)
    assert len(keep) == min(limit, len(y)) and len(np.unique(keep)) == len(keep)
    assert np.all(np.diff(keep) > 0)
    if len(y) and limit < len(y):
        got = np.bincount(y[keep], minlength=len(counts))
        exact = limit * np.asarray(counts) / len(y)
        assert np.all(np.abs(got - exact) < 1.0 + 1e-9)   # each class within one of its share
    np.testing.assert_array_equal(keep, stratified_indices(y, limit, seed))   # seeded


def _sorted_dataset(per_class=20, classes=10) -> Dataset:
    """Images listed class by class, as image-folder datasets are."""
    y = np.repeat(np.arange(classes), per_class)
    x = np.arange(len(y), dtype=np.uint8).reshape(-1, 1, 1, 1) * np.ones((1, 2, 2, 1), np.uint8)
    return Dataset("sorted", x, y, x.copy(), y.copy(), tuple(str(i) for i in range(classes)))


def test_limit_takes_every_class_not_the_first_ones():
    ds = limit_dataset(_sorted_dataset(), 50, seed=1)
    assert np.bincount(ds.y_train).tolist() == [5] * 10
    assert np.bincount(ds.y_test).tolist() == [5] * 10
    np.testing.assert_array_equal(ds.x_train[:, 0, 0, 0], np.flatnonzero(
        np.isin(np.arange(200), ds.x_train[:, 0, 0, 0])))        # images kept with their labels
    assert not np.array_equal(limit_dataset(_sorted_dataset(), 50, seed=2).x_train,
                              ds.x_train)


def test_limit_warns_when_a_class_is_left_empty():
    with pytest.warns(SubsetWarning, match="no images of 4 of the 10 classes"):
        ds = limit_dataset(_sorted_dataset(), 6)
    assert len(ds.y_train) == 6


def test_limit_warning_on_the_command_line(capsys):
    pytest.importorskip("sklearn")
    assert main(["predict", str(DIGITS_MODEL), "--data", "digits", "--limit", "5",
                 "--no-progress", "--json"]) == 0
    captured = capsys.readouterr()
    assert "refdecomp predict: warning: --limit 5" in captured.err
    assert json.loads(captured.out)["images"] == 5


# --------------------------------------------------------------------------- module files, CLI

@pytest.fixture(scope="module")
def scaled_digits(tmp_path_factory):
    """digits stored as 8-bit values v // 16: the shipped CNN needs --scale 16 to see its input
    (on the stored values it scores about 26%)."""
    pytest.importorskip("sklearn")
    from refdecomp.datasets import load_dataset

    ds = load_dataset("digits")
    small = Dataset("digits_small", ds.x_train // 16, ds.y_train, ds.x_test // 16, ds.y_test,
                    ds.class_names)
    path = tmp_path_factory.mktemp("data") / "digits_small.npz"
    save_npz(small, path)
    return path, small


def test_decompose_records_preprocessing_and_evaluate_reapplies_it(scaled_digits, tmp_path,
                                                                   capsys):
    path, small = scaled_digits
    out = tmp_path / "m.h5"
    argv = ["--data", str(path), "--scale", "16", "--no-progress", "--json"]
    assert main(["decompose", str(DIGITS_MODEL), "--out", str(out), "--backtrack", "none",
                 "--tangling", "5", "--delta-rule", "pseudocode", *argv]) == 0
    dec = json.loads(capsys.readouterr().out)
    assert dec["preprocessing"]["scale"] == 16.0
    assert dec["options"]["tangling"] == 5 and dec["options"]["delta_rule"] == "pseudocode"
    ms = refdecomp.load_modules(out)
    assert ms.preprocessing.scale == 16.0 and ms[0].preprocessing is ms.preprocessing
    # evaluate states nothing and gets the recorded preprocessing: the model's own accuracy on
    # hand-scaled input is what the report says
    assert main(["evaluate", str(out), "--data", str(path), "--no-progress", "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    model = refdecomp.load_model(DIGITS_MODEL)
    want = np.mean(model.predict(small.x_test.astype(np.float32) * 16).argmax(1) == small.y_test)
    assert ev["model"]["top1"] == pytest.approx(want) and want > 0.9
    assert ev["preprocessing"]["description"].startswith("x * 16")
    scores = ms.predict(small.x_test.astype(np.float32) * 16)
    from refdecomp import metrics

    assert ev["composed"]["top1"] == pytest.approx(
        metrics.top_k_accuracy(scores, small.y_test, 1, ms.classes))
    # stating a different preprocessing than the file's is refused with both named
    assert main(["evaluate", str(out), "--data", str(path), "--scale", "2", "--no-progress"]) == 2
    assert "records the preprocessing 'x * 16'" in capsys.readouterr().err


def test_scenarios_reapply_the_recorded_preprocessing(scaled_digits, tmp_path, capsys):
    path, small = scaled_digits
    raw, scaled = tmp_path / "raw.h5", tmp_path / "scaled.h5"
    common = ["--backtrack", "none", "--no-progress", "--json"]
    assert main(["decompose", str(DIGITS_MODEL), "--data", "digits", "--out", str(raw),
                 *common]) == 0
    assert main(["decompose", str(DIGITS_MODEL), "--data", str(path), "--scale", "16",
                 "--out", str(scaled), *common]) == 0
    capsys.readouterr()
    # replacing each module of the scaled set by the module of the raw set: the same model and
    # (after each file's own preprocessing) nearly the same input, so nearly the same accuracy
    assert main(["replace", "--target", str(scaled), "--donor", str(raw), "--data", str(path),
                 "--classes", "0,1", "--no-progress", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["composed"]["top1"] > 0.9
    # the donor's modules see v // 16 pixels they were not made for (raw file: no
    # preprocessing), the target's see them times 16: replacing a module must not crash and
    # stays a valid figure
    assert all(0.0 <= r["top1"] <= 1.0 for r in rep["replaced"])
    assert main(["reuse", "--pick", f"{scaled}:0@{path}", "--pick", f"{scaled}:1@{path}",
                 "--no-progress", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["MA"] > 0.9
    upd = tmp_path / "u.h5"
    assert main(["update", str(scaled), "--class", "0", "--unconcerned", f"1@{path}",
                 "--update-limit", "10", "--out", str(upd), "--no-progress", "--json"]) == 0
    assert refdecomp.load_modules(upd).preprocessing.scale == 16.0


def test_help_shows_defaults_and_every_decomposition_option(capsys):
    with pytest.raises(SystemExit):
        main(["decompose", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--tangling", "--delta-rule", "--seed", "--backtrack", "--delta",
                   "--scale", "--subtract", "--divide", "--channels-first", "--limit-seed"):
        assert option in text, option
    assert "(default: balanced)" in text and "(default: prose)" in text
    assert "(default: last_conv)" in text and "(default: 0.5)" in text
    assert "stratified" in text


def test_channels_first_model_by_others(tmp_path, capsys):
    """A real channels-first file (first Conv2D NCHW): without --channels-first the error says
    what to add; with it, the reported accuracy is the model's on hand-transposed input."""
    from conftest import SHARED_DATA

    model_file = (SHARED_DATA.parent / "keras-corpus"
                  / "dl4j-test-resources__simpleconv2d_model.hdf5")
    if not model_file.exists():
        pytest.skip(f"{model_file} not present")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 28, 28, 1), dtype=np.uint8)
    y = rng.integers(0, 10, 40)
    data = tmp_path / "fake28.npz"
    save_npz(Dataset("fake28", x, y, x, y, tuple(map(str, range(10)))), data)
    argv = ["predict", str(model_file), "--data", str(data), "--scale", "1/255", "--no-progress",
            "--json"]
    assert main(argv) == 2
    assert "--channels-first" in capsys.readouterr().err
    assert main([*argv, "--channels-first"]) == 0
    got = json.loads(capsys.readouterr().out)
    probs = refdecomp.load_model(model_file).predict(
        np.ascontiguousarray((x / 255.0).astype(np.float32).transpose(0, 3, 1, 2)))
    assert got["top1"] == pytest.approx(np.mean(probs.argmax(1) == y))
    assert got["preprocessing"]["channels_first"] is True
