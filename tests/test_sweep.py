"""A tiny sweep end to end: per-config notebooks, summary.csv, the report, and restart."""

import os

import pandas as pd
import pytest

from llcgrok.config import dump_yaml, load_params
from llcgrok.sweep import SUMMARY_COLUMNS, run_sweep

pytestmark = pytest.mark.slow

TINY_STUDY = {
    "task": {"name": "x_plus_y", "p": 11},
    "model": {"num_layers": 1, "d_model": 16, "num_heads": 2},
    "train": {"num_steps": 30, "batch_size": 64, "eval_batches": 1, "num_checkpoints": 3},
    "llc": {
        "num_chains": 1, "num_draws": 6, "batch_size": 32, "cores": 1, "calibrate": True,
        "calibration": {"epsilons": [1.0e-4, 1.0e-3], "nbetas": [10.0]},
    },
    "grid": {"axes": {"model.num_layers": [1, 2]}, "seeds": [0]},
}


def write_tiny_study(path, **changes):
    study = {**TINY_STUDY, **changes}
    path.write_text(dump_yaml(study))
    return path


def test_tiny_sweep_end_to_end_then_skips_everything(tmp_path):
    params = load_params(write_tiny_study(tmp_path / "tiny.yaml"))
    out = tmp_path / "sweep"
    first = run_sweep(params, out, quiet=True)
    assert not first.failed and sorted(first.completed) == ["x_plus_y-L1-d16-h2-s0", "x_plus_y-L2-d16-h2-s0"]
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns) == SUMMARY_COLUMNS
    assert (summary["status"] == "complete").all()
    assert summary["llc_final"].notna().all() and summary["num_params"].gt(0).all()
    for run_id in first.completed:
        run = out / "runs" / run_id
        assert {"train.ipynb", "calibrate.ipynb", "llc_trajectory.ipynb", "llc.csv", "summary.json"} <= set(os.listdir(run))
    assert (out / "report.ipynb").exists()
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert "buckets_x_plus_y.png" in figures and "steps_by_arch.png" in figures
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()}

    second = run_sweep(params, out, quiet=True, report=False)
    assert second.completed == [] and sorted(second.skipped) == sorted(first.completed)
    assert stamps == {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()}


def test_a_failing_config_is_recorded_and_the_others_finish(tmp_path):
    # lr 1e30 makes the 2-layer config diverge: its NaN is reported with the step.
    study = write_tiny_study(tmp_path / "bad.yaml", grid={"axes": {"train.lr": [1.0e-3, 1.0e30]}, "seeds": [0]})
    out = tmp_path / "sweep"
    result = run_sweep(load_params(study), out, quiet=True, report=False)
    assert len(result.completed) == 1 and len(result.failed) == 1
    (failed_id, error), = result.failed.items()
    assert "diverged at step" in error
    assert (out / "failed" / failed_id / "train.ipynb").exists()
    summary = pd.read_csv(out / "summary.csv").set_index("run_id")
    assert summary.loc[failed_id, "status"] == "failed"
