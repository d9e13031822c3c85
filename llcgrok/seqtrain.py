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
learning rate ramped linearly over ``warmup_steps`` then constant. Checkpoints follow
:func:`llcgrok.train.checkpoint_steps`. A run with ``state.pt`` and the same config
resumes from its last checkpoint, and gives the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import runs
from .config import TrainConfig
from .device import resolve_device
from .seqtasks import (
    SEQ_TASKS,
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
from .tiny import TinyConfig, TinyTransformer, build_tiny, validate_tiny
from .train import TrainingDiverged, checkpoint_steps

SEQ_CHECKPOINT_FORMAT = "llcgrok-seq-checkpoint-v1"
CONFIG_FILE = "config.json"
CHECKPOINT_SCHEDULES = ("log", "linear", "mixed")


class SeqConfigError(ValueError):
    """A mistake in a sequence-task config; the message is one line naming the key."""


@dataclass
class SeqConfig:
    """One sequence-task run: task, data sizes, model, optimisation, checkpoints."""

    task: str = "fraction_of_x"  # or "addition"
    # fraction_of_x
    seq_len: int = 16
    alphabet_size: int = 4
    # addition
    n_digits: int = 10
    mixed_lengths: bool = True  # training pairs of 1..n_digits digits (needed by a curriculum)
    curriculum: typing.Optional[typing.List[typing.List[int]]] = None  # [[step, max_digits], ...] from step 0
    # data
    n_train: int = 4096
    n_val: int = 1024
    data_seed: typing.Optional[int] = None  # None: the run seed
    # model
    model: TinyConfig = field(default_factory=TinyConfig)
    # optimisation
    lr: float = 3e-3
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.98
    warmup_steps: int = 50
    batch_size: int = 128
    num_steps: int = 2000
    eval_every: int = 50
    eval_size: int = 2048  # training examples in the fixed probe for train_loss / train metrics
    checkpoint_schedule: str = "log"
    num_checkpoints: int = 12
    seed: int = 0
    device: str = "cpu"
    num_threads: typing.Optional[int] = None  # torch intra-op threads; None leaves torch's default

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def run_id(self) -> str:
        m = self.model
        ranks = [m.pos_rank, m.qkv_rank, m.attn_out_rank, m.ffn_rank]
        arch = f"L{m.num_layers}-d{m.d_model}-h{m.num_heads}-f{m.d_ff}" + ("-r" + ".".join(map(str, ranks)) if any(ranks) else "")
        head = f"fx-A{self.alphabet_size}-T{self.seq_len}" if self.task == "fraction_of_x" else f"add{self.n_digits}"
        if self.task == "addition" and self.curriculum:
            head += "-cur"
        return f"{head}-{arch}-s{self.seed}"

    def train_config(self) -> TrainConfig:
        """The main trainer's TrainConfig for the fields they share (checkpoint schedule)."""
        return TrainConfig(lr=self.lr, weight_decay=self.weight_decay, warmup_steps=self.warmup_steps,
                           batch_size=self.batch_size, num_steps=self.num_steps, eval_every=self.eval_every,
                           checkpoint_schedule=self.checkpoint_schedule, num_checkpoints=self.num_checkpoints,
                           seed=self.seed)


# --------------------------------------------------------------------------- config from a mapping


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        if value is None:
            return None
        return _coerce(value, [a for a in args if a is not type(None)][0], key, source)
    if origin in (list, typing.List):
        if not isinstance(value, (list, tuple)):
            raise SeqConfigError(f"{source}: '{key}' must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and not isinstance(value, bool):
        if isinstance(value, (int, np.integer)):
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
    if tp is float and not isinstance(value, bool):
        number = None
        if isinstance(value, (int, float, np.integer, np.floating)):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):  # NaN passes every range check
                raise SeqConfigError(f"{source}: '{key}' must be finite, got {value!r}")
            return number
    if tp is str and isinstance(value, str):
        return value
    raise SeqConfigError(f"{source}: '{key}' must be {getattr(tp, '__name__', tp)}, got {value!r}")


def _merge(cls: type, data: Mapping | None, prefix: str, source: str, base=None):
    obj = dataclasses.replace(base) if base is not None else cls()
    if data is None:
        return obj
    if not isinstance(data, Mapping):
        raise SeqConfigError(f"{source}: '{prefix or 'config'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise SeqConfigError(f"{source}: unknown key '{dotted}' (known: {', '.join(sorted(names))})")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            value = _merge(tp, value, f"{dotted}.", source, getattr(obj, key))
        else:
            value = _coerce(value, tp, dotted, source)
        setattr(obj, key, value)
    return obj


def seq_config(data: Mapping | SeqConfig | None = None, *, source: str = "sequence config", **overrides) -> SeqConfig:
    """A validated SeqConfig from a (partial) mapping merged onto the defaults, then the
    keyword ``overrides`` (``model`` may be a partial mapping too)."""
    if isinstance(data, SeqConfig):
        data = data.to_dict()
    merged = dict(data or {})
    for key, value in overrides.items():
        if key == "model" and isinstance(value, Mapping):
            merged["model"] = {**(merged.get("model") or {}), **value}
        else:
            merged[key] = value
    if isinstance(merged.get("model"), TinyConfig):
        merged["model"] = merged["model"].to_dict()
    cfg = _merge(SeqConfig, merged, "", source)
    validate_seq_config(cfg, source)
    return cfg


def validate_seq_config(cfg: SeqConfig, source: str = "sequence config") -> SeqConfig:
    def fail(message: str):
        raise SeqConfigError(f"{source}: {message}")

    if cfg.task not in SEQ_TASKS:
        fail(f"'task' must be one of {', '.join(SEQ_TASKS)}, got {cfg.task!r}")
    for key in ("n_train", "n_val", "batch_size", "num_steps", "eval_every", "eval_size", "num_checkpoints"):
        if getattr(cfg, key) < 1:
            fail(f"'{key}' must be a positive integer, got {getattr(cfg, key)}")
    if cfg.warmup_steps < 0:
        fail(f"'warmup_steps' must be >= 0, got {cfg.warmup_steps}")
    for key in ("lr",):
        if not (getattr(cfg, key) > 0 and math.isfinite(getattr(cfg, key))):
            fail(f"'{key}' must be a positive number, got {getattr(cfg, key)}")
    if not cfg.weight_decay >= 0:
        fail(f"'weight_decay' must be >= 0, got {cfg.weight_decay}")
    for key in ("beta1", "beta2"):
        if not 0 <= getattr(cfg, key) < 1:
            fail(f"'{key}' must lie in [0, 1), got {getattr(cfg, key)}")
    if cfg.checkpoint_schedule not in CHECKPOINT_SCHEDULES:
        fail(f"'checkpoint_schedule' must be one of {', '.join(CHECKPOINT_SCHEDULES)}, got {cfg.checkpoint_schedule!r}")
    if cfg.task == "fraction_of_x":
        if cfg.alphabet_size < 2:
            fail(f"'alphabet_size' must be >= 2 (letter 0 is x), got {cfg.alphabet_size}")
        if cfg.seq_len < 1:
            fail(f"'seq_len' must be a positive integer, got {cfg.seq_len}")
        if cfg.curriculum is not None:
            fail("'curriculum' applies to the addition task only")
        if cfg.n_train + cfg.n_val > cfg.alphabet_size**cfg.seq_len:
            fail(f"n_train + n_val = {cfg.n_train + cfg.n_val} exceeds the {cfg.alphabet_size**cfg.seq_len} distinct sequences")
        vocab, seq_len, output = cfg.alphabet_size, cfg.seq_len, "scalar"
    else:
        if not 1 <= cfg.n_digits <= 18:
            fail(f"'n_digits' must lie in 1..18, got {cfg.n_digits}")
        if cfg.n_train + cfg.n_val > 100**cfg.n_digits:
            fail(f"n_train + n_val = {cfg.n_train + cfg.n_val} exceeds the {100**cfg.n_digits} distinct pairs")
        try:
            validate_curriculum(cfg.curriculum, cfg.n_digits)
        except ValueError as exc:
            fail(f"'curriculum': {exc}")
        if cfg.curriculum is not None and not cfg.mixed_lengths:
            fail("a 'curriculum' needs 'mixed_lengths: true' (otherwise almost no pair is short)")
        vocab, seq_len, output = 12, 3 * cfg.n_digits + 2, "tokens"
    try:
        validate_tiny(cfg.model, vocab, seq_len, output)
    except ValueError as exc:
        fail(str(exc))
    return cfg


def read_seq_config(run_dir) -> SeqConfig:
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no {CONFIG_FILE}: is {run_dir} a sequence-task run directory?")
    data = json.loads(path.read_text())
    data.pop("kind", None)
    return seq_config(data, source=str(path))


def write_seq_config(run_dir, cfg: SeqConfig) -> None:
    runs.atomic_write_json(Path(run_dir) / CONFIG_FILE, {"kind": "sequence", **cfg.to_dict()})


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
    return cfg.lr if cfg.warmup_steps == 0 else cfg.lr * min(update / cfg.warmup_steps, 1.0)


def _training_dict(cfg: SeqConfig) -> dict:
    out = cfg.to_dict()
    for key in ("device", "num_threads"):  # do not change the weights
        out.pop(key)
    return out


def _prepare_run_dir(run_dir: Path, cfg: SeqConfig, force: bool) -> bool:
    """:func:`llcgrok.runs.prepare_run_dir` for a sequence-task run (its config.json)."""
    return runs.prepare_run_dir(run_dir, _training_dict(cfg), lambda d: _training_dict(read_seq_config(d)),
                                config_file=CONFIG_FILE, force=force)


def train_sequence(cfg: SeqConfig | Mapping, run_dir=None, *, quiet: bool = True, resume: bool = True,
                   force: bool = False) -> SeqTrainResult:
    """Train one sequence-task config; with ``run_dir``, write the run directory there and
    resume from its last checkpoint when it holds the same config. Another config there is
    refused (:class:`llcgrok.runs.RunDirConflict`); ``force`` replaces it whole, and
    ``resume=False`` starts this config over."""
    cfg = cfg if isinstance(cfg, SeqConfig) else seq_config(cfg)
    validate_seq_config(cfg)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    data = make_seq_data(cfg)
    dev = data.to(device)
    torch.manual_seed(cfg.seed * 1_000_003)
    model = build_seq_model(cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    batch_gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 1)
    probe_gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 2)
    probe = torch.randperm(cfg.n_train, generator=probe_gen)[: min(cfg.eval_size, cfg.n_train)].sort().values.to(device)
    curriculum = validate_curriculum(cfg.curriculum, cfg.n_digits) if cfg.task == "addition" else []
    columns = metric_columns(cfg.task)
    rows: list[dict] = []
    start_step, elapsed_before = 0, 0.0
    save_points = set(checkpoint_steps(cfg.train_config()))

    if run_dir is not None:
        run_dir = Path(run_dir)
        if _prepare_run_dir(run_dir, cfg, force) and not resume:
            runs.replace_run_dir(run_dir)
        state = runs.load_state(run_dir) if resume else None
        if state is not None and state.get("kind") == "sequence" and state.get("config") == _training_dict(cfg):
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            batch_gen.set_state(state["batch_gen"])
            rows, start_step, elapsed_before = list(state["rows"]), int(state["step"]), float(state.get("elapsed_s", 0.0))
        write_seq_config(run_dir, cfg)
        if start_step == 0:
            save_seq_checkpoint(runs.checkpoint_path(run_dir, 0), model, 0, cfg)

    if cfg.task == "addition":
        lengths = data.train_lengths
        eligible = {m: torch.nonzero(lengths <= m).squeeze(1) for m in range(1, cfg.n_digits + 1)}
    loss_sum, batches = torch.zeros(()), 0
    model.train()
    t0 = time.perf_counter()
    bar = tqdm(total=cfg.num_steps, initial=start_step, disable=quiet, desc=cfg.run_id, unit="step", leave=False)
    step = start_step
    while step < cfg.num_steps:
        for group in optimizer.param_groups:
            group["lr"] = _lr(cfg, step)
        max_digits = max_digits_at(curriculum, step, cfg.n_digits) if cfg.task == "addition" else None
        if max_digits is not None and max_digits < cfg.n_digits:
            pool = eligible[max_digits]
            if len(pool) == 0:
                raise SeqConfigError(f"curriculum at step {step}: no training pair has at most {max_digits} digits")
            idx = pool[torch.randint(len(pool), (cfg.batch_size,), generator=batch_gen)]
        else:
            idx = torch.randint(cfg.n_train, (cfg.batch_size,), generator=batch_gen)
        idx = idx.to(device)
        loss = _batch_loss(cfg.task, model, dev.train_inputs[idx], dev.train_targets[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        loss_sum += loss.detach().cpu()
        batches += 1
        bar.update(1)
        if step % cfg.eval_every == 0 or step in save_points or step == cfg.num_steps:
            batch_loss = float(loss_sum) / batches
            if not math.isfinite(batch_loss):
                bar.close()
                raise TrainingDiverged(step, f"training loss is {batch_loss}")
            tr = evaluate_seq(model, cfg.task, dev.train_inputs[probe], dev.train_targets[probe])
            va = evaluate_seq(model, cfg.task, dev.val_inputs, dev.val_targets)
            row = {"step": step, "train_loss": tr["loss"], "val_loss": va["loss"], "batch_loss": batch_loss}
            for name in metric_names(cfg.task):
                row[f"train_{name}"], row[f"val_{name}"] = tr[name], va[name]
            if cfg.task == "addition":
                row["max_digits"] = max_digits_at(curriculum, step - 1, cfg.n_digits)
            rows.append(row)
            loss_sum.zero_()
            batches = 0
            name = metric_names(cfg.task)[0]
            bar.set_postfix(val_loss=f"{va['loss']:.3g}", **{f"val_{name}": f"{va[name]:.3f}"}, refresh=False)
        if run_dir is not None and step in save_points:
            save_seq_checkpoint(runs.checkpoint_path(run_dir, step), model, step, cfg)
            runs.save_state(run_dir, {
                "kind": "sequence", "config": _training_dict(cfg), "step": step, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "batch_gen": batch_gen.get_state(), "rows": rows,
                "elapsed_s": elapsed_before + time.perf_counter() - t0,
            })
            runs.atomic_write_csv(run_dir / "metrics.csv", pd.DataFrame(rows, columns=columns))
    bar.close()

    elapsed = elapsed_before + time.perf_counter() - t0
    table = pd.DataFrame(rows, columns=columns)
    final = table.iloc[-1].to_dict() if len(table) else {}
    summary: dict[str, Any] = {
        "run_id": cfg.run_id, "task": cfg.task, "num_params": model.num_params, "model": model.describe(),
        "num_steps_run": step, "final_train_loss": final.get("train_loss"), "final_val_loss": final.get("val_loss"),
    }
    for name in metric_names(cfg.task):
        summary[f"final_train_{name}"] = final.get(f"train_{name}")
        summary[f"final_val_{name}"] = final.get(f"val_{name}")
    if cfg.task == "fraction_of_x":
        base = mean_baseline(data.train_targets, data.val_targets)
        summary["baseline_val_mae"], summary["baseline_val_mse"] = base["mae"], base["mse"]
    else:
        hit = table[table["val_exact_match"] >= 0.99]
        summary["steps_to_exact_match_0.99"] = int(hit["step"].iloc[0]) if len(hit) else None
        summary["best_val_exact_match"] = float(table["val_exact_match"].max()) if len(table) else None
    summary.update({"wall_time_s": round(elapsed, 3), "ms_per_step": round(1000 * elapsed / max(step, 1), 3), "device": str(device)})
    summary = {k: (v.item() if hasattr(v, "item") else v) for k, v in summary.items()}
    if run_dir is not None:
        runs.atomic_write_csv(run_dir / "metrics.csv", table)
        runs.atomic_write_json(run_dir / "summary.json", summary)  # last: marks the run finished
    return SeqTrainResult(model=model, metrics=table, summary=summary, data=data)


def ensure_trained(cfg: SeqConfig | Mapping, run_dir, *, quiet: bool = True, force: bool = False) -> tuple[pd.DataFrame, dict]:
    """Train unless the run directory already holds this config, finished (resuming an
    interrupted one); return its metrics table and summary. Another config there is
    refused; ``force`` replaces it. Sets ``cfg.num_threads`` torch threads either way."""
    cfg = cfg if isinstance(cfg, SeqConfig) else seq_config(cfg)
    run_dir = Path(run_dir)
    if cfg.num_threads:  # also for the LLC estimates that usually follow in the same process
        torch.set_num_threads(cfg.num_threads)
    if not force and _prepare_run_dir(run_dir, cfg, False) and runs.is_trained(run_dir):
        return pd.read_csv(run_dir / "metrics.csv"), runs.read_summary(run_dir)
    result = train_sequence(cfg, run_dir, quiet=quiet, force=force)
    return result.metrics, result.summary


def run_dir_for(cfg: SeqConfig, run_dir=None) -> Path:
    """``run_dir`` if given, else ``outputs/runs/<run_id>`` under the working directory."""
    return Path(run_dir) if run_dir else Path("outputs") / "runs" / cfg.run_id
