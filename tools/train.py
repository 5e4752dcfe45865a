#!/usr/bin/env python3
"""Train the models in weights/ (Keras 3) and keep weights/MANIFEST.json up to date.

    python tools/train.py --dataset digits --arch small_cnn --epochs 40 --out weights/digits_cnn.h5
    python tools/train.py --dataset cifar10 --arch resnet20 --epochs 120 --normalize --augment \
        --out weights/cifar10_resnet20.h5 --checkpoint-dir runs/c10r20 [--resume]
    python tools/train.py --manifest-only            # re-measure every manifest entry

Data come from refdecomp.datasets (uint8 NHWC); the saved model contains its own
preprocessing, so it takes raw 0..255 pixels as float32. CIFAR augmentation (4-pixel padded
random crop + horizontal flip) is done here in NumPy, never inside the model. A checkpoint
(model + optimizer state as .keras, and state.json with the epoch and history) is written
after every epoch; `--resume` continues from it, with the same per-epoch random streams, so
an interrupted run ends where an uninterrupted one would (as far as the backend is
deterministic). `--time-limit` stops cleanly after the epoch that crosses it.

Test accuracy in the manifest is measured with refdecomp's own interpreter
(refdecomp.load_model(path).predict); when that is unavailable Keras's figure is recorded
with "measured_by": "keras" and `--manifest-only` recomputes it later.

This is a tool: the refdecomp library never imports it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "tools"))

from refdecomp.datasets import Dataset, load_dataset  # noqa: E402
from refdecomp.fileio import sha256_file, write_json  # noqa: E402

# Prefer JAX (GPU) when it is installed and no backend was chosen; else Keras's default.
if "KERAS_BACKEND" not in os.environ:
    try:
        import jax  # noqa: F401

        os.environ["KERAS_BACKEND"] = "jax"
    except ImportError:
        pass

MANIFEST = ROOT / "weights" / "MANIFEST.json"


# --------------------------------------------------------------------------- data

def augment(x: np.ndarray, rng: np.random.Generator, pad: int = 4, flip: bool = True
            ) -> np.ndarray:
    """Random crop from the zero-padded image (pad pixels each side) + (if `flip`) random
    horizontal flip, independently per image. x: uint8 NHWC; returns a new array."""
    n, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    dy = rng.integers(0, 2 * pad + 1, size=n)
    dx = rng.integers(0, 2 * pad + 1, size=n)
    rows = dy[:, None] + np.arange(h)[None, :]                      # (n, h)
    cols = dx[:, None] + np.arange(w)[None, :]                      # (n, w)
    flipped = rng.random(n) < (0.5 if flip else 0.0)
    cols = np.where(flipped[:, None], cols[:, ::-1], cols)
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def channel_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images scaled to 0..1."""
    xf = x.reshape(-1, x.shape[-1]).astype(np.float64) / 255.0
    return xf.mean(axis=0).tolist(), xf.std(axis=0).tolist()


def topk(probs: np.ndarray, y: np.ndarray, k: int) -> float:
    k = min(k, probs.shape[1])
    best = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float((best == y[:, None]).any(axis=1).mean())


# --------------------------------------------------------------------------- files

def atomic_json(path: Path, obj) -> None:
    write_json(path, obj, sort_keys=True)


def atomic_save(model, path: Path, **kwargs) -> None:
    """model.save to a temporary name with the same suffix, then rename into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    model.save(str(tmp), **kwargs)
    os.replace(tmp, path)


def load_manifest(manifest: Path) -> dict:
    if manifest.is_file():
        return json.loads(manifest.read_text())
    return {"models": {}}


def machine() -> str:
    import keras

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    devices = ""
    if keras.backend.backend() == "jax":
        import jax

        devices = ", ".join(sorted({d.device_kind for d in jax.devices()}))
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs ({cpu})"
            f"{', ' + devices if devices else ''}; Keras {keras.__version__} "
            f"({keras.backend.backend()} backend)")


# --------------------------------------------------------------------------- evaluation

def refdecomp_accuracy(path: Path, ds: Dataset) -> tuple[float, float] | None:
    """(top1, top5) on the test split through refdecomp's interpreter, or None if it cannot
    read the model yet."""
    try:
        import refdecomp

        probs = refdecomp.load_model(path).predict(ds.x_test.astype(np.float32))
    except Exception as exc:  # interpreter missing or incomplete: fall back to Keras
        print(f"refdecomp could not evaluate {path.name}: {type(exc).__name__}: {exc}")
        return None
    probs = np.asarray(probs)
    return topk(probs, ds.y_test, 1), topk(probs, ds.y_test, 5)


def record(path: Path, ds: Dataset, entry: dict, keras_probs: np.ndarray | None,
           manifest_path: Path = MANIFEST) -> dict:
    """Measure `path` and write its entry in `manifest_path` (merged into an existing one)."""
    manifest = load_manifest(manifest_path)
    old = manifest["models"].get(path.name, {})
    e = {**old, **entry, "file": path.name, "sha256": sha256_file(path),
         "size_bytes": path.stat().st_size}
    if keras_probs is not None:
        e["keras_test_top1"] = topk(keras_probs, ds.y_test, 1)
        e["keras_test_top5"] = topk(keras_probs, ds.y_test, 5)
    acc = refdecomp_accuracy(path, ds)
    if acc is not None:
        e["test_top1"], e["test_top5"] = acc
        e["measured_by"] = "refdecomp"
    elif "keras_test_top1" in e:
        e["test_top1"], e["test_top5"] = e["keras_test_top1"], e["keras_test_top5"]
        e["measured_by"] = "keras"
    manifest["models"][path.name] = e
    atomic_json(manifest_path, manifest)
    print(f"{path.name}: top1 {e.get('test_top1')}, top5 {e.get('test_top5')} "
          f"(measured by {e.get('measured_by')})")
    return e


def manifest_only(args) -> None:
    """Re-measure the manifest entries (all, or the one named by --out) with refdecomp."""
    manifest_path = Path(args.manifest)
    manifest = load_manifest(manifest_path)
    names = [Path(args.out).name] if args.out else sorted(manifest["models"])
    for name in names:
        entry = manifest["models"].get(name)
        if entry is None:
            sys.exit(f"{name}: not in {manifest_path}")
        ds = load_dataset(entry["dataset"], data_dir=args.data_dir)
        record(manifest_path.parent / name, ds, {}, None, manifest_path)


# --------------------------------------------------------------------------- training

def lr_at(step: int, total: int, warmup: int, base: float, schedule: str) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to 0 or constant."""
    if step < warmup:
        return base * (step + 1) / warmup
    if schedule == "cosine":
        t = (step - warmup) / max(1, total - warmup)
        return 0.5 * base * (1.0 + math.cos(math.pi * min(1.0, t)))
    return base


def warm_start(model, source: Path) -> dict:
    """Copy the weights of `source` (a model this tool trained, same architecture) into
    `model`: a warm restart with a fresh optimizer and learning-rate schedule. Returns what
    the manifest records about the starting point."""
    import keras

    if not source.is_file():
        sys.exit(f"--init-from {source}: no such file")
    start = keras.models.load_model(source, compile=False)
    shapes = [w.shape for w in start.get_weights()]
    if shapes != [w.shape for w in model.get_weights()]:
        sys.exit(f"--init-from {source}: its weights do not fit --arch (different architecture)")
    model.set_weights(start.get_weights())
    entry = load_manifest(source.parent / "MANIFEST.json")["models"].get(source.name, {})
    return {"file": source.name, "sha256": sha256_file(source),
            "epochs": entry.get("epochs"), "command": entry.get("command"),
            "test_top1": entry.get("test_top1")}


def train(args) -> None:
    import keras
    from architectures import build

    out = Path(args.out)
    ckpt_dir = Path(args.checkpoint_dir or ROOT / "runs" / out.stem)
    ckpt, state_file = ckpt_dir / "checkpoint.keras", ckpt_dir / "state.json"
    ds = load_dataset(args.dataset, data_dir=args.data_dir)
    keras.utils.set_random_seed(args.seed)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()

    x_train, y_train = ds.x_train, ds.y_train
    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    warmup = steps_per_epoch * args.warmup_epochs

    if (args.resume or args.export_checkpoint) and ckpt.is_file():
        state = json.loads(state_file.read_text())
        model = keras.models.load_model(ckpt)
        print(f"resuming {ckpt} after epoch {state['epoch']}")
    else:
        mean, std = channel_stats(x_train) if args.normalize else (None, None)
        model = build(args.arch, ds.image_shape, ds.num_classes, batch_norm=args.batch_norm,
                      mean=mean, std=std, seed=args.seed, filters=args.filters,
                      dense=args.dense)
        if args.optimizer == "sgd":
            opt = keras.optimizers.SGD(learning_rate=args.lr, momentum=0.9, nesterov=True,
                                       weight_decay=args.weight_decay or None)
        else:
            opt = keras.optimizers.AdamW(learning_rate=args.lr, weight_decay=args.weight_decay)
        model.compile(optimizer=opt, loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        state = {"epoch": 0, "seconds": 0.0, "history": []}
        if args.init_from:
            state["init_from"] = warm_start(model, Path(args.init_from))
    if not args.export_checkpoint:
        state.setdefault("commands", []).append(
            "python tools/train.py " + shlex.join(sys.argv[1:]))
    print(f"{model.name}: {model.count_params()} parameters, {len(x_train)} training images")

    class StepLR(keras.callbacks.Callback):
        def __init__(self, first_step):
            super().__init__()
            self.step = first_step

        def on_train_batch_begin(self, batch, logs=None):
            self.model.optimizer.learning_rate.assign(
                lr_at(self.step, total_steps, warmup, args.lr, args.schedule))
            self.step += 1

    started = time.time()
    while state["epoch"] < args.epochs and not args.export_checkpoint:
        epoch = state["epoch"]
        t0 = time.time()
        rng = np.random.default_rng([args.seed, epoch])
        x = (augment(x_train, rng, args.crop_pad, not args.no_flip) if args.augment
             else x_train)
        order = rng.permutation(len(x))
        hist = model.fit(x[order].astype(np.float32), y_train[order], batch_size=args.batch_size,
                         epochs=1, shuffle=False, verbose=0,
                         callbacks=[StepLR(epoch * steps_per_epoch)])
        row = {k: float(v[-1]) for k, v in hist.history.items()}
        if args.eval_every and ((epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs):
            probs = model.predict(ds.x_test.astype(np.float32), batch_size=1000, verbose=0)
            row["test_top1"] = topk(probs, ds.y_test, 1)
        state["epoch"] = epoch + 1
        state["seconds"] += time.time() - t0
        state["history"].append(row)
        atomic_save(model, ckpt)
        atomic_json(state_file, state)
        print(f"epoch {epoch + 1}/{args.epochs} {time.time() - t0:.1f}s "
              + " ".join(f"{k} {v:.4f}" for k, v in row.items()), flush=True)
        if args.time_limit is not None and time.time() - started > args.time_limit * 60 \
                and state["epoch"] < args.epochs:
            print(f"time limit reached after epoch {state['epoch']}: rerun with --resume")
            return

    if args.export_checkpoint and not ckpt.is_file():
        sys.exit(f"{ckpt}: no checkpoint to export")
    # The shipped file: architecture + weights only (no optimizer), legacy HDF5.
    atomic_save(model, out, include_optimizer=False)
    final = keras.models.load_model(out, compile=False)
    probs = final.predict(ds.x_test.astype(np.float32), batch_size=1000, verbose=0)
    argv = [a for a in sys.argv[1:] if a not in ("--resume", "--export-checkpoint")]
    record(out, ds, {
        "dataset": ds.name,
        "architecture": args.arch + ("_bn" if args.batch_norm else ""),
        "epochs": state["epoch"],
        "planned_epochs": args.epochs,
        "seed": args.seed,
        "train_seconds": round(state["seconds"], 1),
        "machine": machine(),
        "command": "python tools/train.py " + shlex.join(argv),
        "commands_run": state.get("commands", []),
        **({"init_from": state["init_from"]} if state.get("init_from") else {}),
        "train_history": state["history"],
        "input": "float32 raw pixel values 0..255, NHWC " + "x".join(map(str, ds.image_shape)),
        "class_names": list(ds.class_names),
        "parameters": int(final.count_params()),
    }, probs, Path(args.manifest))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", help="dataset name or path (refdecomp.datasets)")
    p.add_argument("--data-dir", help="folder holding the dataset files")
    p.add_argument("--arch", default="small_cnn",
                   help="resnet20 | resnet32 | resnet56 | small_cnn | mobilenet_v2")
    p.add_argument("--batch-norm", action="store_true", help="ResNet with batch normalisation")
    p.add_argument("--normalize", action="store_true",
                   help="per-channel standardisation inside the model (else x/255)")
    p.add_argument("--augment", action="store_true",
                   help="padded random crop + horizontal flip (CIFAR)")
    p.add_argument("--crop-pad", type=int, default=4, help="padding of the random crop")
    p.add_argument("--no-flip", action="store_true", help="augment without flips (digits)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    p.add_argument("--lr", type=float, default=0.05, help="peak learning rate")
    p.add_argument("--weight-decay", type=float, default=0.0,
                   help="decoupled weight decay (optimizer side; nothing in the model)")
    p.add_argument("--warmup-epochs", type=int, default=2)
    p.add_argument("--schedule", choices=("cosine", "constant"), default="cosine")
    p.add_argument("--filters", type=int, nargs="+", default=[16, 32],
                   help="small_cnn: filters of each conv layer")
    p.add_argument("--dense", type=int, default=64, help="small_cnn: hidden dense units")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=5, help="test accuracy every N epochs")
    p.add_argument("--out", help="final .h5 path (weights/<name>.h5)")
    p.add_argument("--checkpoint-dir", help="default runs/<out stem>")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    p.add_argument("--init-from", help="start from this trained model's weights (warm restart)")
    p.add_argument("--export-checkpoint", action="store_true",
                   help="write --out from the checkpoint as it stands (a stopped run)")
    p.add_argument("--time-limit", type=float, help="stop after the epoch crossing N minutes")
    p.add_argument("--manifest", default=str(MANIFEST),
                   help="manifest to update (its folder holds the weight files)")
    p.add_argument("--manifest-only", action="store_true",
                   help="only re-measure manifest entries with refdecomp (all, or --out)")
    args = p.parse_args(argv)
    if args.manifest_only:
        return manifest_only(args)
    if not args.dataset or not args.out:
        p.error("--dataset and --out are required for training")
    train(args)


if __name__ == "__main__":
    main()
