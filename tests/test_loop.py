"""The one training loop (llcgrok.loop): its schedule, hooks, stop rule, divergence check,
and resume for both trainers."""

from dataclasses import dataclass

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from problems import tiny_config

from llcgrok import loop, runs
from llcgrok import metrics as metrics_mod
from llcgrok.config import TrainConfig
from llcgrok.seqtrain import seq_config, train_sequence
from llcgrok.train import _grokked, train

# A curriculum (a batch hook) and a decaying schedule, so that resume has to restore both.
ADDITION = dict(num_threads=1, task="addition", n_digits=3, n_train=400, n_val=100, num_steps=40, eval_every=10,
                batch_size=32, num_checkpoints=4, checkpoint_schedule="linear", curriculum=[[0, 1], [20, 3]],
                lr_schedule="cosine", model={"d_model": 8, "num_heads": 2, "d_ff": 16, "qkv_rank": 2, "ffn_rank": 2})


@dataclass(kw_only=True)
class _Toy(loop.Training):
    """Least squares on fixed data by SGD: the loop's hooks and nothing else."""

    x: torch.Tensor
    y: torch.Tensor
    rate: float = 0.05

    def lr(self, update):
        return self.rate

    def batch(self, step):
        idx = torch.randint(len(self.y), (8,), generator=self.generators["batch_gen"])
        return self.x[idx], self.y[idx]

    def loss(self, inputs, targets):
        return (F.mse_loss(self.model(inputs), targets),)

    def eval_row(self, step, sums, batches):
        return {"step": step, "loss": sums[0] / batches}

    def postfix(self, row):
        return {"loss": f"{row['loss']:.3g}"}

    def summary(self, table, step, elapsed):
        return {"num_steps_run": step}


def _toy(num_steps=60, stop=None, rate=0.05) -> _Toy:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=gen)
    model = torch.nn.Linear(3, 1)
    return _Toy(run_id="toy", model=model, optimizer=torch.optim.SGD(model.parameters(), lr=rate),
                generators={"batch_gen": torch.Generator().manual_seed(1)}, columns=["step", "loss"],
                num_steps=num_steps, eval_every=10, save_points={0, 25, num_steps}, sums_on=torch.device("cpu"),
                loss_name="toy loss", stop=stop, x=x, y=x.sum(1, keepdim=True), rate=rate)


def test_rows_come_on_schedule_and_step_hooks_after_every_update():
    run = _toy()
    seen = []
    run.step_hooks.append(lambda step: seen.append((step, len(run.rows))))
    table, summary = loop.fit(run, None, quiet=True, resume=True, force=False)
    # Every eval_every steps and at a checkpoint (25); a hook sees the row of its own step.
    assert table["step"].tolist() == [10, 20, 25, 30, 40, 50, 60]
    assert [step for step, _ in seen] == list(range(61))  # 0: the initial weights of a fresh run
    assert dict(seen)[10] == 1 and dict(seen)[9] == 0 and dict(seen)[25] == 3
    assert summary == {"num_steps_run": 60}
    assert table["loss"].iloc[-1] < 0.1 * table["loss"].iloc[0]


def test_early_stop_ends_delay_steps_after_the_transition():
    stop = loop.EarlyStop(100, 15, lambda row: row["step"] >= 30)
    table, summary = loop.fit(_toy(100, stop), None, quiet=True, resume=True, force=False)
    assert summary["num_steps_run"] == 45 and stop.transition == 30
    assert table["step"].tolist() == [10, 20, 25, 30, 40, 45]  # the last step has a row
    never = loop.EarlyStop(100, None, lambda row: True)
    assert loop.fit(_toy(100, never), None, quiet=True, resume=True, force=False)[1]["num_steps_run"] == 100


def test_the_stop_rule_finds_the_transition_in_resumed_rows():
    rows = [{"step": 10, "val_acc": 0.5}, {"step": 20, "val_acc": 0.995}, {"step": 30, "val_acc": 1.0}]
    stop = loop.EarlyStop(1000, 100, _grokked)
    assert stop.last_step(rows) == 120
    assert stop.transition == metrics_mod.steps_to_grokking(pd.DataFrame(rows)) == 20
    assert stop.after_row({"step": 40, "val_acc": 1.0}, 120) == 120  # only the first transition counts
    fresh = loop.EarlyStop(1000, 100, _grokked)
    assert fresh.last_step(rows[:1]) == 1000 and fresh.after_row(rows[1], 1000) == 120
    assert loop.EarlyStop(50, 100, _grokked).last_step(rows) == 50


def test_divergence_raises_naming_the_step():
    with pytest.raises(loop.TrainingDiverged, match=r"training diverged at step 10: toy loss is (inf|nan)"):
        loop.fit(_toy(rate=1e30), None, quiet=True, resume=True, force=False)


def test_one_learning_rate_function_for_both_configs():
    modular = TrainConfig(lr=1e-2, warmup_steps=10, num_steps=110)
    sequence = seq_config(lr=1e-2, warmup_steps=10, num_steps=110)
    updates = range(0, 120, 5)
    assert [loop.learning_rate(modular, u) for u in updates] == [loop.learning_rate(sequence, u) for u in updates]
    assert loop.learning_rate(modular, 5) == 1e-2 * 0.5 and loop.learning_rate(TrainConfig(warmup_steps=0), 0) == 1e-3
    cosine = seq_config(sequence, lr_schedule="cosine")
    assert loop.learning_rate(cosine, 10) == 1e-2 and loop.learning_rate(cosine, 110) == pytest.approx(0.0, abs=1e-12)


def _modular(run_dir):
    return train(tiny_config(40, fingerprint_every=5), run_dir, quiet=True)


def _sequence(run_dir):
    return train_sequence(seq_config(ADDITION), run_dir)


@pytest.mark.parametrize("trainer", [_modular, _sequence], ids=["modular", "sequence"])
def test_resume_after_an_interruption_gives_the_uninterrupted_run(trainer, tmp_path, monkeypatch):
    straight = trainer(tmp_path / "straight")
    real_save_state = runs.save_state

    def killed_after_20(run_dir, state):
        real_save_state(run_dir, state)
        if state["step"] >= 20:
            raise KeyboardInterrupt

    monkeypatch.setattr(runs, "save_state", killed_after_20)
    with pytest.raises(KeyboardInterrupt):
        trainer(tmp_path / "cut")
    monkeypatch.setattr(runs, "save_state", real_save_state)
    assert runs.load_state(tmp_path / "cut")["step"] == 20 and not runs.is_trained(tmp_path / "cut")
    resumed = trainer(tmp_path / "cut")
    pd.testing.assert_frame_equal(resumed.metrics, straight.metrics)
    for name in ("metrics.csv", "fingerprints.csv"):  # fingerprints: the modular run's
        if (tmp_path / "straight" / name).exists():
            assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name
    assert runs.is_trained(tmp_path / "cut")
    for (key, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), key
