"""Every notebook executed through papermill on tiny parameters, as a user would."""

import json
import shlex
import subprocess
import sys
import time

import nbformat
import pandas as pd
import pytest
from notebook_helpers import execute_notebook, printed_config

from llcgrok import runs
from llcgrok.config import dump_yaml, load_params, resolve_run

pytestmark = pytest.mark.slow

TINY = {
    "task": {"name": "x_plus_y", "p": 11},
    "model": {"num_layers": 1, "d_model": 16, "num_heads": 2},
    "train": {"num_steps": 40, "batch_size": 64, "eval_batches": 1, "num_checkpoints": 3},
    "llc": {
        "num_chains": 1, "num_draws": 8, "batch_size": 32, "cores": 1, "num_burnin_steps": 5, "curvature_probes": 2,
        "calibration": {"epsilons": [1.0e-4, 1.0e-3], "nbetas": [10.0], "localizations": [100.0]},
    },
}


def test_every_notebook_is_committed_clean_and_executed_by_a_test(repo_root):
    notebooks = sorted((repo_root / "notebooks").glob("*.ipynb"))
    assert len(notebooks) >= 8
    tests = "".join(p.read_text() for p in (repo_root / "tests").glob("test_*.py"))
    for module in ("sweep.py", "study.py"):  # the notebooks a sweep runs: tests/test_sweep*.py
        tests += (repo_root / "llcgrok" / module).read_text()
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert "parameters" in code[0].metadata.get("tags", []), path.name
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), path.name
        assert f'"{path.name}"' in tests, f"no test executes notebooks/{path.name}"
        if path.name not in ("capacity_report.ipynb", "sequence_report.ipynb"):  # views of a finished sweep: no config to set
            assert "\noverrides = [" in "\n" + code[0].source, f"{path.name}: no overrides parameter"
            assert "nb.show_config(" in "".join(c.source for c in code), f"{path.name}: does not print its config"


def papermill_cli(*args, cwd):
    """The plain papermill command line, run by this interpreter."""
    return subprocess.run([sys.executable, "-m", "papermill", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=900)




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
    # the rule at the final checkpoint and at the tr(H) peak: each a ladder of one gamma, two steps
    assert set(table["localization"]) == {100.0} and 2 <= len(table) <= 4 and table["step"].nunique() in (1, 2)
    assert (run_dir / "figures" / "calibration_heatmap.png").exists()
    assert (run_dir / "figures" / "calibration_ladder.png").exists()


def test_llc_trajectory_notebook(tiny_run):
    out, run_dir = tiny_run
    table = pd.read_csv(run_dir / "llc.csv")
    assert {"step", "llc_mean", "llc_std", "train_acc", "val_acc", "train_loss", "val_loss", "epsilon", "nbeta"} <= set(table.columns)
    assert table["step"].tolist() == sorted(table["step"]) and table["step"].iloc[0] == 0
    assert (run_dir / "figures" / "llc_vs_accuracy.png").exists()
    assert set(runs.read_trace_arrays(run_dir)) == set(table["step"])  # every estimate's traces, kept
    assert (run_dir / "figures" / "checkpoint_traces.png").stat().st_size > 1000


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


def test_overrides_through_the_papermill_cli(tmp_path, repo_root):
    """-f params/quick.yaml plus overrides trains exactly the file plus the overrides."""
    overrides = ["model.d_model=48", "model.num_layers=2", "train.num_steps=60"]
    done = papermill_cli(repo_root / "notebooks" / "train.ipynb", tmp_path / "out.ipynb", "-f", repo_root / "params" / "quick.yaml",
                         "-y", json.dumps({"overrides": overrides, "run_dir": str(tmp_path / "run"), "quiet": True}), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = resolve_run(load_params(repo_root / "params" / "quick.yaml"),
                           {"model.d_model": 48, "model.num_layers": 2, "train.num_steps": 60})
    assert runs.read_config(tmp_path / "run") == expected
    assert printed_config(tmp_path / "out.ipynb") == expected.to_dict()
    assert expected.train.early_stop_delay == 600 and expected.llc.nbeta == 556.3  # the file's other keys kept
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["num_steps_run"] == 60


def test_a_notebook_llcgrok_llc_and_the_sweep_get_the_same_settings_from_one_file(tmp_path, repo_root):
    """Partial sections (llc.calibration included) deep-merge onto the library defaults, in a
    notebook run with -f as in the commands; the notebook's own cell adds nothing."""
    from llcgrok.cli import _llc_config
    from llcgrok.config import RunConfig
    from llcgrok.sweep import _section_parameters, study_configs

    params = tmp_path / "study.yaml"
    params.write_text(dump_yaml({
        **{k: v for k, v in TINY.items() if k != "llc"},
        "llc": {"num_draws": 7, "calibration": {"nbetas": [10.0]}},
        "grid": {"axes": {"model.num_layers": [2, 1]}},
    }))
    done = papermill_cli(repo_root / "notebooks" / "train.ipynb", tmp_path / "cli.ipynb", "-f", params,
                         "-p", "run_dir", tmp_path / "run", "-p", "quiet", "True", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = printed_config(tmp_path / "cli.ipynb")
    study = load_params(params)
    assert printed == resolve_run(study).to_dict()  # what `llcgrok train params --out DIR` trains
    assert printed["model"]["num_layers"] == 1  # the section's value, not the axis's first
    default = RunConfig().to_dict()["llc"]
    assert printed["llc"] == {**default, "num_draws": 7, "calibration": {**default["calibration"], "nbetas": [10.0]}}
    assert _llc_config(tmp_path / "run", {}) == resolve_run(study).llc  # what `llcgrok llc DIR` samples with
    run_id, cfg = next((i, c) for i, c in study_configs(study) if c.model.num_layers == 1)  # the sweep's config of this run
    assert cfg.to_dict() == printed
    # and the parameters a sweep injects give that config in the notebook too
    execute_notebook(repo_root, "train.ipynb", tmp_path, **_section_parameters(cfg), run_dir=str(tmp_path / "sweep_run"), quiet=True)
    assert printed_config(tmp_path / "train.ipynb") == printed


def readme_command(repo_root, notebook: str) -> list[str]:
    (line,) = [line for line in (repo_root / "README.md").read_text().splitlines() if line.startswith(f"papermill {notebook} ")]
    return shlex.split(line)


def test_the_readmes_papermill_example_groks(tmp_path, repo_root):
    """The README's train example, as written, from a directory laid out like a clone."""
    for name in ("notebooks", "params"):
        (tmp_path / name).symlink_to(repo_root / name)
    (tmp_path / "outputs").mkdir()  # a clone has it: outputs/README.md is tracked
    assert (repo_root / "outputs" / "README.md").exists()
    command = readme_command(repo_root, "notebooks/train.ipynb")
    assert command[0] == "papermill" and "-f" in command
    started = time.time()
    done = papermill_cli(*command[1:], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / command[command.index("run_dir") + 1]
    summary = json.loads((run_dir / "summary.json").read_text())
    print(f"README example: {summary['run_id']} grokked at {summary['steps_to_grokking']}, {time.time() - started:.0f} s")
    assert summary["steps_to_memorization"] is not None and summary["steps_to_grokking"] is not None
    assert summary["steps_to_memorization"] < summary["steps_to_grokking"] and summary["final_val_acc"] > 0.99
    # the README's next example reads that run: same file, same config, same directory
    llc_command = readme_command(repo_root, "notebooks/llc_trajectory.ipynb")
    assert llc_command[llc_command.index("-f") + 1] == command[command.index("-f") + 1]
    assert llc_command[llc_command.index("run_dir") + 1] == command[command.index("run_dir") + 1]


def test_notebook_parameters_without_a_file_run_the_fallback_preset(repo_root, monkeypatch):
    from llcgrok import notebook

    monkeypatch.chdir(repo_root / "notebooks")  # where Jupyter starts a notebook's kernel
    quick = resolve_run(load_params(repo_root / "params" / "quick.yaml"))
    assert notebook.config_from_parameters(fallback="params/quick.yaml") == quick
    # any section given, and the fallback is out of the way: the library defaults fill the rest
    cfg = notebook.config_from_parameters(model={"d_model": 48}, fallback="params/quick.yaml")
    assert (cfg.model.d_model, cfg.model.num_layers, cfg.train.num_steps, cfg.llc.nbeta) == (48, 2, 7500, None)


def test_colab_quickstart_defaults_are_the_quick_run_at_the_quick_nbeta(repo_root):
    """Its values sit on the README figure's scale: one n*beta, the quick preset's, not a sweep
    over several; and no source is assumed that the user may not have."""
    from llcgrok import notebook

    cell = next(c for c in nbformat.read(repo_root / "notebooks" / "colab_quickstart.ipynb", as_version=4).cells
                if c.cell_type == "code")
    parameters = {}
    exec(cell.source, parameters)  # plain assignments, as papermill reads them
    assert parameters["llcgrok_source"] is None
    cfg = notebook.config_from_parameters(fallback=parameters["quickstart"])
    quick = resolve_run(load_params(repo_root / "params" / "quick.yaml"))
    assert (cfg.task, cfg.model) == (quick.task, quick.model)
    assert cfg.llc.nbeta == quick.llc.nbeta == 556.3 and cfg.llc.calibration.nbetas in (None, [556.3])
    assert cfg.llc.localization == quick.llc.localization and cfg.llc.calibration.localizations == quick.llc.calibration.localizations


def test_colab_quickstart_runs_without_installing(tmp_path, repo_root):
    execute_notebook(repo_root, "colab_quickstart.ipynb", tmp_path, **{k: v for k, v in TINY.items()},
             run_dir=str(tmp_path / "qs"), quiet=True, llcgrok_source="/nonexistent")
    assert (tmp_path / "qs" / "llc.csv").exists()


REPORT_FIGURES = ("buckets_x_plus_y", "pairs_x_plus_y", "steps_by_arch", "capacity", "llc_vs_loss", "aligned_at_grokking",
                  "grokking_vs_baseline", "calibration_overview")


def test_capacity_report_writes_every_figure_with_its_data_in_each_format(tmp_path):
    """The report step of a sweep (``llcgrok report --figure-formats png,svg``) on a synthetic
    sweep directory: no training, known flags and one uncalibrated run."""
    import synthetic

    from llcgrok.sweep import write_report

    sweep = synthetic.write_sweep(tmp_path / "sweep")
    executed = nbformat.read(write_report(sweep, quiet=True, formats=["png", "svg"]), as_version=4)
    figures = sweep / "figures"
    for name in REPORT_FIGURES:
        assert (figures / f"{name}.png").stat().st_size > 1000, name
        assert (figures / f"{name}.svg").exists(), name
        assert len(pd.read_csv(figures / f"{name}.csv")) > 0, name
    capacity = pd.read_csv(figures / "capacity.csv", keep_default_na=False)
    assert sorted(capacity["peak_flag"]) == ["", "", "", "curvature"]
    overview = pd.read_csv(figures / "calibration_overview.csv").set_index("run_id")
    assert not overview.loc[synthetic.UNCALIBRATED_RUN, "calibrated"] and overview["calibrated"].sum() == 3
    baseline = pd.read_csv(figures / "grokking_vs_baseline.csv")
    assert {"this sweep", "published baseline", "published capacity study"} == set(baseline["source"])
    printed = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert "2 of 16 LLC estimates flagged (1 unhealthy, 1 in the curvature regime)" in printed
