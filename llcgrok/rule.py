"""Calibration rule v5: a step size per localization, then the localization itself (v5: and a
relaxation check of the certified point).

An estimate with localization gamma counts, in the quadratic picture, a direction of
Hessian eigenvalue h with weight nbeta*h / (nbeta*h + gamma): it is a learning coefficient
only once gamma is small enough that lowering it further no longer changes the number
(a gamma-plateau), and a curvature measure, ~nbeta*tr(H)/(2*gamma), while gamma dominates.
The rule therefore walks a gamma ladder downwards and certifies the first rung at which
the estimate has stopped changing. At each rung the step is chosen by halving, not by
preferring the largest healthy epsilon: discretisation and minibatch noise inflate the
estimate at large epsilon (measured on a deep linear network: +90 % at the largest healthy
epsilon, +8 % once halving no longer moved it).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

RULE_VERSION = 5  # 5: v4 and the relaxation check (a certified point is re-estimated at twice its burn-in)
MAX_REL_SE = 0.25  # standard error over the chains above this fraction of the estimate: too noisy to use
# |log(llc(eps) / llc(eps/2))| within this (or 2 s.e.): the half step is step-converged. The
# SGLD bias is about linear in epsilon (on a quadratic, stationary variance
# 1 / (nbeta h (1 - epsilon nbeta h / 4))), so a 5 % change on halving leaves about 5 % at eps/2.
HALVING_TOL = 0.05
GAMMA_TOL = 0.12  # |log change| per decade of gamma within this: the estimate has stopped changing
TRACE_RATIO_MAX = 0.5  # llc / (nbeta tr(H) / 2 gamma) above this: localization-dominated
# MALA acceptance of the SGLD proposal. In d dimensions an exact-gradient Langevin step
# keeps acceptance near 1 only while epsilon shrinks like d^(-1/3) (Roberts & Rosenthal
# 1998; the optimum for *sampling efficiency* is 0.574). devinterp's estimate uses minibatch
# losses, whose noise times nbeta lowers it further at any step: on a Gaussian posterior it
# reads ~0.55. So the band rejects only steps whose acceptance collapses (< 0.2), and the
# step's accuracy is checked directly, by halving.
DEFAULT_MALA_BAND = (0.2, 1.0)

RULE = f"""\
Rule v{RULE_VERSION}. A point (gamma, epsilon, nbeta) is healthy when no chain diverged or left the
basin (each chain's mean loss climbed less than a fifth of the way from L_n(w*) to chance),
the LLC is positive, the trace over the post-burn-in window is flat (|drift| <= 0.2 or within
twice its error), the chains agree (split R-hat <= 1.1), the standard error over chains is at most
{MAX_REL_SE:.0%} of the estimate, and the mean MALA acceptance lies in the band. (Draws below
L_n(w*) are reported, not rejected: minibatch noise puts many there without biasing the mean.) Step: epsilon = c / (nbeta * h_max + gamma)
for step fractions c, h_max the largest Hessian eigenvalue at w*; at each gamma the chosen
epsilon is the half step of the largest pair (epsilon, epsilon / 2), both healthy, that agrees
within {HALVING_TOL:.0%} (or two standard errors): the bias of the step, about linear in epsilon, is
then about {HALVING_TOL:.0%} or less at the half step.
Localization: walking the ladder downwards, the first gamma whose step-converged estimate
differs from the previous (larger) gamma's by at most {GAMMA_TOL:.0%} per decade (|log ratio| per
decade) is chosen and the setting is certified, regime "llc", if the chosen point passes the relaxation
check: re-estimated with twice its burn-in, it agrees within {GAMMA_TOL:.0%} (or two standard errors).
A capped burn-in can leave the chains where time, not gamma, confines them, and two such estimates
agree across gammas without any plateau; a failed check labels the setting "curvature". Without such a gamma-plateau the
smallest gamma with a step-converged (else healthy) point is recommended, regime "curvature":
usable for comparisons at equal settings, not a learning coefficient. nbeta is n / log n
unless a study fixes it; when several nbetas are given the ladder runs at the preferred one.
No healthy point at any gamma: no recommendation."""


def reject_reason(row, mala_band: Sequence[float] = DEFAULT_MALA_BAND) -> str:
    """Why a calibration point is not healthy ("" when it is)."""
    if row.get("skipped", False):
        return "skipped: a larger step was already unstable"
    if row.get("num_diverged", 0) > 0:
        return f"{int(row['num_diverged'])} chain(s) diverged"
    if not row.get("llc_mean", float("nan")) > 0:
        return "LLC not positive"
    if bool(row.get("escaped", False)):
        return "chain left the basin (loss climbed towards chance)"
    if not bool(row.get("converged", False)):
        return f"trace not flat (drift {row.get('trace_drift', float('nan')):+.2f})"
    r_hat = row.get("r_hat", float("nan"))
    if r_hat is not None and np.isfinite(r_hat) and r_hat > 1.1:
        return f"chains disagree (R-hat {r_hat:.2f})"
    se = _stderr(row)
    if se > MAX_REL_SE * row["llc_mean"]:
        return f"too noisy (standard error {se / row['llc_mean']:.0%} of the estimate)"
    mala = row.get("mala", float("nan"))
    if mala is not None and np.isfinite(mala) and not mala_band[0] <= mala <= mala_band[1]:
        return f"MALA {mala:.2f} outside [{mala_band[0]:g}, {mala_band[1]:g}]"
    return ""


def _stderr(row) -> float:
    std, chains = row.get("llc_std", float("nan")), row.get("num_chains", float("nan"))
    if not (np.isfinite(std) and np.isfinite(chains) and chains > 1):
        return 0.0
    return float(std) / math.sqrt(float(chains))


def agree(a, b, tol: float) -> tuple[bool, float]:
    """Two estimates agree when |log ratio| <= tol or their difference is within twice its
    standard error (so that Monte Carlo noise alone never breaks a plateau). Returns
    (agree, |log ratio|)."""
    change = abs(math.log(a["llc_mean"] / b["llc_mean"]))
    noise = 2 * math.hypot(_stderr(a), _stderr(b))
    return bool(change <= tol or abs(a["llc_mean"] - b["llc_mean"]) <= noise), change


def mark_health(table: pd.DataFrame, mala_band: Sequence[float] = DEFAULT_MALA_BAND) -> pd.DataFrame:
    table = table.copy()
    if "localization" not in table:
        table["localization"] = float("nan")
    table["reject_reason"] = [reject_reason(row, mala_band) for _, row in table.iterrows()]
    table["healthy"] = table["reject_reason"] == ""
    return table


def _half_step_neighbour(group: pd.DataFrame, epsilon: float):
    """The row of ``group`` nearest epsilon/2 (a step 0.3-0.7 times this one), or None."""
    ratio = group["epsilon"] / epsilon
    candidates = group[(ratio > 0.3) & (ratio < 0.7)]
    if candidates.empty:
        return None
    return candidates.loc[(candidates["epsilon"] / epsilon - 0.5).abs().idxmin()]


def mark_step_convergence(table: pd.DataFrame) -> pd.DataFrame:
    """Adds ``halving_change`` (|log llc(2 eps)/llc(eps)|, on the smaller step of each pair)
    and ``step_converged`` (that pair agrees)."""
    table = table.copy()
    change = np.full(len(table), np.inf)
    converged = np.zeros(len(table), dtype=bool)
    for (_, _), group in table.groupby([table["localization"].fillna(-1), table["nbeta"]]):
        for index, row in group.iterrows():
            half = _half_step_neighbour(group, row["epsilon"])
            if not row["healthy"] or half is None or not half["healthy"]:
                continue
            ok, value = agree(row, half, HALVING_TOL)
            # The half step is the one kept: its bias is about half the pair's difference
            # (the bias is about linear in epsilon), the larger step's about all of it.
            pos = table.index.get_loc(half.name)
            change[pos], converged[pos] = value, ok or converged[pos]
    table["halving_change"] = change
    table["step_converged"] = converged
    return table


def rung_choice(group: pd.DataFrame):
    """The chosen row at one gamma: the largest step-converged epsilon, else the smallest
    healthy epsilon (flagged by ``step_converged`` False), else None."""
    converged = group[group["step_converged"]]
    if not converged.empty:
        return converged.loc[converged["epsilon"].idxmax()]
    healthy = group[group["healthy"]]
    if not healthy.empty:
        return healthy.loc[healthy["epsilon"].idxmin()]
    return None


def gamma_slope(upper, lower) -> float:
    """|log change| of the estimate per decade of gamma between two rungs."""
    decades = math.log10(upper["localization"] / lower["localization"]) if lower["localization"] > 0 else 1.0
    return abs(math.log(lower["llc_mean"] / upper["llc_mean"])) / max(decades, 1e-12)


def _ladder(table: pd.DataFrame) -> list:
    """The chosen row of every gamma, largest gamma first (rungs without one left out)."""
    rungs = []
    for gamma in sorted(table["localization"].fillna(-1).unique(), reverse=True):
        row = rung_choice(table[table["localization"].fillna(-1) == gamma])
        if row is not None:
            rungs.append(row)
    return rungs


def choose_localization(table: pd.DataFrame) -> tuple[object, float, bool, str]:
    """(chosen row or None, its gamma_slope, certified, reason) by the ladder part of RULE."""
    rungs = _ladder(table)
    if not rungs:
        return None, float("nan"), False, "no healthy point at any localization"
    converged = [r for r in rungs if r["step_converged"]]
    for upper, lower in zip(converged, converged[1:]):
        slope = gamma_slope(upper, lower)
        if slope <= GAMMA_TOL or agree(upper, lower, GAMMA_TOL)[0]:
            return lower, slope, True, (
                f"gamma-plateau: llc {upper['llc_mean']:.4g} at gamma {upper['localization']:g} and "
                f"{lower['llc_mean']:.4g} at {lower['localization']:g} ({slope:.0%} per decade)")
    pool = converged or rungs
    chosen = pool[-1]
    slopes = [gamma_slope(u, l) for u, l in zip(pool, pool[1:])]
    slope = slopes[-1] if slopes else float("nan")
    trend = ", ".join(f"{r['llc_mean']:.3g} at {r['localization']:g}" for r in pool)
    return chosen, slope, False, (
        f"no gamma-plateau (llc {trend}); the smallest stable gamma is used and labelled curvature")


def recommend(table: pd.DataFrame, *, mala_band: Sequence[float] = DEFAULT_MALA_BAND,
              nbeta_preferred: float | None = None) -> tuple[dict | None, str, pd.DataFrame]:
    """Apply :data:`RULE` to a sweep table (columns localization, epsilon, nbeta, llc_mean,
    llc_std, num_chains and the diagnostics). Returns ``(recommended, reason, table)``;
    the table gains ``healthy``, ``reject_reason``, ``halving_change``, ``step_converged``
    and ``chosen``; ``recommended`` holds epsilon, nbeta, localization, regime ("llc" or
    "curvature"), certified and gamma_slope."""
    table = mark_step_convergence(mark_health(table, mala_band))
    table["chosen"] = False
    healthy = table[table["healthy"]]
    if healthy.empty:
        counts = table["reject_reason"].str.replace(r"\s*\(.*\)|\d+ chain\(s\) ", "", regex=True).value_counts()
        summary = "; ".join(f"{n} x {reason}" for reason, n in counts.items())
        return None, f"no healthy point ({summary}). {hint(table)}", table
    if nbeta_preferred:
        closeness = (healthy["nbeta"] / nbeta_preferred).map(math.log).abs().round(9)
        nbeta = float(healthy.loc[closeness.idxmin(), "nbeta"])
    else:
        nbeta = float(healthy["nbeta"].iloc[0])
    row, slope, certified, why = choose_localization(table[np.isclose(table["nbeta"], nbeta)])
    table.loc[row.name, "chosen"] = True
    gamma = row["localization"]
    recommended = {
        "epsilon": float(row["epsilon"]), "nbeta": nbeta,
        "localization": None if not np.isfinite(gamma) or gamma < 0 else float(gamma),
        "regime": "llc" if certified else "curvature", "certified": certified,
        "gamma_slope": float(slope), "step_converged": bool(row["step_converged"]),
    }
    step = ("step-converged" if row["step_converged"]
            else "no step-converged epsilon (halving moved the estimate), smallest healthy step used")
    reason = (f"epsilon={row['epsilon']:.3g}, nbeta={nbeta:.4g}, gamma={gamma:g}: LLC {row['llc_mean']:.4g}, "
              f"{step}; {why}; {int(table['healthy'].sum())} of {len(table)} points healthy.")
    return recommended, reason, table


def hint(table: pd.DataFrame) -> str:
    unstable = (table["num_diverged"].fillna(0) > 0) | table["escaped"].fillna(False).astype(bool)
    if unstable.all():
        return "Every point is unstable: use smaller step fractions or a larger localization."
    if (~table["converged"].fillna(False).astype(bool)).any():
        return "Traces still drifting: more burn-in or draws, or larger step fractions where stable."
    return "See reject_reason per point."
