"""A run directory of any task kind, seen the way the run level needs it.

Calibration and trajectories need the same few things from a run: its checkpoints, a
model from each, the training data the LLC is measured on, the loss, the chance loss (for
the escape test) and the task's metrics. :func:`open_run` gathers them once (the data is
built once per call, not once per checkpoint) for the modular tasks and for the sequence
tasks, so that one ``calibrate_run`` and one ``run_trajectory`` serve both.

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

from . import runs, seqtrain
from .curvature import curvature_subset, hessian_trace
from .device import resolve_device
from .llc import LossSpec, make_evaluate
from .seqtasks import chance_loss as sequence_chance_loss
from .tasks import make_task
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
    chance: float | None  # None: estimate_llc works it out (cross-entropy over classes)
    load: Callable  # path -> model on ``device``
    metrics: Callable  # model -> {train_loss, val_loss, ...}
    device: torch.device

    @property
    def num_data(self) -> int:
        return len(self.train[1])

    @property
    def final(self) -> tuple:
        return self.checkpoints[-1]


def _modular(run_dir: Path, device: torch.device) -> RunView:
    cfg = runs.read_config(run_dir)
    data = make_task(cfg.task, seed=cfg.train.seed).to(device)

    def metrics(model) -> dict:
        train_loss, train_acc = evaluate_classifier(model, data.train_inputs, data.train_targets)
        val_loss, val_acc = evaluate_classifier(model, data.val_inputs, data.val_targets)
        return {"train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss, "val_acc": val_acc}

    return RunView(run_dir, "modular", cfg, runs.list_checkpoints(run_dir), (data.train_inputs, data.train_targets),
                   (data.val_inputs, data.val_targets), "ce", None,
                   lambda path: runs.load_checkpoint(path, device)[0], metrics, device)


def _sequence(run_dir: Path, device: torch.device) -> RunView:
    cfg = seqtrain.read_seq_config(run_dir)
    data = seqtrain.make_seq_data(cfg)
    train = (data.train_inputs.to(device), data.train_targets.to(device))
    val = (data.val_inputs.to(device), data.val_targets.to(device))

    def metrics(model) -> dict:
        tr = seqtrain.evaluate_seq(model, cfg.task, *train)
        va = seqtrain.evaluate_seq(model, cfg.task, *val)
        row = {"train_loss": tr["loss"], "val_loss": va["loss"], "train_error": seqtrain.error_of(cfg.task, tr),
               "val_error": seqtrain.error_of(cfg.task, va),
               "error_metric": "mae" if cfg.task == "fraction_of_x" else "1-exact_match"}
        for name in seqtrain.metric_names(cfg.task):
            row[f"train_{name}"], row[f"val_{name}"] = tr[name], va[name]
        return row

    return RunView(run_dir, "sequence", cfg, runs.list_checkpoints(run_dir), train, val, seqtrain.seq_loss(cfg.task),
                   sequence_chance_loss(data), lambda path: seqtrain.load_seq_checkpoint(path, device)[0], metrics, device)


def open_run(run_dir, device: str = "auto") -> RunView:
    """The run in ``run_dir`` (modular or sequence task), its data on ``device``."""
    run_dir = Path(run_dir)
    dev = resolve_device(device)
    view = _sequence(run_dir, dev) if (run_dir / runs.CONFIG_JSON).exists() and not (run_dir / runs.CONFIG_YAML).exists() else _modular(run_dir, dev)
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
