"""The configuration of a sequence-task run (:class:`SeqConfig`), its validation, and its
file in the run directory (``config.json``: the config, plus the llc section it was trained
with). Params files reach it through :mod:`llcgrok.seqparams`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from . import runs
from .config_sections import ConfigError, TrainConfig
from .config_validation import _build
from .seqtasks import SEQ_TASKS, validate_curriculum
from .taskspec import get_task
from .tiny import TinyConfig, validate_tiny

CONFIG_FILE = runs.CONFIG_JSON
CHECKPOINT_SCHEDULES = ("log", "linear", "mixed")
LR_SCHEDULES = ("constant", "cosine", "linear")


class SeqConfigError(ConfigError):
    """A mistake in a sequence-task config; the message is one line naming the key (exit 2 from the CLI)."""


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
    lr_schedule: str = "constant"  # after the warmup: constant, or "cosine" / "linear" decay to 0 at num_steps
    decay_steps: int = 0  # cosine / linear: decay over the last decay_steps steps (0: all steps after the warmup)
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


def _merge(data: Mapping, source: str) -> "SeqConfig":
    """``data`` merged onto SeqConfig's defaults by the typed loader of every params file."""
    try:
        return _build(SeqConfig, data, "", source)
    except SeqConfigError:
        raise
    except ConfigError as exc:  # the same one-line message, as the sequence kind's error
        raise SeqConfigError(str(exc)) from None


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
    cfg = _merge(merged, source)
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
    for key in ("warmup_steps", "decay_steps"):
        if getattr(cfg, key) < 0:
            fail(f"'{key}' must be >= 0, got {getattr(cfg, key)}")
    for key in ("lr",):
        if not (getattr(cfg, key) > 0 and math.isfinite(getattr(cfg, key))):
            fail(f"'{key}' must be a positive number, got {getattr(cfg, key)}")
    if not cfg.weight_decay >= 0:
        fail(f"'weight_decay' must be >= 0, got {cfg.weight_decay}")
    for key in ("beta1", "beta2"):
        if not 0 <= getattr(cfg, key) < 1:
            fail(f"'{key}' must lie in [0, 1), got {getattr(cfg, key)}")
    if cfg.lr_schedule not in LR_SCHEDULES:
        fail(f"'lr_schedule' must be one of {', '.join(LR_SCHEDULES)}, got {cfg.lr_schedule!r}")
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
    shapes = get_task(cfg.task).model_kwargs(cfg)  # what the model is built with, from the registry
    try:
        validate_tiny(cfg.model, shapes["vocab_size"], shapes["seq_len"], shapes["output"])
    except ValueError as exc:
        fail(str(exc))
    return cfg


def read_seq_config(run_dir) -> SeqConfig:
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no {CONFIG_FILE}: is {run_dir} a sequence-task run directory?")
    data = json.loads(path.read_text())
    data.pop("kind", None)
    data.pop("llc", None)
    return seq_config(data, source=str(path))


def read_seq_llc(run_dir) -> dict | None:
    """The llc section a sequence-task run was trained with (None: none was given)."""
    path = Path(run_dir) / CONFIG_FILE
    return json.loads(path.read_text()).get("llc") if path.exists() else None


def write_seq_config(run_dir, cfg: SeqConfig, llc: Mapping | None = None) -> None:
    """config.json: the SeqConfig, and the llc section of the params it came from (what
    ``llcgrok llc RUN`` then uses); the llc section is not part of the training identity."""
    data = {"kind": "sequence", **cfg.to_dict()}
    if llc is not None:
        data["llc"] = dict(llc)
    runs.atomic_write_json(Path(run_dir) / CONFIG_FILE, data)
