"""The localization ladder of a calibration: the estimate against gamma, beside the value a
pure curvature measure would give, so that a gamma-plateau (or its absence) is seen."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure


def _panel(ax, table: pd.DataFrame, title: str) -> None:
    fractions = sorted(table["step_fraction"].dropna().unique(), reverse=True) or [np.nan]
    for k, fraction in enumerate(fractions):
        rows = table[np.isclose(table["step_fraction"], fraction)] if np.isfinite(fraction) else table
        healthy = rows["healthy"].astype(bool)
        colour = f"C{k % 10}"
        label = f"c = {fraction:g}" if np.isfinite(fraction) else "points"
        ax.errorbar(rows.loc[healthy, "localization"], rows.loc[healthy, "llc_mean"], yerr=rows.loc[healthy, "llc_std"],
                    fmt="o", color=colour, label=label, capsize=2)
        ax.scatter(rows.loc[~healthy, "localization"], rows.loc[~healthy, "llc_mean"], facecolors="none",
                   edgecolors=colour, label="_nolegend_")
    chosen = table[table["chosen"].astype(bool)] if "chosen" in table else table.iloc[0:0]
    ax.scatter(chosen["localization"], chosen["llc_mean"], marker="*", s=220, color="red", zorder=5, label="chosen")
    gammas = np.array(sorted(table["localization"].unique()))
    gammas = gammas[gammas > 0]
    if "trace_h" in table and table["trace_h"].notna().any() and len(gammas):
        nbeta, trace = float(table["nbeta"].iloc[0]), float(table["trace_h"].dropna().iloc[0])
        ax.plot(gammas, nbeta * trace / (2 * gammas), "k--", lw=1, label="nβ tr(H) / 2γ (curvature)")
    if (table["localization"] > 0).any():
        ax.set_xscale("log")
    if (table["llc_mean"] > 0).any():  # a ladder where every chain failed has nothing to draw
        ax.set_yscale("log")
    ax.set_xlabel("localization γ")
    ax.set_ylabel("LLC estimate")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)


def plot_calibration_ladder(table: pd.DataFrame, recommended: Mapping | None = None) -> Figure:
    """One panel per calibrated checkpoint (``step`` column; one panel without it): the
    estimate at every (gamma, step fraction) point, healthy filled, rejected hollow, the
    chosen point starred, and nbeta tr(H) / (2 gamma), which the estimate follows while
    the localization dominates. A certified setting sits where the points flatten out
    well below that line."""
    groups = list(table.groupby("step")) if "step" in table else [(None, table)]
    fig = Figure(figsize=(5.2 * len(groups), 4.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(groups)))
    for ax, (step, part) in zip(axes, groups):
        _panel(ax, part.dropna(subset=["llc_mean"]), "calibration" if step is None else f"step {int(step)}")
    if recommended is None:
        verdict = "no recommendation"
    else:
        verdict = (f"γ={recommended.get('localization')}, ε={recommended['epsilon']:.3g}, nβ={recommended['nbeta']:.4g}: "
                   f"regime {recommended.get('regime', '?')}")
    fig.suptitle(f"Localization ladder ({verdict})", fontsize=10)
    return fig
