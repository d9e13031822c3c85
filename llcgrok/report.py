"""The capacity report: a sweep's runs gathered into tidy tables.

Everything the report notebook shows is computed here, so that it is tested and the
notebook stays a view.
"""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from . import runs
from .capacity import BUCKETS, arch_name, find_pairs
from .config_sections import ModelConfig, TaskConfig
from .metrics import FLAG_CURVATURE, FLAG_UNHEALTHY, aggregate_over_seeds, as_bool, estimate_flags, flags_of
from .model import count_params
from .tasks import NUM_SYMBOLS, num_classes_for

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
        path = sweep_dir / "runs" / row.run_id / runs.LLC_CSV
        if not path.exists():
            continue
        frame = pd.read_csv(path)
        for col in keep:
            frame[col] = getattr(row, col)
        frame["flag"] = estimate_flags(frame)
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=keep + ["step", "llc_mean", "llc_std", "train_acc", "val_acc", "flag"])
    return pd.concat(frames, ignore_index=True)


def mean_curves(trajectories: pd.DataFrame, value_columns=("llc_mean", "train_acc", "val_acc"), *,
                exclude=(FLAG_UNHEALTHY, FLAG_CURVATURE)) -> pd.DataFrame:
    """Mean and standard error over seeds per (task, arch, step). LLC estimates flagged
    (:func:`~llcgrok.metrics.estimate_flags`) with a flag in ``exclude`` (default: unhealthy,
    and in the curvature regime) are left out of the LLC mean and counted in
    ``llc_mean_flagged``: a mean never mixes them in silently (``llc_mean_n`` counts the
    estimates it does average)."""
    group_cols = ["task", "bucket", "arch", "num_layers", "d_model", "num_heads", "step"]
    if trajectories.empty:
        return pd.DataFrame(columns=group_cols)
    frame = trajectories.copy()
    flagged = flags_of(frame).isin(list(exclude))
    if "llc_mean" in value_columns:
        frame.loc[flagged, "llc_mean"] = np.nan
    table = aggregate_over_seeds(frame, group_cols, list(value_columns))
    if "llc_mean" not in value_columns:
        return table
    counts = flagged.astype(int).groupby([frame[c] for c in group_cols], dropna=False).sum()
    return table.merge(counts.rename("llc_mean_flagged").reset_index(), on=group_cols, how="left")


def flag_summary(trajectories: pd.DataFrame) -> str:
    """One line: how many LLC estimates are flagged, why, and that the means leave them out."""
    flags = flags_of(trajectories)
    unhealthy, curvature = int((flags == FLAG_UNHEALTHY).sum()), int((flags == FLAG_CURVATURE).sum())
    if not unhealthy + curvature:
        return f"All {len(flags)} LLC estimates healthy and outside the curvature regime."
    return (f"{unhealthy + curvature} of {len(flags)} LLC estimates flagged ({unhealthy} unhealthy, {curvature} in the "
            f"curvature regime): left out of every mean, drawn with their own markers.")


def grokking_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Steps to memorization and grokking, stability, mean +/- s.e. over seeds per arch."""
    done = summary[summary["status"] == "complete"]
    table = aggregate_over_seeds(done, ["task", "bucket", "arch", "num_params"], GROKKING_COLUMNS)
    return _order_buckets(table)


def llc_table(summary: pd.DataFrame, trajectories: pd.DataFrame | None = None) -> pd.DataFrame:
    """LLC peak (and its step) and final value per architecture, mean +/- s.e. over seeds.
    With ``trajectories``, a peak or final value whose estimate is flagged
    (:func:`capacity_table`) is left out of its mean; the ``_n`` columns count what is averaged."""
    done = summary[summary["status"] == "complete"]
    if trajectories is not None:
        done = capacity_table(summary, trajectories)
        done.loc[done["peak_flag"] != "", ["llc_peak", "llc_peak_step"]] = np.nan
        done.loc[done["final_flag"] != "", "llc_final"] = np.nan
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


# --------------------------------------------------------------------------- capacity figures

CAPACITY_COLUMNS = ["task", "run_id", "arch", "bucket", "num_layers", "d_model", "num_heads", "num_params", "seed",
                    "steps_to_memorization", "steps_to_grokking", "llc_peak", "llc_peak_step", "llc_final"]


def capacity_table(summary: pd.DataFrame, trajectories: pd.DataFrame) -> pd.DataFrame:
    """One row per finished run: parameter count, depth, steps to grokking, and the LLC
    peak and final value of ``summary.csv``, with the flag of the estimate behind each
    (``peak_flag``, ``final_flag``: "" when it is taken at face value)."""
    done = summary[summary["status"] == "complete"]
    table = done[[c for c in CAPACITY_COLUMNS if c in done]].copy()
    valid = trajectories.dropna(subset=["llc_mean"]).assign(flag=flags_of(trajectories)).sort_values("step")
    at = valid[["run_id", "step", "flag"]].assign(step=lambda f: f["step"].astype(float))
    table["llc_peak_step"] = table["llc_peak_step"].astype(float)
    table = table.merge(at.rename(columns={"step": "llc_peak_step", "flag": "peak_flag"}), on=["run_id", "llc_peak_step"], how="left")
    final = valid.groupby("run_id").tail(1)[["run_id", "flag"]].rename(columns={"flag": "final_flag"})
    table = table.merge(final, on="run_id", how="left")
    table[["peak_flag", "final_flag"]] = table[["peak_flag", "final_flag"]].fillna("")
    return table.sort_values(["task", "num_params", "num_layers", "seed"]).reset_index(drop=True)


def aligned_curves(trajectories: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """The trajectories with each run's ``steps_to_grokking`` and ``steps_since_grokking``
    (checkpoint step minus it): curves of seeds that grok at different steps, aligned at
    their own grokking. NaN for runs that never grokked (kept, so that they are counted)."""
    grok = summary.set_index("run_id")["steps_to_grokking"]
    out = trajectories.copy()
    out["flag"] = flags_of(out)
    out["steps_to_grokking"] = out["run_id"].map(grok).astype(float)
    out["steps_since_grokking"] = out["step"] - out["steps_to_grokking"]
    return out


def _calibration_counts(run_dir: Path) -> tuple[float, float]:
    path = run_dir / runs.CALIBRATION_CSV
    if not path.exists():
        return math.nan, math.nan
    table = pd.read_csv(path)
    return float(len(table)), float(as_bool(table["healthy"]).sum()) if "healthy" in table else math.nan


def calibration_overview(sweep_dir: str | Path, summary: pd.DataFrame, trajectories: pd.DataFrame) -> pd.DataFrame:
    """One row per finished run: the sampler settings its LLC values were made with
    (``epsilon``, ``nbeta``, ``localization``), whether calibration chose them
    (``calibrated``), the size of its calibration grid and how many points were healthy
    (NaN without a calibration.csv), and how many of its checkpoints were estimated, healthy
    (unflagged) and in the curvature regime."""
    done = summary[summary["status"] == "complete"]
    flags = flags_of(trajectories)
    rows = []
    for r in done.itertuples(index=False):
        points, healthy = _calibration_counts(Path(sweep_dir) / "runs" / r.run_id)
        mine = flags[trajectories["run_id"] == r.run_id]
        rows.append({
            "run_id": r.run_id, "task": r.task, "arch": r.arch, "num_layers": r.num_layers, "num_params": r.num_params,
            "seed": r.seed, "epsilon": r.llc_epsilon, "nbeta": r.llc_nbeta, "localization": r.llc_localization,
            "calibrated": bool(as_bool(pd.Series([r.llc_calibrated])).iloc[0]),
            "calibration_points": points, "calibration_healthy": healthy, "checkpoints": len(mine),
            "checkpoints_healthy": int((mine == "").sum()), "checkpoints_curvature": int((mine == FLAG_CURVATURE).sum()),
        })
    table = pd.DataFrame(rows, columns=["run_id", "task", "arch", "num_layers", "num_params", "seed", "epsilon", "nbeta",
                                        "localization", "calibrated", "calibration_points", "calibration_healthy",
                                        "checkpoints", "checkpoints_healthy", "checkpoints_curvature"])
    return table.sort_values(["task", "num_params", "seed"]).reset_index(drop=True)


# --------------------------------------------------------------------------- the published baseline

BASELINE_FILE = "ai_scientist_grokking.json"  # package data, llcgrok/data/
# The template trains this many updates; its step_val_acc_99 is this number when validation
# accuracy never passed 0.99 (the file's "about").
PUBLISHED_BUDGET = 7500
COMPARISON_COLUMNS = ["source", "task", "arch", "num_layers", "d_model", "num_heads", "num_params", "seed",
                      "steps_to_grokking", "step_val_acc_99", "budget"]


def published_results() -> dict:
    """The published AI-Scientist grokking results, as shipped with the package."""
    return json.loads(resources.files("llcgrok").joinpath("data", BASELINE_FILE).read_text())


def _published_row(source: str, task: str, arch: dict, step: float, seed) -> dict:
    cfg = ModelConfig(num_layers=arch["num_layers"], d_model=arch["d_model"], num_heads=arch["num_heads"])
    classes = num_classes_for(TaskConfig(name=task))  # the reference setup: p = 97, S5
    never = seed is not None and step >= PUBLISHED_BUDGET  # a mean of seeds says nothing per seed
    return {"source": source, "task": task, "arch": arch_name(cfg.num_layers, cfg.d_model, cfg.num_heads),
            "num_layers": cfg.num_layers, "d_model": cfg.d_model, "num_heads": cfg.num_heads,
            "num_params": count_params(cfg, classes + NUM_SYMBOLS, classes), "seed": math.nan if seed is None else seed,
            "steps_to_grokking": math.nan if never else float(step), "step_val_acc_99": float(step), "budget": PUBLISHED_BUDGET}


def ai_scientist_baseline() -> pd.DataFrame:
    """The published numbers, tidy: one row per seed of the template's baseline ("published
    baseline") and per architecture x task mean of the capacity study made with it
    ("published capacity study", means over 3 seeds). ``step_val_acc_99`` as published;
    ``steps_to_grokking`` NaN where a seed reached the budget without grokking;
    ``num_params`` counted for the reference task."""
    data = published_results()
    rows = []
    baseline = data["baseline"]
    for task, steps in baseline["step_val_acc_99_per_seed"].items():
        rows += [_published_row("published baseline", task, baseline["architecture"], s, seed) for seed, s in enumerate(steps)]
    for run in data["capacity_runs"]:
        rows += [_published_row("published capacity study", task, run["architecture"], s, None)
                 for task, s in run["step_val_acc_99_mean"].items()]
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def baseline_comparison(summary: pd.DataFrame) -> pd.DataFrame:
    """Steps to grokking of this sweep's finished runs ("this sweep", NaN: never grokked)
    beside the published ones (:func:`ai_scientist_baseline`) of the tasks the sweep ran."""
    done = summary[summary["status"] == "complete"]
    ours = done.assign(source="this sweep", step_val_acc_99=math.nan, budget=math.nan)
    published = ai_scientist_baseline()
    if len(ours):
        published = published[published["task"].isin(set(ours["task"]))]
    return pd.concat([ours.reindex(columns=COMPARISON_COLUMNS), published], ignore_index=True)


def baseline_table(comparison: pd.DataFrame) -> pd.DataFrame:
    """Steps to grokking per source, task and architecture: mean, s.e. and count over seeds
    (a published capacity-study row is already a mean, so its count is 1)."""
    return aggregate_over_seeds(comparison, ["task", "arch", "num_params", "source"], ["steps_to_grokking"])
