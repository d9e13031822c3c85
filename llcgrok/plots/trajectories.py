"""Figures of one run over training: accuracy and loss, and the LLC beside them."""

from __future__ import annotations

from typing import Mapping

import pandas as pd
from matplotlib.figure import Figure

from ._common import step_axis, summary_value


def _llc_on(ax, trajectory: pd.DataFrame, color: str = "tab:purple", label: str = "LLC"):
    twin = ax.twinx()
    t = trajectory.sort_values("step")
    healthy = t["healthy"].astype(bool) if "healthy" in t else pd.Series(True, index=t.index)
    twin.plot(t["step"], t["llc_mean"], color=color, lw=1.5, label=label)
    if "llc_std" in t:
        twin.fill_between(t["step"], t["llc_mean"] - t["llc_std"], t["llc_mean"] + t["llc_std"], color=color, alpha=0.15, lw=0)
    twin.scatter(t.loc[healthy, "step"], t.loc[healthy, "llc_mean"], color=color, s=14, zorder=3)
    twin.scatter(t.loc[~healthy, "step"], t.loc[~healthy, "llc_mean"], facecolors="white", edgecolors=color, s=14, zorder=3,
                 label="LLC (unhealthy estimate)" if (~healthy).any() else None)
    twin.set_ylabel(label, color=color)
    twin.tick_params(axis="y", colors=color)
    return twin


def plot_llc_vs_accuracy(
    trajectory: pd.DataFrame,
    summary: Mapping | None = None,
    *,
    logx: bool = True,
    title: str | None = None,
) -> Figure:
    """The LLC over training beside accuracy (top) and loss (bottom) of the same run, on
    twin axes. ``trajectory`` is ``llc.csv`` (step, llc_mean, llc_std, healthy, train/val
    loss and accuracy); ``summary`` (summary.json) marks steps_to_memorization and
    steps_to_grokking as vertical lines. Hollow markers: estimates the diagnostics flag.
    ``logx`` uses a symlog step axis (checkpoints are log-spaced; step 0 stays visible)."""
    t = trajectory.sort_values("step")
    fig = Figure(figsize=(8, 6.4), layout="constrained")
    ax_acc, ax_loss = fig.subplots(2, 1, sharex=True)
    ax_acc.plot(t["step"], t["train_acc"], color="tab:blue", label="train accuracy")
    ax_acc.plot(t["step"], t["val_acc"], color="tab:orange", label="val accuracy")
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_ylim(-0.02, 1.02)
    ax_loss.plot(t["step"], t["train_loss"], color="tab:blue", label="train loss")
    ax_loss.plot(t["step"], t["val_loss"], color="tab:orange", label="val loss")
    ax_loss.set_yscale("log")
    ax_loss.set_ylabel("cross-entropy")
    twins = [_llc_on(ax_acc, t), _llc_on(ax_loss, t)]
    for ax in (ax_acc, ax_loss):
        for key, style, name in (("steps_to_memorization", "--", "memorization"), ("steps_to_grokking", ":", "grokking")):
            step = summary_value(summary, key)
            if step is not None:
                ax.axvline(step, color="0.3", ls=style, lw=1.2, label=f"{name} (step {int(step)})")
    for ax, twin in zip((ax_acc, ax_loss), twins):
        handles, labels = ax.get_legend_handles_labels()
        h2, l2 = twin.get_legend_handles_labels()
        ax.legend(handles + h2, labels + l2, loc="center left", fontsize=7)
    step_axis(ax_loss, t["step"], logx)
    if title is None:
        settings = []
        for key in ("epsilon", "nbeta", "localization"):
            if key in t and t[key].notna().any():
                settings.append(f"{key}={t[key].dropna().iloc[0]:.3g}")
        title = "LLC over training" + (f" ({', '.join(settings)})" if settings else "")
        if "settings_source" in t and t["settings_source"].astype(str).str.startswith("UNCALIBRATED").any():
            title += "\nUNCALIBRATED: calibration recommended no setting; read the diagnostics"
    fig.suptitle(title, fontsize=10)
    return fig


def plot_llc_comparison(trajectories: Mapping[str, pd.DataFrame], summary: Mapping | None = None, *,
                        logx: bool = True, normalize: bool = False, title: str | None = None) -> Figure:
    """Several LLC trajectories of one run (e.g. different sampler settings), to make the
    dependence of the curve's shape on the settings visible. ``normalize`` divides each
    curve by its maximum, to compare shapes."""
    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.subplots()
    for label, frame in trajectories.items():
        t = frame.sort_values("step")
        y = t["llc_mean"] / (t["llc_mean"].max() if normalize and t["llc_mean"].max() > 0 else 1.0)
        healthy = t["healthy"].astype(bool) if "healthy" in t else pd.Series(True, index=t.index)
        (line,) = ax.plot(t["step"], y, lw=1.5, label=label)
        ax.scatter(t.loc[~healthy, "step"], y[~healthy], facecolors="white", edgecolors=line.get_color(), s=14, zorder=3)
    for key, style in (("steps_to_memorization", "--"), ("steps_to_grokking", ":")):
        step = summary_value(summary, key)
        if step is not None:
            ax.axvline(step, color="0.3", ls=style, lw=1.2)
    ax.set_ylabel("LLC / max" if normalize else "LLC")
    step_axis(ax, pd.concat([f["step"] for f in trajectories.values()]), logx)
    ax.legend(fontsize=8)
    ax.set_title(title or "LLC trajectories under different sampler settings (hollow: flagged)")
    return fig


def plot_training_curves(metrics: pd.DataFrame, summary: dict | None = None, *, log_x: bool = True) -> Figure:
    """Accuracy and loss of one run over training; memorization and grokking marked."""
    fig = Figure(figsize=(11, 3.8), layout="constrained")
    ax_acc, ax_loss = fig.subplots(1, 2)
    for split, style in (("train", "-"), ("val", "--")):
        ax_acc.plot(metrics["step"], metrics[f"{split}_acc"], style, label=f"{split} accuracy")
        ax_loss.plot(metrics["step"], metrics[f"{split}_loss"], style, label=f"{split} loss")
    ax_loss.set_yscale("log")
    ax_acc.set_ylim(-0.02, 1.02)
    for ax in (ax_acc, ax_loss):
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel("step")
        _mark_transitions(ax, summary)
        ax.legend(loc="best", fontsize=8)
    ax_acc.set_ylabel("accuracy")
    ax_loss.set_ylabel("cross-entropy")
    if summary and summary.get("run_id"):
        fig.suptitle(summary["run_id"])
    return fig


def _mark_transitions(ax, summary: dict | None) -> None:
    if not summary:
        return
    for key, label, color in (("steps_to_memorization", "memorized", "tab:gray"), ("steps_to_grokking", "grokked", "tab:green")):
        step = summary.get(key)
        if step is not None and not pd.isna(step):
            ax.axvline(step, color=color, ls=":", lw=1.2, label=f"{label} ({int(step)})")
