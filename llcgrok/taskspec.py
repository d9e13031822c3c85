"""Every task behind one protocol: :data:`TASKS` maps each task name to its :class:`Task`.

A task is of one kind: ``"modular"`` (the algorithmic tasks of :mod:`llcgrok.tasks`; a run
directory with config.yaml, the "grok" transformer, the loop of :mod:`llcgrok.train`) or
``"sequence"`` (:mod:`llcgrok.seqtasks`; config.json, the "tiny" transformer,
:mod:`llcgrok.seqtrain`). A task says how its data and split are made from a run's config,
its loss, its metrics and the threshold of the headline one, its chance loss (the reference
of the escape test), the steps of its transitions, its curriculum and the model it trains.
The data, losses and metrics themselves live in those two modules and in
:mod:`llcgrok.metrics`; this module names them, once per task.

The params format names the tasks too (``config.TASK_NAMES``, ``config.SEQ_TASKS``: it
validates a config before anything is imported); a test checks that both name the same set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import pandas as pd
import torch

from . import models, seqtasks, tasks
from .config_sections import TASK_NAMES
from .metrics import EXACT_MATCH_THRESHOLD, THRESHOLD, steps_to_exact_match, steps_to_grokking, steps_to_memorization

MODULAR, SEQUENCE = "modular", "sequence"


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # MODULAR or SEQUENCE
    make_data: Callable[[Any], Any]  # the run's config -> its data, split (TaskData or SeqData)
    # "ce", "mse" (llcgrok.llc.make_evaluate) or a module-level loss(model, inputs, targets):
    # chain worker processes import it by name.
    loss: str | Callable
    metric_names: tuple[str, ...]  # measured on each split (train_<name>, val_<name>); the headline first
    higher_is_better: bool  # of the headline metric
    threshold: float | None  # the headline's level that marks the task learnt (None: it has none)
    chance_loss: Callable[[Any], float]  # data -> the loss of a model that knows nothing
    transitions: Callable[[pd.DataFrame], dict]  # metrics table -> {transition: first step, None if never}
    model: str  # the registered model kind (llcgrok.models) its runs train
    model_kwargs: Callable[[Any], dict]  # the run's config -> the model builder's arguments besides cfg.model
    # (outputs, targets) -> {"loss", metric: value} of one batch; the modular tasks are
    # evaluated by llcgrok.train.evaluate, in the training layer.
    batch_metrics: Callable[[torch.Tensor, torch.Tensor], dict] | None = None
    curriculum: Callable[[Any], list] | None = None  # the run's config -> its validated [(step, max_digits)]

    @property
    def headline(self) -> str:
        return self.metric_names[0]

    @property
    def error_metric(self) -> str:
        """What :meth:`error` measures: the headline metric, or 1 minus it when higher is better."""
        return f"1-{self.headline}" if self.higher_is_better else self.headline

    def error(self, metrics: Mapping) -> float:
        """One number where lower is better, from the metrics of one split."""
        value = float(metrics[self.headline])
        return 1.0 - value if self.higher_is_better else value

    def build_model(self, cfg) -> torch.nn.Module:
        """A new model for the run configured by ``cfg`` (its ``model`` section and the task's shapes)."""
        return models.build(self.model, cfg.model, **self.model_kwargs(cfg))


# --------------------------------------------------------------------------- the modular tasks (config: a RunConfig)


def _modular_data(cfg) -> tasks.TaskData:
    return tasks.make_task(cfg.task, seed=cfg.train.seed)


def _modular_shapes(cfg) -> dict:
    classes = tasks.num_classes_for(cfg.task)
    return {"vocab_size": classes + tasks.NUM_SYMBOLS, "num_classes": classes, "seq_len": tasks.SEQ_LEN}


def _modular_transitions(table: pd.DataFrame) -> dict:
    return {"memorization": steps_to_memorization(table), "grokking": steps_to_grokking(table)}


def _modular(name: str) -> Task:
    return Task(name, MODULAR, _modular_data, loss="ce", metric_names=("acc",), higher_is_better=True,
                threshold=THRESHOLD, chance_loss=tasks.chance_loss, transitions=_modular_transitions, model="grok",
                model_kwargs=_modular_shapes)


# --------------------------------------------------------------------------- the sequence tasks (config: a SeqConfig)


def _data_seed(cfg) -> int:
    return cfg.seed if cfg.data_seed is None else cfg.data_seed


def _fraction_of_x_data(cfg) -> seqtasks.SeqData:
    return seqtasks.make_fraction_of_x(cfg.n_train, cfg.n_val, seq_len=cfg.seq_len, alphabet_size=cfg.alphabet_size,
                                       seed=_data_seed(cfg))


def _fraction_of_x_shapes(cfg) -> dict:
    return {"vocab_size": cfg.alphabet_size, "seq_len": cfg.seq_len, "output": "scalar"}


def _no_transitions(table: pd.DataFrame) -> dict:
    return {}  # a regression has no level at which it is learnt


def _addition_data(cfg) -> seqtasks.SeqData:
    return seqtasks.make_addition(cfg.n_train, cfg.n_val, n_digits=cfg.n_digits, mixed_lengths=cfg.mixed_lengths,
                                  seed=_data_seed(cfg))


def _addition_shapes(cfg) -> dict:
    # Teacher forcing: the model reads the whole sequence but its last token.
    return {"vocab_size": seqtasks.ADDITION_VOCAB, "seq_len": seqtasks.addition_seq_len(cfg.n_digits) - 1, "output": "tokens"}


def _addition_transitions(table: pd.DataFrame) -> dict:
    return {"exact_match": steps_to_exact_match(table)}


def _addition_curriculum(cfg) -> list:
    return seqtasks.validate_curriculum(cfg.curriculum, cfg.n_digits)


# --------------------------------------------------------------------------- the registry

TASKS: dict[str, Task] = {
    **{name: _modular(name) for name in TASK_NAMES},
    "fraction_of_x": Task(
        "fraction_of_x", SEQUENCE, _fraction_of_x_data, loss="mse", metric_names=("mae",), higher_is_better=False,
        threshold=None, chance_loss=seqtasks.chance_loss, transitions=_no_transitions, model="tiny",
        model_kwargs=_fraction_of_x_shapes, batch_metrics=seqtasks.regression_metrics),
    "addition": Task(
        "addition", SEQUENCE, _addition_data, loss=seqtasks.answer_cross_entropy,
        metric_names=("exact_match", "digit_acc"), higher_is_better=True, threshold=EXACT_MATCH_THRESHOLD,
        chance_loss=seqtasks.chance_loss, transitions=_addition_transitions, model="tiny",
        model_kwargs=_addition_shapes, batch_metrics=seqtasks.addition_metrics, curriculum=_addition_curriculum),
}


def get_task(name: str) -> Task:
    """The registered task ``name``; otherwise a one-line ValueError naming the known tasks."""
    task = TASKS.get(name) if isinstance(name, str) else None
    if task is None:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return task
