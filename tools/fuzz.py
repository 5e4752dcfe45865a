"""Seeded mutation fuzzing of the files refdecomp reads: `.h5` models, `.keras` archives and
module files.

Every mutant (byte flips, truncations, JSON mutations of the model config, attribute and
dataset mutations of module files) must give a `RefdecompError` or a result, under a memory
limit, in bounded time. Mutants run in a child process whose address space is capped
(`resource.setrlimit(RLIMIT_AS)` a fixed amount above what the warmed-up child already maps)
and each case has a time limit (`signal.alarm`), so a memory bomb or a hang shows up as an
outcome instead of taking the machine down.

    python tools/fuzz.py --cases 300 --seed 1        # 300 mutants of each kind

prints the outcomes per kind; `tests/test_fuzz.py` runs a short campaign of the same code.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SEED_MODEL = REPO / "weights" / "digits_cnn.h5"
KINDS = ("h5", "keras", "module")

#: Hostile JSON values a config mutation puts in place of a number, string, list or object.
HOSTILE_VALUES = [-1, 0, 1, 2 ** 31, 2 ** 63, 10 ** 30, -(2 ** 63), 1.5, 1e308, float("nan"),
                  True, None, "", "abc", "\ud800", [], [0], [-1, -1], [10 ** 9, 10 ** 9], {},
                  {"class_name": "Lambda"}, [[[[[]]]]], "keras_payload", "same", "valid"]


# -------------------------------------------------------------------------------- seeds
def make_seeds(folder: Path) -> dict[str, Path]:
    """Small valid files of each kind in `folder`: the shipped digits CNN as `.h5`, the same
    model as a `.keras` archive, and a module file made from it (beside a copy of the model,
    which it names relative to itself)."""
    import h5py
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    h5 = folder / "model.h5"
    shutil.copy(SEED_MODEL, h5)
    keras = folder / "model.keras"
    with h5py.File(h5, "r") as f:
        config = f.attrs["model_config"]
        config = config.decode() if isinstance(config, bytes) else str(config)
        weights = {name: [f[f"model_weights/{name}/{name}/{role}"][()]
                          for role in ("kernel", "bias")]
                   for name in ("conv1", "conv2", "dense1", "predictions")}
    buf = io.BytesIO()
    with h5py.File(buf, "w") as w:
        for name, key in (("conv1", "conv2d"), ("conv2", "conv2d_1"), ("dense1", "dense"),
                          ("predictions", "dense_1")):
            g = w.create_group(f"layers/{key}/vars")
            for i, arr in enumerate(weights[name]):
                g.create_dataset(str(i), data=arr)
    write_keras(keras, {"config.json": config.encode(),
                        "metadata.json": json.dumps({"keras_version": "3.15.1"}).encode(),
                        "model.weights.h5": buf.getvalue()})
    import refdecomp
    from refdecomp.datasets import load_digits

    ds = load_digits()
    model = refdecomp.load_model(h5)
    x = ds.x_train[:60].astype(np.float32)
    module = folder / "modules.h5"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        refdecomp.decompose(model, x, ds.y_train[:60]).save(module)
    return {"h5": h5, "keras": keras, "module": module}


def write_keras(path: Path, members: dict[str, bytes], duplicate: str | None = None) -> Path:
    """A `.keras` zip with these members (and `duplicate` written a second time)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
        if duplicate is not None:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # "Duplicate name" is the point
                z.writestr(duplicate, members[duplicate])
    return path


def read_members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


# -------------------------------------------------------------------------------- mutators
def flip_bytes(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 4, 16))):
        i = rng.randrange(len(out))
        out[i] = rng.choice((out[i] ^ (1 << rng.randrange(8)), 0, 0xFF, rng.randrange(256)))
    return bytes(out)


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[:rng.randrange(len(data))]


def mutate_json(text: str, rng: random.Random) -> str:
    """Replace one value anywhere in the JSON document by a hostile one (or drop a key, or
    duplicate a list item)."""
    doc = json.loads(text)
    slots: list[tuple] = []

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                slots.append((node, k))
                walk(v)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                slots.append((node, i))
                walk(v)
    walk(doc)
    parent, key = rng.choice(slots)
    action = rng.random()
    if action < 0.1 and isinstance(parent, dict):
        del parent[key]
    elif action < 0.2 and isinstance(parent, list):
        parent.insert(key, parent[key])
    else:
        parent[key] = rng.choice(HOSTILE_VALUES)
    return json.dumps(doc)


def mutants(seeds: dict[str, Path], n: int, seed: int, folder: Path):
    """(kind, case name, path) for `n` mutants of each kind, reproducible from `seed`."""
    import h5py
    import numpy as np

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    h5_bytes = seeds["h5"].read_bytes()
    members = read_members(seeds["keras"])
    with h5py.File(seeds["h5"], "r") as f:
        config = f.attrs["model_config"]
        config = config.decode() if isinstance(config, bytes) else str(config)
    for i in range(n):
        for kind in KINDS:
            how = rng.choice(("flip", "flip", "truncate", "json"))
            path = folder / f"{kind}-{i}-{how}" / ("model.keras" if kind == "keras" else
                                                  "model.h5" if kind == "h5" else "modules.h5")
            path.parent.mkdir()
            if kind == "h5":
                if how == "json":
                    shutil.copy(seeds["h5"], path)
                    with h5py.File(path, "r+") as f:
                        f.attrs["model_config"] = mutate_json(config, rng)
                else:
                    mutate = flip_bytes if how == "flip" else truncate
                    path.write_bytes(mutate(h5_bytes, rng))
            elif kind == "keras":
                m = dict(members)
                if how == "json":
                    m["config.json"] = mutate_json(m["config.json"].decode(), rng).encode()
                    write_keras(path, m)
                elif rng.random() < 0.5:     # damage the weights inside an intact archive
                    mutate = flip_bytes if how == "flip" else truncate
                    m["model.weights.h5"] = mutate(m["model.weights.h5"], rng)
                    write_keras(path, m)
                else:
                    mutate = flip_bytes if how == "flip" else truncate
                    path.write_bytes(mutate(seeds["keras"].read_bytes(), rng))
            else:
                shutil.copy(seeds["module"], path)
                if how == "json":
                    _mutate_module(path, rng, np)
                else:
                    mutate = flip_bytes if how == "flip" else truncate
                    path.write_bytes(mutate(seeds["module"].read_bytes(), rng))
            yield kind, path.parent.name, path


def _mutate_module(path: Path, rng: random.Random, np) -> None:
    """One attribute or dataset of a module file replaced by a hostile value."""
    import h5py

    with h5py.File(path, "r+") as f:
        objects = [f]
        f.visititems(lambda name, obj: objects.append(obj))
        obj = rng.choice([o for o in objects if len(o.attrs)] or [f])
        if hasattr(obj, "dtype") and rng.random() < 0.4:      # a dataset: other shape / type
            parent, name = obj.parent, obj.name.rsplit("/", 1)[1]
            attrs = dict(obj.attrs)
            del parent[name]
            value = rng.choice([np.zeros((3, 3), np.float32), np.array([b"x"]),
                                np.zeros(0, np.uint8), np.array([1 + 2j]),
                                np.full(5, np.nan, np.float32)])
            d = parent.create_dataset(name, data=value)
            d.attrs.update(attrs)
            return
        key = rng.choice(list(obj.attrs))
        value = rng.choice(HOSTILE_VALUES + [np.array([2 ** 40, 2 ** 40], np.int64), "{",
                                             "[1, 2]", json.dumps({"a": [1] * 3})])
        if value is None or isinstance(value, (dict, list)):
            value = json.dumps(value)
        try:
            obj.attrs[key] = value
        except (TypeError, ValueError, UnicodeError):
            obj.attrs[key] = "{"


# -------------------------------------------------------------------------------- running
def run_case(kind: str, path: Path, model_path: Path):
    """Load (and run on two images) one mutant; returns the result or raises."""
    import numpy as np

    import refdecomp

    if kind == "module":
        ms = refdecomp.load_modules(path, model=model_path)
        return ms.predict(np.zeros((2, 8, 8, 1), np.float32))
    model = refdecomp.load_model(path)
    shapes = [tuple(8 if d is None else d for d in s) for s in model.graph.input_shapes()]
    return model.predict([np.zeros((2, *s), np.float32) for s in shapes])


def _child(spec_file: str) -> int:
    """Run the cases listed in `spec_file` under the memory and time limits, appending one JSON
    line [kind, case, outcome] per case to the spec's results file as it goes."""
    import resource
    import signal
    import warnings

    import refdecomp
    from refdecomp import limits

    spec = json.loads(Path(spec_file).read_text())
    run_case("h5", Path(spec["model"]), Path(spec["model"]))    # warm up: kernels, threads
    with open("/proc/self/statm") as fh:
        mapped = int(fh.read().split()[0]) * resource.getpagesize()
    cap = mapped + spec["memory_mb"] * (1 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))

    class Hang(Exception):
        pass

    def alarm(signum, frame):
        raise Hang()

    signal.signal(signal.SIGALRM, alarm)
    results = open(spec["results"], "a", buffering=1)  # noqa: SIM115  (open for the whole run)
    # keep what a file may legitimately ask for well below the address-space cap
    with limits.override(max_tensor_bytes=spec["memory_mb"] << 18,
                         max_file_bytes=spec["memory_mb"] << 19), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for kind, name, path in spec["cases"]:
            signal.alarm(spec["seconds"])
            try:
                run_case(kind, Path(path), Path(spec["model"]))
                outcome = "result"
            except refdecomp.errors.InternalError as exc:
                outcome = f"FAILED: InternalError: {exc}"
            except refdecomp.RefdecompError as exc:
                outcome = f"refused: {type(exc).__name__}"
            except Hang:
                outcome = f"FAILED: more than {spec['seconds']} s"
            except MemoryError:
                outcome = "FAILED: MemoryError (the memory limit was hit)"
            except Exception as exc:  # noqa: BLE001 -- what the campaign looks for
                outcome = f"FAILED: {type(exc).__name__}: {str(exc)[:200]}"
            finally:
                signal.alarm(0)
            results.write(json.dumps([kind, name, outcome]) + "\n")
    return 0


def campaign(n: int, seed: int, folder: Path, *, memory_mb: int = 1024, seconds: int = 60,
             timeout: float = 1800) -> list[list[str]]:
    """Make seeds and `n` mutants of each kind in `folder` and run them in limited children:
    [[kind, case, outcome], ...]. A child killed by a signal (a crash in a C library) is
    reported as the outcome of the case it was running, and a new child goes on with the
    rest."""
    seeds = make_seeds(folder / "seeds")
    cases = [[k, name, str(p)] for k, name, p in mutants(seeds, n, seed, folder / "mutants")]
    results = folder / "results.jsonl"
    results.write_text("")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    outcomes: list[list[str]] = []
    while len(outcomes) < len(cases):
        spec = folder / "spec.json"
        spec.write_text(json.dumps({"cases": cases[len(outcomes):], "model": str(seeds["h5"]),
                                    "memory_mb": memory_mb, "seconds": seconds,
                                    "results": str(results)}))
        proc = subprocess.run([sys.executable, __file__, "--child", str(spec)],
                              capture_output=True, text=True, timeout=timeout, env=env)
        outcomes = [json.loads(line) for line in results.read_text().splitlines()]
        if proc.returncode != 0:
            if len(outcomes) >= len(cases):
                break
            kind, name, _ = cases[len(outcomes)]
            crash = [kind, name, f"FAILED: the process died with status {proc.returncode} "
                                 f"{proc.stderr.strip()[-300:]}"]
            with open(results, "a") as fh:
                fh.write(json.dumps(crash) + "\n")
            outcomes.append(crash)
    return outcomes


def summary(outcomes: list[list[str]]) -> str:
    counts = Counter((kind, outcome if outcome.startswith(("result", "refused")) else "FAILED")
                     for kind, _, outcome in outcomes)
    lines = ["| kind | outcome | cases |", "|---|---|---|"]
    for (kind, outcome), c in sorted(counts.items()):
        lines.append(f"| {kind} | {outcome} | {c} |")
    failed = [o for o in outcomes if o[2].startswith("FAILED")]
    lines.append(f"\n{len(outcomes)} cases, {len(failed)} failed")
    lines += [f"  {kind} {name}: {outcome}" for kind, name, outcome in failed[:50]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=300, help="mutants of each kind")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--memory-mb", type=int, default=1024,
                   help="address space the child may add to what it maps after warming up")
    p.add_argument("--seconds", type=int, default=60, help="time limit of one case")
    p.add_argument("--keep", help="folder to keep the mutants in (default: a temporary one)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return _child(args.child)
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="refdecomp-fuzz-"))
    try:
        outcomes = campaign(args.cases, args.seed, folder, memory_mb=args.memory_mb,
                            seconds=args.seconds)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    print(summary(outcomes))
    return 1 if any(o[2].startswith("FAILED") for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
