"""`llcgrok sweep` on a sequence-task params file (addition, fraction_of_x): the configs of
its grid through their task's notebook, summary.csv with the task's outcome and the LLC
regime, the sequence report and its figures, and a restart that skips finished configs."""

import json
import subprocess
import sys

import nbformat
import pandas as pd
import pytest

from llcgrok.config import ConfigError, dump_yaml, read_sections
from llcgrok.seqparams import seq_params_from_sections
from llcgrok.seqstudy import seq_study_configs, summary_columns, trajectory_regime
from llcgrok.study import report_notebook_for

LLCGROK = [sys.executable, "-m", "llcgrok.cli"]
# params/addition.yaml made tiny: two configs (its grid, model.d_model 8 and 16) of 20 steps,
# an uncalibrated trajectory of one short chain at each checkpoint.
TINY = {"train.num_steps": 20, "task.n_train": 300, "task.n_val": 50, "llc.calibrate": False, "llc.num_chains": 1,
        "llc.num_draws": 8, "llc.num_burnin_steps": 0, "llc.epsilon": 1e-5}
RUN_IDS = ["add3-L1-d8-h2-f16-r0.0.0.2-s0", "add3-L1-d16-h2-f16-r0.0.0.2-s0"]
ADDITION_COLUMNS = [
    "run_id", "task", "num_layers", "d_model", "num_heads", "d_ff", "num_params", "seed",
    "final_val_exact_match", "best_val_exact_match", "steps_to_exact_match_0.99", "final_val_digit_acc",
    "llc_final", "llc_peak", "llc_peak_step", "llc_regime", "llc_nbeta", "llc_localization", "status",
]
FIGURES = ("capacity_addition", "llc_vs_params_addition", "trajectories_addition")


def llcgrok(*args):
    return subprocess.run([*LLCGROK, *map(str, args)], capture_output=True, text=True, timeout=600)


def addition_params(repo_root):
    path = repo_root / "params" / "addition.yaml"
    return seq_params_from_sections(**read_sections(path), source=str(path))


@pytest.mark.slow
def test_addition_sweep_end_to_end_then_skips_finished_configs(tmp_path, repo_root):
    from llcgrok.sweep import run_sweep

    out = tmp_path / "sweep"
    sets = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]
    done = llcgrok("sweep", repo_root / "params" / "addition.yaml", "--out", out, "--workers", "1", "--quiet", *sets)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns) == ADDITION_COLUMNS == summary_columns(["addition"])
    assert list(summary["run_id"]) == RUN_IDS and (summary["status"] == "complete").all()
    assert list(summary["d_model"]) == [8, 16] and summary["num_params"].is_monotonic_increasing
    assert summary["final_val_exact_match"].between(0, 1).all() and summary["llc_final"].notna().all()
    assert (out / "params.yaml").read_text() == (repo_root / "params" / "addition.yaml").read_text()
    for row in summary.itertuples():
        run = out / "runs" / row.run_id
        assert {"addition.ipynb", "llc.csv", "summary.json", "status.json", "kernel.log"} <= {p.name for p in run.iterdir()}
        assert json.loads((run / "config.json").read_text())["num_steps"] == 20  # the overrides reached the notebook
        llc = pd.read_csv(run / "llc.csv")
        assert row.llc_regime == trajectory_regime(llc) == "curvature"  # configured settings, uncalibrated
        assert row.llc_final == llc.sort_values("step")["llc_mean"].iloc[-1]
    # the sequence report, not the capacity report
    report = nbformat.read(out / "report.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in report.cells if c.cell_type == "code" for o in c.outputs)
    assert "2 of 2 runs have checkpoints in the curvature regime" in printed
    for name in FIGURES:
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000, name
        assert len(pd.read_csv(out / "figures" / f"{name}.csv")) > 0, name
    assert set(pd.read_csv(out / "figures" / "llc_vs_params_addition.csv")["llc_regime"]) == {"curvature"}
    curves = pd.read_csv(out / "figures" / "trajectories_addition.csv")
    assert {"regime", "llc_mean", "val_exact_match"} <= set(curves.columns) and set(curves["run_id"]) == set(RUN_IDS)
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()}

    second = run_sweep(addition_params(repo_root), out, overrides=TINY, quiet=True, report=False)
    assert second.completed == [] and sorted(second.skipped) == sorted(RUN_IDS) and not second.failed
    assert stamps == {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()}
    assert (pd.read_csv(out / "summary.csv")["status"] == "complete").all()


@pytest.mark.slow
@pytest.mark.parametrize("sections, options, fragment", [
    ({"task": {"name": "addition", "n_digits": 0}}, [], "'n_digits' must lie in 1..18"),
    ({"task": {"name": "addition"}, "model": {"kind": "tiny", "bogus": 1}}, [], "unknown key 'model.bogus'"),
    ({"task": {"name": "fraction_of_x"}}, ["--set", "llc.num_draws=0"], "'llc.num_draws' must be > 0"),
])
def test_a_bad_sequence_params_file_is_one_line_and_exit_2(tmp_path, sections, options, fragment):
    params = tmp_path / "bad.yaml"
    params.write_text(dump_yaml(sections))
    done = llcgrok("sweep", params, "--out", tmp_path / "out", *options)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], done.stderr
    assert not (tmp_path / "out").exists()


def test_extra_axes_keep_run_ids_apart_and_overrides_reach_the_parameters(repo_root):
    params = addition_params(repo_root)
    params.axes["train.lr"] = [0.001, 0.01]
    configs = seq_study_configs(params, {"train.num_steps": 7, "llc.num_draws": 9})
    assert [c.run_id for c in configs] == [
        "add3-L1-d8-h2-f16-r0.0.0.2-lr0.001-s0", "add3-L1-d8-h2-f16-r0.0.0.2-lr0.01-s0",
        "add3-L1-d16-h2-f16-r0.0.0.2-lr0.001-s0", "add3-L1-d16-h2-f16-r0.0.0.2-lr0.01-s0",
    ]
    first = configs[0]
    assert first.notebooks == ("addition.ipynb",)
    assert set(first.parameters) == {"task", "model", "train", "llc"}
    assert (first.parameters["train"]["num_steps"], first.parameters["llc"]["num_draws"]) == (7, 9)
    assert first.parameters["train"]["lr"] == 0.001 and first.parameters["model"]["d_model"] == 8


def test_configs_that_share_a_run_id_are_refused(repo_root):
    params = addition_params(repo_root)
    params.axes["task.seq_len"] = [8, 8]  # not part of an addition run's id, and equal anyway
    with pytest.raises(ConfigError, match="two configs share the run id"):
        seq_study_configs(params)


def test_regime_is_llc_only_when_every_checkpoint_is():
    assert trajectory_regime(pd.DataFrame({"regime": ["llc", "llc"]})) == "llc"
    assert trajectory_regime(pd.DataFrame({"regime": ["llc", "curvature"]})) == "curvature"
    assert trajectory_regime(pd.DataFrame({"regime": ["llc", None]})) == "curvature"  # unlabelled: not vouched for
    assert trajectory_regime(pd.DataFrame({"llc_mean": [1.0]})) == "curvature"
    assert trajectory_regime(pd.DataFrame({"regime": []})) is None


def test_the_report_notebook_follows_the_tasks_of_the_summary():
    assert report_notebook_for(pd.DataFrame({"task": ["addition", "addition"]})) == "sequence_report.ipynb"
    assert report_notebook_for(pd.DataFrame({"task": ["fraction_of_x"]})) == "sequence_report.ipynb"
    assert report_notebook_for(pd.DataFrame({"task": ["x_plus_y"]})) == "capacity_report.ipynb"
    assert summary_columns(["fraction_of_x"])[8:10] == ["final_val_mae", "baseline_val_mae"]


def write_fraction_sweep(folder):
    """A synthetic fraction_of_x sweep directory: two finished runs, one in the LLC regime
    throughout, one with a curvature-regime checkpoint, and a pending one."""
    rows = []
    for i, (d_model, regimes) in enumerate([(8, ["llc", "llc"]), (16, ["llc", "curvature"])]):
        run_id = f"fx-A4-T16-L1-d{d_model}-h1-f0-s0"
        run = folder / "runs" / run_id
        run.mkdir(parents=True)
        pd.DataFrame({"step": [0, 100], "llc_mean": [1.0 + i, 3.0 + i], "llc_std": [0.1, 0.1], "regime": regimes,
                      "healthy": [True, True]}).to_csv(run / "llc.csv", index=False)
        pd.DataFrame({"step": [50, 100], "val_mae": [0.2, 0.05 / (i + 1)]}).to_csv(run / "metrics.csv", index=False)
        rows.append({"run_id": run_id, "task": "fraction_of_x", "num_layers": 1, "d_model": d_model, "num_heads": 1,
                     "d_ff": 0, "num_params": 200 * (i + 1), "seed": 0, "final_val_mae": 0.05 / (i + 1),
                     "baseline_val_mae": 0.1, "llc_final": 3.0 + i, "llc_peak": 3.0 + i, "llc_peak_step": 100,
                     "llc_regime": "llc" if i == 0 else "curvature", "llc_nbeta": 50.0, "llc_localization": 100.0,
                     "status": "complete"})
    rows.append({**rows[0], "run_id": "fx-A4-T16-L1-d32-h1-f0-s0", "d_model": 32, "status": "pending",
                 **dict.fromkeys(["num_params", "final_val_mae", "llc_final", "llc_regime"])})
    pd.DataFrame(rows).reindex(columns=summary_columns(["fraction_of_x"])).to_csv(folder / "summary.csv", index=False)
    return folder


def test_report_tables_and_figures_mark_the_regime_of_every_llc_point(tmp_path):
    from llcgrok import plots, seqreport

    sweep = write_fraction_sweep(tmp_path / "sweep")
    summary = seqreport.load_summary(sweep)
    assert seqreport.tasks_in(summary) == ["fraction_of_x"]
    assert "1 of 2 runs have checkpoints in the curvature regime" in seqreport.regime_note(summary)
    llc = seqreport.llc_table(summary, "fraction_of_x")
    assert list(llc["llc_regime"]) == ["llc", "curvature"]  # the pending run has no estimate
    fig = plots.plot_seq_llc_vs_params(llc, "fraction_of_x")
    gids = {c.get_gid() for ax in fig.axes for c in ax.collections}
    assert {"regime:llc", "regime:curvature"} <= gids
    assert sorted(t.get_text() for t in fig.axes[0].texts) == ["curvature", "llc"]
    curves = seqreport.load_curves(sweep, summary)
    assert len(curves) == 6 and curves["val_mae"].notna().sum() == 4 and curves["llc_mean"].notna().sum() == 4
    fig = plots.plot_seq_trajectories(curves, "fraction_of_x")
    assert {"regime:llc", "regime:curvature"} <= {c.get_gid() for c in fig.axes[0].collections}
    capacity = seqreport.capacity_table(summary, "fraction_of_x")
    assert list(capacity["num_params"]) == [200, 400]
    path = plots.save_figure(plots.plot_seq_capacity(capacity, "fraction_of_x"), tmp_path / "fig" / "capacity.png", data=capacity)
    assert path.stat().st_size > 1000 and (tmp_path / "fig" / "capacity.csv").exists()
