"""The figures of a sequence-task sweep (addition, fraction_of_x): the held-out outcome and
the LLC against parameter count, and the LLC trajectories beside the held-out outcome.

Every LLC point shows its regime: a dot in the LLC regime, a cross (``FLAG_MARKERS``) in
the curvature regime, where the number is a curvature, not an LLC. Tables come from
:mod:`llcgrok.seqreport`."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from ._common import ARCH_COLORS, legend, step_axis
from .capacity import _never, _params_axis

LLC_REGIME = "llc"
REGIME_STYLE = {"llc": {"marker": "o"}, "curvature": {"marker": "x"}}
REGIME_LABELS = {"llc": "LLC regime", "curvature": "curvature regime (a curvature, not an LLC)"}
CURVES = {"addition": ("val_exact_match", "held-out exact match"), "fraction_of_x": ("val_mae", "held-out MAE")}


def _run_colors(table: pd.DataFrame) -> dict:
    """One colour per run, in order of parameter count."""
    order = table.sort_values(["num_params", "run_id"], kind="stable")["run_id"].drop_duplicates()
    return {run_id: ARCH_COLORS[i % len(ARCH_COLORS)] for i, run_id in enumerate(order)}


def _regime(values: pd.Series) -> pd.Series:
    """``llc`` where a row says so, ``curvature`` everywhere else (unlabelled included)."""
    text = values.fillna("").astype(str).str.strip().str.lower()
    return text.where(text == LLC_REGIME, "curvature")


def _runs_and_mean(ax, table: pd.DataFrame, column: str, color, label: str, **style) -> None:
    """A point per run and the mean over seeds per parameter count, joined."""
    done = table.dropna(subset=[column])
    ax.scatter(done["num_params"], done[column], color=color, s=18, alpha=0.6, zorder=3, **style)
    means = done.groupby("num_params")[column].mean()
    ax.plot(means.index, means.values, "-o", color=color, ms=5, lw=1.5, label=label, zorder=2)


def _addition_capacity(ax_outcome, ax_steps, table: pd.DataFrame) -> None:
    _runs_and_mean(ax_outcome, table, "final_val_exact_match", "tab:orange", "final held-out exact match")
    _runs_and_mean(ax_outcome, table, "best_val_exact_match", "tab:red", "best held-out exact match")
    _runs_and_mean(ax_outcome, table, "final_val_digit_acc", "tab:blue", "final held-out digit accuracy")
    ax_outcome.set_ylim(-0.02, 1.02)
    ax_outcome.set_ylabel("accuracy")
    column = "steps_to_exact_match_0.99"
    _runs_and_mean(ax_steps, table, column, "tab:green", "steps to 0.99 exact match")
    missing = table.loc[table[column].isna(), "num_params"]
    _never(ax_steps, missing, "tab:green", "never reached 0.99" if len(missing) else None)
    if table[column].isna().all():  # only edge markers: no data limits to autoscale to
        ax_steps.set_ylim(0, 1)
        ax_steps.set_yticks([])
        ax_steps.text(0.5, 0.5, "no run reached 0.99", transform=ax_steps.transAxes, ha="center", color="0.4")
    ax_steps.set_ylabel("steps to 0.99 held-out exact match")


def _fraction_capacity(ax_outcome, ax_ratio, table: pd.DataFrame) -> None:
    _runs_and_mean(ax_outcome, table, "final_val_mae", "tab:orange", "final held-out MAE")
    _runs_and_mean(ax_outcome, table, "baseline_val_mae", "0.4", "predict-the-mean baseline", marker="_")
    if (table["final_val_mae"].dropna() > 0).all():
        ax_outcome.set_yscale("log")
    ax_outcome.set_ylabel("mean absolute error")
    ratio = table.assign(ratio=table["final_val_mae"] / table["baseline_val_mae"])
    _runs_and_mean(ax_ratio, ratio, "ratio", "tab:purple", "held-out MAE / baseline MAE")
    ax_ratio.axhline(1.0, color="0.4", ls="--", lw=1)
    ax_ratio.set_ylabel("MAE relative to the baseline")


def plot_seq_capacity(table: pd.DataFrame, task: str, *, title: str | None = None) -> Figure:
    """The capacity curve of one task, against parameter count (log axis), a point per run
    and a line through the mean over seeds. Addition: final / best held-out exact match and
    digit accuracy (left), steps to 0.99 exact match (right; a run that never got there is a
    triangle on the top edge). Fraction of x: the held-out MAE beside the predict-the-mean
    baseline (left), and their ratio (right). ``table``: ``llcgrok.seqreport.capacity_table``."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    (_addition_capacity if task == "addition" else _fraction_capacity)(left, right, table)
    for ax in (left, right):
        _params_axis(ax, table["num_params"])
        legend(ax, fontsize=7, loc="best")
    fig.suptitle(title or f"{task}: held-out outcome against parameter count (line: mean over seeds)", fontsize=10)
    return fig


def plot_seq_llc_vs_params(table: pd.DataFrame, task: str, *, title: str | None = None) -> Figure:
    """The final LLC estimate of every run against its parameter count (log axis), each
    point marked by its trajectory's regime (dot: LLC, cross: curvature) and labelled with
    it. ``table``: ``llcgrok.seqreport.llc_table``."""
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.subplots()
    regimes = _regime(table["llc_regime"])
    for regime, style in REGIME_STYLE.items():
        part = table[regimes == regime]
        if len(part):
            ax.scatter(part["num_params"], part["llc_final"], color="tab:purple", s=36, zorder=3,
                       label=REGIME_LABELS[regime], gid=f"regime:{regime}", **style)
    for row, regime in zip(table.itertuples(index=False), regimes):
        ax.annotate(regime, (row.num_params, row.llc_final), textcoords="offset points", xytext=(5, 4), fontsize=7, color="0.3")
    _params_axis(ax, table["num_params"])
    ax.axhline(0.0, color="0.7", lw=0.8)
    ax.set_ylabel("final estimate (LLC; a curvature where marked x)")
    legend(ax, fontsize=7, loc="best")
    fig.suptitle(title or f"{task}: final LLC estimate against parameter count", fontsize=10)
    return fig


def plot_seq_trajectories(curves: pd.DataFrame, task: str, *, title: str | None = None) -> Figure:
    """Top: the LLC estimate of each run over training, one line per config (dots: LLC
    regime; crosses: curvature regime). Bottom: the same runs' held-out outcome over
    training (exact match, or MAE). ``curves``: ``llcgrok.seqreport.load_curves``."""
    column, label = CURVES[task]
    fig = Figure(figsize=(9, 6.5), layout="constrained")
    ax_llc, ax_out = fig.subplots(2, 1, sharex=True)
    colors = _run_colors(curves) if len(curves) else {}
    seen: set = set()
    for run_id, run in curves.groupby("run_id", sort=False):
        color, first = colors[run_id], run.iloc[0]
        llc = run.dropna(subset=["llc_mean"])
        regimes = _regime(llc["regime"])
        whole = LLC_REGIME if len(regimes) and (regimes == LLC_REGIME).all() else "curvature"
        name = f"{first['arch']} ({int(first['num_params'])} params, seed {int(first['seed'])})"
        ax_llc.plot(llc["step"], llc["llc_mean"], color=color, lw=1.2, label=f"{name}: {whole} regime")
        for regime, style in REGIME_STYLE.items():
            mask = (regimes == regime).to_numpy()
            if mask.any():
                seen.add(regime)
                ax_llc.scatter(llc["step"][mask], llc["llc_mean"][mask], color=color, s=22, zorder=3,
                               gid=f"regime:{regime}", **style)
        outcome = run.dropna(subset=[column])
        ax_out.plot(outcome["step"], outcome[column], color=color, lw=1.2, marker=".", label=name)
    for regime in sorted(seen):  # the marker key, in grey: it holds for every run's colour
        ax_llc.scatter([], [], color="0.3", s=22, label=REGIME_LABELS[regime], **REGIME_STYLE[regime])
    ax_llc.set_ylabel("LLC estimate (x: curvature regime)")
    ax_out.set_ylabel(label)
    if task == "addition":
        ax_out.set_ylim(-0.02, 1.02)
    elif len(curves) and (curves[column].dropna() > 0).all():
        ax_out.set_yscale("log")
    step_axis(ax_out, curves["step"].dropna() if len(curves) else pd.Series(dtype=float), logx=True)
    legend(ax_llc, fontsize=7, loc="best")
    legend(ax_out, fontsize=7, loc="best")
    fig.suptitle(title or f"{task}: LLC trajectories and the held-out outcome over training", fontsize=10)
    return fig
