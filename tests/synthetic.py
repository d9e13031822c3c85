"""Synthetic sweep tables and directories for the report and figure tests: known values,
built in milliseconds, no training."""

import numpy as np
import pandas as pd

STEPS = [0, 10, 100, 1000]
# (num_layers, d_model, num_params, bucket); two seeds each
ARCHS = [(1, 16, 3000, "small"), (2, 16, 5000, "large")]
GROKKED = {("1x16h2", 0): 100, ("1x16h2", 1): 1000, ("2x16h2", 0): 100, ("2x16h2", 1): None}
UNHEALTHY = ("x_plus_y-L1-d16-h2-s1", 10)  # (run_id, step) of the one unhealthy estimate
CURVATURE = ("x_plus_y-L2-d16-h2-s0", 1000)  # and of the one in the curvature regime
UNCALIBRATED_RUN = "x_plus_y-L2-d16-h2-s1"


def run_id(layers, seed):
    return f"x_plus_y-L{layers}-d16-h2-s{seed}"


def summary_frame() -> pd.DataFrame:
    rows = []
    for layers, width, params, bucket in ARCHS:
        for seed in (0, 1):
            rid = run_id(layers, seed)
            grok = GROKKED[(f"{layers}x{width}h2", seed)]
            rows.append({
                "run_id": rid, "task": "x_plus_y", "num_layers": layers, "d_model": width, "num_heads": 2,
                "num_params": params, "bucket": bucket, "seed": seed, "steps_to_memorization": 10,
                "steps_to_grokking": np.nan if grok is None else grok, "final_val_acc": 1.0 if grok else 0.5,
                "min_val_acc_after_grokking": 0.99 if grok else np.nan, "frac_evals_above_after_grokking": 1.0 if grok else np.nan,
                "num_drops_after_grokking": 0 if grok else np.nan, "final_train_acc": 1.0,
                "llc_peak": 50.0 + layers + seed, "llc_peak_step": 1000 if rid == CURVATURE[0] else 100,
                "llc_final": 20.0 + layers, "llc_epsilon": 1e-4, "llc_nbeta": 100.0, "llc_localization": 1e5,
                "llc_calibrated": rid != UNCALIBRATED_RUN, "status": "complete",
            })
    table = pd.DataFrame(rows)
    table["arch"] = [f"{r.num_layers}x{r.d_model}h2" for r in table.itertuples()]
    return table


def llc_csv(rid: str, layers: int, seed: int) -> pd.DataFrame:
    """One run's llc.csv: LLC 10 * (step index + 1) * layers + seed, accuracy rising."""
    rows = []
    for i, step in enumerate(STEPS):
        regime = "curvature" if (rid, step) == CURVATURE else "llc"
        rows.append({
            "step": step, "llc_mean": 10.0 * (i + 1) * layers + seed, "llc_std": 1.0,
            "healthy": (rid, step) != UNHEALTHY, "regime": regime, "train_loss": 2.0 / (i + 1), "val_loss": 3.0 / (i + 1),
            "train_acc": min(1.0, 0.3 * (i + 1)), "val_acc": min(1.0, 0.25 * (i + 1)), "epsilon": 1e-4, "nbeta": 100.0,
            "localization": 1e5, "settings_source": "calibrated at step 1000",
        })
    return pd.DataFrame(rows)


def trajectories_frame() -> pd.DataFrame:
    """What ``report.load_trajectories`` makes of :func:`write_sweep`'s directory."""
    summary = summary_frame()
    frames = []
    for r in summary.itertuples():
        frame = llc_csv(r.run_id, r.num_layers, r.seed)
        for col in ("run_id", "task", "arch", "num_layers", "d_model", "num_heads", "num_params", "bucket", "seed"):
            frame[col] = getattr(r, col)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def write_sweep(folder):
    """A finished-looking sweep directory: summary.csv, each run's llc.csv and a 2-point
    calibration.csv (the uncalibrated run's with no healthy point)."""
    summary = summary_frame()
    folder.mkdir(parents=True, exist_ok=True)
    summary.drop(columns="arch").to_csv(folder / "summary.csv", index=False)
    for r in summary.itertuples():
        run = folder / "runs" / r.run_id
        run.mkdir(parents=True)
        llc_csv(r.run_id, r.num_layers, r.seed).to_csv(run / "llc.csv", index=False)
        healthy = [False, False] if r.run_id == UNCALIBRATED_RUN else [True, False]
        pd.DataFrame({"epsilon": [1e-4, 1e-3], "nbeta": [100.0, 100.0], "llc_mean": [5.0, 9.0],
                      "healthy": healthy}).to_csv(run / "calibration.csv", index=False)
    return folder
