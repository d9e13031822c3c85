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
:func:`llcgrok.train.checkpoint_steps`. A run with ``state.pt`` and the same config resumes
from its last checkpoint, and gives the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import runs
from .device import resolve_device
from .seqconfig import (  # noqa: F401  (re-exported: seqtrain was their home)
    CHECKPOINT_SCHEDULES, CONFIG_FILE, LR_SCHEDULES, SeqConfig, SeqConfigError, read_seq_config, read_seq_llc,
    seq_config, validate_seq_config, write_seq_config,
)
from .seeding import BATCHES, EVALUATION, INIT, rng_seed
from .seqtasks import (
    SeqData,
    addition_metrics,
    answer_cross_entropy,
    make_addition,
    make_fraction_of_x,
    max_digits_at,
    mean_baseline,
    regression_metrics,
    validate_curriculum,
)
from .tiny import TinyConfig, TinyTransformer, build_tiny
from .train import TrainingDiverged, checkpoint_steps

SEQ_CHECKPOINT_FORMAT = "llcgrok-seq-checkpoint-v1"
# --------------------------------------------------------------------------- data, model, checkpoints


def make_seq_data(cfg: SeqConfig) -> SeqData:
    seed = cfg.seed if cfg.data_seed is None else cfg.data_seed
    if cfg.task == "fraction_of_x":
        return make_fraction_of_x(cfg.n_train, cfg.n_val, seq_len=cfg.seq_len, alphabet_size=cfg.alphabet_size, seed=seed)
    return make_addition(cfg.n_train, cfg.n_val, n_digits=cfg.n_digits, mixed_lengths=cfg.mixed_lengths, seed=seed)


def build_seq_model(cfg: SeqConfig) -> TinyTransformer:
    if cfg.task == "fraction_of_x":
        return build_tiny(cfg.model, cfg.alphabet_size, cfg.seq_len, "scalar")
    return build_tiny(cfg.model, 12, 3 * cfg.n_digits + 2, "tokens")


def seq_loss(task: str):
    """The training / LLC loss: "mse" for fraction of x, the answer-digit cross-entropy
    (a callable ``loss(model, inputs, targets)``) for addition."""
    return "mse" if task == "fraction_of_x" else answer_cross_entropy


def _batch_loss(task: str, model, inputs, targets) -> torch.Tensor:
    if task == "fraction_of_x":
        return F.mse_loss(model(inputs), targets)
    return answer_cross_entropy(model, inputs, targets)


def metric_names(task: str) -> list[str]:
    return ["mae"] if task == "fraction_of_x" else ["exact_match", "digit_acc"]


def metric_columns(task: str) -> list[str]:
    cols = ["step", "train_loss", "val_loss", "batch_loss"]
    for name in metric_names(task):
        cols += [f"train_{name}", f"val_{name}"]
    if task == "addition":
        cols.append("max_digits")
    return cols


@torch.inference_mode()
def evaluate_seq(model: torch.nn.Module, task: str, inputs: torch.Tensor, targets: torch.Tensor, chunk: int = 1024) -> dict:
    """Loss and the task's metrics over all of ``inputs`` (chunks weighted by size)."""
    was_training = model.training
    model.eval()
    totals: dict[str, float] = {}
    for start in range(0, len(inputs), chunk):
        x, y = inputs[start:start + chunk], targets[start:start + chunk]
        out = model(x)
        part = regression_metrics(out, y) if task == "fraction_of_x" else addition_metrics(out, y)
        for key, value in part.items():
            totals[key] = totals.get(key, 0.0) + value * len(x)
    model.train(was_training)
    return {key: value / len(inputs) for key, value in totals.items()}


def error_of(task: str, metrics: Mapping) -> float:
    """One number where lower is better: MAE, or 1 - exact match."""
    return float(metrics["mae"]) if task == "fraction_of_x" else 1.0 - float(metrics["exact_match"])


def save_seq_checkpoint(path, model: TinyTransformer, step: int, cfg: SeqConfig) -> None:
    runs.atomic_torch_save(path, {
        "format": SEQ_CHECKPOINT_FORMAT,
        "step": int(step),
        "model_config": model.cfg.to_dict(),
        "model_kwargs": model.init_kwargs(),
        "run_config": cfg.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    })


def load_seq_checkpoint(path, device: str | torch.device = "cpu") -> tuple[TinyTransformer, dict]:
    """Rebuild the tiny model stored at ``path``: ``(model, {"step", "run_config"})``."""
    path = Path(path)
    blob = runs._torch_load(path, device)
    if not isinstance(blob, dict) or blob.get("format") != SEQ_CHECKPOINT_FORMAT:
        raise runs.CheckpointError(f"{path}: not a sequence-task checkpoint")
    try:
        model = build_tiny(TinyConfig(**blob["model_config"]), **blob["model_kwargs"])
        model.load_state_dict(blob["state_dict"])
    except (TypeError, ValueError, RuntimeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise runs.CheckpointError(f"{path}: weights do not fit the stored model config ({first})") from None
    return model.to(device), {"step": int(blob["step"]), "run_config": blob["run_config"]}


# --------------------------------------------------------------------------- training


@dataclass
class SeqTrainResult:
    model: TinyTransformer
    metrics: pd.DataFrame
    summary: dict
    data: SeqData


def _lr(cfg: SeqConfig, update: int) -> float:
    lr = cfg.lr if cfg.warmup_steps == 0 else cfg.lr * min(update / cfg.warmup_steps, 1.0)
    start = cfg.warmup_steps if cfg.decay_steps == 0 else max(cfg.num_steps - cfg.decay_steps, cfg.warmup_steps)
    if cfg.lr_schedule == "constant" or update < start:
        return lr
    progress = min((update - start) / max(cfg.num_steps - start, 1), 1.0)
    return lr * (0.5 * (1.0 + math.cos(math.pi * progress)) if cfg.lr_schedule == "cosine" else 1.0 - progress)


def _training_dict(cfg: SeqConfig) -> dict:
    out = cfg.to_dict()
    for key in ("device", "num_threads"):  # do not change the weights
        out.pop(key)
    return out


def prepare_seq_run_dir(run_dir: Path, cfg: SeqConfig, force: bool = False) -> bool:
    """:func:`llcgrok.runs.prepare_run_dir` for a sequence-task run (its config.json)."""
    return runs.prepare_run_dir(run_dir, _training_dict(cfg), lambda d: _training_dict(read_seq_config(d)),
                                config_file=CONFIG_FILE, force=force)


@dataclass
class _Loop:
    """What one sequence training run carries from step to step."""

    cfg: SeqConfig
    model: TinyTransformer
    optimizer: torch.optim.Optimizer
    batch_gen: torch.Generator
    data: SeqData
    dev: SeqData  # the data on the training device
    probe: torch.Tensor  # fixed training examples for train_loss and the train metrics
    curriculum: list
    rows: list = field(default_factory=list)
    start_step: int = 0
    elapsed_before: float = 0.0


def _start(cfg: SeqConfig, device) -> _Loop:
    data = make_seq_data(cfg)
    torch.manual_seed(rng_seed(cfg.seed, INIT))
    model = build_seq_model(cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    batch_gen = torch.Generator().manual_seed(rng_seed(cfg.seed, BATCHES))
    probe_gen = torch.Generator().manual_seed(rng_seed(cfg.seed, EVALUATION))
    probe = torch.randperm(cfg.n_train, generator=probe_gen)[: min(cfg.eval_size, cfg.n_train)].sort().values.to(device)
    curriculum = validate_curriculum(cfg.curriculum, cfg.n_digits) if cfg.task == "addition" else []
    return _Loop(cfg, model, optimizer, batch_gen, data, data.to(device), probe, curriculum)


def _resume(loop: _Loop, run_dir: Path, resume: bool, force: bool, llc: Mapping | None) -> None:
    """Prepare the run directory; continue from its state when it holds this config."""
    cfg = loop.cfg
    if prepare_seq_run_dir(run_dir, cfg, force) and not resume:
        runs.replace_run_dir(run_dir)
    state = runs.load_state(run_dir) if resume else None
    if state is not None and state.get("kind") == "sequence" and state.get("config") == _training_dict(cfg):
        loop.model.load_state_dict(state["model"])
        loop.optimizer.load_state_dict(state["optimizer"])
        loop.batch_gen.set_state(state["batch_gen"])
        loop.rows, loop.start_step, loop.elapsed_before = list(state["rows"]), int(state["step"]), float(state.get("elapsed_s", 0.0))
    write_seq_config(run_dir, cfg, llc if llc is not None else read_seq_llc(run_dir))
    if loop.start_step == 0:
        save_seq_checkpoint(runs.checkpoint_path(run_dir, 0), loop.model, 0, cfg)


def _batch(loop: _Loop, step: int, eligible: dict) -> torch.Tensor:
    """The training batch's indices: from the pairs the curriculum allows at ``step``."""
    cfg = loop.cfg
    max_digits = max_digits_at(loop.curriculum, step, cfg.n_digits) if cfg.task == "addition" else None
    if max_digits is not None and max_digits < cfg.n_digits:
        pool = eligible[max_digits]
        if len(pool) == 0:
            raise SeqConfigError(f"curriculum at step {step}: no training pair has at most {max_digits} digits")
        return pool[torch.randint(len(pool), (cfg.batch_size,), generator=loop.batch_gen)]
    return torch.randint(cfg.n_train, (cfg.batch_size,), generator=loop.batch_gen)


def _eval_row(loop: _Loop, step: int, batch_loss: float) -> dict:
    cfg, dev = loop.cfg, loop.dev
    tr = evaluate_seq(loop.model, cfg.task, dev.train_inputs[loop.probe], dev.train_targets[loop.probe])
    va = evaluate_seq(loop.model, cfg.task, dev.val_inputs, dev.val_targets)
    row = {"step": step, "train_loss": tr["loss"], "val_loss": va["loss"], "batch_loss": batch_loss}
    for name in metric_names(cfg.task):
        row[f"train_{name}"], row[f"val_{name}"] = tr[name], va[name]
    if cfg.task == "addition":
        row["max_digits"] = max_digits_at(loop.curriculum, step - 1, cfg.n_digits)
    return row


def _save(loop: _Loop, run_dir: Path, step: int, elapsed: float) -> None:
    cfg = loop.cfg
    save_seq_checkpoint(runs.checkpoint_path(run_dir, step), loop.model, step, cfg)
    runs.save_state(run_dir, {
        "kind": "sequence", "config": _training_dict(cfg), "step": step, "model": loop.model.state_dict(),
        "optimizer": loop.optimizer.state_dict(), "batch_gen": loop.batch_gen.get_state(), "rows": loop.rows,
        "elapsed_s": elapsed,
    })
    runs.atomic_write_csv(run_dir / runs.METRICS_CSV, pd.DataFrame(loop.rows, columns=metric_columns(cfg.task)))


def _summary(loop: _Loop, table: pd.DataFrame, step: int, elapsed: float, device) -> dict:
    cfg = loop.cfg
    final = table.iloc[-1].to_dict() if len(table) else {}
    summary: dict[str, Any] = {
        "run_id": cfg.run_id, "task": cfg.task, "num_params": loop.model.num_params, "model": loop.model.describe(),
        "num_steps_run": step, "final_train_loss": final.get("train_loss"), "final_val_loss": final.get("val_loss"),
    }
    for name in metric_names(cfg.task):
        summary[f"final_train_{name}"] = final.get(f"train_{name}")
        summary[f"final_val_{name}"] = final.get(f"val_{name}")
    if cfg.task == "fraction_of_x":
        base = mean_baseline(loop.data.train_targets, loop.data.val_targets)
        summary["baseline_val_mae"], summary["baseline_val_mse"] = base["mae"], base["mse"]
    else:
        hit = table[table["val_exact_match"] >= 0.99]
        summary["steps_to_exact_match_0.99"] = int(hit["step"].iloc[0]) if len(hit) else None
        summary["best_val_exact_match"] = float(table["val_exact_match"].max()) if len(table) else None
    summary.update({"wall_time_s": round(elapsed, 3), "ms_per_step": round(1000 * elapsed / max(step, 1), 3), "device": str(device)})
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
    device = resolve_device(cfg.device)
    loop = _start(cfg, device)
    save_points = set(checkpoint_steps(cfg.train_config()))
    if run_dir is not None:
        run_dir = Path(run_dir)
        _resume(loop, run_dir, resume, force, llc)
    lengths = loop.data.train_lengths if cfg.task == "addition" else None
    eligible = {m: torch.nonzero(lengths <= m).squeeze(1) for m in range(1, cfg.n_digits + 1)} if lengths is not None else {}
    loss_sum, batches = torch.zeros(()), 0
    loop.model.train()
    t0 = time.perf_counter()
    bar = tqdm(total=cfg.num_steps, initial=loop.start_step, disable=quiet, desc=cfg.run_id, unit="step", leave=False)
    step = loop.start_step
    while step < cfg.num_steps:
        for group in loop.optimizer.param_groups:
            group["lr"] = _lr(cfg, step)
        idx = _batch(loop, step, eligible).to(device)
        loss = _batch_loss(cfg.task, loop.model, loop.dev.train_inputs[idx], loop.dev.train_targets[idx])
        loop.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        loop.optimizer.step()
        step += 1
        loss_sum += loss.detach().cpu()
        batches += 1
        bar.update(1)
        if step % cfg.eval_every == 0 or step in save_points or step == cfg.num_steps:
            batch_loss = float(loss_sum) / batches
            if not math.isfinite(batch_loss):
                bar.close()
                raise TrainingDiverged(step, f"training loss is {batch_loss}")
            loop.rows.append(_eval_row(loop, step, batch_loss))
            loss_sum.zero_()
            batches = 0
            name = metric_names(cfg.task)[0]
            bar.set_postfix(val_loss=f"{loop.rows[-1]['val_loss']:.3g}", **{f"val_{name}": f"{loop.rows[-1][f'val_{name}']:.3f}"}, refresh=False)
        if run_dir is not None and step in save_points:
            _save(loop, run_dir, step, loop.elapsed_before + time.perf_counter() - t0)
    bar.close()
    elapsed = loop.elapsed_before + time.perf_counter() - t0
    table = pd.DataFrame(loop.rows, columns=metric_columns(cfg.task))
    summary = _summary(loop, table, step, elapsed, device)
    if run_dir is not None:
        runs.atomic_write_csv(run_dir / runs.METRICS_CSV, table)
        runs.atomic_write_json(run_dir / runs.SUMMARY_JSON, summary)  # last: marks the run finished
    return SeqTrainResult(model=loop.model, metrics=table, summary=summary, data=loop.data)


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
