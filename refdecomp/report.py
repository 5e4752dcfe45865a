"""Reports: every result refdecomp reports is written as JSON (for machines) and a Markdown
table (for people), plus plots where a picture reads better than a table. Each report records
the command line that produced it, so every figure can be regenerated."""
from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .fileio import atomic_path, write_json, write_text


def fmt(value: Any, digits: int = 4) -> str:
    """Format a cell: fractions as percentages are the caller's choice; floats get `digits`."""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 4) -> str:
    """A GitHub-flavoured Markdown table."""
    cells = [[fmt(c, digits) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(list(headers)), sep, *(line(r) for r in cells)]) + "\n"


_command: str | None = None


def set_command(argv: Sequence[str], prog: str = "refdecomp") -> None:
    """Record the command being run (the command line calls this with its arguments)."""
    global _command
    _command = " ".join([prog, *(shlex.quote(a) for a in argv)])


def command_line() -> str:
    """The command that is running, quoted so it can be pasted back into a shell."""
    if _command is not None:
        return _command
    argv = list(sys.argv)
    if argv and argv[0].endswith(("__main__.py", "cli.py")):
        argv[0] = "refdecomp"
    elif argv:
        argv[0] = Path(argv[0]).name
    return " ".join(shlex.quote(a) for a in argv)


def write_report(out_dir: str | Path, name: str, data: dict[str, Any],
                 markdown: str) -> dict[str, Path]:
    """Write `<name>.json` and `<name>.md` into `out_dir` atomically; both name the command."""
    out = Path(out_dir)
    cmd = command_line()
    data = {"command": cmd, **data}
    paths = {
        "json": write_json(out / f"{name}.json", data),
        "markdown": write_text(out / f"{name}.md",
                               f"{markdown.rstrip()}\n\nProduced by: `{cmd}`\n"),
    }
    return paths


def bar_plots(path: str | Path, title: str, labels: Sequence[str],
              series: dict[str, Sequence[float]], reference: dict[str, float] | None = None,
              command: str | None = None) -> Path | None:
    """One horizontal panel per series (e.g. module accuracy, size, Jaccard) over the classes.
    `reference` draws a dashed line per series (e.g. the model's accuracy). Returns None when
    matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    n = len(series)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 0.28 * len(labels) + 1.8), sharey=True,
                             squeeze=False)
    ypos = range(len(labels))
    for ax, (key, values) in zip(axes[0], series.items()):
        ax.barh(list(ypos), list(values), color="#4C72B0")
        if reference and key in reference:
            ax.axvline(reference[key], color="#C44E52", linestyle="--", linewidth=1)
        ax.set_title(key, fontsize=10)
        ax.set_xlim(0, max(1.0, max(values, default=0) * 1.05))
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(list(ypos))
    axes[0][0].set_yticklabels(labels, fontsize=8)
    axes[0][0].invert_yaxis()
    fig.suptitle(title, fontsize=11)
    if command:
        fig.text(0.01, 0.005, command, fontsize=6, color="#555555")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(path)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))
