"""Calibrate the SGLD sampler: a localization ladder, a step sweep at each rung, a chosen point.

An LLC estimate means something only where the sampler is healthy *and* the localization
gamma no longer dominates what is measured. ``calibrate`` runs
:func:`~llcgrok.llc.estimate_llc` down a ladder of localizations; at each gamma it tries
steps ``epsilon = c / (nbeta * h_max + gamma)`` (h_max: the largest Hessian eigenvalue at w*,
so that every rung is equally far from the stability limit), from large to small, until
halving the step stops moving the estimate. :mod:`llcgrok.rule` (:data:`RULE`) then
certifies the first gamma at which the estimate has stopped changing with gamma, or labels
the recommendation "curvature" when there is no such gamma. It goes beyond devinterp's
``EpsilonBetaAnalyzer``, which plots a sweep and picks nothing.

Explicit ``epsilons`` replace the step fractions (the grid of rule v3, still accepted).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import rule
from .curvature import measure_curvature, trace_ratio
from .llc import AllChainsFailed, LLCError, estimate_llc
from .loss_data import DataSpec, LossSpec, as_dataset, default_nbeta
from .rule import DEFAULT_MALA_BAND, RULE, RULE_VERSION, recommend  # noqa: F401  (public names)

# c in epsilon = c / (nbeta h_max + gamma): c 0.2, a tenth of the stability limit (2) of the
# sharpest direction, already biases a quadratic's estimate by ~5 % (1 / (1 - c / 4)); the
# halving check decides how far down to go.
DEFAULT_STEP_FRACTIONS = (0.2, 0.1, 0.05, 0.025, 0.0125)
DEFAULT_LADDER = (1e5, 1e4, 1e3, 1e2, 1e1, 1.0)
BURNIN_RELAXATIONS = 5  # burn-in covers this many relaxation times of the slowest counted direction
# While every step so far diverged, halve beyond the step fractions (and on, once one is
# healthy, until a half step agrees), this many times at most: at a point where the Hessian
# vanishes (a normal crossing's origin) h_max says nothing of the curvature the chains meet
# a little way off, and only divergence does.
MAX_EXTRA_HALVINGS = 16

TABLE_COLUMNS = [
    "localization", "epsilon", "step_fraction", "nbeta", "llc_mean", "llc_std", "num_chains", "llc_over_nbeta",
    "mala", "frac_below_init", "negative", "num_diverged", "diverged", "trace_drift", "trace_drift_se", "converged",
    "escaped", "loss_excess", "r_hat", "init_loss", "num_burnin_steps", "num_draws", "h_max", "trace_h",
    "trace_ratio", "skipped", "healthy", "reject_reason", "halving_change", "step_converged", "chosen",
    "relaxation_check", "seconds",
]


class NoRecommendation(LLCError):
    """Calibration found no healthy sampler setting, and one was needed."""


@dataclass
class Calibration:
    """The result of a sweep: ``table`` (one row per point), ``recommended`` (epsilon,
    nbeta, localization, num_burnin_steps, regime, certified, gamma_slope; or None),
    ``reason`` (why that point, or why none), the rule text, and the tidy loss ``traces``
    of every point."""

    table: pd.DataFrame
    recommended: dict | None
    reason: str
    rule: str = RULE
    traces: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)
    settings: dict = field(default_factory=dict)
    step: int | None = None
    estimates: dict = field(default_factory=dict, repr=False)  # (gamma, epsilon, nbeta) -> LLCEstimate

    @property
    def traces_at_recommended(self) -> pd.DataFrame:
        """Tidy traces (chain, draw, loss, init_loss, ...) at the recommended point."""
        if self.recommended is None or self.traces.empty:
            return self.traces.iloc[0:0]
        sel = _at(self.traces, self.recommended)
        return self.traces[sel].reset_index(drop=True)

    def to_json(self) -> dict:
        rec_row = _row_at(self.table, self.recommended) if self.recommended is not None else None
        return {
            "recommended": self.recommended, "reason": self.reason, "rule": self.rule,
            "rule_version": RULE_VERSION, "step": self.step, "settings": self.settings,
            "recommended_row": rec_row, "traces_at_recommended": self.traces_at_recommended.to_dict("list"),
        }


def _at(frame: pd.DataFrame, point: dict) -> pd.Series:
    sel = np.isclose(frame["epsilon"], point["epsilon"]) & np.isclose(frame["nbeta"], point["nbeta"])
    if point.get("localization") is not None and "localization" in frame:
        sel &= np.isclose(frame["localization"], point["localization"])
    return sel


def _row_at(table: pd.DataFrame, point: dict) -> dict | None:
    sel = _at(table, point)
    if not sel.any():
        return None
    row = table[sel].iloc[0].to_dict()
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}


def burnin_steps(epsilon: float, gamma: float, *, cap: int) -> int:
    """BURNIN_RELAXATIONS relaxation times of the slowest direction the estimate counts.

    A direction of eigenvalue h relaxes in 1 / (epsilon (nbeta h + gamma)) steps and counts
    with weight nbeta h / (nbeta h + gamma): the slowest one counted by half (nbeta h = gamma)
    takes 1 / (2 epsilon gamma). Capped at ``cap`` (a point whose burn-in was capped is
    still estimated; its trace test says whether it relaxed). gamma 0 takes the cap.
    """
    if gamma <= 0:
        return int(cap)
    return int(min(cap, math.ceil(BURNIN_RELAXATIONS / (2 * epsilon * gamma))))


# --------------------------------------------------------------------------- the sweep


@dataclass
class _Sweep:
    """What every estimate of one calibration shares."""

    model: object
    dataset: object
    loss: LossSpec
    num_chains: int
    num_draws: int
    batch_size: int
    seed: int
    device: str
    cores: int
    burnin: int | None  # None: burnin_steps() per point
    burnin_cap: int
    mala_band: Sequence[float]
    h_max: float
    trace_h: float
    options: dict  # further estimate_llc keywords (sampler, method)

    def step(self, fraction: float, nbeta: float, gamma: float) -> float:
        return fraction / (nbeta * self.h_max + gamma)

    def point(self, gamma: float, epsilon: float, nbeta: float, burnin: int | None = None) -> tuple[dict, object]:
        if burnin is None:
            burnin = self.burnin if self.burnin is not None else burnin_steps(epsilon, gamma, cap=self.burnin_cap)
        base = {"localization": gamma, "epsilon": epsilon, "nbeta": nbeta, "num_chains": self.num_chains,
                "num_draws": self.num_draws, "num_burnin_steps": burnin, "h_max": self.h_max, "trace_h": self.trace_h,
                "step_fraction": epsilon * (nbeta * self.h_max + gamma) if math.isfinite(self.h_max) else float("nan")}
        t0 = time.perf_counter()
        try:
            est = estimate_llc(
                self.model, self.dataset, loss=self.loss, epsilon=epsilon, nbeta=nbeta, localization=gamma,
                num_chains=self.num_chains, num_draws=self.num_draws, num_burnin_steps=burnin,
                batch_size=self.batch_size, seed=self.seed, device=self.device, cores=self.cores, quiet=True, **self.options,
            )
        except AllChainsFailed:
            return {**base, "num_diverged": self.num_chains, "escaped": False, "converged": False,
                    "llc_mean": float("nan"), "seconds": time.perf_counter() - t0}, None
        d = est.diagnostics
        row = {**base, "llc_mean": est.mean, "llc_std": est.std, "mala": d["mala_acceptance"],
               "frac_below_init": d["frac_below_init"], "negative": d["negative"], "num_diverged": d["num_diverged"],
               "trace_drift": d["trace_drift"], "trace_drift_se": d["trace_drift_se"], "converged": d["converged"],
               "escaped": d["escaped"], "loss_excess": d["loss_excess"], "r_hat": d["r_hat"],
               "init_loss": est.init_loss, "seconds": est.seconds,
               "trace_ratio": trace_ratio(est.mean, self.trace_h, nbeta, gamma)}
        return row, est

    def healthy(self, row: dict) -> bool:
        return rule.reject_reason({"skipped": False, **row}, self.mala_band) == ""


def _rung(sweep: _Sweep, gamma: float, nbeta: float, steps: Sequence[float], bar, extend: bool = True) -> tuple[list, dict]:
    """Estimates at one gamma, from the largest step down, until two successive healthy
    steps agree (the smaller is then step-converged, and smaller steps would only cost).
    With ``extend``, steps that all diverged are followed by halvings (:data:`MAX_EXTRA_HALVINGS`)."""
    rows, estimates, previous, unhealthy_run = [], {}, None, 0
    queue = sorted(steps, reverse=True)
    extra = 0
    while queue:
        epsilon = queue.pop(0)
        row, est = sweep.point(gamma, epsilon, nbeta)
        rows.append(row)
        if est is not None:
            estimates[(gamma, epsilon, nbeta)] = est
        bar.update(1)
        bar.set_postfix(gamma=f"{gamma:g}", eps=f"{epsilon:.2g}", llc=f"{row['llc_mean']:.3g}", refresh=False)
        if sweep.healthy(row):
            if previous is not None and rule.agree(previous, row, rule.HALVING_TOL)[0]:
                break
            previous, unhealthy_run = row, 0
        else:
            previous, unhealthy_run = None, unhealthy_run + 1
            # Two unhealthy steps in a row after a healthy one: smaller steps only relax
            # more slowly. Before any healthy one, the steps may still be too large.
            if unhealthy_run >= 2 and any(sweep.healthy(r) for r in rows):
                break
        if not queue and extend and extra < MAX_EXTRA_HALVINGS and _still_too_large(sweep, rows, extra > 0):
            queue, extra = [epsilon / 2], extra + 1
    return rows, estimates


def _still_too_large(sweep: _Sweep, rows: list, extended: bool) -> bool:
    """Halve once more: no healthy point yet and the last one lost chains to divergence (the
    steps are too large), or the halvings found a first healthy point that a half step has
    yet to confirm (the rule needs an agreeing pair)."""
    last = rows[-1]
    diverged = (last.get("num_diverged") or 0) > 0 or not math.isfinite(last.get("llc_mean", float("nan")))
    healthy = [sweep.healthy(r) for r in rows]
    if not any(healthy):
        return diverged
    return extended and healthy[-1]


def _steps_at(sweep: _Sweep, gamma: float, nbeta: float, step_fractions, epsilons, rows_above: list) -> list:
    """The steps of one rung. At a flat point (h_max 0) c / (nbeta h_max + gamma) = c / gamma
    grows as gamma falls, though the chains meet the same curvature off w*: the rung starts
    from the largest step that was healthy one rung up instead."""
    if epsilons is not None:
        return list(epsilons)
    stable = [r["epsilon"] for r in rows_above if sweep.healthy(r)]
    if sweep.h_max == 0 and stable:
        return [max(stable) * c / max(step_fractions) for c in step_fractions]
    return [sweep.step(c, nbeta, gamma) for c in step_fractions]


def _table(rows: list) -> pd.DataFrame:
    table = pd.DataFrame(rows)
    for column in TABLE_COLUMNS:
        if column not in table:
            table[column] = np.nan
    table["llc_over_nbeta"] = table["llc_mean"] / table["nbeta"]
    table["diverged"] = table["num_diverged"].fillna(0) > 0
    for column in ("negative", "converged", "escaped", "skipped", "relaxation_check"):
        table[column] = table[column].astype(object).fillna(False).astype(bool)
    return table


def _curvature_of(model, dataset, loss, curvature, need: bool):
    if curvature is not None or not need:
        return curvature
    return measure_curvature(model, dataset, loss=loss)


def _walk_ladder(sweep: _Sweep, gammas: list, nbeta: float, step_fractions, epsilons, bar) -> tuple[list, dict]:
    """Rungs from the largest gamma down, until the rule certifies one, or until a rung
    has no healthy point after one that had (smaller gammas relax more slowly still). A
    strongly localised rung whose excess loss drowns in minibatch noise may be unhealthy
    without ending the walk."""
    rows, estimates, seen_healthy, rung_rows = [], {}, False, []
    for gamma in gammas:
        steps = _steps_at(sweep, gamma, nbeta, step_fractions, epsilons, rung_rows)
        rung_rows, rung_estimates = _rung(sweep, gamma, nbeta, steps, bar, extend=epsilons is None)
        rows += rung_rows
        estimates.update(rung_estimates)
        healthy = any(sweep.healthy(r) for r in rung_rows)
        if seen_healthy and not healthy:
            break
        seen_healthy |= healthy
        recommended, _, _ = recommend(_table(rows), mala_band=sweep.mala_band, nbeta_preferred=nbeta)
        if recommended is not None and recommended["certified"]:
            break
    return rows, estimates


def _ladder_of(localizations, localization, epsilons) -> list[float]:
    """The gammas to walk, largest first (``localization`` alone: a ladder of one)."""
    gammas = sorted({float(g) for g in (localizations or ([localization] if localization is not None else DEFAULT_LADDER))}, reverse=True)
    if any(not math.isfinite(g) or g < 0 for g in gammas):
        raise ValueError(f"localizations must be finite and >= 0, got {gammas}")
    if epsilons is not None and not len(epsilons):
        raise ValueError("calibrate needs at least one epsilon")
    return gammas


def calibrate(
    model,
    data: DataSpec,
    *,
    loss: LossSpec = "ce",
    localizations: Sequence[float] | None = None,
    localization: float | None = None,
    step_fractions: Sequence[float] = DEFAULT_STEP_FRACTIONS,
    epsilons: Sequence[float] | None = None,
    nbetas: Sequence[float] | None = None,
    num_chains: int,
    num_draws: int,
    num_burnin_steps: int | None = None,
    max_burnin_steps: int = 5000,
    batch_size: int,
    seed: int = 0,
    device: str = "auto",
    cores: int = 1,
    mala_band: Sequence[float] = DEFAULT_MALA_BAND,
    nbeta_preferred: float | None = None,
    curvature=None,
    quiet: bool = True,
    **estimator_options,
) -> Calibration:
    """Walk the localization ladder (``localizations``, largest first; ``localization``
    alone is a ladder of one) and recommend a setting by :data:`RULE`.

    Steps: ``step_fractions`` / (nbeta h_max + gamma), or the explicit ``epsilons``, large to
    small until halving agrees (module docstring). ``num_burnin_steps=None`` sets each point's burn-in by
    :func:`burnin_steps` (capped at ``max_burnin_steps``). ``nbetas``: the ladder runs at
    the one nearest ``nbeta_preferred`` (n / log n when None); the others are estimated at
    the chosen gamma and step fraction and give ``recommended["nbeta_slope"]``.
    ``curvature``: a :class:`~llcgrok.curvature.Curvature` already measured at w*;
    ``estimator_options`` go to every :func:`~llcgrok.llc.estimate_llc` call."""
    gammas = _ladder_of(localizations, localization, epsilons)
    dataset = as_dataset(data)
    n = len(dataset)
    preferred = float(nbeta_preferred) if nbeta_preferred else default_nbeta(n)
    all_nbetas = sorted({float(b) for b in (nbetas or [preferred])})
    ladder_nbeta = min(all_nbetas, key=lambda b: abs(math.log(b / preferred)))
    curvature = _curvature_of(model, dataset, loss, curvature, need=True)
    sweep = _Sweep(model, dataset, loss, int(num_chains), int(num_draws), int(batch_size), int(seed), device, int(cores), num_burnin_steps,
                   int(max_burnin_steps), mala_band, float(curvature.top_eigenvalue), float(curvature.trace), estimator_options)
    with tqdm(desc="calibration", unit="point", disable=quiet) as bar:
        rows, estimates = _walk_ladder(sweep, gammas, ladder_nbeta, step_fractions, epsilons, bar)
    rows += _nbeta_rows(sweep, rows, all_nbetas, ladder_nbeta, mala_band, estimates)
    recommended, reason, table = _recommend_with_details(_table(rows), mala_band, ladder_nbeta)
    table, reason = _relaxation_check(sweep, recommended, table, reason)
    settings = {
        "localizations": gammas, "step_fractions": [float(c) for c in step_fractions],
        "epsilons": None if epsilons is None else [float(e) for e in epsilons], "nbetas": all_nbetas,
        "num_burnin_steps": num_burnin_steps, "max_burnin_steps": int(max_burnin_steps), "num_data": n,
        "num_chains": int(num_chains), "num_draws": int(num_draws), "batch_size": int(batch_size), "seed": int(seed),
        "mala_band": [float(m) for m in mala_band], "nbeta_preferred": preferred, "h_max": sweep.h_max, "trace_h": sweep.trace_h,
    }
    traces = [e.traces_frame().assign(localization=g) for (g, _, _), e in estimates.items()]
    return Calibration(
        table=table[TABLE_COLUMNS].reset_index(drop=True), recommended=recommended, reason=reason,
        traces=pd.concat(traces, ignore_index=True) if traces else pd.DataFrame(), settings=settings, estimates=estimates,
    )


def _relaxation_check(sweep: _Sweep, recommended: dict, table: pd.DataFrame, reason: str):
    """Re-estimate the certified point with twice its burn-in: a capped burn-in can leave the
    chains where time, not gamma, confines them, and such estimates agree across gammas with
    no plateau. If the re-run is unhealthy or moves the estimate by more than the plateau's
    own tolerance (GAMMA_TOL, or two standard errors), the setting loses its certification
    (regime "curvature"). The re-run is a row of the table (``relaxation_check``). Only a
    certified recommendation is checked."""
    if recommended is None or not recommended["certified"]:
        return table, reason
    chosen = table[table["chosen"]].iloc[0].to_dict()
    burnin = 2 * max(int(chosen["num_burnin_steps"]), 1)
    row, _ = sweep.point(float(chosen["localization"]), float(chosen["epsilon"]), float(chosen["nbeta"]), burnin=burnin)
    healthy = sweep.healthy(row)
    row.update(relaxation_check=True, healthy=healthy, chosen=False, step_converged=False,
               reject_reason="" if healthy else rule.reject_reason({"skipped": False, **row}, sweep.mala_band))
    table = pd.concat([table.assign(relaxation_check=False), _table([row])], ignore_index=True)
    moved = f"llc {chosen['llc_mean']:.4g} -> {row['llc_mean']:.4g} with burn-in {int(chosen['num_burnin_steps'])} -> {burnin}"
    if healthy and rule.agree(chosen, row, rule.GAMMA_TOL)[0]:
        return table, f"{reason}; relaxation check passed ({moved})"
    recommended.update(certified=False, regime="curvature")
    return table, f"{reason}; NOT certified: the chains had not relaxed ({moved})"


def _recommend_with_details(table: pd.DataFrame, mala_band, nbeta: float) -> tuple[dict | None, str, pd.DataFrame]:
    """The rule's recommendation, with the chosen point's burn-in, estimate, trace ratio and nbeta-slope."""
    recommended, reason, table = recommend(table, mala_band=mala_band, nbeta_preferred=nbeta)
    if recommended is not None:
        chosen = table[table["chosen"]].iloc[0]
        recommended.update(num_burnin_steps=int(chosen["num_burnin_steps"]), llc_mean=float(chosen["llc_mean"]),
                           trace_ratio=float(chosen["trace_ratio"]), nbeta_slope=_nbeta_slope(table, chosen))
    return recommended, reason, table


def _nbeta_rows(sweep: _Sweep, rows: list, nbetas: list, ladder_nbeta: float, mala_band, estimates: dict) -> list:
    """The other nbetas, at the ladder's chosen gamma and step fraction (for the nbeta-slope)."""
    others = [b for b in nbetas if b != ladder_nbeta]
    recommended, _, table = recommend(_table(rows), mala_band=mala_band, nbeta_preferred=ladder_nbeta) if others else (None, "", None)
    if recommended is None:
        return []
    chosen = table[table["chosen"]].iloc[0]
    gamma, fraction = float(chosen["localization"]), float(chosen["step_fraction"])
    extra = []
    for nbeta in others:
        epsilon = sweep.step(fraction, nbeta, gamma) if math.isfinite(fraction) else float(chosen["epsilon"])
        row, est = sweep.point(gamma, epsilon, nbeta)
        extra.append(row)
        if est is not None:
            estimates[(gamma, epsilon, nbeta)] = est
    return extra


def _nbeta_slope(table: pd.DataFrame, chosen) -> float:
    """d log llc / d log nbeta at the chosen gamma, from healthy points at other nbetas (NaN if none).
    A learning coefficient does not depend on nbeta; a slope near 1 says the number is nbeta-bound."""
    same = table[np.isclose(table["localization"], chosen["localization"]) & table["healthy"]
                 & ~np.isclose(table["nbeta"], chosen["nbeta"])]
    if same.empty:
        return float("nan")
    x = np.log(np.r_[same["nbeta"].to_numpy(float), chosen["nbeta"]])
    y = np.log(np.r_[same["llc_mean"].to_numpy(float), chosen["llc_mean"]])
    return float(np.polyfit(x, y, 1)[0])
