"""Figures of the fingerprints (log p(correct) on a probe set over training) and of their
DMD spectra."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ._common import hue_colors, step_axis, summary_value

_SEED_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_SEED_STYLES = ("-", "--", ":", "-.")


def _seed_index(frame: pd.DataFrame) -> dict:
    seeds = sorted(frame["seed"].unique()) if "seed" in frame else [None]
    return {s: i for i, s in enumerate(seeds)}


def _fingerprint_panel(ax, fp: pd.DataFrame, grok_step=None, color="tab:blue") -> None:
    fp = fp.sort_values("step")
    for (lo, hi), alpha in ((("q05", "q95"), 0.15), (("q10", "q90"), 0.2), (("q25", "q75"), 0.3)):
        ax.fill_between(fp["step"], fp[lo], fp[hi], color=color, alpha=alpha, lw=0, label=f"{lo}-{hi}")
    ax.plot(fp["step"], fp["q50"], color=color, lw=1.5, label="median")
    if grok_step is not None and not pd.isna(grok_step):
        ax.axvline(grok_step, color="tab:green", ls=":", lw=1.2, label=f"grokked ({int(grok_step)})")
    ax.set_yscale("symlog", linthresh=1e-2)
    ax.set_xlabel("step")


def plot_fingerprint_bands(fingerprints: pd.DataFrame, summary: Mapping | None = None, *, by: str = "weight_decay",
                           title: str | None = None) -> Figure:
    """The fingerprint over training: quantile bands (5-95, 10-90, 25-75 %) and the median of
    log p(correct) on the probe set (symlog axis: 0 is certainty). ``fingerprints`` is one
    run's ``fingerprints.csv`` (grokking marked from ``summary``) or a study table
    (``llcgrok.fingerprint_study.study_fingerprints``): then one panel per run, a row per value
    of ``by`` and a column per seed, grokking marked from its ``steps_to_grokking``."""
    several = "run_id" in fingerprints and fingerprints["run_id"].nunique() > 1
    if not several:
        fig = Figure(figsize=(8, 3.8), layout="constrained")
        ax = fig.subplots()
        grok = summary_value(summary, "steps_to_grokking")
        if grok is None and "steps_to_grokking" in fingerprints:
            grok = fingerprints["steps_to_grokking"].iloc[0]
        _fingerprint_panel(ax, fingerprints, grok)
        ax.set_ylabel("log p(correct) on the probes")
        ax.legend(fontsize=7, loc="lower right")
        fig.suptitle(title or "Fingerprint over training (quantiles of log p(correct) on the probe set)", fontsize=10)
        return fig
    groups = sorted(fingerprints[by].unique()) if by in fingerprints else [None]
    seeds = _seed_index(fingerprints)
    colors = hue_colors(groups)
    fig = Figure(figsize=(3.6 * len(seeds) + 1, 2.6 * len(groups) + 0.6), layout="constrained")
    axes = fig.subplots(len(groups), len(seeds), squeeze=False, sharex=True, sharey=True)
    for i, (run_id, fp) in enumerate(fingerprints.groupby("run_id", sort=False)):
        group = fp[by].iloc[0] if by in fp else None
        seed = fp["seed"].iloc[0] if "seed" in fp else None
        ax = axes[groups.index(group), seeds[seed]]
        grok = fp["steps_to_grokking"].iloc[0] if "steps_to_grokking" in fp else None
        _fingerprint_panel(ax, fp, grok, colors[group])
        ax.set_title(f"{by} {group}, seed {seed}" if group is not None else str(run_id), fontsize=9)
        if i == 0:
            ax.legend(fontsize=6, loc="lower right")
        elif grok is not None and not pd.isna(grok):
            ax.legend(ax.get_lines()[-1:], [f"grokked ({int(grok)})"], fontsize=6, loc="lower right")
    for row in axes:
        row[0].set_ylabel("log p(correct)")
    for ax in axes.flat:
        ax.label_outer()
    fig.suptitle(title or "Fingerprints over training (bands: 5-95, 10-90, 25-75 % quantiles; line: median)", fontsize=10)
    return fig


def _eigenvalue_panels(ax_plane, ax_polar, spectra: pd.DataFrame, by: str, colors: dict, seeds: dict) -> None:
    """The complex plane with the unit circle, and modulus against angle (one point per
    conjugate pair); colour: ``by``, marker: seed."""
    theta = np.linspace(0, 2 * np.pi, 361)
    ax_plane.plot(np.cos(theta), np.sin(theta), color="0.5", lw=1)
    ax_plane.axhline(0, color="0.85", lw=0.8)
    ax_plane.axvline(0, color="0.85", lw=0.8)
    ax_polar.axhline(1.0, color="0.5", lw=1)
    seen = set()
    for run_id, part in spectra.groupby("run_id", sort=False) if "run_id" in spectra else [("run", spectra)]:
        group, seed = part[by].iloc[0], part["seed"].iloc[0]
        marker = _SEED_MARKERS[seeds.get(seed, 0) % len(_SEED_MARKERS)]
        label = f"{by} {group}" if group not in seen else None
        seen.add(group)
        ax_plane.scatter(part["real"], part["imag"], color=colors[group], marker=marker, s=22, alpha=0.8, label=label)
        upper = part[part["imag"] >= 0]
        ax_polar.scatter(upper["angle"], upper["modulus"], color=colors[group], marker=marker, s=22, alpha=0.8)
    ax_plane.set_aspect("equal", adjustable="datalim")
    ax_plane.set_xlabel("Re lambda")
    ax_plane.set_ylabel("Im lambda")
    ax_plane.set_title("eigenvalues (unit circle grey)", fontsize=9)
    ax_plane.legend(fontsize=7, loc="lower left")
    ax_polar.set_xlabel("angle (radians per snapshot)")
    ax_polar.set_ylabel("|lambda| (per snapshot)")
    ax_polar.set_title("modulus against angle (one per conjugate pair)", fontsize=9)
    if len(seeds) > 1:
        for seed, i in seeds.items():
            ax_polar.scatter([], [], color="0.4", marker=_SEED_MARKERS[i % len(_SEED_MARKERS)], label=f"seed {seed}")
        ax_polar.legend(fontsize=7, loc="lower left")


def _llc_panel(ax_llc, llc: pd.DataFrame, by: str, colors: dict, seeds: dict) -> None:
    """The LLC of each run over training (colour: ``by``, line style: seed), grokking marked
    by a triangle."""
    for run_id, part in llc.groupby("run_id", sort=False):
        part = part.sort_values("step")
        group, seed = part[by].iloc[0], part["seed"].iloc[0]
        style = _SEED_STYLES[seeds.get(seed, 0) % len(_SEED_STYLES)]
        ax_llc.plot(part["step"], part["llc_mean"], style, color=colors[group], lw=1.4, label=f"{by} {group}, seed {seed}")
        grok = part["steps_to_grokking"].iloc[0] if "steps_to_grokking" in part else None
        if grok is not None and not pd.isna(grok):
            y = np.interp(grok, part["step"], part["llc_mean"])
            ax_llc.scatter([grok], [y], marker="v", color=colors[group], s=40, zorder=3, edgecolors="black", linewidths=0.5)
    step_axis(ax_llc, llc["step"], True)
    ax_llc.set_ylabel("LLC")
    ax_llc.set_title("LLC over training (triangle: grokked)", fontsize=9)
    ax_llc.legend(fontsize=6, loc="best")


def plot_dmd_spectra(spectra: pd.DataFrame, *, by: str = "weight_decay", llc: pd.DataFrame | None = None,
                     title: str | None = None) -> Figure:
    """DMD eigenvalues of several runs, coloured by ``by`` (marker: seed).

    Left: the complex plane with the unit circle (inside: decaying modes; on it: persistent
    ones; the angle is the rotation per snapshot). Middle: modulus against angle, one point
    per conjugate pair, which separates the eigenvalues that crowd near 1. Right (with
    ``llc``, a study table of LLC trajectories such as ``llcgrok.fingerprint_study.study_llc``):
    the LLC of the same runs over training, in the same colours, grokking marked by a
    triangle. ``spectra`` is ``llcgrok.dmd.study_spectra`` output (or several
    ``dmd_eigenvalues.csv`` with ``run_id``, ``seed`` and ``by`` columns)."""
    spectra = spectra.copy()
    if by not in spectra:
        spectra[by] = "all"
    if "seed" not in spectra:
        spectra["seed"] = 0
    colors = hue_colors(spectra[by])
    if llc is not None and len(llc):
        colors = hue_colors(list(spectra[by]) + list(llc[by]))
    seeds = _seed_index(pd.concat([spectra[["seed"]], llc[["seed"]]]) if llc is not None and "seed" in llc else spectra)
    panels = 3 if llc is not None else 2
    fig = Figure(figsize=(4.6 * panels + 0.6, 4.4), layout="constrained")
    axes = fig.subplots(1, panels, gridspec_kw={"width_ratios": [1, 1.1, 1.4][:panels]})
    _eigenvalue_panels(axes[0], axes[1], spectra, by, colors, seeds)
    if llc is not None:
        _llc_panel(axes[2], llc, by, colors, seeds)
    if title is None and "n_delays" in spectra:
        first = spectra.iloc[0]
        title = (f"DMD of the fingerprints (n_delays {int(first['n_delays'])}, rank {int(first.get('rank', first.get('effective_rank', 0)))}, "
                 f"centring {first['centring']}, {first['dt']:g} steps per snapshot)")
    fig.suptitle(title or "DMD spectra", fontsize=10)
    return fig
