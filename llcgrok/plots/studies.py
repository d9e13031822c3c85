"""Figures of a sweep: curves per capacity bucket, deep-narrow against wide-shallow pairs,
steps to memorization and grokking, and the LLC against the losses and around grokking."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..metrics import flags_of
from ._common import ARCH_COLORS, legend, scatter_flagged, tasks_of


def _all_seeds(frame: pd.DataFrame, column: str) -> pd.Series:
    """Rows whose mean covers every seed of the architecture. Seeds that stop early (or
    are checkpointed at other steps) leave steps covered by some seeds only; a mean over
    those would jump between seeds, so they are drawn apart, dotted. A flagged estimate
    left out of the mean (``<column>_flagged``) still covers its step: it is drawn apart."""
    counts = frame.get(f"{column}_n")
    if counts is None:
        return pd.Series(True, index=frame.index)
    counts = counts + frame.get(f"{column}_flagged", 0)
    return counts == counts.max()


def _band(ax, frame: pd.DataFrame, column: str, color, label, style="-"):
    full = _all_seeds(frame, column)
    ax.plot(frame["step"], frame[f"{column}_mean"], ":", color=color, lw=1, alpha=0.6)
    part = frame[full]
    x, mean, sem = part["step"], part[f"{column}_mean"], part[f"{column}_sem"].fillna(0.0)
    ax.plot(x, mean, style, color=color, label=label, lw=1.5)
    ax.fill_between(x, mean - sem, mean + sem, color=color, alpha=0.2, lw=0)


def _flagged_points(ax, trajectories: pd.DataFrame | None, arch: str, color, labelled: set) -> None:
    """The flagged estimates of ``arch`` (left out of the means), each at its own value."""
    if trajectories is None or trajectories.empty:
        return
    runs = trajectories[trajectories["arch"] == arch]
    scatter_flagged(ax, runs["step"], runs["llc_mean"], flags_of(runs), color, labelled=labelled)


def _left_out(curves: pd.DataFrame) -> str:
    count = int(curves["llc_mean_flagged"].sum()) if "llc_mean_flagged" in curves else 0
    return f"; {count} flagged LLC estimate(s) left out of the means" if count else ""


def plot_bucket_curves(curves: pd.DataFrame, task: str | None = None, *, trajectories: pd.DataFrame | None = None) -> Figure:
    """Per capacity bucket (rows): LLC over training, accuracy over training, and the LLC
    against validation accuracy, one colour per architecture (mean over seeds, band = s.e.;
    dotted where only some seeds have a checkpoint at that step). Flagged LLC estimates
    (unhealthy, or in the curvature regime) are left out of the means by
    ``llcgrok.report.mean_curves``; with ``trajectories`` they are drawn, each with its
    flag's marker (``FLAG_MARKERS``)."""
    if task is not None:
        curves = curves[curves["task"] == task]
        trajectories = None if trajectories is None else trajectories[trajectories["task"] == task]
    buckets = [b for b in ("small", "medium", "large") if b in set(curves["bucket"])]
    fig = Figure(figsize=(14, 3.6 * max(len(buckets), 1)), layout="constrained")
    axes = fig.subplots(max(len(buckets), 1), 3, squeeze=False)
    labelled: set = set()
    for row, bucket in enumerate(buckets):
        ax_llc, ax_acc, ax_phase = axes[row]
        in_bucket = curves[curves["bucket"] == bucket]
        for i, (arch, frame) in enumerate(in_bucket.groupby("arch", sort=True)):
            frame = frame.sort_values("step")
            color = ARCH_COLORS[i % len(ARCH_COLORS)]
            _band(ax_llc, frame, "llc_mean", color, arch)
            _flagged_points(ax_llc, trajectories, arch, color, labelled)
            _band(ax_acc, frame, "val_acc", color, f"{arch} val")
            ax_acc.plot(frame["step"], frame["train_acc_mean"], ":", color=color, lw=1, label=f"{arch} train")
            both = frame[_all_seeds(frame, "llc_mean") & _all_seeds(frame, "val_acc")]
            ax_phase.plot(both["val_acc_mean"], both["llc_mean_mean"], "-o", color=color, ms=3, label=arch)
        ax_llc.set_ylabel(f"{bucket}\nLLC")
        ax_acc.set_ylabel("accuracy")
        ax_phase.set_xlabel("validation accuracy")
        ax_phase.set_ylabel("LLC")
        for ax in (ax_llc, ax_acc):
            ax.set_xscale("symlog", linthresh=10)
            ax.set_xlabel("step")
        for ax in axes[row]:
            legend(ax, fontsize=7, loc="best")
    title = f"LLC and accuracy per capacity bucket (mean over seeds, band = s.e.{_left_out(curves)})"
    fig.suptitle(f"{task}: {title}" if task else title)
    return fig


def plot_pairs(curves: pd.DataFrame, pairs: pd.DataFrame, task: str | None = None, *,
               trajectories: pd.DataFrame | None = None) -> Figure:
    """Deep-narrow vs wide-shallow, side by side: LLC and validation accuracy per pair
    (flagged LLC estimates drawn as in :func:`plot_bucket_curves`)."""
    if task is not None:
        curves = curves[curves["task"] == task]
        trajectories = None if trajectories is None else trajectories[trajectories["task"] == task]
    n = max(len(pairs), 1)
    fig = Figure(figsize=(11, 3.4 * n), layout="constrained")
    axes = fig.subplots(n, 2, squeeze=False)
    if pairs.empty:
        axes[0, 0].text(0.5, 0.5, "no deep-narrow / wide-shallow pair in this sweep", ha="center", va="center")
        return fig
    labelled: set = set()
    for row, pair in enumerate(pairs.itertuples(index=False)):
        ax_llc, ax_acc = axes[row]
        for arch, color, kind in ((pair.deep_narrow, "tab:purple", "deep-narrow"), (pair.wide_shallow, "tab:orange", "wide-shallow")):
            frame = curves[curves["arch"] == arch].sort_values("step")
            if frame.empty:
                continue
            label = f"{arch} ({kind})"
            _band(ax_llc, frame, "llc_mean", color, label)
            _flagged_points(ax_llc, trajectories, arch, color, labelled)
            _band(ax_acc, frame, "val_acc", color, label)
        ax_llc.set_title(f"{pair.bucket}: {pair.deep_narrow} vs {pair.wide_shallow}", fontsize=10)
        ax_llc.set_ylabel("LLC")
        ax_acc.set_ylabel("validation accuracy")
        for ax in (ax_llc, ax_acc):
            ax.set_xscale("symlog", linthresh=10)
            ax.set_xlabel("step")
            legend(ax, fontsize=8)
    return fig


def plot_steps_by_arch(table: pd.DataFrame) -> Figure:
    """Steps to memorization and to grokking per architecture (mean +/- s.e. over seeds),
    one panel per task (titled with it), architectures labelled with their bucket; where
    not every seed grokked, the bar says how many did ("never" where none did)."""
    tasks = tasks_of(table)
    widest = max((int((table["task"] == t).sum()) if t is not None else len(table)) for t in tasks)
    fig = Figure(figsize=(max(6, 0.6 * widest + 2), 3.6 * len(tasks)), layout="constrained")
    axes = fig.subplots(len(tasks), 1, squeeze=False)[:, 0]
    width = 0.38
    for ax, task in zip(axes, tasks):
        rows = table if task is None else table[table["task"] == task]
        x = np.arange(len(rows))
        for offset, col, label in ((-width / 2, "steps_to_memorization", "memorization"), (width / 2, "steps_to_grokking", "grokking")):
            ax.bar(x + offset, rows[f"{col}_mean"].fillna(0), width, yerr=rows[f"{col}_sem"].fillna(0), capsize=3, label=label)
        for i, r in enumerate(rows.itertuples(index=False)):
            if r.steps_to_grokking_n == 0:
                ax.text(i + width / 2, 0, "never", rotation=90, ha="center", va="bottom", fontsize=8)
            elif r.steps_to_grokking_n < r.num_seeds:  # the mean is over the seeds that grokked
                ax.text(i + width / 2, r.steps_to_grokking_mean, f"{r.steps_to_grokking_n}/{r.num_seeds} grokked",
                        rotation=90, ha="center", va="bottom", fontsize=7)
        ax.set_xticks(x, [f"{r.arch}\n{r.bucket}" for r in rows.itertuples(index=False)], fontsize=8)
        ax.set_ylabel("steps (mean ± s.e.)")
        ax.set_title(f"task {task}" if task is not None else "", fontsize=10)
        legend(ax, fontsize=8)
    return fig


def _per_task_axes(tasks: list, columns: int, width: float, height: float):
    fig = Figure(figsize=(width, height * len(tasks)), layout="constrained")
    return fig, fig.subplots(len(tasks), columns, squeeze=False)


def _arch_colors(frame: pd.DataFrame) -> dict:
    """One colour per architecture, in sorted order, so that every figure agrees."""
    return {a: ARCH_COLORS[i % len(ARCH_COLORS)] for i, a in enumerate(sorted(frame["arch"].unique()))} if len(frame) else {}


def plot_llc_vs_loss(trajectories: pd.DataFrame, *, title: str | None = None) -> Figure:
    """The LLC of every checkpoint against its train loss (left) and validation loss
    (right), log loss axes, one line per run in training order (colour: architecture; the
    first checkpoint ringed), one row per task. Flagged estimates carry their flag's marker."""
    tasks = tasks_of(trajectories)
    fig, axes = _per_task_axes(tasks, 2, 12, 4.0)
    colors = _arch_colors(trajectories)
    labelled: set = set()
    for (ax_train, ax_val), task in zip(axes, tasks):
        part = trajectories if task is None else trajectories[trajectories["task"] == task]
        named = set()
        for run_id, run in part.groupby("run_id", sort=True):
            run = run.sort_values("step")
            arch = run["arch"].iloc[0]
            flags = flags_of(run)
            for ax, column in ((ax_train, "train_loss"), (ax_val, "val_loss")):
                ax.plot(run[column], run["llc_mean"], "-", color=colors[arch], lw=1, alpha=0.7,
                        label=arch if (ax is ax_train and arch not in named) else None)
                clean = flags == ""
                ax.scatter(run.loc[clean, column], run.loc[clean, "llc_mean"], color=colors[arch], s=10, zorder=3)
                ax.scatter(run[column].iloc[:1], run["llc_mean"].iloc[:1], s=60, facecolors="none", edgecolors="0.3", zorder=3)
                scatter_flagged(ax, run[column], run["llc_mean"], flags, colors[arch], labelled=labelled)
            named.add(arch)
        for ax, name in ((ax_train, "train"), (ax_val, "validation")):
            ax.set_xscale("log")
            ax.set_xlabel(f"{name} loss (log)")
            ax.set_ylabel("LLC" if task is None else f"{task}\nLLC")
            legend(ax, fontsize=7, loc="best")
    fig.suptitle(title or "LLC against train and validation loss (one line per run, ringed: first checkpoint)", fontsize=10)
    return fig


def plot_aligned_curves(aligned: pd.DataFrame, *, title: str | None = None) -> Figure:
    """LLC (left) and accuracy (right) against steps since each run's own grokking step
    (``llcgrok.report.aligned_curves``), one line per seed (colour: architecture), one row
    per task; 0 is grokking (symlog axis). Runs that never grokked are counted in the title,
    not drawn. Flagged estimates carry their flag's marker."""
    tasks = tasks_of(aligned)
    fig, axes = _per_task_axes(tasks, 2, 12, 3.8)
    grokked = aligned.dropna(subset=["steps_since_grokking"]) if len(aligned) else aligned
    colors = _arch_colors(aligned)
    labelled: set = set()
    for (ax_llc, ax_acc), task in zip(axes, tasks):
        part = grokked if task is None else grokked[grokked["task"] == task]
        named = set()
        for run_id, run in part.groupby("run_id", sort=True):
            run = run.sort_values("step")
            arch = run["arch"].iloc[0]
            label = arch if arch not in named else None
            named.add(arch)
            x = run["steps_since_grokking"]
            ax_llc.plot(x, run["llc_mean"], "-", color=colors[arch], lw=1.2, label=label)
            scatter_flagged(ax_llc, x, run["llc_mean"], flags_of(run), colors[arch], labelled=labelled)
            ax_acc.plot(x, run["val_acc"], "-", color=colors[arch], lw=1.2, label=f"{arch} val" if label else None)
            ax_acc.plot(x, run["train_acc"], ":", color=colors[arch], lw=1, label=f"{arch} train" if label else None)
        for ax in (ax_llc, ax_acc):
            ax.axvline(0, color="tab:green", ls="--", lw=1.2, label="grokking", gid="grokking")
            ax.set_xscale("symlog", linthresh=10)
            ax.set_xlabel("steps since grokking (symlog)")
            legend(ax, fontsize=7, loc="best")
        ax_llc.set_ylabel("LLC" if task is None else f"{task}\nLLC")
        ax_acc.set_ylabel("accuracy")
    never = aligned.loc[aligned["steps_since_grokking"].isna(), "run_id"].nunique() if len(aligned) else 0
    fig.suptitle(title or f"Curves aligned at each run's grokking step ({never} run(s) never grokked, not shown)", fontsize=10)
    return fig
