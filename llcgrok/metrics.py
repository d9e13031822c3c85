"""Grokking metrics: pure functions on a metrics table (step, train_acc, val_acc, ...)."""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

THRESHOLD = 0.99  # accuracy strictly above it: memorized (train) or grokked (validation)
EXACT_MATCH_THRESHOLD = 0.99  # held-out exact match at or above it: addition learnt


def _first_step_above(metrics: pd.DataFrame, column: str, threshold: float, inclusive: bool = False) -> int | None:
    values = metrics[column]
    above = metrics.loc[values >= threshold if inclusive else values > threshold, "step"]
    return int(above.iloc[0]) if len(above) else None


def steps_to_memorization(metrics: pd.DataFrame, threshold: float = THRESHOLD) -> int | None:
    """First evaluated step with train accuracy above ``threshold`` (None if never)."""
    return _first_step_above(metrics, "train_acc", threshold)


def steps_to_grokking(metrics: pd.DataFrame, threshold: float = THRESHOLD) -> int | None:
    """First evaluated step with validation accuracy above ``threshold`` (None if never)."""
    return _first_step_above(metrics, "val_acc", threshold)


def steps_to_exact_match(metrics: pd.DataFrame, threshold: float = EXACT_MATCH_THRESHOLD) -> int | None:
    """First evaluated step with held-out exact match at or above ``threshold`` (None if never)."""
    return _first_step_above(metrics, "val_exact_match", threshold, inclusive=True)


def post_grokking_stability(metrics: pd.DataFrame, threshold: float = THRESHOLD) -> dict:
    """How well validation accuracy holds after grokking.

    ``min_val_acc_after_grokking``: lowest val accuracy at or after the grokking step;
    ``frac_evals_above_after_grokking``: fraction of those evals still above ``threshold``;
    ``num_drops_after_grokking``: times val accuracy fell from above to at-or-below it.
    All NaN (drops: None) when the run never grokked.
    """
    grok = steps_to_grokking(metrics, threshold)
    if grok is None:
        return {
            "min_val_acc_after_grokking": math.nan,
            "frac_evals_above_after_grokking": math.nan,
            "num_drops_after_grokking": None,
        }
    after = metrics.loc[metrics["step"] >= grok, "val_acc"].to_numpy()
    above = after > threshold
    drops = int(np.sum(above[:-1] & ~above[1:]))
    return {
        "min_val_acc_after_grokking": float(after.min()),
        "frac_evals_above_after_grokking": float(above.mean()),
        "num_drops_after_grokking": drops,
    }


def summarize(metrics: pd.DataFrame, threshold: float = THRESHOLD) -> dict:
    """The grokking figures of one run, as plain Python values."""
    last = metrics.iloc[-1]
    return {
        "steps_to_memorization": steps_to_memorization(metrics, threshold),
        "steps_to_grokking": steps_to_grokking(metrics, threshold),
        "final_train_acc": float(last["train_acc"]),
        "final_val_acc": float(last["val_acc"]),
        "final_train_loss": float(last["train_loss"]),
        "final_val_loss": float(last["val_loss"]),
        **post_grokking_stability(metrics, threshold),
    }


def standard_error(values: Iterable[float]) -> float:
    """Standard error of the mean: sample std (ddof=1) / sqrt(n); NaN for n < 2."""
    x = np.asarray([v for v in values if v is not None and not pd.isna(v)], dtype=float)
    if len(x) < 2:
        return math.nan
    return float(x.std(ddof=1) / math.sqrt(len(x)))


def aggregate_over_seeds(
    table: pd.DataFrame, by: Sequence[str], columns: Sequence[str]
) -> pd.DataFrame:
    """Mean, standard error and count of ``columns`` per group of ``by`` (seeds pooled).

    Missing values (a run that never grokked) are left out of the mean and counted
    separately in ``<column>_n``, so a mean is never silently taken over fewer seeds.
    """
    rows = []
    for key, group in table.groupby(list(by), sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key))
        row["num_seeds"] = len(group)
        for col in columns:
            values = pd.to_numeric(group[col], errors="coerce").dropna()
            row[f"{col}_mean"] = float(values.mean()) if len(values) else math.nan
            row[f"{col}_sem"] = standard_error(values)
            row[f"{col}_n"] = int(len(values))
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- flagged LLC estimates

FLAG_UNHEALTHY = "unhealthy"
FLAG_CURVATURE = "curvature"


def as_bool(values: pd.Series) -> pd.Series:
    """A boolean column as read back from CSV (bools, or strings where NaN made it object);
    missing counts as False."""
    if values.dtype == bool:
        return values
    return values.map(lambda v: str(v).strip().lower() in ("true", "1", "1.0"))


def estimate_flags(trajectory: pd.DataFrame) -> pd.Series:
    """Why each LLC estimate of a trajectory table (``llc.csv``) is not taken at face value:
    ``"unhealthy"`` where ``healthy`` is false or missing (a diagnostic failed, or every chain
    did: see :mod:`llcgrok.llc`), else ``"curvature"`` where a ``regime`` column says
    curvature (the localization dominates: the number is n*beta*tr(H)/(2 gamma), not an LLC),
    else ``""``. Without a ``healthy`` column no estimate is unhealthy."""
    flags = pd.Series("", index=trajectory.index, dtype=object)
    if "regime" in trajectory:
        flags[trajectory["regime"].astype(str).str.strip().str.lower() == FLAG_CURVATURE] = FLAG_CURVATURE
    if "healthy" in trajectory:
        flags[~as_bool(trajectory["healthy"])] = FLAG_UNHEALTHY
    return flags


def flags_of(trajectory: pd.DataFrame) -> pd.Series:
    """The table's ``flag`` column (``llcgrok.report.load_trajectories`` adds one), or
    :func:`estimate_flags` of it."""
    return trajectory["flag"].fillna("").astype(str) if "flag" in trajectory else estimate_flags(trajectory)
