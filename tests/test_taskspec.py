"""The task registry (every task behind one protocol), the model registry, and the one
checkpoint reader of both checkpoint formats."""

import dataclasses
import importlib
import math
import pickle

import pandas as pd
import pytest
import torch

from llcgrok import checkpoints, models, runs, seqtrain
from llcgrok.config import SEQ_TASKS, TASK_NAMES, ModelConfig, RunConfig, TaskConfig
from llcgrok.llc import make_evaluate
from llcgrok.metrics import THRESHOLD
from llcgrok.seqtrain import seq_config
from llcgrok.taskspec import TASKS, get_task

SEQ_TINY = dict(num_threads=1, seq_len=5, alphabet_size=3, n_digits=2, n_train=40, n_val=10,
                model={"d_model": 8, "num_heads": 2, "d_ff": 8, "ffn_rank": 2})


def tiny_config(name: str):
    """A run config of the task's kind, small enough to build in milliseconds."""
    if get_task(name).kind == "sequence":
        return seq_config(SEQ_TINY, task=name)
    return RunConfig(task=TaskConfig(name=name, p=7, k=3), model=ModelConfig(num_layers=1, d_model=8, num_heads=2))


def test_the_registry_holds_every_task_of_the_params_format():
    assert set(TASKS) == set(TASK_NAMES) | set(SEQ_TASKS)
    assert {name for name, task in TASKS.items() if task.kind == "modular"} == set(TASK_NAMES)
    assert {name for name, task in TASKS.items() if task.kind == "sequence"} == set(SEQ_TASKS)
    assert all(task.name == name and task.model in models.MODELS for name, task in TASKS.items())


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_builds_tiny_data_a_model_and_its_loss(name):
    task, cfg = get_task(name), tiny_config(name)
    data = task.make_data(cfg)
    assert len(data.train_targets) > 0 and len(data.val_targets) > 0
    torch.manual_seed(0)
    model = task.build_model(cfg)
    assert models.kind_of(model) == task.model
    with torch.no_grad():
        loss = float(make_evaluate(task.loss)(model, (data.train_inputs, data.train_targets)))
        metrics = task.batch_metrics(model(data.val_inputs), data.val_targets) if task.batch_metrics else None
    chance = task.chance_loss(data)
    assert math.isfinite(loss) and math.isfinite(chance) and chance > 0
    if metrics is not None:
        assert set(task.metric_names) <= set(metrics) and 0 <= task.error(metrics)
    assert (task.curriculum is not None) == (name == "addition")


def test_unknown_task_is_one_line_naming_the_known_ones():
    with pytest.raises(ValueError) as info:
        get_task("x_pow_y")
    message = str(info.value)
    assert "\n" not in message and "'x_pow_y'" in message
    assert all(name in message for name in TASKS)
    with pytest.raises(ValueError, match="unknown model kind 'huge'; known: grok, tiny"):
        models.build("huge", None)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_each_loss_is_a_spec_or_a_module_level_function_picklable_by_name(name):
    loss = get_task(name).loss
    if isinstance(loss, str):
        assert loss in ("ce", "mse")
        make_evaluate(loss)  # a spec the estimator knows
        return
    assert getattr(importlib.import_module(loss.__module__), loss.__qualname__) is loss
    assert pickle.loads(pickle.dumps(loss)) is loss  # pickled by reference: chain workers import it


def test_metrics_thresholds_and_errors():
    modular, fx, add = get_task("x_plus_y"), get_task("fraction_of_x"), get_task("addition")
    assert (modular.headline, modular.threshold, modular.error_metric) == ("acc", THRESHOLD, "1-acc")
    assert (fx.headline, fx.threshold, fx.error_metric) == ("mae", None, "mae")
    assert (add.headline, add.threshold, add.error_metric) == ("exact_match", 0.99, "1-exact_match")
    assert fx.error({"mae": 0.25}) == 0.25 and add.error({"exact_match": 0.75}) == 0.25
    assert seqtrain.metric_names("addition") == ["exact_match", "digit_acc"]
    assert seqtrain.metric_columns("addition")[-1] == "max_digits"
    assert "max_digits" not in seqtrain.metric_columns("fraction_of_x")


def test_transitions_on_a_hand_made_table():
    table = pd.DataFrame({
        "step": [10, 20, 30, 40],
        "train_acc": [0.5, 0.995, 1.0, 1.0], "val_acc": [0.1, 0.2, 0.99, 0.999],
        "val_exact_match": [0.0, 0.5, 0.99, 1.0],
    })
    # Accuracy must pass the threshold (0.99 is not grokked); exact match may reach it.
    assert get_task("x_div_y").transitions(table) == {"memorization": 20, "grokking": 40}
    assert get_task("addition").transitions(table) == {"exact_match": 30}
    assert get_task("fraction_of_x").transitions(table) == {}
    never = table.assign(val_acc=0.5, val_exact_match=0.5)
    assert get_task("permutation").transitions(never)["grokking"] is None
    assert get_task("addition").transitions(never) == {"exact_match": None}


def _first_format_blob(model, fmt: str, cfg) -> dict:
    """A checkpoint laid out as both formats have been written since their first version."""
    return {"format": fmt, "step": 3, "model_config": dataclasses.asdict(model.cfg), "model_kwargs": model.init_kwargs(),
            "run_config": cfg.to_dict(), "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}


@pytest.mark.parametrize("name, fmt", [("x_plus_y", "llcgrok-checkpoint-v1"), ("addition", "llcgrok-seq-checkpoint-v1"),
                                       ("fraction_of_x", "llcgrok-seq-checkpoint-v1")])
def test_one_reader_loads_both_formats_and_the_model_gives_the_same_outputs(tmp_path, name, fmt):
    task, cfg = get_task(name), tiny_config(name)
    torch.manual_seed(1)
    model = task.build_model(cfg)
    inputs = task.make_data(cfg).val_inputs[:5]
    torch.save(_first_format_blob(model, fmt, cfg), tmp_path / "first.pt")
    writer = runs.save_checkpoint if task.kind == "modular" else seqtrain.save_seq_checkpoint
    writer(tmp_path / "written.pt", model, 3, cfg)
    with torch.no_grad():
        expected = model(inputs)
        for path in (tmp_path / "first.pt", tmp_path / "written.pt"):
            for load in (checkpoints.load_checkpoint, runs.load_checkpoint):
                rebuilt, info = load(path)
                assert type(rebuilt) is type(model) and info == {"step": 3, "run_config": cfg.to_dict()}
                assert torch.equal(rebuilt(inputs), expected)
    assert torch.load(tmp_path / "written.pt", weights_only=True)["format"] == fmt


def test_a_reader_of_one_kind_refuses_the_other(tmp_path):
    cfg = tiny_config("x_plus_y")
    runs.save_checkpoint(tmp_path / "grok.pt", get_task("x_plus_y").build_model(cfg), 0, cfg)
    with pytest.raises(runs.CheckpointError, match="not a sequence-task checkpoint"):
        seqtrain.load_seq_checkpoint(tmp_path / "grok.pt")
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(runs.CheckpointError, match="not an llcgrok checkpoint"):
        runs.load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(runs.CheckpointError, match="corrupt or truncated"):
        checkpoints.load_checkpoint(tmp_path / "junk.pt")
