"""A run directory of any task kind, seen the way the run level needs it.

Calibration and trajectories need the same few things from a run: its checkpoints, a
model from each, the training data the LLC is measured on, the loss, the chance loss (for
the escape test) and the task's metrics. :func:`open_run` gathers them once (the data is
built once per call, not once per checkpoint) for the modular tasks and for the sequence
tasks, so that one ``calibrate_run`` and one ``run_trajectory`` serve both: the task's entry in
the registry (:mod:`llcgrok.taskspec`) makes its data and names its loss and chance loss, and
one reader (:mod:`llcgrok.checkpoints`) rebuilds the model of every checkpoint.

It also keeps the Hessian trace of every checkpoint (``curvature.csv``): the calibration
picks the checkpoint where it peaks, and every trajectory row divides by it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from . import runs
from .checkpoints import load_checkpoint
from .curvature import curvature_subset, hessian_trace
from .device import resolve_device
from .loss_data import LossSpec, make_evaluate
from .seqconfig import read_seq_config
from .seqtrain import evaluate_seq
from .taskspec import MODULAR, SEQUENCE, Task, get_task
from .train import evaluate as evaluate_classifier


@dataclass
class RunView:
    run_dir: Path
    kind: str  # "modular" or "sequence"
    cfg: object
    checkpoints: list  # [(step, path)], by step
    train: tuple  # (inputs, targets) on ``device``: the data the LLC is measured on
    val: tuple
    loss: LossSpec
    chance: float  # the task's chance loss, for the escape test
    load: Callable  # path -> model on ``device``
    metrics: Callable  # model -> {train_loss, val_loss, ...}
    device: torch.device
    task: Task  # its entry in the registry (llcgrok.taskspec)

    @property
    def num_data(self) -> int:
        return len(self.train[1])

    @property
    def final(self) -> tuple:
        return self.checkpoints[-1]


def _classifier_metrics(task: Task, train: tuple, val: tuple) -> Callable:
    def metrics(model) -> dict:
        train_loss, train_acc = evaluate_classifier(model, *train)
        val_loss, val_acc = evaluate_classifier(model, *val)
        return {"train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss, "val_acc": val_acc}

    return metrics


def _sequence_metrics(task: Task, train: tuple, val: tuple) -> Callable:
    def metrics(model) -> dict:
        tr, va = evaluate_seq(model, task.name, *train), evaluate_seq(model, task.name, *val)
        row = {"train_loss": tr["loss"], "val_loss": va["loss"], "train_error": task.error(tr), "val_error": task.error(va),
               "error_metric": task.error_metric}
        for name in task.metric_names:
            row[f"train_{name}"], row[f"val_{name}"] = tr[name], va[name]
        return row

    return metrics


# How the run level reads a run of each kind: the config file that marks it (the first one
# found, in this order, decides), the reader of that file and the task name in it, and the
# metrics of a model on both splits. Everything else comes from the task (llcgrok.taskspec).
_KINDS = {
    MODULAR: (runs.CONFIG_YAML, runs.read_config, lambda cfg: cfg.task.name, _classifier_metrics),
    SEQUENCE: (runs.CONFIG_JSON, read_seq_config, lambda cfg: cfg.task, _sequence_metrics),
}


def open_run(run_dir, device: str = "auto") -> RunView:
    """The run in ``run_dir`` (modular or sequence task), its data on ``device``."""
    run_dir = Path(run_dir)
    dev = resolve_device(device)
    # Without a config file, the modular reader names the missing config.yaml.
    kind = next((k for k, (name, *_) in _KINDS.items() if (run_dir / name).exists()), MODULAR)
    _, read_config, task_name, metrics = _KINDS[kind]
    cfg = read_config(run_dir)
    task = get_task(task_name(cfg))
    data = task.make_data(cfg)
    chance = task.chance_loss(data)  # on the data as built, whatever the device
    data = data.to(dev)
    train, val = (data.train_inputs, data.train_targets), (data.val_inputs, data.val_targets)
    view = RunView(run_dir, kind, cfg, runs.list_checkpoints(run_dir), train, val, task.loss, chance,
                   lambda path: load_checkpoint(path, dev)[0], metrics(task, train, val), dev, task)
    if not view.checkpoints:
        raise FileNotFoundError(f"{run_dir}: no checkpoints; train the run first (llcgrok train)")
    return view


def checkpoint_traces(view: RunView, probes: int, seed: int = 0, examples: int | None = None) -> pd.DataFrame:
    """tr(H) of the training loss (all of it, or ``examples`` of it: :func:`curvature_subset`)
    at every checkpoint (``step``, ``trace_h``, ``trace_h_se``), kept in ``curvature.csv`` and
    computed only for steps it lacks at these settings."""
    path = view.run_dir / runs.CURVATURE_CSV
    done = pd.read_csv(path) if path.exists() else pd.DataFrame(columns=["step", "trace_h", "trace_h_se", "probes"])
    others = done.iloc[0:0]
    if len(done):
        measured_on = done["examples"] if "examples" in done else pd.Series(float("nan"), index=done.index)
        same = (done["probes"] == probes) & (measured_on.isna() if examples is None else (measured_on == examples))
        done, others = done[same], done[~same]  # values at other settings stay in the file
    have = {int(s) for s in done["step"]}
    rows = done.to_dict("records")
    dataset, evaluate = curvature_subset(view.train, examples, seed), make_evaluate(view.loss)
    for step, ckpt in view.checkpoints:
        if step in have:
            continue
        model = view.load(ckpt)
        model.train()
        trace, se = hessian_trace(model, dataset, evaluate, probes=probes, seed=seed)
        rows.append({"step": step, "trace_h": trace, "trace_h_se": se, "probes": probes,
                     **({} if examples is None else {"examples": examples})})
        runs.atomic_write_csv(path, pd.concat([others, pd.DataFrame(rows)], ignore_index=True).sort_values("step"))
    return pd.DataFrame(rows).sort_values("step").reset_index(drop=True)


def peak_step(traces: pd.DataFrame) -> int | None:
    """The checkpoint where tr(H) peaks (None for an empty table)."""
    finite = traces[traces["trace_h"].map(lambda v: math.isfinite(float(v)))]
    return None if finite.empty else int(finite.loc[finite["trace_h"].idxmax(), "step"])
