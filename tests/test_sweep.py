"""A tiny sweep end to end: per-config notebooks, summary.csv, the report, and restart."""

import json
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
        "num_chains": 1, "num_draws": 6, "batch_size": 32, "cores": 1, "calibrate": True, "num_burnin_steps": 5,
        "curvature_probes": 2, "calibration": {"epsilons": [1.0e-4, 1.0e-3], "nbetas": [10.0], "localizations": [100.0]},
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
    first = run_sweep(params, out, quiet=True, workers=2)  # the local pool, two configs at once
    assert not first.failed and sorted(first.completed) == ["x_plus_y-L1-d16-h2-s0", "x_plus_y-L2-d16-h2-s0"]
    # Each config ran in a pool process, not in this one.
    status_pids = {json.loads((out / "runs" / r / "status.json").read_text())["pid"] for r in first.completed}
    assert os.getpid() not in status_pids
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns) == SUMMARY_COLUMNS
    assert (summary["status"] == "complete").all()
    assert summary["llc_final"].notna().all() and summary["num_params"].gt(0).all()
    for run_id in first.completed:
        run = out / "runs" / run_id
        assert {"train.ipynb", "calibrate.ipynb", "llc_trajectory.ipynb", "llc.csv", "summary.json"} <= set(os.listdir(run))
        llc, row = pd.read_csv(run / "llc.csv"), summary.set_index("run_id").loc[run_id]
        assert (row["llc_nbeta"], row["llc_epsilon"], row["llc_localization"]) == tuple(llc[["nbeta", "epsilon", "localization"]].iloc[-1])
        assert row["llc_calibrated"] == llc["settings_source"].iloc[-1].startswith("calibrated")
    assert (out / "report.ipynb").exists()
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    for name in ("buckets_x_plus_y", "steps_by_arch", "capacity", "llc_vs_loss", "aligned_at_grokking",
                 "grokking_vs_baseline", "calibration_overview"):
        assert f"{name}.png" in figures and (out / "figures" / f"{name}.csv").exists(), name
    overview = pd.read_csv(out / "figures" / "calibration_overview.csv")
    assert sorted(overview["run_id"]) == sorted(first.completed) and (overview["checkpoints"] == 4).all()
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


def test_kernels_run_the_sweeps_interpreter_whatever_python3_kernelspec_comes_first(tmp_path, monkeypatch):
    # A python3 kernelspec found before the environment's own (a user-level one, say) that
    # names another Python: a sweep started from a virtual environment must not run its
    # notebooks there, with another llcgrok or none.
    import json
    import sys

    import nbformat
    import papermill

    from llcgrok.sweep import _kernel_manager_class

    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps(
        {"argv": ["/nonexistent/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
         "display_name": "elsewhere", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("import sys\nprint(sys.executable)"),
    ])
    source, output = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nbformat.write(notebook, source)
    with pytest.raises(Exception):  # the stand-in spec really is the one found under "python3"
        papermill.execute_notebook(str(source), str(tmp_path / "plain.ipynb"), kernel_name="python3",
                                   progress_bar=False, start_timeout=20)
    papermill.execute_notebook(str(source), str(output), kernel_name="python3", language="python",
                               progress_bar=False, kernel_manager_class=_kernel_manager_class())
    printed = nbformat.read(output, as_version=4).cells[1].outputs[0]["text"].strip()
    assert printed == sys.executable


def test_report_warns_when_llc_settings_differ_between_runs():
    from llcgrok.report import settings_warning

    summary = pd.DataFrame({
        "run_id": ["a", "b", "c"], "status": ["complete", "complete", "failed"],
        "llc_nbeta": [100.0, 100.0, 300.0], "llc_localization": [1e5, 1e5, 1e5], "llc_calibrated": [True, True, False],
    })
    assert settings_warning(summary) is None  # the failed run does not count
    summary.loc[1, ["llc_nbeta", "llc_calibrated"]] = [300.0, False]
    warning = settings_warning(summary)
    assert "2 different nbetas (nbeta 100: a; nbeta 300: b)" in warning and "UNCALIBRATED" in warning and ": b" in warning
    assert "localization" not in warning.split(";")[0]


def test_pool_starts_the_deepest_widest_configs_first_and_summary_keeps_grid_order():
    from llcgrok.sweep import _largest_first, study_for

    study = study_for(load_params("params/quick.yaml"))
    started = [(item.config.model.num_layers, item.config.model.d_model) for item in _largest_first(study.configs)]
    assert started[:2] == [(2, 64), (2, 64)] and started[-2:] == [(1, 32), (1, 32)]
    assert started == sorted(started, reverse=True)
    grid = [(item.config.model.num_layers, item.config.model.d_model) for item in study.configs]
    assert grid[0] == (1, 32) and sorted(grid, reverse=True) == started  # the study itself is untouched
