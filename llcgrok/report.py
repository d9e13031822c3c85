"""The capacity report: a sweep's runs gathered into tidy tables.

Everything the report notebook shows is computed here, so that it is tested and the
notebook stays a view.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .capacity import BUCKETS, arch_name, find_pairs
from .metrics import aggregate_over_seeds

GROKKING_COLUMNS = [
    "steps_to_memorization",
    "steps_to_grokking",
    "min_val_acc_after_grokking",
    "frac_evals_above_after_grokking",
    "num_drops_after_grokking",
    "final_val_acc",
]
LLC_COLUMNS = ["llc_peak", "llc_peak_step", "llc_final"]


def load_summary(sweep_dir: str | Path) -> pd.DataFrame:
    table = pd.read_csv(Path(sweep_dir) / "summary.csv")
    table["arch"] = [arch_name(r.num_layers, r.d_model, r.num_heads) for r in table.itertuples()]
    return table


def load_trajectories(sweep_dir: str | Path, summary: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every finished run's ``llc.csv`` stacked, tagged with its run's columns (tidy:
    one row per run x checkpoint)."""
    sweep_dir = Path(sweep_dir)
    summary = load_summary(sweep_dir) if summary is None else summary
    frames = []
    keep = ["run_id", "task", "arch", "num_layers", "d_model", "num_heads", "num_params", "bucket", "seed"]
    for row in summary[summary["status"] == "complete"].itertuples(index=False):
        path = sweep_dir / "runs" / row.run_id / "llc.csv"
        if not path.exists():
            continue
        frame = pd.read_csv(path)
        for col in keep:
            frame[col] = getattr(row, col)
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=keep + ["step", "llc_mean", "llc_std", "train_acc", "val_acc"])
    return pd.concat(frames, ignore_index=True)


def mean_curves(trajectories: pd.DataFrame, value_columns=("llc_mean", "train_acc", "val_acc")) -> pd.DataFrame:
    """Mean and standard error over seeds per (task, arch, step)."""
    group_cols = ["task", "bucket", "arch", "num_layers", "d_model", "num_heads", "step"]
    if trajectories.empty:
        return pd.DataFrame(columns=group_cols)
    return aggregate_over_seeds(trajectories, group_cols, list(value_columns))


def grokking_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Steps to memorization and grokking, stability, mean +/- s.e. over seeds per arch."""
    done = summary[summary["status"] == "complete"]
    table = aggregate_over_seeds(done, ["task", "bucket", "arch", "num_params"], GROKKING_COLUMNS)
    return _order_buckets(table)


def llc_table(summary: pd.DataFrame) -> pd.DataFrame:
    """LLC peak (and its step) and final value per architecture, mean +/- s.e. over seeds."""
    done = summary[summary["status"] == "complete"]
    return _order_buckets(aggregate_over_seeds(done, ["task", "bucket", "arch", "num_params"], LLC_COLUMNS))


def settings_warning(summary: pd.DataFrame) -> str | None:
    """A warning when the finished runs' LLC values were estimated at more than one nbeta
    or localization (means over such runs mix quantities that do not compare), or when some
    were not calibrated; None when all share one setting and were calibrated."""
    done = summary[summary["status"] == "complete"]
    if "llc_nbeta" not in done or done["llc_nbeta"].isna().all():
        return None
    problems = []
    for column, name in (("llc_nbeta", "nbeta"), ("llc_localization", "localization")):
        values = sorted(done[column].dropna().unique())
        if len(values) > 1:
            runs_at = "; ".join(f"{name} {v:g}: " + ", ".join(done.loc[done[column] == v, "run_id"]) for v in values)
            problems.append(f"LLC values were estimated at {len(values)} different {name}s ({runs_at}); "
                            f"they compare only at equal {name}")
    uncalibrated = done.loc[done["llc_calibrated"].astype(str).str.lower().isin(["false", "0"]), "run_id"].tolist()
    if uncalibrated:
        problems.append(f"{len(uncalibrated)} run(s) UNCALIBRATED (calibration recommended nothing): {', '.join(uncalibrated)}")
    return "; ".join(problems) or None


def pairs_in_sweep(summary: pd.DataFrame) -> pd.DataFrame:
    """Deep-narrow vs wide-shallow pairs among the sweep's architectures."""
    archs = summary.drop_duplicates("arch")[["arch", "num_layers", "d_model", "num_heads", "num_params", "bucket"]]
    return find_pairs(archs)


def format_mean_sem(table: pd.DataFrame, columns, digits: int = 0) -> pd.DataFrame:
    """``mean ± s.e. (n)`` strings for display; the numbers stay in the input table."""
    out = table[[c for c in table.columns if not any(c.startswith(f"{v}_") for v in columns)]].copy()
    for col in columns:
        means, sems, counts = table[f"{col}_mean"], table[f"{col}_sem"], table[f"{col}_n"]
        cells = []
        for m, s, n in zip(means, sems, counts):
            if n == 0 or pd.isna(m):
                cells.append("never")
            elif pd.isna(s):
                cells.append(f"{m:.{digits}f} (n={n})")
            else:
                cells.append(f"{m:.{digits}f} ± {s:.{digits}f} (n={n})")
        out[col] = cells
    return out


def _order_buckets(table: pd.DataFrame) -> pd.DataFrame:
    if table.empty:
        return table
    order = {b: i for i, b in enumerate(BUCKETS)}
    return table.sort_values(["task", "bucket", "num_params"], key=lambda s: s.map(order) if s.name == "bucket" else s).reset_index(drop=True)


def buckets_present(summary: pd.DataFrame) -> list[str]:
    present = set(summary["bucket"].dropna())
    return [b for b in BUCKETS if b in present]


def finite(values) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    return x[np.isfinite(x)]
