"""Bad input and damaged state, through the `llcgrok` command as a user meets them.

Bad input: exit code 2, exactly one line on stderr naming the file and the key, no
traceback, and nothing already in the output directory touched. Damaged state: the error
names the damaged file; a sweep marks the config failed with it and goes on.
"""

import copy
import hashlib
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from llcgrok.config import dump_yaml, load_params

pytestmark = pytest.mark.slow

LLCGROK = [sys.executable, "-m", "llcgrok.cli"]  # what the `llcgrok` entry point runs

VALID = {
    "task": {"name": "x_plus_y", "p": 11},
    "model": {"num_layers": 1, "d_model": 16, "num_heads": 2},
    "train": {"num_steps": 30, "batch_size": 64, "eval_batches": 1, "num_checkpoints": 3},
    "llc": {
        "num_chains": 1, "num_draws": 6, "batch_size": 32, "cores": 1, "num_burnin_steps": 5, "curvature_probes": 2,
        "calibration": {"epsilons": [1.0e-4, 1.0e-3], "nbetas": [10.0], "localizations": [100.0]},
    },
    "grid": {"axes": {"model.num_layers": [1, 2]}, "seeds": [0]},
}


def llcgrok(*args, cwd=None):
    return subprocess.run([*LLCGROK, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)


def study(**sections):
    """VALID with some keys changed, section by section (``None`` deletes a key)."""
    data = copy.deepcopy(VALID)
    for section, changes in sections.items():
        for key, value in changes.items():
            if value is None:
                data[section].pop(key, None)
            else:
                data[section][key] = value
    return data


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with its bytes' hash and mtime: a change shows."""
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture
def populated(tmp_path):
    """A sweep directory and a run directory with content from an earlier session."""
    sweep, run = tmp_path / "sweep", tmp_path / "run"
    for path, text in {
        sweep / "summary.csv": "run_id,status\nx_plus_y-L1-d16-h2-s0,complete\n",
        sweep / "params.yaml": "task: {p: 11}\n",
        sweep / "runs" / "x_plus_y-L1-d16-h2-s0" / "status.json": '{"status": "complete"}\n',
        sweep / "runs" / ".partial" / "x_plus_y-L2-d16-h2-s0" / "metrics.csv": "step,train_loss\n10,4.0\n",
        run / "config.yaml": "task: {p: 11}\n",
        run / "metrics.csv": "step,train_loss\n10,4.0\n",
    }.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    before = {folder: snapshot(folder) for folder in (sweep, run)}
    yield sweep, run
    for folder, files in before.items():
        assert snapshot(folder) == files, f"{folder} was touched"


def assert_bad_input(params: Path, key: str | None, sweep: Path, run: Path) -> None:
    for command, out in (("sweep", sweep), ("train", run)):
        done = llcgrok(command, params, "--out", out, "--quiet")
        assert done.returncode == 2, (command, done.returncode, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, (command, done.stderr)
        assert "Traceback" not in done.stderr and done.stdout == "", (command, done.stdout)
        assert str(params) in lines[0], (command, lines[0])
        if key is not None:
            assert f"'{key}'" in lines[0], (command, lines[0])


# --------------------------------------------------------------------------- bad input

BAD_VALUES = {
    "unknown_key": (study(model={"dmodel": 64}), "model.dmodel"),
    "unknown_section": ({**VALID, "modle": {"num_layers": 2}}, "modle"),
    "wrong_type": (study(model={"num_layers": "three"}), "model.num_layers"),
    "wrong_type_in_list": (study(llc={"calibration": {"epsilons": [1.0e-4, "big"], "nbetas": [10.0]}}),
                           "llc.calibration.epsilons[1]"),
    "heads_do_not_divide_d_model": (study(model={"d_model": 30, "num_heads": 4}), "model.num_heads"),
    "non_prime_p_for_division": (study(task={"name": "x_div_y", "p": 91}), "task.p"),
    "training_fraction_zero": (study(task={"training_fraction": 0.0}), "task.training_fraction"),
    "training_fraction_one": (study(task={"training_fraction": 1.0}), "task.training_fraction"),
    "training_fraction_above_one": (study(task={"training_fraction": 1.5}), "task.training_fraction"),
    "empty_grid_axis": (study(grid={"axes": {"model.num_layers": []}}), "grid.axes.model.num_layers"),
    "empty_grid_seeds": (study(grid={"seeds": []}), "grid.seeds"),
    "negative_epsilon": (study(llc={"epsilon": -1.0e-4}), "llc.epsilon"),
    "zero_epsilon": (study(llc={"epsilon": 0.0}), "llc.epsilon"),
    "zero_calibration_epsilon": (study(llc={"calibration": {"epsilons": [0.0], "nbetas": [10.0]}}),
                                 "llc.calibration.epsilons[0]"),
    "negative_nbeta": (study(llc={"nbeta": -10.0}), "llc.nbeta"),
    "zero_nbeta": (study(llc={"nbeta": 0.0}), "llc.nbeta"),
    "negative_calibration_nbeta": (study(llc={"calibration": {"epsilons": [1.0e-4], "nbetas": [-1.0]}}),
                                   "llc.calibration.nbetas[0]"),
    "zero_step_count": (study(train={"num_steps": 0}), "train.num_steps"),
    "negative_step_count": (study(train={"num_steps": -30}), "train.num_steps"),
    "zero_sgld_draws": (study(llc={"num_draws": 0}), "llc.num_draws"),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_bad_value_is_one_line_naming_file_and_key(tmp_path, populated, case):
    data, key = BAD_VALUES[case]
    params = tmp_path / f"{case}.yaml"
    params.write_text(dump_yaml(data))
    assert_bad_input(params, key, *populated)


def test_missing_params_file(tmp_path, populated):
    assert_bad_input(tmp_path / "no_such_study.yaml", None, *populated)


@pytest.mark.parametrize("content", [b"task: {name: x_plus_y, p: [11\n", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", b"- just\n- a list\n"],
                         ids=["broken_yaml", "binary_file", "not_a_mapping"])
def test_non_yaml_params_file(tmp_path, populated, content):
    params = tmp_path / "study.yaml"
    params.write_bytes(content)
    assert_bad_input(params, None, *populated)


@pytest.mark.parametrize("content", ["", "# task: {p: 11}\n"], ids=["empty", "only_comments"])
def test_empty_params_file(tmp_path, populated, content):
    params = tmp_path / "study.yaml"
    params.write_text(content)
    assert_bad_input(params, None, *populated)
    done = llcgrok("train", params, "--out", tmp_path / "run")
    assert "the params file is empty" in done.stderr, done.stderr


@pytest.mark.parametrize("option, key", [("llc.epsilon=nan", "llc.epsilon"), ("train.lr=inf", "train.lr"),
                                         ("llc.calibration.epsilons=[1.0e-4, .nan]", "llc.calibration.epsilons[1]"),
                                         ("task.training_fraction=-inf", "task.training_fraction")])
def test_nan_and_inf_in_set_are_one_line_naming_the_key(tmp_path, populated, option, key):
    params = tmp_path / "valid.yaml"
    params.write_text(dump_yaml(VALID))
    sweep, run = populated
    for command, out in (("sweep", sweep), ("train", run)):
        done = llcgrok(command, params, "--out", out, "--quiet", "--set", option)
        assert done.returncode == 2, (command, done.returncode, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in done.stderr, (command, done.stderr)
        assert f"'{key}' must be finite" in lines[0], (command, lines[0])


def test_valid_study_passes_the_same_checks(tmp_path):
    """The cases above fail because of their one bad value, not because VALID is wrong."""
    path = tmp_path / "valid.yaml"
    path.write_text(dump_yaml(VALID))
    assert len(load_params(path).grid.axes["model.num_layers"]) == 2


# --------------------------------------------------------------------------- damaged state


def _trained_run(params: Path, where) -> tuple[str, Path]:
    """Train the first config of ``params`` in this process (fast) into ``where(run_id)``."""
    from llcgrok.sweep import study_configs
    from llcgrok.train import train

    run_id, cfg = study_configs(load_params(params))[0]
    run_dir = where(run_id)
    train(cfg, run_dir, quiet=True)
    return run_id, run_dir


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if how == "truncated" else b"\x00\x13garbage" * 64)


def _checkpoint(run_dir: Path, which: int) -> Path:
    from llcgrok import runs

    checkpoints = runs.list_checkpoints(run_dir)
    assert len(checkpoints) >= 3
    return checkpoints[which][1]


@pytest.mark.parametrize("how", ["truncated", "corrupt"])
def test_damaged_checkpoint_is_named_by_llc(tmp_path, how):
    params = tmp_path / "one.yaml"
    params.write_text(dump_yaml(study(grid={"axes": {}})))
    _, run = _trained_run(params, lambda run_id: tmp_path / "run")
    damaged = _checkpoint(run, 0)  # the first one the trajectory reads
    _damage(damaged, how)
    done = llcgrok("llc", run, "--no-calibrate", "--quiet")
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert str(damaged) in lines[0] and ("corrupt" in lines[0] or "truncated" in lines[0]), lines[0]


def test_damaged_training_state_is_named_by_train(tmp_path):
    params = tmp_path / "one.yaml"
    params.write_text(dump_yaml(study(grid={"axes": {}})))
    _, run = _trained_run(params, lambda run_id: tmp_path / "run")
    (run / "summary.json").unlink()  # as if killed before the end: train resumes from state.pt
    _damage(run / "state.pt", "truncated")
    done = llcgrok("train", params, "--out", run, "--quiet")
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert str(run / "state.pt") in lines[0], lines[0]


def test_damaged_checkpoint_marks_the_sweep_config_failed(tmp_path):
    params = tmp_path / "one.yaml"
    params.write_text(dump_yaml(study(grid={"axes": {}})))
    out = tmp_path / "sweep"
    # A config interrupted after training, whose final checkpoint was damaged since:
    # calibration, the next notebook, reads it.
    run_id, partial = _trained_run(params, lambda run_id: out / "runs" / ".partial" / run_id)
    damaged = _checkpoint(partial, -1)
    _damage(damaged, "corrupt")
    done = llcgrok("sweep", params, "--out", out, "--no-report")
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    error = (out / "failed" / run_id / "error.txt").read_text().splitlines()[0]
    assert error.startswith("calibrate.ipynb: CheckpointError") and str(damaged) in error, error
    assert f"FAILED {run_id}: {error}" in done.stderr
    assert (out / "failed" / run_id / "calibrate.ipynb").exists()
    assert not (out / "runs" / run_id).exists()
    assert pd.read_csv(out / "summary.csv").set_index("run_id").loc[run_id, "status"] == "failed"


def test_nan_in_training_is_one_line_with_step_and_reason(tmp_path):
    """(The sweep's side, a NaN config failed while the others finish, is in test_sweep.py.)"""
    params = tmp_path / "nan.yaml"
    params.write_text(dump_yaml(study(train={"lr": 1.0e30, "warmup_steps": 0}, grid={"axes": {}})))
    done = llcgrok("train", params, "--out", tmp_path / "run", "--quiet")
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "training diverged at step" in lines[0] and "train loss is" in lines[0], lines[0]
