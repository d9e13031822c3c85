"""Every notebook executed through papermill on tiny parameters, as a user would."""

import json

import nbformat
import pandas as pd
import pytest
from notebook_helpers import execute_notebook

from llcgrok.config import dump_yaml

pytestmark = pytest.mark.slow

TINY = {
    "task": {"name": "x_plus_y", "p": 11},
    "model": {"num_layers": 1, "d_model": 16, "num_heads": 2},
    "train": {"num_steps": 40, "batch_size": 64, "eval_batches": 1, "num_checkpoints": 3},
    "llc": {
        "num_chains": 1, "num_draws": 8, "batch_size": 32, "cores": 1,
        "calibration": {"epsilons": [1.0e-4, 1.0e-3], "nbetas": [10.0]},
    },
}


def test_every_notebook_is_committed_clean_and_executed_by_a_test(repo_root):
    notebooks = sorted((repo_root / "notebooks").glob("*.ipynb"))
    assert len(notebooks) >= 8
    tests = "".join(p.read_text() for p in (repo_root / "tests").glob("test_*.py"))
    tests += (repo_root / "llcgrok" / "sweep.py").read_text()  # the notebooks a sweep runs: tests/test_sweep.py
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert "parameters" in code[0].metadata.get("tags", []), path.name
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), path.name
        assert f'"{path.name}"' in tests, f"no test executes notebooks/{path.name}"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, repo_root):
    """train -> calibrate -> llc_trajectory on one tiny run directory, in that order."""
    out = tmp_path_factory.mktemp("nb")
    run_dir = out / "run"
    for name in ("train.ipynb", "calibrate.ipynb", "llc_trajectory.ipynb"):
        execute_notebook(repo_root, name, out, **TINY, run_dir=str(run_dir), quiet=True)
    return out, run_dir


def test_train_notebook(tiny_run):
    out, run_dir = tiny_run
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert list(metrics.columns) == ["step", "train_loss", "train_acc", "val_loss", "val_acc"]
    assert json.loads((run_dir / "summary.json").read_text())["num_params"] > 0
    assert (run_dir / "figures" / "training_curves.png").stat().st_size > 1000


def test_calibrate_notebook(tiny_run):
    out, run_dir = tiny_run
    table = pd.read_csv(run_dir / "calibration.csv")
    assert {"epsilon", "nbeta", "llc_mean", "llc_std", "mala"} <= set(table.columns)
    assert len(table) == 2
    assert (run_dir / "figures" / "calibration_heatmap.png").exists()


def test_llc_trajectory_notebook(tiny_run):
    out, run_dir = tiny_run
    table = pd.read_csv(run_dir / "llc.csv")
    assert {"step", "llc_mean", "llc_std", "train_acc", "val_acc", "train_loss", "val_loss", "epsilon", "nbeta"} <= set(table.columns)
    assert table["step"].tolist() == sorted(table["step"]) and table["step"].iloc[0] == 0
    assert (run_dir / "figures" / "llc_vs_accuracy.png").exists()


def test_papermill_cli_with_a_params_file(tmp_path, repo_root):
    """The plain CLI form of the README: papermill notebook out.ipynb -f params.yaml."""
    import subprocess
    import sys

    params = tmp_path / "tiny.yaml"
    params.write_text(dump_yaml({k: v for k, v in TINY.items() if k != "llc"}))
    done = subprocess.run(
        [sys.executable, "-m", "papermill", str(repo_root / "notebooks" / "train.ipynb"), str(tmp_path / "out.ipynb"),
         "-f", str(params), "-p", "run_dir", str(tmp_path / "run"), "-p", "quiet", "True", "--cwd", str(tmp_path)],
        capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "run" / "figures" / "training_curves.png").exists()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["run_id"] == "x_plus_y-L1-d16-h2-s0"


def test_colab_quickstart_runs_without_installing(tmp_path, repo_root):
    execute_notebook(repo_root, "colab_quickstart.ipynb", tmp_path, **{k: v for k, v in TINY.items()},
             run_dir=str(tmp_path / "qs"), quiet=True, llcgrok_source="/nonexistent")
    assert (tmp_path / "qs" / "llc.csv").exists()
