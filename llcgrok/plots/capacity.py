"""The headline figures of a capacity study: the LLC and the steps to grokking against the
parameter count, coloured by depth, and the steps to grokking beside the published
AI-Scientist baseline."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

from ._common import depth_colors, legend, scatter_flagged, tasks_of

NEVER_MARKER = "^"  # drawn at the top edge: a run that never grokked has no step to plot


def _never(ax, x: pd.Series, color, label: str | None) -> None:
    """Runs that never grokked, as triangles on the top edge of ``ax`` at their x."""
    if len(x):
        edge = blended_transform_factory(ax.transData, ax.transAxes)
        ax.scatter(x, np.full(len(x), 0.97), transform=edge, marker=NEVER_MARKER, facecolors="white", edgecolors=color,
                   s=36, zorder=4, clip_on=False, label=label, gid="never-grokked")


def _params_axis(ax, num_params: pd.Series) -> None:
    """A log parameter axis spanning ``num_params``, set rather than autoscaled: a panel whose
    runs all never grokked has only edge markers, which do not set the data limits."""
    ax.set_xscale("log")
    counts = pd.to_numeric(num_params, errors="coerce")
    counts = counts[counts > 0]
    if len(counts):
        ax.set_xlim(float(counts.min()) / 1.4, float(counts.max()) * 1.4)
    ax.set_xlabel("parameters (log)")


def _capacity_panel(ax, rows: pd.DataFrame, column: str, flag_column: str | None, colors: dict) -> None:
    """One value per run against num_params; the mean over a depth's unflagged seeds per
    architecture, joined along the parameter count."""
    labelled: set = set()
    never_labelled = False
    for depth, part in rows.groupby("num_layers", sort=True):
        color = colors[int(depth)]
        flags = part[flag_column].fillna("").astype(str) if flag_column else pd.Series("", index=part.index)
        clean = part[(flags == "") & part[column].notna()]
        ax.scatter(clean["num_params"], clean[column], color=color, s=18, alpha=0.7, zorder=3)
        scatter_flagged(ax, part["num_params"], part[column], flags, color, labelled=labelled)
        means = clean.groupby("num_params")[column].mean()
        ax.plot(means.index, means.values, "-o", color=color, ms=6, lw=1.5, label=f"{int(depth)} layer(s)")
        if column == "steps_to_grokking":
            missing = part.loc[part[column].isna(), "num_params"]
            _never(ax, missing, color, None if never_labelled or missing.empty else "never grokked")
            never_labelled = never_labelled or not missing.empty
    _params_axis(ax, rows["num_params"])


def plot_capacity(table: pd.DataFrame, *, title: str | None = None) -> Figure:
    """The headline of a capacity study, one row per task: the LLC peak, the final LLC and
    the steps to grokking of every run against its parameter count (log axis), coloured by
    depth; large markers joined by lines are the mean over seeds per architecture (LLC: over
    unflagged estimates). ``table``: ``llcgrok.report.capacity_table``. Flagged estimates
    (``peak_flag``, ``final_flag``) carry their flag's marker (``FLAG_MARKERS``); runs that
    never grokked are triangles on the top edge."""
    tasks = tasks_of(table)
    fig = Figure(figsize=(14, 3.9 * len(tasks)), layout="constrained")
    axes = fig.subplots(len(tasks), 3, squeeze=False)
    colors = depth_colors(table["num_layers"]) if len(table) else {}
    for row, task in zip(axes, tasks):
        rows = table if task is None else table[table["task"] == task]
        for ax, column, flag, label in zip(row, ("llc_peak", "llc_final", "steps_to_grokking"),
                                           ("peak_flag", "final_flag", None), ("LLC peak", "final LLC", "steps to grokking")):
            _capacity_panel(ax, rows, column, flag if flag in rows else None, colors)
            ax.set_ylabel(label if task is None else f"{task}\n{label}")
            legend(ax, fontsize=7, loc="best")
    fig.suptitle(title or "LLC and steps to grokking against parameter count (colour: depth; "
                 "line: mean over seeds per architecture)", fontsize=10)
    return fig


PUBLISHED_STYLE = {"published baseline": {"marker": "*", "s": 90}, "published capacity study": {"marker": "D", "s": 40}}


def plot_grokking_vs_baseline(comparison: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Steps to grokking against parameter count (log axis), this sweep beside the published
    AI-Scientist results (``llcgrok.report.baseline_comparison``; the numbers come from the
    data file the package ships), one panel per task of this sweep. This sweep: a dot per
    run, coloured by depth (never grokked: a triangle on the top edge). Published: black
    stars per seed of the template's baseline, diamonds for the capacity study's means; the
    dashed line is the published runs' update budget (a run at it never grokked there)."""
    ours = comparison[comparison["source"] == "this sweep"]
    tasks = tasks_of(ours, comparison)
    fig = Figure(figsize=(4.8 * len(tasks) + 0.6, 4.2), layout="constrained")
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    colors = depth_colors(ours["num_layers"]) if len(ours) else {}
    for ax, task in zip(axes, tasks):
        part = comparison if task is None else comparison[comparison["task"] == task]
        mine = part[part["source"] == "this sweep"]
        for depth, runs in mine.groupby("num_layers", sort=True):
            done = runs.dropna(subset=["steps_to_grokking"])
            ax.scatter(done["num_params"], done["steps_to_grokking"], color=colors[int(depth)], s=24, zorder=3,
                       label=f"this sweep, {int(depth)} layer(s)")
            _never(ax, runs.loc[runs["steps_to_grokking"].isna(), "num_params"], colors[int(depth)], None)
        for source, style in PUBLISHED_STYLE.items():
            published = part[part["source"] == source]
            if len(published):
                ax.scatter(published["num_params"], published["step_val_acc_99"], color="black", zorder=4, label=source,
                           gid=f"published:{source}", **style)
        budget = part["budget"].dropna()
        if len(budget):
            ax.axhline(float(budget.iloc[0]), color="0.4", ls="--", lw=1, label=f"published budget ({int(budget.iloc[0])} updates)")
        _params_axis(ax, part["num_params"])
        ax.set_ylabel("steps to grokking (val acc > 0.99)")
        ax.set_title(f"task {task}" if task is not None else "", fontsize=10)
        legend(ax, fontsize=7, loc="best")
    fig.suptitle(title or "Steps to grokking: this sweep against the published AI-Scientist runs", fontsize=10)
    return fig
