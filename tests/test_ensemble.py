"""The vectorised-seed path: each member is the separate run of its seed, up to rounding.

The vectorised path is forced (``vectorize=True``): on a CPU the default trains the seeds
one after another, which is tested separately."""

import copy

import pandas as pd
import pytest
import torch

import problems

from llcgrok import metrics as metrics_mod
from llcgrok import runs
from llcgrok.config import RunConfig
from llcgrok.ensemble import EnsembleModel, seed_config, train_ensemble
from llcgrok.model import build_model
from llcgrok.tasks import make_task
from llcgrok.train import checkpoint_steps, train

SEEDS = [0, 1, 2]


def tiny_config(steps=40, **train_kw) -> RunConfig:
    return problems.tiny_config(steps, num_layers=2, device="cpu", **train_kw)


def assert_same_curve(separate: pd.DataFrame, member: pd.DataFrame) -> None:
    assert separate["step"].tolist() == member["step"].tolist()
    for column in ("train_loss", "val_loss"):
        assert (separate[column] - member[column]).abs().max() < 1e-5, column
    for column in ("train_acc", "val_acc"):  # a rounding-level logit change may flip one argmax
        assert (separate[column] - member[column]).abs().max() < 0.02, column


def test_members_match_separate_runs():
    cfg = tiny_config()
    members = train_ensemble(cfg, SEEDS, vectorize=True)
    for seed, member in zip(SEEDS, members):
        separate = train(seed_config(cfg, seed), quiet=True)
        assert_same_curve(separate.metrics, member.metrics)
        assert member.summary["run_id"] == separate.summary["run_id"]
        assert member.summary["ensemble_size"] == len(SEEDS)
        # the split follows the seed, as in a separate run
        assert torch.equal(member.task.train_inputs, make_task(cfg.task, seed=seed).train_inputs)
    # and the members really are different runs
    assert not members[0].metrics["train_loss"].equals(members[1].metrics["train_loss"])


def test_ensemble_forward_is_each_members_forward():
    torch.manual_seed(0)
    models = [build_model(tiny_config().model, 15, 13) for _ in range(3)]
    ensemble = EnsembleModel(models)
    x = torch.randint(0, 15, (3, 8, 4))
    with torch.no_grad():
        out = ensemble(x)
        for m, model in enumerate(models):
            assert torch.allclose(out[m], model(x[m]), atol=1e-6)
            assert torch.allclose(ensemble.member(m)(x[m]), model(x[m]))


def test_per_member_early_stop_matches_separate_runs(monkeypatch):
    # A low bar makes the members "grok" at different evaluations, so that each stops at its
    # own, off-grid step (grok step + 15).
    monkeypatch.setattr(metrics_mod, "THRESHOLD", 0.1)
    cfg = tiny_config(steps=80, early_stop_delay=15)
    cfg.model.num_layers, cfg.model.d_model = 1, 16
    separate = [train(seed_config(cfg, s), quiet=True) for s in SEEDS]
    stops = [r.summary["num_steps_run"] for r in separate]
    assert len(set(stops)) > 1, f"precondition: members should stop at different steps, got {stops}"
    members = train_ensemble(cfg, SEEDS, vectorize=True)
    for sep, member in zip(separate, members):
        assert member.summary["num_steps_run"] == sep.summary["num_steps_run"]
        assert_same_curve(sep.metrics, member.metrics)


def test_run_directories_and_resume_through_train(tmp_path, monkeypatch):
    cfg = tiny_config(steps=60)
    dirs = [tmp_path / f"seed{s}" for s in SEEDS[:2]]
    original = runs.save_state

    def save_then_die(run_dir, state):
        original(run_dir, state)
        if state["step"] >= 30 and run_dir == dirs[-1]:
            raise KeyboardInterrupt  # killed right after the last member's state at step >= 30

    monkeypatch.setattr(runs, "save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_ensemble(cfg, SEEDS[:2], dirs, vectorize=True)
    monkeypatch.setattr(runs, "save_state", original)
    for seed, run_dir in zip(SEEDS[:2], dirs):
        assert not (run_dir / "summary.json").exists()
        assert runs.read_config(run_dir) == seed_config(cfg, seed)
        resumed = train(seed_config(cfg, seed), run_dir, quiet=True)  # finishes what the ensemble began
        straight = train(seed_config(cfg, seed), quiet=True)
        assert_same_curve(straight.metrics, resumed.metrics)
        assert [s for s, _ in runs.list_checkpoints(run_dir)] == checkpoint_steps(cfg.train)
    # initial weights on disk are exactly train()'s
    with_dir = train(seed_config(cfg, SEEDS[0]), tmp_path / "separate", quiet=True)
    ours, _ = runs.load_checkpoint(runs.checkpoint_path(dirs[0], 0))
    theirs, _ = runs.load_checkpoint(runs.checkpoint_path(tmp_path / "separate", 0))
    for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()):
        assert torch.equal(a, b)
    assert with_dir.summary["num_steps_run"] == 60


def test_complete_run_directories(tmp_path):
    cfg = tiny_config(steps=30)
    dirs = [tmp_path / "a", tmp_path / "b"]
    members = train_ensemble(cfg, [3, 4], dirs, vectorize=True)
    for member, run_dir in zip(members, dirs):
        assert (run_dir / "summary.json").exists()
        pd.testing.assert_frame_equal(member.metrics, runs.read_metrics(run_dir), check_dtype=False)
        model, info = runs.load_checkpoint(runs.checkpoint_path(run_dir, 30))
        for a, b in zip(model.state_dict().values(), member.model.state_dict().values()):
            assert torch.equal(a, b.cpu())


def test_bad_arguments():
    with pytest.raises(ValueError):
        train_ensemble(tiny_config(), [])
    with pytest.raises(ValueError):
        train_ensemble(tiny_config(), [1, 1])
    with pytest.raises(ValueError):
        train_ensemble(tiny_config(), [1, 2], ["only-one"])


def test_seed_config_leaves_the_original_alone():
    cfg = tiny_config()
    other = seed_config(cfg, 7)
    assert other.train.seed == 7 and cfg.train.seed == 0
    assert copy.deepcopy(cfg) == cfg


def test_cpu_default_is_separate_runs_exactly(tmp_path):
    cfg = tiny_config(steps=20)
    members = train_ensemble(cfg, [0, 5], [tmp_path / "a", tmp_path / "b"])
    for seed, member in zip([0, 5], members):
        separate = train(seed_config(cfg, seed), quiet=True)
        pd.testing.assert_frame_equal(separate.metrics, member.metrics)
        assert member.summary["ensemble_size"] == 2
        assert (tmp_path / ("a" if seed == 0 else "b") / "summary.json").exists()
