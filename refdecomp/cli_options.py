"""Command-line options shared by the subcommands: datasets, preprocessing, decomposition.

One place defines each option, its default and its help text, and one place turns the parsed
options into what the API takes (`load_data`, `preprocessing_from_args`,
`module_preprocessing`, `decomposition_kwargs`), so every command that reads a dataset
understands the same `--data ... --limit ... --scale ... --subtract ...`.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from typing import Any

from .datasets import load_dataset
from .decompose import BACKTRACK_MODES, CHANNELINGS, DEFAULT_DELTA_RULE, DELTA_RULES, DELTA_SCALES
from .errors import RefdecompError
from .experiments import SubsetWarning, limit_dataset
from .preprocessing import Preprocessing

DATASET_HELP = ("dataset name (digits, mnist, fashion_mnist, cifar10, cifar100, tiny_imagenet) "
                "or a path (.npz, image-folder tree or .tar/.tar.gz of one, CIFAR/IDX files, "
                "a Tiny ImageNet folder or .zip)")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show (None / False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or \
                action.default is argparse.SUPPRESS:
            return action.help or ""
        return super()._get_help_string(action)


# -- datasets ------------------------------------------------------------------------------
def add_data_options(p: argparse.ArgumentParser, *, required: bool = True,
                     default: str | None = None, data: bool = True, limit: bool = True,
                     data_help: str = DATASET_HELP) -> None:
    """--data, --data-dir and (with `limit`) --limit / --limit-seed."""
    if data:
        p.add_argument("--data", required=required, default=default, help=data_help)
    p.add_argument("--data-dir", help="folder searched first for named datasets (then "
                                      "$REFDECOMP_DATA, then the download cache)")
    if limit:
        p.add_argument("--limit", type=int, metavar="N",
                       help="use a random subset of N images of each split, every class in "
                            "proportion (stratified, seeded by --limit-seed); warns when a "
                            "class ends up without images")
        p.add_argument("--limit-seed", type=int, default=0, metavar="SEED",
                       help="seed of the --limit subset")


def load_data(args: argparse.Namespace, name: str | None = None):
    """(dataset limited as the options say, preprocessing fitted on its full training split
    or None). `name` overrides `args.data`."""
    ds = load_dataset(name or args.data, data_dir=args.data_dir)
    pre = preprocessing_from_args(args)
    if pre is not None:
        pre = pre.fit(ds.x_train)
    return limited(args, ds), pre


def limited(args: argparse.Namespace, ds):
    """`ds` cut to the --limit subset; its warnings (a class left empty) go to stderr as one
    line each."""
    with subset_warnings(args):
        return limit_dataset(ds, getattr(args, "limit", None), getattr(args, "limit_seed", 0))


@contextlib.contextmanager
def subset_warnings(args: argparse.Namespace):
    """Within: a `SubsetWarning` (a --limit subset left a class empty) is printed at once as one
    line, ``refdecomp COMMAND: warning: ...``; other warnings as usual."""
    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, SubsetWarning):
            print(f"refdecomp {getattr(args, 'command', '')}: warning: {message}",
                  file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.simplefilter("always", SubsetWarning)
        default, warnings.showwarning = warnings.showwarning, show
        yield


# -- preprocessing -------------------------------------------------------------------------
def add_preprocessing_options(p: argparse.ArgumentParser, *, recorded: bool = False) -> None:
    """--scale, --subtract, --divide, --channels-first. `recorded`: the command reads module
    files, which record the preprocessing they were made with; the options then only serve
    files that record none, and must agree with those that do."""
    g = p.add_argument_group(
        "preprocessing", "how raw pixel values 0..255 become model input: x * SCALE, minus "
                         "SUBTRACT, divided by DIVIDE, in that order (statistics from the "
                         "training split); for models that expect preprocessed input"
                         + ("; default: what the module file records" if recorded else ""))
    g.add_argument("--scale", default=None if recorded else "1", metavar="S",
                   help="multiply pixel values by S (a number or a fraction such as 1/255)")
    g.add_argument("--subtract", default=None if recorded else "none",
                   metavar="none|pixel-mean|channel-mean|V,V,V",
                   help="subtract the training split's mean image, its per-channel mean, or "
                        "the given per-channel values (after scaling)")
    g.add_argument("--divide", default=None if recorded else "none",
                   metavar="none|channel-std|V,V,V",
                   help="divide by the per-channel standard deviation of the training split "
                        "(after the subtraction) or by the given per-channel values")
    g.add_argument("--channels-first", action="store_true", default=None if recorded else False,
                   help="give the model NCHW input (for models that take channels first)")


_PRE_OPTIONS = ("scale", "subtract", "divide", "channels_first")


def preprocessing_from_args(args: argparse.Namespace):
    """The (unfitted) `Preprocessing` the options state, or None where they state nothing
    (all absent, or all at their defaults: raw pixels)."""
    given = {k: getattr(args, k) for k in _PRE_OPTIONS if getattr(args, k, None) is not None}
    if not given:
        return None
    pre = Preprocessing(**given)
    return None if pre.is_identity and not _explicit(args) else pre


def _explicit(args: argparse.Namespace) -> bool:
    """True when the preprocessing options carry no defaults (a command reading module
    files, where an explicit identity must still be checked against the file)."""
    return getattr(args, "scale", "1") is None or getattr(args, "subtract", "none") is None


def module_preprocessing(recorded, given, where: str, x_train=None):
    """The preprocessing for modules read from `where`: the one the file records (`recorded`);
    the options' (`given`; fitted on `x_train` where needed) for a file that records none; an
    error when the file records one and the options state a different one."""
    if given is None:
        return recorded
    if recorded is None:
        return given.fit(x_train) if x_train is not None else given
    if given.state()[0] != recorded.state()[0]:
        raise RefdecompError(
            f"{where} records the preprocessing {recorded.describe()!r}, the options given say "
            f"{given.describe()!r}; leave out --scale/--subtract/--divide/--channels-first "
            "(the file's own is used)")
    return recorded


# -- decomposition -------------------------------------------------------------------------
def add_decomposition_options(p: argparse.ArgumentParser) -> None:
    """Every option of `refdecomp.decompose` (see its docstring and docs/algorithm.md)."""
    g = p.add_argument_group("decomposition")
    g.add_argument("--backtrack", choices=BACKTRACK_MODES, default="last_conv",
                   help="none: CI+TI+channeling; last_conv: + MC-BLN (the paper's choice); "
                        "input: + MC-BI")
    g.add_argument("--delta", type=float, default=0.5,
                   help="MC-BLN threshold: a head input is removed when its channeled weights "
                        "reach +-delta (times max|W| with --delta-scale relative; see "
                        "--delta-rule)")
    g.add_argument("--delta-rule", choices=DELTA_RULES, default=DEFAULT_DELTA_RULE,
                   help="prose: remove where W[uc] >= delta and W[c] <= -delta; pseudocode: "
                        "W[uc] <= -delta and W[c] >= delta (Algorithm 2 as printed; "
                        "docs/algorithm.md)")
    g.add_argument("--delta-scale", choices=DELTA_SCALES, default="relative",
                   help="relative: threshold = delta x max|W| of the head kernel; absolute: "
                        "delta itself, as in the paper")
    g.add_argument("--channeling", choices=CHANNELINGS, default="mean",
                   help="unconcerned output: mean of the other logits (the paper) or their "
                        "log-sum-exp (a module's P(concerned) = the model's P(class))")
    g.add_argument("--tangling", type=_tangling, default="balanced", metavar="balanced|none|K",
                   help="unconcerned images observed per other class: floor(E/(N-1)) "
                        "(balanced, Section 3.3), none, or a fixed K")
    g.add_argument("--seed", type=int, default=0, help="seed of the tangling samples")


def decomposition_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of `refdecomp.decompose` the options give."""
    return {"backtrack": args.backtrack, "delta": args.delta, "delta_rule": args.delta_rule,
            "delta_scale": args.delta_scale, "channeling": args.channeling,
            "tangling": args.tangling, "seed": args.seed}


# -- argument types -------------------------------------------------------------------------
def _tangling(text: str) -> str | int:
    if text in ("balanced", "none"):
        return text
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected balanced, none or a number >= 0, got "
                                         f"{text!r}")
    return value
