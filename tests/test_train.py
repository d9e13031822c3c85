import json
import subprocess
import sys

import pandas as pd
import pytest
import torch

from problems import tiny_config

from llcgrok import runs
from llcgrok.config import TrainConfig
from llcgrok.train import checkpoint_steps, learning_rate, train


def test_checkpoint_schedules():
    log = checkpoint_steps(TrainConfig(num_steps=7500, num_checkpoints=40))
    assert log[0] == 0 and log[-1] == 7500
    assert all(s % 10 == 0 for s in log)
    assert sum(s <= 750 for s in log) > sum(s > 750 for s in log)  # dense early
    lin = checkpoint_steps(TrainConfig(num_steps=1000, num_checkpoints=10, checkpoint_schedule="linear"))
    assert lin == list(range(0, 1001, 100))
    mixed = checkpoint_steps(TrainConfig(num_steps=1000, num_checkpoints=10, checkpoint_schedule="mixed"))
    assert set(range(0, 1001, 200)) <= set(mixed) and 10 in mixed


def test_warmup_is_linear_from_zero():
    cfg = TrainConfig(lr=1e-3, warmup_steps=50)
    assert learning_rate(cfg, 0) == 0.0
    assert learning_rate(cfg, 25) == pytest.approx(5e-4)
    assert learning_rate(cfg, 50) == learning_rate(cfg, 5000) == pytest.approx(1e-3)


def test_run_directory_contents(tmp_path):
    cfg = tiny_config()
    result = train(cfg, tmp_path, quiet=True)
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert list(metrics.columns) == ["step", "train_loss", "train_acc", "val_loss", "val_acc"]
    assert metrics["step"].tolist()[:3] == [10, 20, 30]
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in ("num_params", "steps_to_memorization", "steps_to_grokking", "final_train_acc", "final_val_acc",
                "final_train_loss", "final_val_loss", "min_val_acc_after_grokking"):
        assert key in summary
    steps = [s for s, _ in runs.list_checkpoints(tmp_path)]
    assert steps == checkpoint_steps(cfg.train)
    # Written like any new file (readable by the group under umask 022), not mkstemp's 0600.
    for name in ("config.yaml", "metrics.csv", "summary.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == runs.default_file_mode(), name
    model, info = runs.load_checkpoint(runs.checkpoint_path(tmp_path, 60))
    assert info["step"] == 60
    for a, b in zip(model.state_dict().values(), result.model.state_dict().values()):
        assert torch.equal(a, b)
    assert runs.read_config(tmp_path) == cfg


def test_same_seed_same_numbers_other_seed_other_numbers():
    a = train(tiny_config(40), quiet=True).metrics
    b = train(tiny_config(40), quiet=True).metrics
    c = train(tiny_config(40, seed=1), quiet=True).metrics
    pd.testing.assert_frame_equal(a, b)
    assert not a["train_loss"].equals(c["train_loss"])


def test_resume_after_a_kill_gives_the_uninterrupted_result(tmp_path, monkeypatch):
    full = train(tiny_config(80), quiet=True)
    original = runs.save_state

    def save_then_die(run_dir, state):
        original(run_dir, state)
        if state["step"] >= 30:
            raise KeyboardInterrupt  # killed right after the checkpoint at step 30 was saved

    monkeypatch.setattr(runs, "save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(80), tmp_path, quiet=True)
    assert not (tmp_path / "summary.json").exists()
    assert torch.load(tmp_path / "state.pt", weights_only=False)["step"] < 80
    monkeypatch.setattr(runs, "save_state", original)
    resumed = train(tiny_config(80), tmp_path, quiet=True)
    pd.testing.assert_frame_equal(full.metrics, resumed.metrics)
    pd.testing.assert_frame_equal(full.metrics, pd.read_csv(tmp_path / "metrics.csv"), check_dtype=False)
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


def test_nan_is_reported_with_its_step():
    from llcgrok.train import TrainingDiverged

    cfg = tiny_config(40, lr=1e30, warmup_steps=0)
    with pytest.raises(TrainingDiverged, match="step"):
        train(cfg, quiet=True)


@pytest.mark.slow
def test_small_preset_groks_on_cpu(repo_root):
    """quick.yaml's single run (1 layer, d 64, x_plus_y mod 97, what `llcgrok train` takes):
    memorises, then generalises (val acc > 0.99)."""
    from llcgrok.config import load_params, resolve_run

    cfg = resolve_run(load_params(repo_root / "params" / "quick.yaml"))
    assert (cfg.model.num_layers, cfg.model.d_model) == (1, 64)
    summary = train(cfg, quiet=True).summary
    assert summary["steps_to_grokking"] is not None
    assert summary["final_val_acc"] > 0.99
    assert summary["steps_to_memorization"] < summary["steps_to_grokking"]


def test_cli_train_and_bad_input(tmp_path, repo_root):
    params = tmp_path / "p.yaml"
    params.write_text("task: {p: 13}\nmodel: {num_layers: 1, d_model: 16, num_heads: 2}\n"
                      "train: {num_steps: 30, batch_size: 32, eval_batches: 1, num_checkpoints: 3}\n")
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "llcgrok.cli", "train", str(params), "--out", str(out), "--quiet",
                           "--set", "train.lr=2e-3"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (out / "summary.json").exists() and "grokked at" in done.stdout
    assert runs.read_config(out).train.lr == pytest.approx(2e-3)
    bad = subprocess.run([sys.executable, "-m", "llcgrok.cli", "train", str(params), "--out", str(tmp_path / "b"),
                          "--set", "model.num_heads=3"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "model.num_heads" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "b").exists()
