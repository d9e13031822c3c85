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
from typing import Any, Mapping, Sequence

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
    chance_loss,
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
        if isinstance(value, (int, float, np.integer, np.floating)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
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


def train_sequence(cfg: SeqConfig | Mapping, run_dir=None, *, quiet: bool = True, resume: bool = True) -> SeqTrainResult:
    """Train one sequence-task config; with ``run_dir``, write the run directory there and
    resume from its last checkpoint when it holds the same config."""
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
        run_dir.mkdir(parents=True, exist_ok=True)
        existing = run_dir / CONFIG_FILE
        if existing.exists():
            old = read_seq_config(run_dir)
            if _training_dict(old) != _training_dict(cfg):
                raise SeqConfigError(f"{run_dir} holds a run of another config ({old.run_id}); use another run directory")
        elif runs.list_checkpoints(run_dir) or (run_dir / "config.yaml").exists():
            raise SeqConfigError(f"{run_dir} holds another kind of run (no {CONFIG_FILE}); use another run directory")
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


def ensure_trained(cfg: SeqConfig | Mapping, run_dir, *, quiet: bool = True) -> tuple[pd.DataFrame, dict]:
    """Train unless the run directory already holds this config, finished (resuming an
    interrupted one); return its metrics table and summary. Sets ``cfg.num_threads``
    torch threads either way."""
    cfg = cfg if isinstance(cfg, SeqConfig) else seq_config(cfg)
    run_dir = Path(run_dir)
    if cfg.num_threads:  # also for the LLC estimates that usually follow in the same process
        torch.set_num_threads(cfg.num_threads)
    if runs.is_trained(run_dir) and (run_dir / CONFIG_FILE).exists() and _training_dict(read_seq_config(run_dir)) == _training_dict(cfg):
        return pd.read_csv(run_dir / "metrics.csv"), runs.read_summary(run_dir)
    result = train_sequence(cfg, run_dir, quiet=quiet)
    return result.metrics, result.summary


def run_dir_for(cfg: SeqConfig, run_dir=None) -> Path:
    """``run_dir`` if given, else ``outputs/runs/<run_id>`` under the working directory."""
    return Path(run_dir) if run_dir else Path("outputs") / "runs" / cfg.run_id


# --------------------------------------------------------------------------- LLC


DEFAULT_EPSILONS = (1e-7, 3e-7, 1e-6, 3e-6, 1e-5)
DEFAULT_NBETAS = (100.0, 300.0, 1000.0)


def _escaped(init_loss: float, loss_excess: float, chance: float) -> bool:
    from .llc import ESCAPE_FRACTION

    return bool(math.isfinite(chance) and np.isfinite(init_loss) and np.isfinite(loss_excess)
                and init_loss < chance and loss_excess > ESCAPE_FRACTION * (chance - init_loss))


def _apply_escape(table: pd.DataFrame, chance: float) -> pd.DataFrame:
    """Mark the points whose draws climbed a fifth of the way from L_n(w*) to the chance
    loss (the estimator knows a chance level only for plain cross-entropy)."""
    table = table.copy()
    table["escaped"] = [
        bool(esc) or _escaped(il, le, chance)
        for esc, il, le in zip(table["escaped"].astype(bool), table["init_loss"], table["loss_excess"])
    ]
    return table


LOCALIZATION_RULE = """\
Localization: the calibration grid is swept at every localization given; within each, the
epsilon x nbeta rule of llcgrok.calibrate (RULE) picks a point or none, with "escaped"
judged against the task's chance loss (log vocab for addition, the predict-the-mean MSE for
fraction of x). The smallest localization whose recommended point lies on a plateau (an
epsilon-neighbour within 20 %) is taken: the weakest pull towards w* at which the chains
both stay in the basin and have mixed (a stronger pull adds prior curvature, and the
estimate then shrinks like nbeta / localization). A point off any plateau is suspect: an
estimate that still grows with epsilon comes from chains that have not reached
equilibrium (at a weak pull with too few draws, a small epsilon barely moves and looks
healthy). So when no localization has a plateau point, the largest localization with a
recommended point is taken (fastest mixing), said so in the reason. No localization with
a recommended point: no recommendation."""


def calibrate_sequence_run(run_dir, *, epsilons: Sequence[float] = DEFAULT_EPSILONS, nbetas: Sequence[float] = DEFAULT_NBETAS,
                           localization: float = 1e5, localizations: Sequence[float] | None = None, num_chains: int = 2,
                           num_draws: int = 100, num_burnin_steps: int = 0, batch_size: int = 256, seed: int = 0,
                           nbeta_preferred: float | None = None, mala_band: Sequence[float] = (0.2, 1.0),
                           cores: int = 1, device: str = "auto", quiet: bool = True, force: bool = False):
    """Calibrate the sampler on the run's final checkpoint with the task's loss.

    For each localization (``localizations``, or just ``localization``) an epsilon x nbeta
    sweep by :func:`llcgrok.calibrate.calibrate`; ``escaped`` is judged against
    :func:`llcgrok.seqtasks.chance_loss` (the estimator knows a chance level only for plain
    cross-entropy) and the rule reapplied; then :data:`LOCALIZATION_RULE` picks the
    localization. Returns a :class:`~llcgrok.calibrate.Calibration` whose table has a
    ``localization`` column and whose ``recommended`` holds epsilon, nbeta and localization.
    Writes ``calibration.csv`` / ``.json`` and ``figures/calibration_heatmap.png`` (the
    chosen localization; ``calibration_heatmap_loc<G>.png`` for each when several); a stored
    calibration with the same settings is reused unless ``force``."""
    from . import plots
    from .calibrate import RULE, RULE_VERSION, Calibration, calibrate, load_calibration, recommend
    from .llc import default_nbeta

    run_dir = Path(run_dir)
    cfg = read_seq_config(run_dir)
    checkpoints = runs.list_checkpoints(run_dir)
    if not checkpoints or not runs.is_trained(run_dir):
        raise FileNotFoundError(f"{run_dir}: training has not finished; calibration needs the final checkpoint")
    gammas = sorted(float(g) for g in (localizations if localizations else [localization]))
    for gamma in gammas:
        if not (gamma >= 0 and math.isfinite(gamma)):
            raise ValueError(f"localizations must be non-negative numbers, got {gamma!r}")
    step, path = checkpoints[-1]
    data = make_seq_data(cfg)
    preferred = float(nbeta_preferred) if nbeta_preferred is not None else default_nbeta(cfg.n_train)
    settings = {
        "epsilons": [float(e) for e in epsilons], "nbetas": [float(b) for b in nbetas], "localizations": gammas,
        "num_chains": int(num_chains), "num_draws": int(num_draws), "num_burnin_steps": int(num_burnin_steps),
        "batch_size": int(batch_size), "seed": int(seed), "mala_band": [float(m) for m in mala_band],
        "nbeta_preferred": round(preferred, 6), "step": int(step), "rule_version": RULE_VERSION, "task": cfg.task,
    }
    if not force:
        stored = load_calibration(run_dir)
        if stored is not None and {k: stored.settings.get(k) for k in settings} == settings:
            return stored
    dev = resolve_device(device)
    model, _ = load_seq_checkpoint(path, dev)
    chance = chance_loss(data)
    per_gamma = {}
    for gamma in gammas:
        result = calibrate(
            model, (data.train_inputs.to(dev), data.train_targets.to(dev)), loss=seq_loss(cfg.task),
            epsilons=settings["epsilons"], nbetas=settings["nbetas"], localization=gamma,
            num_chains=num_chains, num_draws=num_draws, num_burnin_steps=num_burnin_steps, batch_size=batch_size,
            seed=seed, device=str(dev), cores=cores, mala_band=mala_band, nbeta_preferred=preferred, quiet=quiet,
        )
        columns = list(result.table.columns)
        recommended, reason, table = recommend(_apply_escape(result.table, chance), mala_band=mala_band, nbeta_preferred=preferred)
        table = table[columns]
        table.insert(2, "localization", gamma)
        per_gamma[gamma] = (recommended, reason, table, result.traces.assign(localization=gamma) if len(result.traces) else result.traces)
    def on_plateau(gamma: float) -> bool:
        rec, _, table, _ = per_gamma[gamma]
        sel = np.isclose(table["epsilon"], rec["epsilon"]) & np.isclose(table["nbeta"], rec["nbeta"])
        return bool(table.loc[sel, "plateau"].astype(bool).any())

    with_point = [g for g in gammas if per_gamma[g][0] is not None]
    flat = [g for g in with_point if on_plateau(g)]
    chosen = flat[0] if flat else (with_point[-1] if with_point else None)
    if chosen is None:
        recommended = None
        reason = " | ".join(f"localization {g:g}: {per_gamma[g][1]}" for g in gammas)
        traces = pd.DataFrame()
    else:
        rec, why, _, traces = per_gamma[chosen]
        recommended = {**rec, "localization": chosen}
        listed = ", ".join(f"{g:g}" for g in gammas)
        lead = f"localization {chosen:g}"
        if len(gammas) > 1:
            lead += (f" (the smallest of {listed} whose point is on a plateau)" if flat
                     else f" (no plateau at any of {listed}; the largest with a healthy point)")
        reason = f"{lead}; {why}"
    table = pd.concat([per_gamma[g][2] for g in gammas], ignore_index=True)
    calibration = Calibration(
        table=table, recommended=recommended, reason=reason, rule=RULE + "\n" + LOCALIZATION_RULE, traces=traces,
        settings={**settings, "chance_loss": chance}, step=step,
    )
    runs.atomic_write_csv(run_dir / "calibration.csv", table)
    info = calibration.to_json()
    if recommended is not None:  # the row at the chosen localization too, not only epsilon and nbeta
        sel = (np.isclose(table["localization"], chosen) & np.isclose(table["epsilon"], recommended["epsilon"])
               & np.isclose(table["nbeta"], recommended["nbeta"]))
        info["recommended_row"] = {k: (v.item() if hasattr(v, "item") else v) for k, v in table[sel].iloc[0].to_dict().items()}
    runs.atomic_write_json(run_dir / "calibration.json", info)
    figures = run_dir / "figures"
    shown = chosen if chosen is not None else gammas[-1]
    plots.save_figure(plots.plot_calibration_heatmap(per_gamma[shown][2], recommended), figures / "calibration_heatmap.png")
    if len(gammas) > 1:
        for gamma in gammas:
            rec = recommended if gamma == chosen else None
            plots.save_figure(plots.plot_calibration_heatmap(per_gamma[gamma][2], rec), figures / f"calibration_heatmap_loc{gamma:g}.png")
    return calibration


def trajectory_columns(task: str) -> list[str]:
    from .llc import SETTING_COLUMNS

    metrics = [f"{split}_{name}" for name in metric_names(task) for split in ("train", "val")]
    return [
        "step", "llc_mean", "llc_std", "healthy", "mala_acceptance", "frac_below_init", "num_diverged",
        "diverged_chains", "trace_drift", "trace_drift_se", "trace_slope", "converged", "r_hat", "loss_excess",
        "escaped", "chance_loss", "negative", "init_loss", "failure_reasons", "warnings", *SETTING_COLUMNS,
        "settings_source", "calibrated", "train_loss", "val_loss", *metrics, "train_error", "val_error",
        "error_metric", "num_params", "seconds",
    ]


def sequence_llc_trajectory(
    run_dir,
    *,
    epsilon: float = 1e-6,
    nbeta: float | None = None,
    localization: float = 1e5,
    num_chains: int = 2,
    num_draws: int = 100,
    num_burnin_steps: int = 0,
    batch_size: int = 256,
    seed: int = 0,
    calibrate: bool = True,
    epsilons: Sequence[float] = DEFAULT_EPSILONS,
    nbetas: Sequence[float] = DEFAULT_NBETAS,
    localizations: Sequence[float] | None = None,
    calibration_draws: int | None = None,
    mala_band: Sequence[float] = (0.2, 1.0),
    cores: int = 1,
    device: str = "auto",
    strict: bool = False,
    quiet: bool = True,
) -> pd.DataFrame:
    """The LLC of every checkpoint of a sequence-task run into ``RUN_DIR/llc.csv``.

    Loss: MSE (fraction of x) or the answer-digit cross-entropy (addition), on the whole
    training set; ``nbeta`` None means n / log n. With ``calibrate``, the sampler is first
    calibrated on the final checkpoint (:func:`calibrate_sequence_run`, over ``epsilons`` x
    ``nbetas`` at each of ``localizations`` (default: just ``localization``), with
    ``calibration_draws`` draws, default ``num_draws``) and its recommendation replaces
    ``epsilon``, ``nbeta`` and ``localization``; when it recommends nothing, the given
    settings are used with a warning, ``calibrated`` is False and ``settings_source`` starts
    with ``UNCALIBRATED`` (``strict=True`` raises instead). Each row: the LLC, its
    diagnostics (``escaped`` against :func:`~llcgrok.seqtasks.chance_loss`, and ``healthy``
    only if not escaped), the settings, and loss / metrics / error (``error_metric``: MAE or
    1 - exact match) on the full train and held-out sets at that checkpoint. Rows are written
    as each checkpoint finishes; a rerun with the same settings skips the steps in the file.
    """
    from .llc import AllChainsFailed, apply_calibration, default_nbeta, estimate_llc, failed_row, rows_done, trajectory_frame

    run_dir = Path(run_dir)
    cfg = read_seq_config(run_dir)
    checkpoints = runs.list_checkpoints(run_dir)
    if not checkpoints:
        raise FileNotFoundError(f"{run_dir}: no checkpoints; train the run first (llcgrok.seqtrain.train_sequence)")
    data = make_seq_data(cfg)
    settings = {
        "epsilon": float(epsilon), "nbeta": default_nbeta(cfg.n_train) if nbeta is None else float(nbeta),
        "localization": float(localization), "num_chains": int(num_chains), "num_draws": int(num_draws),
        "num_burnin_steps": int(num_burnin_steps), "batch_size": int(batch_size), "seed": int(seed),
    }
    source, calibrated = "given", False
    if calibrate:
        calibration = calibrate_sequence_run(
            run_dir, epsilons=epsilons, nbetas=nbetas, localization=localization, localizations=localizations, num_chains=num_chains,
            num_draws=calibration_draws or num_draws, num_burnin_steps=num_burnin_steps, batch_size=batch_size,
            seed=seed, nbeta_preferred=settings["nbeta"], mala_band=mala_band, cores=cores, device=device, quiet=quiet,
        )
        settings, source, calibrated = apply_calibration(calibration, settings, run_dir, strict=strict,
                                                         widen_hint="Widen epsilons / nbetas / localizations.")

    path = run_dir / "llc.csv"
    columns = trajectory_columns(cfg.task)
    rows = rows_done(path, settings)
    done_steps = {int(r["step"]) for r in rows}
    dev = resolve_device(device)
    train_x, train_y = data.train_inputs.to(dev), data.train_targets.to(dev)
    val_x, val_y = data.val_inputs.to(dev), data.val_targets.to(dev)
    chance = chance_loss(data)
    loss = seq_loss(cfg.task)
    todo = [(s, p) for s, p in checkpoints if s not in done_steps]
    bar = tqdm(todo, desc=f"LLC {run_dir.name}", unit="ckpt", disable=quiet)
    for step, ckpt in bar:
        model, _ = load_seq_checkpoint(ckpt, dev)
        t0 = time.perf_counter()
        try:
            est = estimate_llc(model, (train_x, train_y), loss=loss, **settings, device=str(dev), cores=cores, quiet=True)
            row = est.to_row()
            escaped = bool(row.get("escaped")) or _escaped(est.init_loss, est.diagnostics["loss_excess"], chance)
            if escaped and not row.get("escaped"):
                row["warnings"] = "; ".join(filter(None, [str(row.get("warnings") or ""),
                                                          "draws climbed a fifth of the way to the chance loss: the chain left the basin"]))
            row["escaped"], row["healthy"] = escaped, bool(row["healthy"]) and not escaped
        except AllChainsFailed as exc:
            row = failed_row(exc, settings)
        row["seconds"] = time.perf_counter() - t0
        row["chance_loss"] = chance
        tr = evaluate_seq(model, cfg.task, train_x, train_y)
        va = evaluate_seq(model, cfg.task, val_x, val_y)
        row.update(step=step, settings_source=source, calibrated=calibrated, train_loss=tr["loss"], val_loss=va["loss"],
                   train_error=error_of(cfg.task, tr), val_error=error_of(cfg.task, va),
                   error_metric="mae" if cfg.task == "fraction_of_x" else "1-exact_match", num_params=model.num_params)
        for name in metric_names(cfg.task):
            row[f"train_{name}"], row[f"val_{name}"] = tr[name], va[name]
        rows.append(row)
        runs.atomic_write_csv(path, trajectory_frame(rows, columns))
        bar.set_postfix(step=step, llc=f"{row['llc_mean']:.3g}", refresh=False)
    bar.close()
    frame = trajectory_frame(rows, columns)
    if not path.exists():
        runs.atomic_write_csv(path, frame)
    return frame


def llc_summary(trajectory: pd.DataFrame) -> dict:
    """LLC at the first checkpoint, at its peak and at the last, with their steps."""
    t = trajectory.sort_values("step").dropna(subset=["llc_mean"])
    if t.empty:
        return {}
    peak = t.loc[t["llc_mean"].idxmax()]
    return {
        "llc_start": float(t["llc_mean"].iloc[0]), "llc_start_step": int(t["step"].iloc[0]),
        "llc_peak": float(peak["llc_mean"]), "llc_peak_step": int(peak["step"]),
        "llc_end": float(t["llc_mean"].iloc[-1]), "llc_end_step": int(t["step"].iloc[-1]),
        "epsilon": float(t["epsilon"].iloc[-1]), "nbeta": float(t["nbeta"].iloc[-1]),
        "localization": float(t["localization"].iloc[-1]), "calibrated": bool(t["calibrated"].astype(bool).all()),
        "healthy_fraction": float(t["healthy"].astype(bool).mean()),
    }
