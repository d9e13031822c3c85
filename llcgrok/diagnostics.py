"""Diagnostics of a set of SGLD chains: which failed, whether the trace is flat, whether
the chains agree (split R-hat), whether any left the basin of w*; and from them the LLC's
mean and spread. :mod:`llcgrok.llc` documents each diagnostic; :mod:`llcgrok.rule` decides
what a calibration makes of them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

CONVERGENCE_TOL = 0.2  # |trace_drift| above this: the trace is still rising or falling
ESCAPE_FRACTION = 0.2  # draws' mean loss this far from L_n(w*) towards chance: left the basin
R_HAT_MAX = 1.1  # split R-hat above this: the chains disagree (Gelman et al.'s classic threshold)


def _split_r_hat(trace: np.ndarray) -> float:
    """Split-R-hat of (chains, draws) values; NaN when it cannot be computed."""
    chains, draws = trace.shape
    half = draws // 2
    if chains < 1 or half < 2:
        return float("nan")
    parts = np.concatenate([trace[:, :half], trace[:, half : 2 * half]], axis=0)
    within = parts.var(axis=1, ddof=1).mean()
    between = half * parts.mean(axis=1).var(ddof=1)
    if within <= 0:
        return float("nan")
    var_plus = (half - 1) / half * within + between / half
    return float(np.sqrt(var_plus / within))


TREND_BLOCKS = 5


def _trend(values: np.ndarray, mean: float) -> tuple[float, float, float]:
    """Slope of ``values`` per draw, the relative drift it implies over their span, and
    that drift's standard error. The error comes from the slope fitted to block means
    (TREND_BLOCKS blocks): consecutive SGLD draws are correlated, block means far less."""
    n = len(values)
    if n < 3:
        return float("nan"), float("nan"), float("nan")
    x = np.arange(n)
    slope = float(np.polyfit(x, values, 1)[0])
    scale = max(abs(mean), 1e-12)
    drift = slope * n / scale
    blocks = min(TREND_BLOCKS, n // 2)
    if blocks < 3:
        return slope, drift, 0.0
    edges = np.linspace(0, n, blocks + 1).astype(int)
    centres = np.array([x[a:b].mean() for a, b in zip(edges[:-1], edges[1:])])
    means = np.array([values[a:b].mean() for a, b in zip(edges[:-1], edges[1:])])
    coef = np.polyfit(centres, means, 1)
    resid = means - np.polyval(coef, centres)
    slope_se = math.sqrt(float((resid**2).sum()) / (blocks - 2) / float(((centres - centres.mean()) ** 2).sum()))
    return slope, drift, slope_se * n / scale


def _escaped_chains(good: np.ndarray, ok: list, init_loss: float, chance: float) -> list[int]:
    """Chains whose own mean loss climbed more than ESCAPE_FRACTION of the way from L_n(w*)
    to chance. Judged per chain: one chain thrown out of the basin must not hide in a mean
    over the others. Only meaningful where w* beats chance (an untrained network starts there)."""
    if not (np.isfinite(chance) and init_loss < chance):
        return []
    threshold = ESCAPE_FRACTION * (chance - init_loss)
    return [c for c, row in zip(ok, good) if row.mean() - init_loss > threshold]


def _failed_chains(loss_trace: np.ndarray, init_loss: float, nbeta: float, num_params: int) -> tuple[np.ndarray, list, list]:
    """Per-chain LLC (NaN for a failed chain), the failed chains and why each failed."""
    per_chain = np.full(loss_trace.shape[0], np.nan)
    reasons, failed = [], []
    for c, row in enumerate(loss_trace):
        bad = np.flatnonzero(~np.isfinite(row))
        if len(bad):
            failed.append(c)
            reasons.append(f"chain {c}: non-finite loss at draw {int(bad[0])}")
            continue
        value = nbeta * (row.mean() - init_loss)
        if value > num_params:
            failed.append(c)
            reasons.append(f"chain {c}: LLC {value:.4g} exceeds d = {num_params} (the bound is d/2)")
            continue
        per_chain[c] = value
    return per_chain, failed, reasons


def _all_failed(diag: dict, chance_loss: float | None) -> dict:
    diag.update(
        mala_acceptance=float("nan"), frac_below_init=float("nan"), trace_slope=float("nan"),
        trace_drift=float("nan"), trace_drift_se=float("nan"), converged=False, r_hat=float("nan"), loss_excess=float("nan"),
        chance_loss=float("nan") if chance_loss is None else chance_loss, escaped=False,
        negative=False, healthy=False, warnings=["every chain failed"],
    )
    return diag


def _mean_mala(mala_trace, ok: list) -> float:
    if mala_trace is None or not np.size(mala_trace):
        return float("nan")
    values = np.asarray(mala_trace, dtype=float)[ok]
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def _notes(failed, chains, mean, converged, drift, agree, r_hat, escaped_chains, chance) -> list[str]:
    notes = []
    if failed:
        notes.append(f"{len(failed)} of {chains} chains left out: the mean is over the rest")
    if mean < 0:
        notes.append("negative LLC: w* is not a local minimum at this temperature")
    if not converged:
        notes.append(f"trace not flat over the post-burn-in window (drift {drift:+.2f})")
    if not agree:
        notes.append(f"chains disagree (split R-hat {r_hat:.2f} > {R_HAT_MAX})")
    if escaped_chains:
        notes.append(f"chain(s) {escaped_chains} climbed more than {ESCAPE_FRACTION:.0%} of the way from L_n(w*) to chance ({chance:.3g}): they left the basin")
    return notes


def summarize_chains(
    loss_trace: np.ndarray,
    init_loss: float,
    nbeta: float,
    num_params: int,
    *,
    mala_trace: np.ndarray | None = None,
    chance_loss: float | None = None,
    convergence_tol: float = CONVERGENCE_TOL,
) -> tuple[float, float, np.ndarray, dict]:
    """LLC mean, std, per-chain values and diagnostics from raw (chains, draws) traces.

    A chain fails when any of its losses is not finite or when its LLC exceeds
    ``num_params`` (twice the bound d/2 on a learning coefficient: the chain has left the
    basin of w*). Failed chains are reported and left out of every other number.
    """
    loss_trace = np.asarray(loss_trace, dtype=float)
    chains = loss_trace.shape[0]
    per_chain, failed, reasons = _failed_chains(loss_trace, init_loss, nbeta, num_params)
    ok = [c for c in range(chains) if c not in failed]
    diag: dict[str, Any] = {"num_diverged": len(failed), "diverged_chains": failed, "failure_reasons": reasons}
    if not ok:
        return float("nan"), float("nan"), per_chain, _all_failed(diag, chance_loss)
    good = loss_trace[ok]
    mean = float(per_chain[ok].mean())
    std = float(per_chain[ok].std(ddof=1)) if len(ok) > 1 else float("nan")
    # One window for everything: the draws recorded after burn-in give the estimate, and
    # the same draws are tested for drift and for agreement between chains.
    slope, drift, drift_se = _trend(nbeta * (good.mean(axis=0) - init_loss), mean)
    # Flat: the drift is small, or no larger than twice its own noise (a noisy but
    # trendless trace, e.g. a small LLC whose per-draw values scatter by more than 20 %).
    converged = bool(np.isfinite(drift) and (abs(drift) <= convergence_tol or abs(drift) <= 2 * drift_se))
    chance = float("nan") if chance_loss is None else float(chance_loss)
    escaped_chains = _escaped_chains(good, ok, init_loss, chance)
    r_hat = _split_r_hat(good)
    agree = not (np.isfinite(r_hat) and r_hat > R_HAT_MAX)
    diag.update(
        mala_acceptance=_mean_mala(mala_trace, ok), frac_below_init=float((good < init_loss).mean()),
        trace_slope=slope, trace_drift=float(drift), trace_drift_se=float(drift_se), converged=converged,
        r_hat=r_hat, loss_excess=float(good.mean()) - init_loss, chance_loss=chance,
        escaped=bool(escaped_chains), escaped_chains=escaped_chains, negative=bool(mean < 0),
        healthy=bool(not failed and mean > 0 and converged and agree and not escaped_chains),
        warnings=_notes(failed, chains, mean, converged, drift, agree, r_hat, escaped_chains, chance),
    )
    return mean, std, per_chain, diag
