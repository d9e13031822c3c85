"""Training and LLC trajectories for the sequence tasks (:mod:`llcgrok.seqtasks`) on the
tiny transformer (:mod:`llcgrok.tiny`).

A run directory, like the main trainer's::

    config.json        the resolved SeqConfig ("kind": "sequence")
    metrics.csv        step, train_loss, val_loss, batch_loss, then the task's metrics:
                       fraction_of_x: train_mae, val_mae;
                       addition: train_exact_match, val_exact_match, train_digit_acc,
                       val_digit_acc, max_digits (the curriculum's current length)
    summary.json       written last: its presence means training finished
    checkpoints/       step_000100.pt ... (weights + the TinyConfig and shapes that rebuild the model)
    state.pt           optimizer / RNG state of the last checkpoint, for resume
    calibration.csv, calibration.json, llc.csv, figures/

``train_loss`` and the train metrics are measured on a fixed probe of ``eval_size``
training examples (all of them when fewer), the ``val_*`` columns on the whole held-out
set, both without gradients at the current weights; ``batch_loss`` is the mean loss of
the training batches since the previous row (restricted by the curriculum).

Batches of ``batch_size`` examples are drawn with replacement from the training set (for
addition with a curriculum, from the pairs no longer than the current maximum); AdamW,
learning rate ramped linearly over ``warmup_steps`` then constant (``lr_schedule``
"constant", the default) or decayed to 0 at ``num_steps`` ("cosine" or "linear", over the
last ``decay_steps`` steps when that is positive). Checkpoints follow
:func:`llcgrok.loop.checkpoint_steps`. A run with ``state.pt`` and the same config resumes
from its last checkpoint, and gives the same numbers as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import torch

from . import loop, runs
from .checkpoints import SEQ_CHECKPOINT_FORMAT, load_checkpoint  # noqa: F401  (SEQ_CHECKPOINT_FORMAT: public here)
from .device import resolve_device
from .loss_data import make_evaluate
from .seqconfig import (  # noqa: F401  (re-exported: seqtrain was their home)
    CHECKPOINT_SCHEDULES, CONFIG_FILE, LR_SCHEDULES, SeqConfig, SeqConfigError, read_seq_config, read_seq_llc,
    seq_config, validate_seq_config, write_seq_config,
)
from .seeding import BATCHES, EVALUATION, INIT, rng_seed
from .seqtasks import SeqData, max_digits_at, mean_baseline
from .taskspec import Task, get_task
from .tiny import TinyTransformer
from .loop import checkpoint_steps, learning_rate

# --------------------------------------------------------------------------- data, model, checkpoints
# Each of these names its task's entry in the registry (llcgrok.taskspec).


def make_seq_data(cfg: SeqConfig) -> SeqData:
    return get_task(cfg.task).make_data(cfg)


def build_seq_model(cfg: SeqConfig) -> TinyTransformer:
    return get_task(cfg.task).build_model(cfg)


def seq_loss(task: str):
    """The training / LLC loss: "mse" for fraction of x, the answer-digit cross-entropy
    (a callable ``loss(model, inputs, targets)``) for addition."""
    return get_task(task).loss


def _batch_loss(task: str, model, inputs, targets) -> torch.Tensor:
    return make_evaluate(get_task(task).loss)(model, (inputs, targets))


def metric_names(task: str) -> list[str]:
    return list(get_task(task).metric_names)


def metric_columns(task: str) -> list[str]:
    cols = ["step", "train_loss", "val_loss", "batch_loss"]
    for name in metric_names(task):
        cols += [f"train_{name}", f"val_{name}"]
    if get_task(task).curriculum is not None:
        cols.append("max_digits")  # the curriculum's current length
    return cols


@torch.inference_mode()
def evaluate_seq(model: torch.nn.Module, task: str, inputs: torch.Tensor, targets: torch.Tensor, chunk: int = 1024) -> dict:
    """Loss and the task's metrics over all of ``inputs`` (chunks weighted by size)."""
    was_training = model.training
    model.eval()
    batch_metrics = get_task(task).batch_metrics
    totals: dict[str, float] = {}
    for start in range(0, len(inputs), chunk):
        x, y = inputs[start:start + chunk], targets[start:start + chunk]
        for key, value in batch_metrics(model(x), y).items():
            totals[key] = totals.get(key, 0.0) + value * len(x)
    model.train(was_training)
    return {key: value / len(inputs) for key, value in totals.items()}


def error_of(task: str, metrics: Mapping) -> float:
    """One number where lower is better: MAE, or 1 - exact match."""
    return get_task(task).error(metrics)


def save_seq_checkpoint(path, model: TinyTransformer, step: int, cfg: SeqConfig) -> None:
    runs.save_checkpoint(path, model, step, cfg)


def load_seq_checkpoint(path, device: str | torch.device = "cpu") -> tuple[TinyTransformer, dict]:
    """Rebuild the tiny model stored at ``path``: ``(model, {"step", "run_config"})``."""
    return load_checkpoint(path, device, model_kind="tiny")


# --------------------------------------------------------------------------- training


@dataclass
class SeqTrainResult:
    model: TinyTransformer
    metrics: pd.DataFrame
    summary: dict
    data: SeqData


_lr = learning_rate  # the sequence schedules under their name here (tests read them so)


def _training_dict(cfg: SeqConfig) -> dict:
    out = cfg.to_dict()
    for key in ("device", "num_threads"):  # do not change the weights
        out.pop(key)
    return out


def prepare_seq_run_dir(run_dir: Path, cfg: SeqConfig, force: bool = False) -> bool:
    """:func:`llcgrok.runs.prepare_run_dir` for a sequence-task run (its config.json)."""
    return runs.prepare_run_dir(run_dir, _training_dict(cfg), lambda d: _training_dict(read_seq_config(d)),
                                config_file=CONFIG_FILE, force=force)


@dataclass(kw_only=True)
class _Sequence(loop.Training):
    """A sequence-task run: batches under the curriculum, the task's loss, rows measured on
    a fixed probe of training examples and on the held-out set."""

    cfg: SeqConfig
    device: torch.device
    data: SeqData
    dev: SeqData  # the data on the training device
    probe: torch.Tensor  # fixed training examples for train_loss and the train metrics
    task: Task  # its registry entry: loss, metrics, curriculum, transitions
    curriculum: list  # [(step, max_digits)]; empty for a task without one
    eligible: dict  # max_digits -> the training pairs with at most that many digits
    llc: Mapping | None  # the llc section to keep in config.json (None: the one there)

    def lr(self, update: int) -> float:
        return learning_rate(self.cfg, update)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = _batch(self, step).to(self.device)
        return self.dev.train_inputs[idx], self.dev.train_targets[idx]

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor]:
        return (_batch_loss(self.cfg.task, self.model, inputs, targets),)

    def eval_row(self, step: int, sums: list[float], batches: int) -> dict:
        cfg, dev = self.cfg, self.dev
        tr = evaluate_seq(self.model, cfg.task, dev.train_inputs[self.probe], dev.train_targets[self.probe])
        va = evaluate_seq(self.model, cfg.task, dev.val_inputs, dev.val_targets)
        row = {"step": step, "train_loss": tr["loss"], "val_loss": va["loss"], "batch_loss": sums[0] / batches}
        for name in metric_names(cfg.task):
            row[f"train_{name}"], row[f"val_{name}"] = tr[name], va[name]
        if self.task.curriculum is not None:
            row["max_digits"] = max_digits_at(self.curriculum, step - 1, cfg.n_digits)
        return row

    def postfix(self, row: dict) -> dict:
        name = metric_names(self.cfg.task)[0]
        return {"val_loss": f"{row['val_loss']:.3g}", f"val_{name}": f"{row[f'val_{name}']:.3f}"}

    def summary(self, table: pd.DataFrame, step: int, elapsed: float) -> dict:
        return _summary(self, table, step, elapsed)

    def identity(self) -> dict:
        return {"kind": "sequence", "config": _training_dict(self.cfg)}

    def resumes(self, state: dict) -> bool:
        return all(state.get(key) == value for key, value in self.identity().items())

    def prepare(self, run_dir: Path, force: bool) -> bool:
        return prepare_seq_run_dir(run_dir, self.cfg, force)

    def save_checkpoint(self, path: Path, step: int) -> None:
        save_seq_checkpoint(path, self.model, step, self.cfg)

    def write_config(self, run_dir: Path) -> None:
        write_seq_config(run_dir, self.cfg, self.llc if self.llc is not None else read_seq_llc(run_dir))


def _start(cfg: SeqConfig, device: torch.device, llc: Mapping | None) -> _Sequence:
    data = make_seq_data(cfg)
    torch.manual_seed(rng_seed(cfg.seed, INIT))
    model = build_seq_model(cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    batch_gen = torch.Generator().manual_seed(rng_seed(cfg.seed, BATCHES))
    probe_gen = torch.Generator().manual_seed(rng_seed(cfg.seed, EVALUATION))
    probe = torch.randperm(cfg.n_train, generator=probe_gen)[: min(cfg.eval_size, cfg.n_train)].sort().values.to(device)
    task = get_task(cfg.task)
    lengths = data.train_lengths if task.curriculum is not None else None
    eligible = {m: torch.nonzero(lengths <= m).squeeze(1) for m in range(1, cfg.n_digits + 1)} if lengths is not None else {}
    # sums_on the CPU: each step's loss is read back, as the numbers of every sequence run were made.
    return _Sequence(run_id=cfg.run_id, model=model, optimizer=optimizer, generators={"batch_gen": batch_gen},
                     columns=metric_columns(cfg.task), num_steps=cfg.num_steps, eval_every=cfg.eval_every,
                     save_points=set(checkpoint_steps(cfg.train_config())), sums_on=torch.device("cpu"),
                     loss_name="training loss", cfg=cfg, device=device, data=data, dev=data.to(device), probe=probe,
                     task=task, curriculum=task.curriculum(cfg) if task.curriculum is not None else [],
                     eligible=eligible, llc=llc)


def _batch(run: _Sequence, step: int) -> torch.Tensor:
    """The training batch's indices: from the pairs the curriculum allows at ``step``."""
    cfg, batch_gen = run.cfg, run.generators["batch_gen"]
    max_digits = max_digits_at(run.curriculum, step, cfg.n_digits) if run.task.curriculum is not None else None
    if max_digits is not None and max_digits < cfg.n_digits:
        pool = run.eligible[max_digits]
        if len(pool) == 0:
            raise SeqConfigError(f"curriculum at step {step}: no training pair has at most {max_digits} digits")
        return pool[torch.randint(len(pool), (cfg.batch_size,), generator=batch_gen)]
    return torch.randint(cfg.n_train, (cfg.batch_size,), generator=batch_gen)


def _summary(run: _Sequence, table: pd.DataFrame, step: int, elapsed: float) -> dict:
    cfg = run.cfg
    final = table.iloc[-1].to_dict() if len(table) else {}
    summary: dict[str, Any] = {
        "run_id": cfg.run_id, "task": cfg.task, "num_params": run.model.num_params, "model": run.model.describe(),
        "num_steps_run": step, "final_train_loss": final.get("train_loss"), "final_val_loss": final.get("val_loss"),
    }
    for name in metric_names(cfg.task):
        summary[f"final_train_{name}"] = final.get(f"train_{name}")
        summary[f"final_val_{name}"] = final.get(f"val_{name}")
    if run.task.threshold is None:  # a regression: compared with predicting the training mean
        base = mean_baseline(run.data.train_targets, run.data.val_targets)
        summary["baseline_val_mae"], summary["baseline_val_mse"] = base["mae"], base["mse"]
    else:
        summary["steps_to_exact_match_0.99"] = run.task.transitions(table)["exact_match"]
        summary["best_val_exact_match"] = float(table["val_exact_match"].max()) if len(table) else None
    summary.update({"wall_time_s": round(elapsed, 3), "ms_per_step": round(1000 * elapsed / max(step, 1), 3),
                    "device": str(run.device)})
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in summary.items()}


def train_sequence(cfg: SeqConfig | Mapping, run_dir=None, *, quiet: bool = True, resume: bool = True,
                   force: bool = False, llc: Mapping | None = None) -> SeqTrainResult:
    """Train one sequence-task config; with ``run_dir``, write the run directory there and
    resume from its last checkpoint when it holds the same config. Another config there is
    refused (:class:`llcgrok.runs.RunDirConflict`); ``force`` replaces it whole, and
    ``resume=False`` starts this config over. ``llc``: the llc section to keep in config.json."""
    cfg = cfg if isinstance(cfg, SeqConfig) else seq_config(cfg)
    validate_seq_config(cfg)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    run = _start(cfg, resolve_device(cfg.device), llc)
    table, summary = loop.fit(run, run_dir, quiet=quiet, resume=resume, force=force)
    return SeqTrainResult(model=run.model, metrics=table, summary=summary, data=run.data)


def ensure_trained(cfg: SeqConfig | Mapping, run_dir, *, quiet: bool = True, force: bool = False,
                   llc: Mapping | None = None) -> tuple[pd.DataFrame, dict]:
    """Train unless the run directory already holds this config, finished (resuming an
    interrupted one); return its metrics table and summary. Another config there is
    refused; ``force`` replaces it. Sets ``cfg.num_threads`` torch threads either way."""
    cfg = cfg if isinstance(cfg, SeqConfig) else seq_config(cfg)
    run_dir = Path(run_dir)
    if cfg.num_threads:  # also for the LLC estimates that usually follow in the same process
        torch.set_num_threads(cfg.num_threads)
    if not force and prepare_seq_run_dir(run_dir, cfg, False) and runs.is_trained(run_dir):
        return pd.read_csv(run_dir / runs.METRICS_CSV), runs.read_summary(run_dir)
    result = train_sequence(cfg, run_dir, quiet=quiet, force=force, llc=llc)
    return result.metrics, result.summary


def run_dir_for(cfg: SeqConfig, run_dir=None) -> Path:
    """``run_dir`` if given, else ``outputs/runs/<run_id>`` under the working directory."""
    return Path(run_dir) if run_dir else Path("outputs") / "runs" / cfg.run_id
