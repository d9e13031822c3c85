"""What the figure modules share: saving, colours, the step axis, and how a flagged LLC
estimate is drawn."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import pandas as pd
from matplotlib import colormaps
from matplotlib.backend_bases import FigureCanvasBase
from matplotlib.figure import Figure

from ..metrics import FLAG_CURVATURE, FLAG_UNHEALTHY

ARCH_COLORS = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
# How a flagged estimate is drawn wherever LLC points are: hollow for an unhealthy sampler,
# a cross for a number that measures curvature (the localization dominates), not an LLC.
FLAG_MARKERS = {FLAG_UNHEALTHY: {"marker": "o", "facecolors": "white"}, FLAG_CURVATURE: {"marker": "x"}}
FLAG_LABELS = {FLAG_UNHEALTHY: "unhealthy estimate", FLAG_CURVATURE: "curvature regime"}


def _write_one(fig: Figure, path: Path, fmt: str, dpi: int) -> None:
    from ..runs import default_file_mode  # lazily: runs imports torch, figures need none

    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".{fmt}", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, default_file_mode())
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=fmt)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def figure_formats(formats: Sequence[str]) -> list[str]:
    """``formats`` as :func:`save_figure` writes them ("PDF", ".svg" -> "pdf", "svg"); a
    ValueError names any that matplotlib cannot write."""
    chosen = [str(f).strip().lower().lstrip(".") for f in formats]
    supported = FigureCanvasBase.get_supported_filetypes()
    unknown = [f for f in chosen if f not in supported]
    if unknown or not chosen:
        raise ValueError(f"figure formats {unknown or '(none)'}: choose one or more of {', '.join(sorted(supported))}")
    return chosen


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120, *, formats: Sequence[str] | None = None,
                data: pd.DataFrame | None = None) -> Path:
    """Write ``fig`` to ``path`` as PNG; with ``formats`` (e.g. ``["png", "pdf", "svg"]``)
    once per format, ``path``'s suffix replaced by each. ``data``, the table the figure
    draws, goes beside it as CSV (same stem), so a report figure comes with its numbers.
    Parents are created; each file is written to a temporary name and renamed, so it is
    whole or absent. Returns the first file written."""
    path = Path(path)
    targets = [(path, "png")] if formats is None else [(path.with_suffix(f".{f}"), f) for f in figure_formats(formats)]
    path.parent.mkdir(parents=True, exist_ok=True)
    for target, fmt in targets:
        _write_one(fig, target, fmt, dpi)
    if data is not None:
        from ..runs import atomic_write_csv  # lazy: runs imports torch; a figure needs matplotlib only

        atomic_write_csv(path.with_suffix(".csv"), data)
    return targets[0][0]


def summary_value(summary, key):
    if summary is None:
        return None
    value = summary.get(key) if isinstance(summary, Mapping) else getattr(summary, key, None)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def step_axis(ax, steps: pd.Series, logx: bool) -> None:
    if logx:
        positive = steps[steps > 0]
        linthresh = float(positive.min()) if len(positive) else 1.0
        ax.set_xscale("symlog", linthresh=linthresh, linscale=0.3)
    ax.set_xlabel("training step" + (" (symlog)" if logx else ""))


def hue_colors(values) -> dict:
    """One colour per distinct value, in sorted order."""
    ordered = sorted(pd.unique(pd.Series(list(values))), key=lambda v: (str(type(v)), v))
    return {v: ARCH_COLORS[i % len(ARCH_COLORS)] for i, v in enumerate(ordered)}


def depth_colors(num_layers) -> dict:
    """One colour per depth, ordered light to dark along a sequential map, so that depth
    reads as an order in the capacity figures."""
    depths = sorted({int(v) for v in num_layers})
    cmap = colormaps["viridis"]
    return {d: cmap(0.85 * i / max(len(depths) - 1, 1)) for i, d in enumerate(depths)}


def tasks_of(*tables: pd.DataFrame) -> list:
    """The tasks of the first table that has any, in order of appearance ([None] if none)."""
    for table in tables:
        if table is not None and "task" in table and len(table):
            return list(dict.fromkeys(table["task"]))
    return [None]


def legend(ax, **kwargs) -> None:
    """A legend when something on ``ax`` is labelled (matplotlib warns on an empty one)."""
    if ax.get_legend_handles_labels()[1]:
        ax.legend(**kwargs)


def scatter_flagged(ax, x: pd.Series, y: pd.Series, flags: pd.Series, color, *, labelled: set | None = None, s: float = 30) -> None:
    """Draw the flagged points among ``x, y`` with their flag's marker (legend entry once
    per flag, tracked in ``labelled``)."""
    labelled = set() if labelled is None else labelled
    for flag, style in FLAG_MARKERS.items():
        mask = (flags == flag).to_numpy()
        if not mask.any():
            continue
        label = None if flag in labelled else FLAG_LABELS[flag]
        labelled.add(flag)
        kwargs = {"edgecolors": color} if "facecolors" in style else {"color": color}
        ax.scatter(x[mask], y[mask], s=s, zorder=4, linewidths=1.2, label=label, gid=f"flag:{flag}", **style, **kwargs)
