"""Every figure the notebooks show. Each function takes tables (DataFrames) and returns a
matplotlib Figure built without pyplot's global state (safe under Agg, papermill and
threads); nothing is shown or saved unless asked (:func:`save_figure`)."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Mapping

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write ``fig`` as PNG: parents created, written to a temporary name and renamed, so
    a figure file is whole or absent."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        from .runs import default_file_mode

        os.chmod(tmp, default_file_mode())
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


# --------------------------------------------------------------------------- calibration


def _grid(table: pd.DataFrame, column: str, epsilons, nbetas) -> np.ndarray:
    values = np.full((len(nbetas), len(epsilons)), np.nan)
    for r in table.itertuples():
        i, j = nbetas.index(r.nbeta), epsilons.index(r.epsilon)
        values[i, j] = getattr(r, column)
    return values


def plot_calibration_heatmap(table: pd.DataFrame, recommended: Mapping | None = None) -> Figure:
    """LLC over epsilon x nbeta (left) and LLC / nbeta (right; constant along a column
    means the chain only tracks the temperature). Cells: the value, or why the point
    was rejected (div: diverged, esc: left the basin, drift: trace not flat, neg: LLC <= 0,
    skip: a smaller epsilon was already unstable); unhealthy cells are hatched; the
    recommended point is outlined."""
    epsilons = sorted(table["epsilon"].unique())
    nbetas = sorted(table["nbeta"].unique())
    fig = Figure(figsize=(4.2 + 1.6 * len(epsilons), 1.4 + 0.75 * len(nbetas)), layout="constrained")
    axes = fig.subplots(1, 2)
    healthy = _grid(table.assign(h=table.get("healthy", True).astype(float)), "h", epsilons, nbetas)
    labels = {}
    for r in table.itertuples():
        reason = str(getattr(r, "reject_reason", "") or "")
        short = ""
        if reason.startswith("skipped"):
            short = "skip"
        elif "diverged" in reason:
            short = "div"
        elif "basin" in reason:
            short = "esc"
        elif "not flat" in reason:
            short = "drift"
        elif "not positive" in reason:
            short = "neg"
        elif "below" in reason:
            short = "noise"
        elif "MALA" in reason:
            short = "mala"
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


# --------------------------------------------------------------------------- trajectories


def _summary_value(summary, key):
    if summary is None:
        return None
    value = summary.get(key) if isinstance(summary, Mapping) else getattr(summary, key, None)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def _step_axis(ax, steps: pd.Series, logx: bool) -> None:
    if logx:
        positive = steps[steps > 0]
        linthresh = float(positive.min()) if len(positive) else 1.0
        ax.set_xscale("symlog", linthresh=linthresh, linscale=0.3)
    ax.set_xlabel("training step" + (" (symlog)" if logx else ""))


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
            step = _summary_value(summary, key)
            if step is not None:
                ax.axvline(step, color="0.3", ls=style, lw=1.2, label=f"{name} (step {int(step)})")
    for ax, twin in zip((ax_acc, ax_loss), twins):
        handles, labels = ax.get_legend_handles_labels()
        h2, l2 = twin.get_legend_handles_labels()
        ax.legend(handles + h2, labels + l2, loc="center left", fontsize=7)
    _step_axis(ax_loss, t["step"], logx)
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
        step = _summary_value(summary, key)
        if step is not None:
            ax.axvline(step, color="0.3", ls=style, lw=1.2)
    ax.set_ylabel("LLC / max" if normalize else "LLC")
    _step_axis(ax, pd.concat([f["step"] for f in trajectories.values()]), logx)
    ax.legend(fontsize=8)
    ax.set_title(title or "LLC trajectories under different sampler settings (hollow: flagged)")
    return fig


# --------------------------------------------------------------------------- training and study figures

_ARCH_COLORS = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]


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


def _all_seeds(frame: pd.DataFrame, column: str) -> pd.Series:
    """Rows whose mean covers every seed of the architecture. Seeds that stop early (or
    are checkpointed at other steps) leave steps covered by some seeds only; a mean over
    those would jump between seeds, so they are drawn apart, dotted."""
    counts = frame.get(f"{column}_n")
    if counts is None:
        return pd.Series(True, index=frame.index)
    return counts == counts.max()


def _band(ax, frame: pd.DataFrame, column: str, color, label, style="-"):
    full = _all_seeds(frame, column)
    ax.plot(frame["step"], frame[f"{column}_mean"], ":", color=color, lw=1, alpha=0.6)
    part = frame[full]
    x, mean, sem = part["step"], part[f"{column}_mean"], part[f"{column}_sem"].fillna(0.0)
    ax.plot(x, mean, style, color=color, label=label, lw=1.5)
    ax.fill_between(x, mean - sem, mean + sem, color=color, alpha=0.2, lw=0)


def plot_bucket_curves(curves: pd.DataFrame, task: str | None = None) -> Figure:
    """Per capacity bucket (rows): LLC over training, accuracy over training, and the LLC
    against validation accuracy, one colour per architecture (mean over seeds, band = s.e.;
    dotted where only some seeds have a checkpoint at that step)."""
    if task is not None:
        curves = curves[curves["task"] == task]
    buckets = [b for b in ("small", "medium", "large") if b in set(curves["bucket"])]
    fig = Figure(figsize=(14, 3.6 * max(len(buckets), 1)), layout="constrained")
    axes = fig.subplots(max(len(buckets), 1), 3, squeeze=False)
    for row, bucket in enumerate(buckets):
        ax_llc, ax_acc, ax_phase = axes[row]
        in_bucket = curves[curves["bucket"] == bucket]
        for i, (arch, frame) in enumerate(in_bucket.groupby("arch", sort=True)):
            frame = frame.sort_values("step")
            color = _ARCH_COLORS[i % len(_ARCH_COLORS)]
            _band(ax_llc, frame, "llc_mean", color, arch)
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
            ax.legend(fontsize=7, loc="best")
    title = "LLC and accuracy per capacity bucket (mean over seeds, band = s.e.)"
    fig.suptitle(f"{task}: {title}" if task else title)
    return fig


def plot_pairs(curves: pd.DataFrame, pairs: pd.DataFrame, task: str | None = None) -> Figure:
    """Deep-narrow vs wide-shallow, side by side: LLC and validation accuracy per pair."""
    if task is not None:
        curves = curves[curves["task"] == task]
    n = max(len(pairs), 1)
    fig = Figure(figsize=(11, 3.4 * n), layout="constrained")
    axes = fig.subplots(n, 2, squeeze=False)
    if pairs.empty:
        axes[0, 0].text(0.5, 0.5, "no deep-narrow / wide-shallow pair in this sweep", ha="center", va="center")
        return fig
    for row, pair in enumerate(pairs.itertuples(index=False)):
        ax_llc, ax_acc = axes[row]
        for arch, color, kind in ((pair.deep_narrow, "tab:purple", "deep-narrow"), (pair.wide_shallow, "tab:orange", "wide-shallow")):
            frame = curves[curves["arch"] == arch].sort_values("step")
            if frame.empty:
                continue
            label = f"{arch} ({kind})"
            _band(ax_llc, frame, "llc_mean", color, label)
            _band(ax_acc, frame, "val_acc", color, label)
        ax_llc.set_title(f"{pair.bucket}: {pair.deep_narrow} vs {pair.wide_shallow}", fontsize=10)
        ax_llc.set_ylabel("LLC")
        ax_acc.set_ylabel("validation accuracy")
        for ax in (ax_llc, ax_acc):
            ax.set_xscale("symlog", linthresh=10)
            ax.set_xlabel("step")
            ax.legend(fontsize=8)
    return fig


def plot_steps_by_arch(table: pd.DataFrame) -> Figure:
    """Steps to memorization and to grokking per architecture (mean +/- s.e. over seeds),
    grouped by bucket; architectures that never grokked are labelled."""
    fig = Figure(figsize=(max(6, 0.9 * len(table) + 2), 4), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(table))
    width = 0.38
    for offset, col, label in ((-width / 2, "steps_to_memorization", "memorization"), (width / 2, "steps_to_grokking", "grokking")):
        ax.bar(x + offset, table[f"{col}_mean"].fillna(0), width, yerr=table[f"{col}_sem"].fillna(0), capsize=3, label=label)
    for i, r in enumerate(table.itertuples(index=False)):
        if r.steps_to_grokking_n == 0:
            ax.text(i + width / 2, 0, "never", rotation=90, ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [f"{r.arch}\n{r.bucket}" for r in table.itertuples(index=False)], fontsize=8)
    ax.set_ylabel("steps (mean ± s.e.)")
    ax.legend()
    return fig


# --------------------------------------------------------------------------- fingerprints and DMD spectra

_SEED_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_SEED_STYLES = ("-", "--", ":", "-.")


def _hue_colors(values) -> dict:
    """One colour per distinct value, in sorted order."""
    ordered = sorted(pd.unique(pd.Series(list(values))), key=lambda v: (str(type(v)), v))
    return {v: _ARCH_COLORS[i % len(_ARCH_COLORS)] for i, v in enumerate(ordered)}


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
    (``llcgrok.fingerprints.study_fingerprints``): then one panel per run, a row per value
    of ``by`` and a column per seed, grokking marked from its ``steps_to_grokking``."""
    several = "run_id" in fingerprints and fingerprints["run_id"].nunique() > 1
    if not several:
        fig = Figure(figsize=(8, 3.8), layout="constrained")
        ax = fig.subplots()
        grok = _summary_value(summary, "steps_to_grokking")
        if grok is None and "steps_to_grokking" in fingerprints:
            grok = fingerprints["steps_to_grokking"].iloc[0]
        _fingerprint_panel(ax, fingerprints, grok)
        ax.set_ylabel("log p(correct) on the probes")
        ax.legend(fontsize=7, loc="lower right")
        fig.suptitle(title or "Fingerprint over training (quantiles of log p(correct) on the probe set)", fontsize=10)
        return fig
    groups = sorted(fingerprints[by].unique()) if by in fingerprints else [None]
    seeds = _seed_index(fingerprints)
    colors = _hue_colors(groups)
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


def plot_dmd_spectra(spectra: pd.DataFrame, *, by: str = "weight_decay", llc: pd.DataFrame | None = None,
                     title: str | None = None) -> Figure:
    """DMD eigenvalues of several runs, coloured by ``by`` (marker: seed).

    Left: the complex plane with the unit circle (inside: decaying modes; on it: persistent
    ones; the angle is the rotation per snapshot). Middle: modulus against angle, one point
    per conjugate pair, which separates the eigenvalues that crowd near 1. Right (with
    ``llc``, a study table of LLC trajectories such as ``llcgrok.fingerprints.study_llc``):
    the LLC of the same runs over training, in the same colours, grokking marked by a
    triangle. ``spectra`` is ``llcgrok.dmd.study_spectra`` output (or several
    ``dmd_eigenvalues.csv`` with ``run_id``, ``seed`` and ``by`` columns)."""
    spectra = spectra.copy()
    if by not in spectra:
        spectra[by] = "all"
    if "seed" not in spectra:
        spectra["seed"] = 0
    colors = _hue_colors(spectra[by])
    if llc is not None and len(llc):
        colors = _hue_colors(list(spectra[by]) + list(llc[by]))
    seeds = _seed_index(pd.concat([spectra[["seed"]], llc[["seed"]]]) if llc is not None and "seed" in llc else spectra)
    panels = 3 if llc is not None else 2
    fig = Figure(figsize=(4.6 * panels + 0.6, 4.4), layout="constrained")
    axes = fig.subplots(1, panels, gridspec_kw={"width_ratios": [1, 1.1, 1.4][:panels]})
    ax_plane, ax_polar = axes[0], axes[1]
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
    if llc is not None:
        ax_llc = axes[2]
        for run_id, part in llc.groupby("run_id", sort=False):
            part = part.sort_values("step")
            group, seed = part[by].iloc[0], part["seed"].iloc[0]
            style = _SEED_STYLES[seeds.get(seed, 0) % len(_SEED_STYLES)]
            ax_llc.plot(part["step"], part["llc_mean"], style, color=colors[group], lw=1.4, label=f"{by} {group}, seed {seed}")
            grok = part["steps_to_grokking"].iloc[0] if "steps_to_grokking" in part else None
            if grok is not None and not pd.isna(grok):
                y = np.interp(grok, part["step"], part["llc_mean"])
                ax_llc.scatter([grok], [y], marker="v", color=colors[group], s=40, zorder=3, edgecolors="black", linewidths=0.5)
        _step_axis(ax_llc, llc["step"], True)
        ax_llc.set_ylabel("LLC")
        ax_llc.set_title("LLC over training (triangle: grokked)", fontsize=9)
        ax_llc.legend(fontsize=6, loc="best")
    if title is None and "n_delays" in spectra:
        first = spectra.iloc[0]
        title = (f"DMD of the fingerprints (n_delays {int(first['n_delays'])}, rank {int(first.get('rank', first.get('effective_rank', 0)))}, "
                 f"centring {first['centring']}, {first['dt']:g} steps per snapshot)")
    fig.suptitle(title or "DMD spectra", fontsize=10)
    return fig
