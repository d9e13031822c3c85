"""Calibrate the SGLD sampler: an epsilon x n*beta sweep, diagnostics, and a chosen point.

An LLC estimate means something only where the sampler is healthy. ``calibrate`` runs
:func:`~llcgrok.llc.estimate_llc` at every (epsilon, nbeta) of a grid (localization
fixed) and applies :data:`RULE`, which picks one point or none. It goes beyond
devinterp's ``EpsilonBetaAnalyzer``, which plots a sweep and picks nothing.

What sweeps showed on the quick preset's transformers (1x64 and 2x32, p 97; docs/results.md):
with a step above the stability limit of the sharpest directions, or a localization too
weak to keep the chain near w*, the chain is thrown to chance-level loss within a few
draws, and the "LLC" is then simply n*beta * (log 97 - L_n(w*)): it grows as the train loss
falls and never comes down (this is what localization 100 with epsilon 1e-4 gives on
these models, at every n*beta from 30 to 1000). Those points are flagged ``escaped`` and
never recommended; larger epsilons in the same row are then skipped, as they are
unstable too. Localization 1e5 with epsilon 1e-7 to 3e-6 keeps the chains in the basin.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .llc import (
    AllChainsFailed,
    DataSpec,
    LLCError,
    MAX_FRAC_BELOW,
    LossSpec,
    as_dataset,
    default_nbeta,
    estimate_llc,
)

RULE_VERSION = 3
DEFAULT_MALA_BAND = (0.2, 1.0)
FLAT_TOL = 0.2  # |log(llc / llc of an epsilon-neighbour)| within this: a plateau (about 20 %)

RULE = f"""\
Rule v{RULE_VERSION}: a grid point is healthy when no chain diverged, the LLC is positive, the
trace has flattened (|trace_drift| <= 0.2, or within twice its standard error), the chains
stayed in the basin (cross-entropy: the draws' mean loss climbed less than a fifth of the way
from L_n(w*) to chance), at most {MAX_FRAC_BELOW:.0%} of draws fall below L_n(w*), and the mean MALA
acceptance lies in the band. A healthy point is on a plateau when an epsilon-neighbour
(same nbeta, adjacent epsilon of the grid) is healthy with an LLC within {FLAT_TOL:.0%}
(|log ratio| <= {FLAT_TOL}). First the nbeta: of the nbetas with a healthy point, the one
closest to the preferred one (llc.nbeta; n/log n, the theory's value, when unset), since LLC
values compare only at equal nbeta and a study fixes it for that reason. At that nbeta,
among plateau points (or, when there are none, all healthy points, said so in the reason)
take: a point whose next larger epsilon is healthy too (a margin from instability, since
other checkpoints may be sharper than this one); then the largest epsilon (fastest
mixing); then the flattest. No healthy point: no recommendation."""

TABLE_COLUMNS = [
    "epsilon", "nbeta", "llc_mean", "llc_std", "llc_over_nbeta", "mala", "frac_below_init",
    "negative", "num_diverged", "diverged", "trace_drift", "trace_drift_se", "converged", "escaped", "loss_excess",
    "r_hat", "init_loss", "skipped", "healthy", "reject_reason", "flatness", "plateau", "margin", "seconds",
]


class NoRecommendation(LLCError):
    """Calibration found no healthy sampler setting, and one was needed."""


@dataclass
class Calibration:
    """The result of a sweep: ``table`` (one row per grid point), ``recommended``
    (``{"epsilon", "nbeta"}`` or None), ``reason`` (why that point, or why none), the
    rule text, and the tidy loss ``traces`` of every point."""

    table: pd.DataFrame
    recommended: dict | None
    reason: str
    rule: str = RULE
    traces: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)
    settings: dict = field(default_factory=dict)
    step: int | None = None
    estimates: dict = field(default_factory=dict, repr=False)  # (epsilon, nbeta) -> LLCEstimate

    @property
    def traces_at_recommended(self) -> pd.DataFrame:
        """Tidy traces (chain, draw, loss, init_loss, ...) at the recommended point."""
        if self.recommended is None or self.traces.empty:
            return self.traces.iloc[0:0]
        sel = np.isclose(self.traces["epsilon"], self.recommended["epsilon"]) & np.isclose(
            self.traces["nbeta"], self.recommended["nbeta"]
        )
        return self.traces[sel].reset_index(drop=True)

    def to_json(self) -> dict:
        rec_row = None
        if self.recommended is not None:
            rec_row = _row_at(self.table, self.recommended)
        return {
            "recommended": self.recommended,
            "reason": self.reason,
            "rule": self.rule,
            "rule_version": RULE_VERSION,
            "step": self.step,
            "settings": self.settings,
            "recommended_row": rec_row,
            "traces_at_recommended": self.traces_at_recommended.to_dict("list"),
        }


def _row_at(table: pd.DataFrame, point: dict) -> dict | None:
    sel = np.isclose(table["epsilon"], point["epsilon"]) & np.isclose(table["nbeta"], point["nbeta"])
    if not sel.any():
        return None
    row = table[sel].iloc[0].to_dict()
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}


# --------------------------------------------------------------------------- the rule


def _reject_reason(row, mala_band) -> str:
    if row.get("skipped", False):
        return "skipped: a smaller epsilon was already unstable"
    if row["num_diverged"] > 0:
        return f"{int(row['num_diverged'])} chain(s) diverged"
    if not row["llc_mean"] > 0:
        return "LLC not positive"
    if bool(row["escaped"]):
        return "chain left the basin (loss climbed towards chance)"
    if not bool(row["converged"]):
        return f"trace not flat (drift {row['trace_drift']:+.2f})"
    if row["frac_below_init"] > MAX_FRAC_BELOW:
        return f"{row['frac_below_init']:.0%} of draws below L_n(w*)"
    mala = row["mala"]
    if np.isfinite(mala) and not mala_band[0] <= mala <= mala_band[1]:
        return f"MALA {mala:.2f} outside [{mala_band[0]:g}, {mala_band[1]:g}]"
    return ""


def recommend(
    table: pd.DataFrame,
    *,
    mala_band: Sequence[float] = DEFAULT_MALA_BAND,
    nbeta_preferred: float | None = None,
) -> tuple[dict | None, str, pd.DataFrame]:
    """Apply :data:`RULE` to a sweep table. Returns ``(recommended, reason, table)`` with
    the table gaining ``healthy``, ``reject_reason``, ``flatness``, ``plateau``, ``margin``."""
    table = table.copy()
    if "skipped" not in table:
        table["skipped"] = False
    table["reject_reason"] = [_reject_reason(row, mala_band) for _, row in table.iterrows()]
    table["healthy"] = table["reject_reason"] == ""
    epsilons = sorted(table["epsilon"].unique())
    flatness, margin = [], []
    lookup = {(r.epsilon, r.nbeta): r for r in table.itertuples()}
    for r in table.itertuples():
        i = epsilons.index(r.epsilon)
        neighbours = [lookup.get((epsilons[j], r.nbeta)) for j in (i - 1, i + 1) if 0 <= j < len(epsilons)]
        ratios = [abs(math.log(r.llc_mean / q.llc_mean)) for q in neighbours if q is not None and q.healthy]
        flatness.append(min(ratios) if (r.healthy and ratios) else float("inf"))
        upper = lookup.get((epsilons[i + 1], r.nbeta)) if i + 1 < len(epsilons) else None
        margin.append(bool(upper is not None and upper.healthy))
    table["flatness"] = flatness
    table["plateau"] = table["healthy"] & (table["flatness"] <= FLAT_TOL)
    table["margin"] = margin
    healthy = table[table["healthy"]]
    if healthy.empty:
        counts = table["reject_reason"].str.replace(r"\s*\(.*\)|\d+ chain\(s\) ", "", regex=True).value_counts()
        summary = "; ".join(f"{n} x {reason}" for reason, n in counts.items())
        return None, f"no healthy point in the grid ({summary}). {_hint(table)}", table
    if nbeta_preferred:
        closeness = (healthy["nbeta"] / nbeta_preferred).map(math.log).abs().round(9)
        healthy = healthy[closeness == closeness.min()]
    candidates = healthy[healthy["plateau"]]
    note = ""
    if candidates.empty:
        candidates = healthy
        note = (f" No plateau{' at this nbeta' if nbeta_preferred else ''}: no healthy point has an epsilon-neighbour "
                "within 20 %; treat the value with care.")
    best = min(candidates.itertuples(), key=lambda r: (not r.margin, -r.epsilon, r.flatness))
    recommended = {"epsilon": float(best.epsilon), "nbeta": float(best.nbeta)}
    reason = (
        f"epsilon={best.epsilon:g}, nbeta={best.nbeta:.4g}: LLC {best.llc_mean:.4g}, "
        f"{'on a plateau (within ' + format(math.exp(best.flatness) - 1, '.0%') + ' of a neighbour)' if best.plateau else 'healthy'}"
        f"{', next larger epsilon also healthy' if best.margin else ''}; "
        f"{int(table['healthy'].sum())} of {len(table)} points healthy, {int(table['plateau'].sum())} on a plateau.{note}"
    )
    return recommended, reason, table


def _hint(table: pd.DataFrame) -> str:
    unstable = (table["num_diverged"] > 0) | table["escaped"].astype(bool) | table["skipped"].astype(bool)
    unconverged = ~table["converged"].astype(bool) & ~unstable
    smallest = table["epsilon"].min()
    if unstable.all():
        return f"Every point is unstable: try smaller epsilons (below {smallest:g}) or smaller nbetas, or a larger localization."
    if unconverged.any():
        return "Traces still drifting: try more draws, larger epsilons where stable, or a larger localization."
    return "See reject_reason per point."


# --------------------------------------------------------------------------- the sweep


def calibrate(
    model,
    data: DataSpec,
    *,
    loss: LossSpec = "ce",
    epsilons: Sequence[float],
    nbetas: Sequence[float],
    localization: float,
    num_chains: int,
    num_draws: int,
    num_burnin_steps: int = 0,
    batch_size: int,
    seed: int = 0,
    device: str = "auto",
    cores: int = 1,
    mala_band: Sequence[float] = DEFAULT_MALA_BAND,
    nbeta_preferred: float | None = None,
    skip_unstable: bool = True,
    quiet: bool = True,
) -> Calibration:
    """Estimate the LLC at every (epsilon, nbeta) of the grid and recommend one by :data:`RULE`.

    Within each nbeta, epsilons run from small to large; once a point is unstable (every
    chain failed, or the chains left for chance-level loss), the larger epsilons of that
    nbeta are skipped (``skip_unstable``) since they are unstable too, and time is saved.
    """
    if not epsilons or not nbetas:
        raise ValueError("calibrate needs at least one epsilon and one nbeta")
    dataset = as_dataset(data)
    n = len(dataset)
    rows, traces, estimates = [], [], {}
    points = [(float(nb), float(eps)) for nb in sorted(nbetas) for eps in sorted(epsilons)]
    bar = tqdm(points, desc="calibration", unit="point", disable=quiet)
    unstable_from: dict[float, float] = {}
    for nbeta, eps in bar:
        base = {"epsilon": eps, "nbeta": nbeta}
        if skip_unstable and nbeta in unstable_from:
            rows.append({**base, "skipped": True, "num_diverged": 0, "converged": False, "escaped": False,
                         "llc_mean": float("nan"), "frac_below_init": float("nan"), "mala": float("nan")})
            continue
        t0 = time.perf_counter()
        try:
            est = estimate_llc(
                model, dataset, loss=loss, epsilon=eps, nbeta=nbeta, localization=localization,
                num_chains=num_chains, num_draws=num_draws, num_burnin_steps=num_burnin_steps,
                batch_size=batch_size, seed=seed, device=device, cores=cores, quiet=True,
            )
        except AllChainsFailed:
            rows.append({**base, "skipped": False, "num_diverged": num_chains, "diverged": True, "converged": False,
                         "escaped": False, "llc_mean": float("nan"), "frac_below_init": float("nan"),
                         "mala": float("nan"), "seconds": time.perf_counter() - t0})
            unstable_from[nbeta] = eps
            continue
        estimates[(eps, nbeta)] = est
        d = est.diagnostics
        rows.append({
            **base, "llc_mean": est.mean, "llc_std": est.std, "mala": d["mala_acceptance"],
            "frac_below_init": d["frac_below_init"], "negative": d["negative"], "num_diverged": d["num_diverged"],
            "diverged": d["num_diverged"] > 0, "trace_drift": d["trace_drift"], "trace_drift_se": d["trace_drift_se"], "converged": d["converged"],
            "escaped": d["escaped"], "loss_excess": d["loss_excess"], "r_hat": d["r_hat"],
            "init_loss": est.init_loss, "skipped": False, "seconds": est.seconds,
        })
        traces.append(est.traces_frame())
        if d["escaped"]:
            unstable_from[nbeta] = eps
        bar.set_postfix(eps=f"{eps:g}", nbeta=f"{nbeta:g}", llc=f"{est.mean:.3g}", refresh=False)
    bar.close()
    table = pd.DataFrame(rows)
    for column in TABLE_COLUMNS:
        if column not in table:
            table[column] = np.nan
    table["llc_over_nbeta"] = table["llc_mean"] / table["nbeta"]
    table["diverged"] = table["num_diverged"].fillna(0) > 0
    for column in ("negative", "converged", "escaped", "skipped"):
        table[column] = table[column].astype(object).fillna(False).astype(bool)
    preferred = nbeta_preferred if nbeta_preferred is not None else (default_nbeta(n) if n >= 2 else None)
    recommended, reason, table = recommend(table, mala_band=mala_band, nbeta_preferred=preferred)
    settings = {
        "epsilons": [float(e) for e in epsilons], "nbetas": [float(b) for b in nbetas],
        "localization": float(localization), "num_chains": int(num_chains), "num_draws": int(num_draws),
        "num_burnin_steps": int(num_burnin_steps), "batch_size": int(batch_size), "seed": int(seed),
        "mala_band": [float(m) for m in mala_band], "num_data": n, "nbeta_preferred": preferred,
    }
    return Calibration(
        table=table[TABLE_COLUMNS].sort_values(["nbeta", "epsilon"]).reset_index(drop=True),
        recommended=recommended, reason=reason, traces=pd.concat(traces, ignore_index=True) if traces else pd.DataFrame(),
        settings=settings, estimates=estimates,
    )


# --------------------------------------------------------------------------- a run's final checkpoint


def _run_settings(llc_cfg, step: int, num_data: int) -> dict:
    cal = llc_cfg.calibration
    # The rule prefers the configured nbeta (n / log n when llc.nbeta is None).
    configured = round(default_nbeta(num_data) if llc_cfg.nbeta is None else float(llc_cfg.nbeta), 6)
    return {
        "epsilons": [float(e) for e in cal.epsilons], "nbetas": [float(b) for b in cal.nbetas],
        "localization": float(llc_cfg.localization), "num_chains": int(llc_cfg.num_chains),
        "num_draws": int(cal.num_draws or llc_cfg.num_draws), "num_burnin_steps": int(llc_cfg.num_burnin_steps),
        "batch_size": int(llc_cfg.batch_size), "seed": int(llc_cfg.seed),
        "mala_band": [float(m) for m in cal.mala_band], "nbeta_preferred": configured,
        "step": int(step), "rule_version": RULE_VERSION,
    }


def load_calibration(run_dir) -> Calibration | None:
    """The calibration stored in a run directory, or None."""
    run_dir = Path(run_dir)
    csv, meta = run_dir / "calibration.csv", run_dir / "calibration.json"
    if not (csv.exists() and meta.exists()):
        return None
    info = json.loads(meta.read_text())
    traces = pd.DataFrame(info.get("traces_at_recommended") or {})
    return Calibration(
        table=pd.read_csv(csv), recommended=info.get("recommended"), reason=info.get("reason", ""),
        rule=info.get("rule", RULE), traces=traces, settings=info.get("settings", {}), step=info.get("step"),
    )


def calibrate_run(run_dir, llc_cfg, *, quiet: bool = False, force: bool = False) -> Calibration:
    """Calibrate on a run's final checkpoint: writes ``calibration.csv`` (the table),
    ``calibration.json`` (recommendation, reason, rule, settings, traces at the chosen
    point) and ``figures/calibration_heatmap.png`` / ``calibration_traces.png``.

    A calibration already in the directory with the same grid and sampler settings is
    reused (``force=True`` redoes it).
    """
    from . import plots, runs
    from .device import resolve_device
    from .tasks import make_task

    run_dir = Path(run_dir)
    cfg = runs.read_config(run_dir)
    checkpoints = runs.list_checkpoints(run_dir)
    if not checkpoints:
        raise FileNotFoundError(f"{run_dir}: no checkpoints; train the run first (llcgrok train)")
    step, path = checkpoints[-1]
    n = len(make_task(cfg.task, seed=cfg.train.seed).train_targets)
    settings = _run_settings(llc_cfg, step, n)
    if not force:
        stored = load_calibration(run_dir)
        if stored is not None and {k: stored.settings.get(k) for k in settings} == settings:
            return stored
    device = resolve_device(llc_cfg.device)
    task = make_task(cfg.task, seed=cfg.train.seed).to(device)
    model, _ = runs.load_checkpoint(path, device)
    result = calibrate(
        model, (task.train_inputs, task.train_targets), loss="ce",
        epsilons=settings["epsilons"], nbetas=settings["nbetas"], localization=settings["localization"],
        num_chains=settings["num_chains"], num_draws=settings["num_draws"],
        num_burnin_steps=settings["num_burnin_steps"], batch_size=settings["batch_size"], seed=settings["seed"],
        device=str(device), cores=llc_cfg.cores, mala_band=settings["mala_band"],
        nbeta_preferred=settings["nbeta_preferred"], quiet=quiet,
    )
    result.step = step
    result.settings = {**result.settings, **settings}
    runs.atomic_write_csv(run_dir / "calibration.csv", result.table)
    runs.atomic_write_json(run_dir / "calibration.json", result.to_json())
    figures = run_dir / "figures"
    plots.save_figure(plots.plot_calibration_heatmap(result.table, result.recommended), figures / "calibration_heatmap.png")
    if result.recommended is not None:
        fig = plots.plot_loss_traces(result.traces_at_recommended, title=f"{cfg.run_id} step {step}: loss traces at the recommended point")
        plots.save_figure(fig, figures / "calibration_traces.png")
    return result
