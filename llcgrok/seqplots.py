"""Figures of the sequence-task notebooks (fraction of x, addition). Each function takes
tables (``metrics.csv``, ``llc.csv`` of a sequence run) and returns a matplotlib Figure
built without pyplot's global state; save with :func:`llcgrok.plots.save_figure`."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure


def _symlog_steps(ax, steps: pd.Series) -> None:
    positive = steps[steps > 0]
    ax.set_xscale("symlog", linthresh=float(positive.min()) if len(positive) else 1.0, linscale=0.3)
    ax.set_xlabel("training step (symlog)")


def _error_label(trajectory: pd.DataFrame) -> str:
    metric = str(trajectory["error_metric"].dropna().iloc[0]) if "error_metric" in trajectory and trajectory["error_metric"].notna().any() else "error"
    return {"mae": "mean absolute error", "1-exact_match": "1 - exact match"}.get(metric, metric)


def _llc_limits(t: pd.DataFrame, healthy: pd.Series) -> tuple[float, float] | None:
    """LLC axis limits spanning the healthy estimates (and 0), or None to autoscale. An
    unhealthy estimate far outside (e.g. a large negative LLC at initialisation, where w*
    is no minimum) would otherwise flatten the curve that matters."""
    values = t.loc[healthy, "llc_mean"].dropna()
    if values.empty:
        return None
    spread = t.loc[healthy, "llc_std"].fillna(0) if "llc_std" in t else 0.0
    lo = min(0.0, float((values - spread).min()))
    hi = float((values + spread).max())
    pad = 0.08 * (hi - lo if hi > lo else 1.0)
    lo, hi = lo - pad, hi + pad
    inside = t["llc_mean"].between(lo, hi) | t["llc_mean"].isna()
    return (lo, hi) if not inside.all() else None


def _clip_llc(ax, x: pd.Series, y: pd.Series, limits, color) -> None:
    """Draw estimates outside ``limits`` at the edge, as hollow triangles, and fix the limits."""
    if limits is None:
        return
    lo, hi = limits
    below, above = y < lo, y > hi
    for mask, edge, marker in ((below, lo, "v"), (above, hi, "^")):
        if mask.any():
            ax.scatter(x[mask], np.full(int(mask.sum()), edge), marker=marker, facecolors="white", edgecolors=color,
                       s=40, zorder=4, clip_on=False, label="LLC off scale (flagged)")
    ax.set_ylim(lo, hi)


def plot_seq_training_curves(metrics: pd.DataFrame, summary: Mapping | None = None, *, title: str | None = None) -> Figure:
    """Loss (top) and the task metric (bottom) on the train probe and the held-out set.
    Fraction of x: MAE, with the predict-the-mean baseline dashed (``summary``'s
    ``baseline_val_mae``). Addition: exact match and per-digit accuracy, with the
    curriculum's maximum operand length as a step line on a twin axis."""
    m = metrics.sort_values("step")
    addition = "val_exact_match" in m
    fig = Figure(figsize=(8, 6), layout="constrained")
    ax_loss, ax_metric = fig.subplots(2, 1, sharex=True)
    ax_loss.plot(m["step"], m["train_loss"], color="tab:blue", label="train loss (probe)")
    ax_loss.plot(m["step"], m["val_loss"], color="tab:orange", label="held-out loss")
    ax_loss.set_yscale("log")
    ax_loss.set_ylabel("cross-entropy (answer digits)" if addition else "mean squared error")
    ax_loss.legend(fontsize=8)
    if addition:
        ax_metric.plot(m["step"], m["train_exact_match"], color="tab:blue", label="train exact match")
        ax_metric.plot(m["step"], m["val_exact_match"], color="tab:orange", label="held-out exact match")
        ax_metric.plot(m["step"], m["val_digit_acc"], color="tab:orange", ls=":", label="held-out digit accuracy")
        ax_metric.set_ylim(-0.02, 1.02)
        ax_metric.set_ylabel("accuracy (teacher-forced argmax)")
        if "max_digits" in m and m["max_digits"].nunique() > 1:
            twin = ax_metric.twinx()
            twin.step(m["step"], m["max_digits"], where="post", color="0.5", lw=1, label="curriculum: max digits")
            twin.set_ylabel("max operand digits", color="0.4")
            twin.legend(loc="lower right", fontsize=8)
    else:
        ax_metric.plot(m["step"], m["train_mae"], color="tab:blue", label="train MAE (probe)")
        ax_metric.plot(m["step"], m["val_mae"], color="tab:orange", label="held-out MAE")
        base = None if summary is None else summary.get("baseline_val_mae")
        if base is not None:
            ax_metric.axhline(base, color="0.3", ls="--", lw=1, label=f"predict-the-mean baseline ({base:.3f})")
        ax_metric.set_yscale("log")
        ax_metric.set_ylabel("mean absolute error")
    ax_metric.legend(loc="center left", fontsize=8)
    ax_metric.set_xlabel("training step")
    fig.suptitle(title or ("Addition: training curves" if addition else "Fraction of x: training curves"), fontsize=10)
    return fig


def plot_llc_vs_error(trajectory: pd.DataFrame, *, title: str | None = None, log_error: bool = True) -> Figure:
    """Left: train and held-out error over training (MAE, or 1 - exact match) with the LLC
    on a twin axis (hollow markers: estimates the diagnostics flag). Right: the LLC against
    the held-out and train error, checkpoint by checkpoint, coloured by step. The LLC axes
    span the healthy estimates; flagged ones far outside sit at the edge as triangles."""
    t = trajectory.sort_values("step")
    label = _error_label(t)
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_time, ax_scatter = fig.subplots(1, 2, width_ratios=[1.3, 1])
    ax_time.plot(t["step"], t["train_error"], color="tab:blue", label=f"train {label}")
    ax_time.plot(t["step"], t["val_error"], color="tab:orange", label=f"held-out {label}")
    if log_error and (t[["train_error", "val_error"]] > 0).all().all():
        ax_time.set_yscale("log")
    ax_time.set_ylabel(label)
    twin = ax_time.twinx()
    healthy = t["healthy"].astype(bool) if "healthy" in t else pd.Series(True, index=t.index)
    twin.plot(t["step"], t["llc_mean"], color="tab:purple", lw=1.5, label="LLC")
    if "llc_std" in t:
        twin.fill_between(t["step"], t["llc_mean"] - t["llc_std"], t["llc_mean"] + t["llc_std"], color="tab:purple", alpha=0.15, lw=0)
    twin.scatter(t.loc[healthy, "step"], t.loc[healthy, "llc_mean"], color="tab:purple", s=14, zorder=3)
    twin.scatter(t.loc[~healthy, "step"], t.loc[~healthy, "llc_mean"], facecolors="white", edgecolors="tab:purple", s=14,
                 zorder=3, label="LLC (flagged)" if (~healthy).any() else None)
    limits = _llc_limits(t, healthy)
    _clip_llc(twin, t["step"], t["llc_mean"], limits, "tab:purple")
    twin.set_ylabel("LLC", color="tab:purple")
    twin.tick_params(axis="y", colors="tab:purple")
    h1, l1 = ax_time.get_legend_handles_labels()
    h2, l2 = twin.get_legend_handles_labels()
    ax_time.legend(h1 + h2, l1 + l2, fontsize=8, loc="center left")
    _symlog_steps(ax_time, t["step"])
    ax_time.set_xlim(0, float(t["step"].max()) * 1.1 if len(t) else 1.0)

    steps = t["step"].to_numpy(dtype=float)
    colors = np.log1p(steps)
    for column, marker, name in (("val_error", "o", "held-out"), ("train_error", "^", "train")):
        ax_scatter.plot(t[column], t["llc_mean"], color="0.75", lw=0.8, zorder=1)
        points = ax_scatter.scatter(t[column], t["llc_mean"], c=colors, cmap="viridis", marker=marker, s=26, zorder=2, label=name)
    cbar = fig.colorbar(points, ax=ax_scatter)
    ticks = np.unique(np.quantile(steps, [0, 0.5, 1.0]))
    cbar.set_ticks(np.log1p(ticks))
    cbar.set_ticklabels([f"{int(s)}" for s in ticks])
    cbar.set_label("training step")
    if log_error and (t[["train_error", "val_error"]] > 0).all().all():
        ax_scatter.set_xscale("log")
    if limits is not None:
        ax_scatter.set_ylim(*limits)
        off = ~t["llc_mean"].between(*limits)
        if off.any():
            ax_scatter.text(0.02, 0.02, f"{int(off.sum())} flagged estimate(s) off scale", transform=ax_scatter.transAxes, fontsize=7, color="0.3")
    ax_scatter.set_xlabel(label)
    ax_scatter.set_ylabel("LLC")
    ax_scatter.legend(fontsize=8)
    if title is None:
        parts = [f"{k}={t[k].dropna().iloc[0]:.3g}" for k in ("epsilon", "nbeta", "localization") if k in t and t[k].notna().any()]
        title = "LLC against error" + (f" ({', '.join(parts)})" if parts else "")
        if "settings_source" in t and t["settings_source"].astype(str).str.startswith("UNCALIBRATED").any():
            title += "\nUNCALIBRATED: calibration recommended no setting; read the diagnostics"
    fig.suptitle(title, fontsize=10)
    return fig
