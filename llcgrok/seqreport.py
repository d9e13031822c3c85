"""The report of a sequence-task sweep (addition, fraction_of_x): the tables that
``notebooks/sequence_report.ipynb`` shows and draws, computed here so that they are tested
and the notebook stays a view.

Inputs are the sweep's ``summary.csv`` (:mod:`llcgrok.seqstudy`) and each finished run's
``llc.csv`` and ``metrics.csv``. Every LLC number travels with its regime: in the curvature
regime (the localization dominates) the estimate is n*beta*tr(H)/(2 gamma), a curvature,
not an LLC, and every table and figure says so.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .metrics import estimate_flags
from .seqstudy import LLC_REGIME, OUTCOME_COLUMNS

# The held-out outcome per task: summary column, metrics.csv column over training, label,
# and whether larger is better.
OUTCOMES = {
    "addition": {"final": "final_val_exact_match", "curve": "val_exact_match", "label": "held-out exact match", "higher": True},
    "fraction_of_x": {"final": "final_val_mae", "curve": "val_mae", "label": "held-out MAE", "higher": False},
}
RUN_COLUMNS = ["run_id", "task", "arch", "num_layers", "d_model", "num_heads", "d_ff", "num_params", "seed"]
CURVE_COLUMNS = ["step", "llc_mean", "llc_std", "regime", "healthy", "flag"]


def arch_label(num_layers, d_model, num_heads, d_ff) -> str:
    return f"L{int(num_layers)}-d{int(d_model)}-h{int(num_heads)}-f{int(d_ff)}"


def load_summary(sweep_dir: str | Path) -> pd.DataFrame:
    """``summary.csv`` with an ``arch`` label per row."""
    table = pd.read_csv(Path(sweep_dir) / "summary.csv")
    table["arch"] = [arch_label(r.num_layers, r.d_model, r.num_heads, r.d_ff) for r in table.itertuples()]
    return table


def tasks_in(summary: pd.DataFrame) -> list[str]:
    return [task for task in OUTCOMES if task in set(summary["task"])]


def _run_curves(run_dir: Path, task: str) -> pd.DataFrame | None:
    """One run's LLC trajectory (llc.csv) outer-joined by step with its held-out outcome over
    training (metrics.csv): one table, so a figure of both has one CSV of its data."""
    llc_path, metrics_path = run_dir / "llc.csv", run_dir / "metrics.csv"
    if not llc_path.exists():
        return None
    llc = pd.read_csv(llc_path)
    llc["flag"] = estimate_flags(llc)
    llc = llc.reindex(columns=CURVE_COLUMNS)
    curve = OUTCOMES[task]["curve"]
    if metrics_path.exists():
        metrics = pd.read_csv(metrics_path).reindex(columns=["step", curve])
        llc = llc.merge(metrics, on="step", how="outer")
    else:
        llc[curve] = float("nan")
    return llc.sort_values("step", kind="stable")


def load_curves(sweep_dir: str | Path, summary: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every finished run's LLC trajectory and held-out outcome over training, stacked and
    tagged with the run's columns (tidy: one row per run x step; a step with only one of
    the two leaves the other's columns empty)."""
    sweep_dir = Path(sweep_dir)
    summary = load_summary(sweep_dir) if summary is None else summary
    frames = []
    for row in summary[summary["status"] == "complete"].itertuples(index=False):
        frame = _run_curves(sweep_dir / "runs" / row.run_id, row.task)
        if frame is None:
            continue
        for col in RUN_COLUMNS:
            frame[col] = getattr(row, col)
        frames.append(frame)
    curves = [OUTCOMES[task]["curve"] for task in tasks_in(summary)]
    if not frames:
        return pd.DataFrame(columns=RUN_COLUMNS + CURVE_COLUMNS + curves)
    return pd.concat(frames, ignore_index=True).reindex(columns=RUN_COLUMNS + CURVE_COLUMNS + curves)


def capacity_table(summary: pd.DataFrame, task: str) -> pd.DataFrame:
    """The finished runs of ``task``: architecture, parameter count and outcome columns,
    by parameter count."""
    rows = summary[(summary["task"] == task) & (summary["status"] == "complete")]
    columns = ["run_id", "arch", "num_layers", "d_model", "num_heads", "d_ff", "num_params", "seed", *OUTCOME_COLUMNS[task]]
    return rows.reindex(columns=columns).sort_values(["num_params", "seed"], kind="stable").reset_index(drop=True)


def llc_table(summary: pd.DataFrame, task: str) -> pd.DataFrame:
    """The final and peak LLC estimate of every finished run of ``task``, each with the
    regime of its trajectory and the sampler settings (nbeta, localization) behind it."""
    rows = summary[(summary["task"] == task) & (summary["status"] == "complete")].dropna(subset=["llc_final"])
    columns = ["run_id", "arch", "num_params", "seed", "llc_final", "llc_peak", "llc_peak_step", "llc_regime",
               "llc_nbeta", "llc_localization", OUTCOMES[task]["final"]]
    table = rows.reindex(columns=columns).sort_values(["num_params", "seed"], kind="stable").reset_index(drop=True)
    table["llc_regime"] = table["llc_regime"].fillna("curvature")  # nothing vouches for an unlabelled estimate
    return table


def regime_note(summary: pd.DataFrame) -> str:
    """One line on the regimes behind the sweep's LLC columns."""
    done = summary[(summary["status"] == "complete") & summary["llc_final"].notna()]
    if done.empty:
        return "no finished run has an LLC trajectory"
    curvature = done[done["llc_regime"].fillna("curvature") != LLC_REGIME]
    if curvature.empty:
        return f"all {len(done)} runs' trajectories are in the LLC regime at every checkpoint"
    return (f"{len(curvature)} of {len(done)} runs have checkpoints in the curvature regime: their LLC columns are "
            "curvatures (n*beta*tr(H)/(2 gamma)), not LLCs, and are marked as such (x) in every figure: "
            + ", ".join(curvature["run_id"]))


def settings_note(summary: pd.DataFrame) -> str | None:
    """A warning when the finished runs' LLC values were made at different nbeta or
    localization (values then do not compare), else None."""
    done = summary[(summary["status"] == "complete") & summary["llc_final"].notna()]
    parts = [f"{done[c].nunique()} different {name}s ({', '.join(f'{v:g}' for v in sorted(done[c].unique()))})"
             for c, name in (("llc_nbeta", "nbeta"), ("llc_localization", "localization")) if done[c].nunique() > 1]
    return "; ".join(parts) + ": LLC values compare only at equal settings" if parts else None
