"""One config per run directory: another config is refused, --force replaces the old run
whole (nothing of it left, and never a mix of two runs), the same config resumes or skips.
Through `llcgrok train`, the notebook helpers, both trainers and the ensemble."""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from problems import tiny_config

from llcgrok import notebook, runs, seqtrain
from llcgrok.config import dump_yaml
from llcgrok.ensemble import train_ensemble
from llcgrok.train import checkpoint_steps, train

LLCGROK = [sys.executable, "-m", "llcgrok.cli"]
# What later stages and other tools leave in a run directory: none may survive a replacement.
LATER_FILES = ("llc.csv", "calibration.csv", "calibration.json", runs.TRACES_NPZ, "figures/llc_vs_accuracy.png",
               "train.ipynb", "dmd_eigenvalues.csv")


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def files(folder: Path) -> set:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def add_later_files(run_dir: Path) -> None:
    for name in LATER_FILES:
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / name).write_text("from the earlier run\n")


def params_file(tmp_path: Path, steps: int) -> Path:
    path = tmp_path / f"tiny{steps}.yaml"
    path.write_text(dump_yaml({
        "task": {"p": 13}, "model": {"num_layers": 1, "d_model": 16, "num_heads": 2},
        "train": {"num_steps": steps, "batch_size": 64, "eval_batches": 1, "num_checkpoints": 6},
    }))
    return path


def llcgrok(*args):
    return subprocess.run([*LLCGROK, *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_refuses_another_config_skips_the_same_and_force_replaces_whole(tmp_path):
    run = tmp_path / "run"
    done = llcgrok("train", params_file(tmp_path, 120), "--out", run, "--quiet")
    assert done.returncode == 0, done.stderr
    add_later_files(run)
    before = snapshot(run)

    shorter = params_file(tmp_path, 80)
    done = llcgrok("train", shorter, "--out", run, "--quiet", "--set", "model.d_model=24", "--set", "model.num_heads=4")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    for fragment in (str(run), "model.d_model 16 -> 24", "model.num_heads 2 -> 4", "train.num_steps 120 -> 80", "--force"):
        assert fragment in lines[0], (fragment, lines[0])
    assert snapshot(run) == before  # refused: nothing touched

    done = llcgrok("train", params_file(tmp_path, 120), "--out", run, "--quiet")
    assert done.returncode == 0 and "already trained" in done.stderr, done.stderr
    assert snapshot(run) == before  # the same config, finished: skipped

    done = llcgrok("train", shorter, "--out", run, "--quiet", "--force", "--set", "model.d_model=24", "--set", "model.num_heads=4")
    assert done.returncode == 0, done.stderr
    fresh = tmp_path / "fresh"
    assert llcgrok("train", shorter, "--out", fresh, "--quiet", "--set", "model.d_model=24", "--set", "model.num_heads=4").returncode == 0
    assert files(run) == files(fresh)  # exactly what a new directory gets: no old checkpoint, llc.csv, trace, figure
    cfg = runs.read_config(run)
    assert (cfg.model.d_model, cfg.train.num_steps) == (24, 80)
    assert [s for s, _ in runs.list_checkpoints(run)] == checkpoint_steps(cfg.train)
    assert not list(tmp_path.glob(".run*")), "the old run was left beside the new one"


def test_notebook_helper_refuses_resumes_and_force_replaces(tmp_path):
    a, b = tiny_config(40), tiny_config(30)
    b.model.d_model = 24
    metrics, summary = notebook.ensure_trained(a, tmp_path, quiet=True)
    add_later_files(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(runs.RunDirConflict, match=r"model\.d_model 16 -> 24.*train\.num_steps 40 -> 30"):
        notebook.ensure_trained(b, tmp_path, quiet=True)
    again, _ = notebook.ensure_trained(a, tmp_path, quiet=True)  # the same config: read back, not retrained
    assert snapshot(tmp_path) == before and again.equals(metrics)
    notebook.ensure_trained(b, tmp_path, quiet=True, force=True)
    assert not any((tmp_path / name).exists() for name in LATER_FILES)
    assert runs.read_config(tmp_path) == b
    assert [s for s, _ in runs.list_checkpoints(tmp_path)] == checkpoint_steps(b.train)


def test_train_without_resume_starts_over_with_nothing_stale(tmp_path):
    cfg = tiny_config(40)
    train(cfg, tmp_path, quiet=True)
    add_later_files(tmp_path)
    train(cfg, tmp_path, quiet=True, resume=False)
    assert not any((tmp_path / name).exists() for name in LATER_FILES)
    assert runs.is_trained(tmp_path)


def test_an_interrupted_replacement_never_leaves_a_mix(tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(tiny_config(40), run, quiet=True)
    add_later_files(run)
    old = files(run)
    real_rmtree = runs.shutil.rmtree

    def killed(path, *args, **kwargs):
        raise KeyboardInterrupt  # killed after the old run was moved aside, before it was deleted

    monkeypatch.setattr(runs.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        runs.replace_run_dir(run)
    assert run.is_dir() and not any(run.iterdir())  # the run directory holds nothing of the old run
    (aside,) = tmp_path.glob(".run.replaced-*")
    assert files(aside) == old  # the old run is whole, hidden beside it
    monkeypatch.setattr(runs.shutil, "rmtree", real_rmtree)
    train(tiny_config(30), run, quiet=True, force=True)
    assert not list(tmp_path.glob(".run.replaced-*"))  # the next replacement cleared it
    assert runs.read_config(run).train.num_steps == 30


def test_force_never_deletes_a_folder_that_holds_no_run(tmp_path):
    (tmp_path / "notes.txt").write_text("mine\n")
    (tmp_path / "data").mkdir()
    with pytest.raises(runs.RunDirConflict, match="holds no run"):
        train(tiny_config(20), tmp_path, quiet=True, force=True)
    assert (tmp_path / "notes.txt").read_text() == "mine\n" and (tmp_path / "data").is_dir()


def test_run_files_without_their_config_are_refused(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "step_000100.pt").write_bytes(b"old")
    (tmp_path / "llc.csv").write_text("step,llc_mean\n100,3.0\n")
    with pytest.raises(runs.RunDirConflict, match=r"holds run files \(checkpoints, llc\.csv\) but no config\.yaml"):
        train(tiny_config(20), tmp_path, quiet=True)
    train(tiny_config(20), tmp_path, quiet=True, force=True)
    assert not (tmp_path / "llc.csv").exists() and not (tmp_path / "checkpoints" / "step_000100.pt").exists()


def test_a_sweep_work_directory_with_only_its_notebooks_is_not_a_run(tmp_path):
    """A sweep's work directory holds the executed train.ipynb and kernel.log before training."""
    (tmp_path / "train.ipynb").write_text("{}")
    (tmp_path / "kernel.log").write_text("")
    assert runs.prepare_run_dir(tmp_path, runs.training_identity(tiny_config(20))) is False


FX = dict(num_threads=1, task="fraction_of_x", seq_len=6, alphabet_size=3, n_train=128, n_val=32, num_steps=20, eval_every=10,
          batch_size=32, lr=1e-2, num_checkpoints=2, model={"d_model": 8, "num_heads": 1, "d_ff": 0})


def test_sequence_stack_refuses_another_config_and_force_replaces(tmp_path):
    seqtrain.ensure_trained(FX, tmp_path)
    add_later_files(tmp_path)
    other = dict(FX, lr=0.05)
    with pytest.raises(runs.RunDirConflict, match=r"lr 0\.01 -> 0\.05"):
        seqtrain.ensure_trained(other, tmp_path)
    with pytest.raises(runs.RunDirConflict, match="another config"):
        seqtrain.train_sequence(other, tmp_path)
    seqtrain.ensure_trained(other, tmp_path, force=True)
    assert not any((tmp_path / name).exists() for name in LATER_FILES)
    assert seqtrain.read_seq_config(tmp_path).lr == 0.05
    with pytest.raises(runs.RunDirConflict, match="no config.yaml"):  # the main trainer sees another kind of run
        train(tiny_config(20), tmp_path, quiet=True)


def test_ensemble_refuses_another_config(tmp_path):
    run = tmp_path / "seed0"
    train(tiny_config(20), run, quiet=True)
    other = tiny_config(30)
    with pytest.raises(runs.RunDirConflict, match="train.num_steps 20 -> 30"):
        train_ensemble(other, [0], [run], vectorize=True)
    train_ensemble(tiny_config(20), [0], [run], vectorize=True)  # the same config: rewritten from step 0
    assert runs.is_trained(run)
