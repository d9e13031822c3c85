"""Sequence-task training, checkpoints, resume, the LLC pipeline, and the two notebooks."""

import json

import numpy as np

import pandas as pd
import pytest
import torch
from notebook_helpers import execute_notebook, printed_config

from llcgrok import runs
from llcgrok import seqtrain
from llcgrok.config import ConfigError
from llcgrok.llc import LLCError
from llcgrok.seqtrain import (
    SeqConfigError,
    load_seq_checkpoint,
    read_seq_config,
    seq_config,
    train_sequence,
)
from llcgrok.sequence_llc import llc_summary, sequence_llc_trajectory

# One torch thread: the tests share a small CPU, and two threads contending cost 5-10x here.
FX_TINY = dict(num_threads=1, task="fraction_of_x", seq_len=6, alphabet_size=3, n_train=256, n_val=64, num_steps=40, eval_every=10,
               batch_size=32, lr=1e-2, num_checkpoints=3, model={"d_model": 8, "num_heads": 1, "d_ff": 0})
ADD_TINY = dict(num_threads=1, task="addition", n_digits=2, n_train=400, n_val=100, num_steps=30, eval_every=10, batch_size=32,
                num_checkpoints=3, model={"d_model": 8, "num_heads": 2, "d_ff": 16, "qkv_rank": 2, "ffn_rank": 2})


# --------------------------------------------------------------------------- config


def test_config_merges_partial_sections_and_rejects_mistakes_in_one_line():
    cfg = seq_config({"task": "addition", "n_digits": 3, "model": {"d_model": 24, "num_heads": 4}})
    assert cfg.model.d_model == 24 and cfg.model.num_layers == 1 and cfg.n_digits == 3
    assert cfg.run_id == "add3-L1-d24-h4-f32-s0"
    assert seq_config(cfg, curriculum=[[0, 1]], model={"qkv_rank": 2}).run_id == "add3-cur-L1-d24-h4-f32-r0.2.0.0-s0"
    assert seq_config(cfg, lr=1e-2).lr == 1e-2
    bad = [
        ({"tsk": "addition"}, "unknown key 'tsk'"),
        ({"task": "subtraction"}, "'task' must be one of"),
        ({"model": {"width": 3}}, "unknown key 'model.width'"),
        ({"model": {"d_model": 8, "num_heads": 3}}, "must divide"),
        ({"task": "addition", "curriculum": [[0, 2]], "mixed_lengths": False}, "needs 'mixed_lengths: true'"),
        ({"task": "addition", "n_digits": 3, "curriculum": [[5, 2]]}, "start at step 0"),
        ({"task": "fraction_of_x", "curriculum": [[0, 2]]}, "addition task only"),
        ({"lr": "fast"}, "'lr' must be float"),
        ({"num_steps": 0}, "'num_steps' must be a positive integer"),
        ({"seq_len": 3, "alphabet_size": 2}, "exceeds the 8 distinct sequences"),
    ]
    for data, message in bad:
        with pytest.raises(SeqConfigError, match=message) as info:
            seq_config(data)
        assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- learning


def test_fraction_of_x_is_learned(tmp_path):
    cfg = seq_config(num_threads=1, task="fraction_of_x", seq_len=8, alphabet_size=4, n_train=1024, n_val=256, num_steps=300,
                     eval_every=50, batch_size=64, lr=1e-2, num_checkpoints=4,
                     model={"d_model": 8, "num_heads": 1, "d_ff": 0})
    result = train_sequence(cfg, tmp_path)
    s = result.summary
    assert s["num_params"] == 377
    assert s["final_val_mae"] < 0.25 * s["baseline_val_mae"], s  # baseline about 0.2
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert list(metrics.columns) == ["step", "train_loss", "val_loss", "batch_loss", "train_mae", "val_mae"]
    assert metrics["step"].tolist() == [50, 100, 150, 200, 250, 300]
    assert json.loads((tmp_path / "config.json").read_text())["kind"] == "sequence"
    assert read_seq_config(tmp_path) == cfg


def test_three_digit_addition_is_learned():
    cfg = seq_config(num_threads=1, task="addition", n_digits=3, n_train=3000, n_val=300, num_steps=600, eval_every=200,
                     batch_size=128, lr=3e-3, weight_decay=0.1, eval_size=500,
                     model={"d_model": 32, "num_layers": 2, "num_heads": 4, "d_ff": 64})
    s = train_sequence(cfg).summary
    assert s["final_val_digit_acc"] > 0.9  # chance 0.1
    assert s["final_val_exact_match"] > 0.8  # measured 0.96-0.99 over seeds 0-2


def test_curriculum_restricts_batches_and_is_recorded():
    cfg = seq_config(ADD_TINY, n_digits=4, curriculum=[[0, 1], [20, 3]], num_steps=40)
    metrics = train_sequence(cfg).metrics
    assert metrics.set_index("step")["max_digits"].to_dict() == {10: 1, 20: 1, 30: 3, 40: 3}


def test_lr_schedules_warm_up_then_hold_or_decay_to_zero():
    base = seq_config(lr=0.01, warmup_steps=10, num_steps=110)
    assert base.lr_schedule == "constant"
    assert [seqtrain._lr(base, u) for u in (0, 5, 10, 60, 109)] == [0.0, 0.005, 0.01, 0.01, 0.01]
    cos, lin = seq_config(base, lr_schedule="cosine"), seq_config(base, lr_schedule="linear")
    for cfg in (cos, lin):
        assert [seqtrain._lr(cfg, u) for u in (0, 5, 10)] == [0.0, 0.005, 0.01]
        assert seqtrain._lr(cfg, 110) == pytest.approx(0.0, abs=1e-12)
    assert seqtrain._lr(cos, 60) == pytest.approx(0.005) and seqtrain._lr(lin, 60) == pytest.approx(0.005)
    assert seqtrain._lr(cos, 35) == pytest.approx(0.01 * 0.5 * (1 + np.cos(np.pi / 4)))
    assert seqtrain._lr(lin, 35) == pytest.approx(0.0075)
    wsd = seq_config(base, lr_schedule="linear", decay_steps=40)  # hold until step 70, then linear to 0
    assert [seqtrain._lr(wsd, u) for u in (5, 10, 70)] == [0.005, 0.01, 0.01]
    assert seqtrain._lr(wsd, 90) == pytest.approx(0.005) and seqtrain._lr(wsd, 110) == pytest.approx(0.0, abs=1e-12)
    assert seqtrain._lr(seq_config(base, decay_steps=40), 90) == 0.01  # a constant schedule ignores it
    with pytest.raises(SeqConfigError, match="'lr_schedule' must be one of"):
        seq_config(lr_schedule="step")
    with pytest.raises(SeqConfigError, match="'decay_steps' must be >= 0"):
        seq_config(decay_steps=-1)


# --------------------------------------------------------------------------- checkpoints and resume


def test_checkpoints_rebuild_the_model(tmp_path):
    cfg = seq_config(ADD_TINY)
    result = train_sequence(cfg, tmp_path)
    steps = [s for s, _ in runs.list_checkpoints(tmp_path)]
    assert steps[0] == 0 and steps[-1] == 30
    model, info = load_seq_checkpoint(runs.checkpoint_path(tmp_path, 30))
    assert info["step"] == 30 and info["run_config"]["n_digits"] == 2
    x = result.data.val_inputs[:5]
    assert torch.equal(model(x), result.model(x))
    assert model.num_params == result.summary["num_params"]
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(runs.CheckpointError, match="corrupt or truncated"):
        load_seq_checkpoint(tmp_path / "junk.pt")
    torch.save({"format": "llcgrok-checkpoint-v1"}, tmp_path / "other.pt")
    with pytest.raises(runs.CheckpointError, match="not a sequence-task checkpoint"):
        load_seq_checkpoint(tmp_path / "other.pt")
    with pytest.raises(runs.RunDirConflict, match="another config"):
        train_sequence(seq_config(ADD_TINY, lr=0.5), tmp_path)


def test_resume_after_an_interruption_gives_the_same_run(tmp_path, monkeypatch):
    cfg = seq_config(FX_TINY, num_checkpoints=4, checkpoint_schedule="linear")
    straight = train_sequence(cfg, tmp_path / "a")

    real_save, calls = seqtrain.save_seq_checkpoint, []

    def flaky(path, model, step, c):
        calls.append(step)
        if step == 30 and calls.count(30) == 1:
            raise KeyboardInterrupt  # killed while writing the step-30 checkpoint
        real_save(path, model, step, c)

    monkeypatch.setattr(seqtrain, "save_seq_checkpoint", flaky)
    with pytest.raises(KeyboardInterrupt):
        train_sequence(cfg, tmp_path / "b")
    assert not runs.is_trained(tmp_path / "b") and runs.load_state(tmp_path / "b")["step"] == 20
    resumed = train_sequence(cfg, tmp_path / "b")
    assert calls == [0, 10, 20, 30, 30, 40]  # the second session started from step 20
    pd.testing.assert_frame_equal(resumed.metrics, straight.metrics)
    for (name, p), q in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(p, q), name


# --------------------------------------------------------------------------- LLC


def test_llc_pipeline_end_to_end_with_mse_and_calibration(tmp_path):
    train_sequence(seq_config(FX_TINY), tmp_path)
    kw = dict(num_chains=1, num_draws=20, batch_size=64, epsilons=[1e-4, 5e-5], nbetas=[100.0], localizations=[1e3, 100.0],
              num_burnin_steps=5, curvature_probes=2)
    trajectory = sequence_llc_trajectory(tmp_path, **kw)
    table = pd.read_csv(tmp_path / "calibration.csv")
    assert set(table["localization"]) <= {100.0, 1000.0} and 1000.0 in set(table["localization"])
    info = json.loads((tmp_path / "calibration.json").read_text())
    assert info["settings"]["localizations"] == [1000.0, 100.0] and "localization" in info["rule"].lower()
    assert (tmp_path / "figures" / "calibration_heatmap.png").exists()
    on_disk = pd.read_csv(tmp_path / "llc.csv")
    assert on_disk["step"].tolist() == [s for s, _ in runs.list_checkpoints(tmp_path)] == [0, 10, 20, 40]
    for column in ("step", "llc_mean", "llc_std", "healthy", "mala_acceptance", "frac_below_init", "trace_drift",
                   "converged", "escaped", "chance_loss", "epsilon", "nbeta", "localization", "num_chains", "num_draws",
                   "batch_size", "settings_source", "calibrated", "train_loss", "val_loss", "train_mae", "val_mae",
                   "train_error", "val_error", "error_metric", "num_params"):
        assert column in on_disk.columns, column
    assert (on_disk["error_metric"] == "mae").all()
    assert on_disk["train_error"].iloc[-1] < on_disk["train_error"].iloc[0]
    if info["recommended"] is not None:
        rec = info["recommended"]
        assert on_disk["calibrated"].all() and (on_disk["epsilon"] == rec["epsilon"]).all()
        assert (on_disk["localization"] == rec["localization"]).all()
    else:
        assert on_disk["settings_source"].str.startswith("UNCALIBRATED").all()
    # a rerun with the same settings reuses the calibration and every row
    again = sequence_llc_trajectory(tmp_path, **kw)
    pd.testing.assert_frame_equal(again[["step", "llc_mean"]], trajectory[["step", "llc_mean"]])
    assert set(llc_summary(trajectory)) >= {"llc_start", "llc_peak", "llc_peak_step", "llc_end", "epsilon", "nbeta"}


def test_uncalibrated_fallback_is_flagged_and_addition_uses_masked_ce(tmp_path):
    train_sequence(seq_config(ADD_TINY), tmp_path)
    with pytest.warns(UserWarning, match="no healthy setting"):
        # epsilon 10 diverges at every point: no recommendation
        frame = sequence_llc_trajectory(tmp_path, epsilon=1e-6, nbeta=50.0, localization=1e4, num_chains=1, num_draws=12,
                                        batch_size=64, epsilons=[10.0], nbetas=[50.0], localizations=[1e4],
                                        num_burnin_steps=0, curvature_probes=2)
    assert not frame["calibrated"].any() and frame["settings_source"].str.startswith("UNCALIBRATED").all()
    assert (frame["epsilon"] == 1e-6).all() and (frame["localization"] == 1e4).all()
    assert {"train_exact_match", "val_exact_match", "train_digit_acc", "val_digit_acc"} <= set(frame.columns)
    assert (frame["error_metric"] == "1-exact_match").all()
    assert frame["chance_loss"].iloc[0] == pytest.approx(2.4849, abs=1e-4)  # log 12
    # different settings on an existing llc.csv: refuse rather than mix
    with pytest.raises(LLCError, match="other sampler settings"):
        sequence_llc_trajectory(tmp_path, epsilon=3e-6, nbeta=50.0, localization=1e4, num_chains=1, num_draws=12,
                                batch_size=64, calibrate=False, num_burnin_steps=0, curvature_probes=2)


def test_escape_is_judged_per_chain_against_the_given_chance_loss():
    from llcgrok.llc import summarize_chains

    # chain 1 climbed 1.0 of the 2.0 nats from L_n(w*) = 0 to chance: it left the basin,
    # and the mean over the chains must not hide it.
    trace = np.array([[0.01] * 20, [1.0] * 20, [0.02] * 20])
    _, _, _, diag = summarize_chains(trace, 0.0, 10.0, 1000, chance_loss=2.0)
    assert diag["escaped"] and diag["escaped_chains"] == [1] and not diag["healthy"]
    _, _, _, diag = summarize_chains(trace[[0, 2]], 0.0, 10.0, 1000, chance_loss=2.0)
    assert not diag["escaped"]


# --------------------------------------------------------------------------- notebooks


TINY_LLC = {"num_chains": 1, "num_draws": 10, "batch_size": 64, "epsilons": [1e-5, 1e-4], "nbetas": [100.0],
            "localizations": [1e3]}


@pytest.mark.slow
def test_fraction_of_x_notebook(tmp_path, repo_root):
    execute_notebook(repo_root, "fraction_of_x.ipynb", tmp_path, config=FX_TINY, llc=TINY_LLC, run_dir=str(tmp_path / "run"), quiet=True)
    run = tmp_path / "run"
    assert pd.read_csv(run / "llc.csv")["step"].tolist() == [0, 10, 20, 40]
    for figure in ("training_curves.png", "llc_vs_error.png", "calibration_heatmap.png"):
        assert (run / "figures" / figure).stat().st_size > 1000, figure


@pytest.mark.slow
def test_addition_notebook(tmp_path, repo_root):
    config = dict(ADD_TINY, num_steps=20)  # the overrides set it to 30, and the curriculum
    overrides = ["num_steps=30", "curriculum=[[0, 1], [20, 2]]", "llc.num_draws=12"]
    executed = execute_notebook(repo_root, "addition.ipynb", tmp_path, config=config, llc=TINY_LLC, overrides=overrides,
                                run_dir=str(tmp_path / "run"), quiet=True)
    printed = printed_config(executed)
    assert (printed["num_steps"], printed["curriculum"], printed["llc"]["num_draws"]) == (30, [[0, 1], [20, 2]], 12)
    assert printed["model"]["d_model"] == 8 and printed["llc"]["calibration"]["epsilons"] == TINY_LLC["epsilons"]
    run = tmp_path / "run"
    llc = pd.read_csv(run / "llc.csv")
    assert llc["step"].tolist() == [0, 10, 20, 30] and "val_exact_match" in llc
    assert pd.read_csv(run / "metrics.csv")["max_digits"].tolist() == [1, 1, 2]
    for figure in ("training_curves.png", "llc_vs_error.png"):
        assert (run / "figures" / figure).stat().st_size > 1000, figure


@pytest.mark.slow
def test_addition_notebook_reads_the_params_format(tmp_path, repo_root):
    """The notebook takes the preset's sections (``papermill -f params/addition.yaml``) and
    section-style overrides, as ``llcgrok train`` does."""
    overrides = ["train.num_steps=20", "train.eval_every=10", "task.n_train=300", "task.n_val=50",
                 "llc.calibrate=false", "llc.num_chains=1", "llc.num_draws=8", "llc.epsilon=1e-5", "llc.num_burnin_steps=0"]
    executed = execute_notebook(repo_root, "addition.ipynb", tmp_path, params_file=str(repo_root / "params" / "addition.yaml"),
                                overrides=overrides, run_dir=str(tmp_path / "run"), quiet=True)
    printed = printed_config(executed)
    assert (printed["task"], printed["n_digits"], printed["num_steps"], printed["model"]["ffn_rank"]) == ("addition", 3, 20, 2)
    assert printed["llc"]["num_draws"] == 8 and printed["llc"]["calibration"]["localizations"][0] == 10000
    assert len(pd.read_csv(tmp_path / "run" / "llc.csv")) >= 2


def test_sequence_notebook_refuses_a_modular_params_file(repo_root):
    from llcgrok import notebook as nb

    with pytest.raises(ConfigError, match="x_plus_y.*train.ipynb"):
        nb.seq_parameters(str(repo_root / "params" / "quick.yaml"))


def test_tiny_addition_preset_trains_through_the_cli(tmp_path, repo_root, capsys):
    """params/addition_tiny.yaml, shortened: at most 1,200 parameters, 10-digit pairs, and the
    summary keys the goal is read from (held-out exact match, the step it first passed 0.99)."""
    from llcgrok.cli import main

    out = tmp_path / "run"
    code = main(["train", str(repo_root / "params" / "addition_tiny.yaml"), "--out", str(out), "--quiet",
                 "--set", "train.num_steps=60", "--set", "train.eval_every=30", "--set", "task.n_train=2000",
                 "--set", "task.n_val=500"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_params"] == 1080 <= 1200
    assert {"final_val_exact_match", "best_val_exact_match", "steps_to_exact_match_0.99", "final_val_digit_acc"} <= set(summary)
    assert 0.0 <= summary["final_val_exact_match"] <= 1.0 and summary["num_steps_run"] == 60
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics["step"].tolist() == [30, 60] and metrics["max_digits"].eq(10).all()
    config = json.loads((out / "config.json").read_text())
    assert (config["n_digits"], config["lr_schedule"], config["weight_decay"]) == (10, "cosine", 0.0)
    assert "1080 params" in capsys.readouterr().out
