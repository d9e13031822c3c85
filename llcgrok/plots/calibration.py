"""Figures of the sampler: the calibration grid, loss traces at one setting, the SGLD traces
stored for any checkpoint, and the calibration of every run of a sweep side by side."""

from __future__ import annotations

import math
import os
from typing import Mapping

import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle


def _grid(table: pd.DataFrame, column: str, epsilons, nbetas) -> np.ndarray:
    values = np.full((len(nbetas), len(epsilons)), np.nan)
    for r in table.itertuples():
        i, j = nbetas.index(r.nbeta), epsilons.index(r.epsilon)
        values[i, j] = getattr(r, column)
    return values


# Cell tags for llcgrok.rule.reject_reason's messages, first match wins.
REJECT_TAGS = (
    ("skipped", "skip"), ("diverged", "div"), ("basin", "esc"), ("not flat", "drift"), ("not positive", "neg"),
    ("R-hat", "rhat"), ("too noisy", "noise"), ("MALA", "mala"),
)


def plot_calibration_heatmap(table: pd.DataFrame, recommended: Mapping | None = None) -> Figure:
    """LLC over epsilon x nbeta (left) and LLC / nbeta (right; constant along a column
    means the chain only tracks the temperature). Cells: the value, or why the point
    was rejected (div: diverged, esc: left the basin, drift: trace not flat, neg: LLC <= 0,
    rhat: chains disagree, noise: standard error too large, skip: a larger step was unstable); unhealthy cells are hatched; the
    recommended point is outlined."""
    epsilons = sorted(table["epsilon"].unique())
    nbetas = sorted(table["nbeta"].unique())
    fig = Figure(figsize=(4.2 + 1.6 * len(epsilons), 1.4 + 0.75 * len(nbetas)), layout="constrained")
    axes = fig.subplots(1, 2)
    healthy = _grid(table.assign(h=table.get("healthy", True).astype(float)), "h", epsilons, nbetas)
    labels = {}
    for r in table.itertuples():
        reason = str(getattr(r, "reject_reason", "") or "")
        short = next((tag for key, tag in REJECT_TAGS if key in reason), "")
        labels[(nbetas.index(r.nbeta), epsilons.index(r.epsilon))] = short
    for ax, column, title in (
        (axes[0], "llc_mean", "LLC"),
        (axes[1], "llc_over_nbeta", "LLC / nbeta  (loss excess)"),
    ):
        values = _grid(table, column, epsilons, nbetas)
        positive = values[np.isfinite(values) & (values > 0)]
        norm = LogNorm(positive.min(), positive.max()) if positive.size and positive.min() < positive.max() else None
        shown = np.where(np.isfinite(values) & (values > 0), values, np.nan)
        image = ax.imshow(shown, origin="lower", aspect="auto", cmap="viridis", norm=norm)
        fig.colorbar(image, ax=ax, shrink=0.9)
        for i in range(len(nbetas)):
            for j in range(len(epsilons)):
                v = values[i, j]
                text = f"{v:.3g}" if np.isfinite(v) else ""
                tag = labels.get((i, j), "")
                if tag:
                    text = f"{text}\n{tag}" if text else tag
                bright = np.isfinite(shown[i, j]) and norm is not None and norm(shown[i, j]) > 0.6
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color="black" if bright or not np.isfinite(shown[i, j]) else "white")
                if not healthy[i, j] == 1:
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="//", edgecolor="0.6", lw=0))
        if recommended is not None and recommended.get("epsilon") is not None:
            j = int(np.argmin([abs(math.log(e / recommended["epsilon"])) for e in epsilons]))
            i = int(np.argmin([abs(math.log(b / recommended["nbeta"])) for b in nbetas]))
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=2.5))
        ax.set_xticks(range(len(epsilons)), [f"{e:g}" for e in epsilons])
        ax.set_yticks(range(len(nbetas)), [f"{b:g}" for b in nbetas])
        ax.set_xlabel("epsilon (SGLD step)")
        ax.set_ylabel("n*beta")
        ax.set_title(title)
    rec = "none" if recommended is None else f"eps={recommended['epsilon']:g}, nbeta={recommended['nbeta']:g}"
    fig.suptitle(f"Calibration sweep (hatched: rejected; red: recommended, {rec})", fontsize=10)
    return fig


def plot_loss_traces(traces: pd.DataFrame, title: str | None = None) -> Figure:
    """Loss per draw for each chain (tidy ``chain, draw, loss`` with ``init_loss``), with
    L_n(w*) dashed. A healthy trace rises from L_n(w*) and flattens."""
    fig = Figure(figsize=(7, 3.6), layout="constrained")
    ax = fig.subplots()
    if traces is None or len(traces) == 0:
        ax.text(0.5, 0.5, "no traces", ha="center", va="center", transform=ax.transAxes)
        return fig
    for chain, part in traces.groupby("chain"):
        ax.plot(part["draw"], part["loss"], lw=1, label=f"chain {chain}")
    mean = traces.groupby("draw")["loss"].mean()
    ax.plot(mean.index, mean.values, color="black", ls="--", lw=1.5, label="mean")
    if "init_loss" in traces:
        ax.axhline(float(traces["init_loss"].iloc[0]), color="red", ls=":", lw=1.5, label="L_n(w*)")
    ax.set_xlabel("draw")
    ax.set_ylabel("minibatch loss")
    if title is None and {"epsilon", "nbeta"} <= set(traces.columns):
        title = f"loss traces at epsilon={traces['epsilon'].iloc[0]:g}, nbeta={traces['nbeta'].iloc[0]:.4g}"
    ax.set_title(title or "loss traces")
    ax.legend(loc="best", fontsize=8)
    return fig


# --------------------------------------------------------------------------- traces of any checkpoint


def _windows(ax, burnin: int, draws: int) -> None:
    """Shade what the draws mean: the burn-in (run, not recorded), the post-burn-in draws
    that make the estimate, and their last half, where trace drift and R-hat are measured."""
    if burnin > 0:
        ax.axvspan(0, burnin, color="0.85", alpha=0.6, lw=0, label="burn-in (not recorded)", gid="burn-in")
    ax.axvspan(burnin, burnin + draws - 1, color="tab:blue", alpha=0.06, lw=0, label="post-burn-in draws (the estimate)",
               gid="post-burn-in")
    ax.axvspan(burnin + draws // 2, burnin + draws - 1, fill=False, hatch="..", edgecolor="0.82", lw=0,
               label="last half: drift and R-hat", gid="diagnostics-window")


def plot_checkpoint_traces(traces, step: int | None = None, *, title: str | None = None) -> Figure:
    """The SGLD traces behind one checkpoint's LLC. Top: each chain's minibatch loss per draw,
    with L_n(w*). Middle: the per-draw LLC, n*beta * (L(w_t) - L_n(w*)), per chain, their mean,
    and the estimate (its mean over draws and chains). Bottom, when recorded: the MALA
    acceptance per draw. x is the sampler step; the burn-in, the post-burn-in draws and their
    last half (the diagnostics' window) are shaded. ``traces``: ``llcgrok.runs.read_traces``
    output, or a run directory to read it from; ``step``: the checkpoint (default: the last
    stored)."""
    if isinstance(traces, (str, os.PathLike)):
        from ..runs import read_traces  # lazily: runs imports torch, figures need none

        traces = read_traces(traces)
    if step is None and len(traces):
        step = int(traces["step"].max())
    part = traces[traces["step"] == step] if len(traces) else traces
    has_mala = len(part) > 0 and np.isfinite(part["mala"].to_numpy(dtype=float)).any()
    fig = Figure(figsize=(8, 7.5 if has_mala else 5.6), layout="constrained")
    axes = fig.subplots(3 if has_mala else 2, 1, sharex=True)
    if part.empty:
        stored = sorted(traces["step"].unique()) if len(traces) else []
        # an llc.csv row made before traces were stored has none: say so rather than fail the notebook
        axes[0].text(0.5, 0.5, "no traces stored" + (f" for step {step}" if step is not None else "") +
                     f" (stored: {', '.join(map(str, stored)) or 'none'})", ha="center", va="center", transform=axes[0].transAxes)
        return fig
    first = part.iloc[0]
    burnin = int(first["num_burnin_steps"]) if np.isfinite(first["num_burnin_steps"]) else 0
    init, nbeta, draws = float(first["init_loss"]), float(first["nbeta"]), int(part["draw"].max()) + 1
    part = part.assign(x=part["draw"] + burnin, llc=nbeta * (part["loss"] - init))
    for chain, c in part.groupby("chain"):
        axes[0].plot(c["x"], c["loss"], lw=0.9, label=f"chain {chain}")
        axes[1].plot(c["x"], c["llc"], lw=0.8, alpha=0.6)
        if has_mala:
            axes[2].plot(c["x"], c["mala"], lw=0.8, alpha=0.8)
    axes[0].axhline(init, color="red", ls=":", lw=1.5, label=f"L_n(w*) = {init:.4g}", gid="init-loss")
    finite = part.groupby("chain").filter(lambda c: np.isfinite(c["loss"]).all())  # as the estimate: failed chains out
    mean = finite.groupby("x")["llc"].mean()
    axes[1].plot(mean.index, mean.values, color="black", lw=1.5, label="mean over chains")
    if len(finite):
        axes[1].axhline(float(finite["llc"].mean()), color="tab:purple", ls="--", lw=1.5,
                        label=f"LLC estimate {float(finite['llc'].mean()):.4g}", gid="estimate")
    axes[0].set_ylabel("minibatch loss")
    axes[1].set_ylabel("per-draw LLC")
    if has_mala:
        axes[2].set_ylabel("MALA acceptance")
        axes[2].set_ylim(-0.02, 1.02)
    for ax in axes:
        _windows(ax, burnin, draws)
    axes[0].legend(fontsize=7, loc="best", ncols=2)
    axes[1].legend(fontsize=7, loc="best")
    axes[-1].set_xlabel("sampler step")
    settings = f"eps={first['epsilon']:g}, nbeta={nbeta:.4g}, gamma={first['localization']:g}"
    fig.suptitle(title or f"SGLD traces at checkpoint step {int(step)} ({settings})", fontsize=10)
    return fig


# --------------------------------------------------------------------------- calibration across runs

UNCALIBRATED_COLOR = "tab:red"


def plot_calibration_overview(overview: pd.DataFrame, *, title: str | None = None) -> Figure:
    """The calibration of every run of a sweep, one row per run (``llcgrok.report.
    calibration_overview``): the chosen epsilon, n*beta and gamma (log axes), the healthy
    points of each calibration grid and the healthy checkpoints of each trajectory (bars: of
    how many). Uncalibrated runs (calibration recommended nothing, or none was made) are red,
    and their labels say so."""
    rows = overview.reset_index(drop=True)
    n = max(len(rows), 1)
    fig = Figure(figsize=(15, min(1.6 + 0.24 * n, 40)), layout="constrained")
    axes = fig.subplots(1, 5, sharey=True)
    if rows.empty:
        axes[0].text(0.5, 0.5, "no finished run", ha="center", va="center", transform=axes[0].transAxes)
        return fig
    y = np.arange(len(rows))
    calibrated = rows["calibrated"].astype(bool).to_numpy()
    colors = np.where(calibrated, "tab:blue", UNCALIBRATED_COLOR)
    for ax, column, label in zip(axes[:3], ("epsilon", "nbeta", "localization"), ("epsilon", "n*beta", "gamma")):
        ax.scatter(rows[column], y, c=list(colors), s=28, zorder=3, gid=f"overview:{column}")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.grid(axis="x", color="0.9")
    for ax, (healthy, total, label) in zip(axes[3:], (("calibration_healthy", "calibration_points", "healthy calibration points"),
                                                      ("checkpoints_healthy", "checkpoints", "healthy checkpoints"))):
        ax.barh(y, rows[total].fillna(0), color="0.88", label="all")
        ax.barh(y, rows[healthy].fillna(0), color=list(colors), label="healthy")
        ax.set_xlabel(label)
    axes[3].legend(fontsize=7, loc="lower right")
    labels = [f"{r.run_id}" + ("" if ok else "  UNCALIBRATED") for r, ok in zip(rows.itertuples(), calibrated)]
    axes[0].set_yticks(y, labels if len(rows) <= 80 else [""] * len(rows), fontsize=7)
    for tick, ok in zip(axes[0].get_yticklabels(), calibrated):
        tick.set_color("black" if ok else UNCALIBRATED_COLOR)
    axes[0].invert_yaxis()
    fig.suptitle(title or f"Calibration per run ({int((~calibrated).sum())} of {len(rows)} uncalibrated, red)", fontsize=10)
    return fig
