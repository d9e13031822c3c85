"""Sequence tasks in the params-file format of every other task.

A params file whose ``task.name`` is ``addition`` or ``fraction_of_x`` has the same sections
as a modular one (``task``, ``model``, ``train``, ``llc``, ``grid``). This module maps them
onto the flat :class:`~llcgrok.seqtrain.SeqConfig` the sequence trainer reads::

    task:  name -> task; n_digits, mixed_lengths, curriculum, seq_len, alphabet_size,
           n_train, n_val, data_seed                           -> the key of the same name
    model: the TinyConfig keys (d_model, d_ff, ranks, ...); ``kind: tiny`` may be written
    train: every other SeqConfig key: lr, lr_schedule, weight_decay, beta1, beta2, warmup_steps,
           batch_size, num_steps, eval_every, eval_size, checkpoint_schedule, num_checkpoints,
           seed, device, num_threads
    llc:   the llc section of every task (:class:`~llcgrok.config.LLCConfig`)
    grid:  axes by the same dotted keys (``model.d_model``, ``train.lr``), and seeds

Dotted keys (``--set``, notebook overrides, grid axes) use these section names;
:func:`flat_key` turns one into the SeqConfig key.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Any, Mapping

from .config import deep_merge, nested, read_sections
from .config_sections import SEQ_TASKS, ConfigError, LLCConfig
from .config_validation import build_section
from .sequence_llc import FLAT_ONLY_KEYWORDS, llc_section_from_keywords
from .seqconfig import SeqConfig, seq_config
from .tiny import TinyConfig

MODEL_KIND = "tiny"
TASK_KEYS = ("n_digits", "mixed_lengths", "curriculum", "seq_len", "alphabet_size", "n_train", "n_val", "data_seed")
# Every other SeqConfig key is a train key (lr, lr_schedule, weight_decay, batch_size, num_steps, ...).
TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(SeqConfig) if f.name not in (*TASK_KEYS, "task", "model"))
MODEL_KEYS = tuple(f.name for f in dataclasses.fields(TinyConfig))


@dataclass
class SeqParams:
    """A sequence-task params file: one run's config, its llc section, the study grid."""

    base: SeqConfig
    llc: LLCConfig
    axes: dict = field(default_factory=dict)  # section-dotted key -> values
    seeds: list | None = None
    source: str = "<params>"
    explicit: frozenset = frozenset()  # section-dotted keys the sections set


def flat_key(dotted: str, source: str) -> str:
    """``task.n_digits`` -> ``n_digits``, ``train.lr`` -> ``lr``, ``model.d_ff`` -> ``model.d_ff``."""
    section, _, key = dotted.partition(".")
    if section == "task" and (key in TASK_KEYS or key == "name"):
        return "task" if key == "name" else key
    if section == "train" and key in TRAIN_KEYS:
        return key
    if section == "model" and key in MODEL_KEYS:
        return dotted
    raise ConfigError(f"{source}: unknown key '{dotted}' for a sequence task")


def flat_config(task: Mapping | None, model: Mapping | None, train: Mapping | None, source: str) -> dict:
    """The flat SeqConfig mapping of the ``task``, ``model`` and ``train`` sections."""
    flat: dict = {"model": {}}
    for name, data in (("task", task), ("model", model), ("train", train)):
        if data is None:
            continue
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: '{name}' must be a mapping of keys, got {data!r}")
        for key, value in data.items():
            if name == "model" and key == "kind":
                if value != MODEL_KIND:
                    raise ConfigError(f"{source}: 'model.kind' of a sequence task must be '{MODEL_KIND}', got {value!r}")
                continue
            target = flat_key(f"{name}.{key}", source)
            if target.startswith("model."):
                flat["model"][key] = value
            else:
                flat[target] = value
    return flat


def legacy_section_key(dotted: str) -> str:
    """A flat SeqConfig key as earlier notebooks wrote it (``num_steps``, ``n_digits``,
    ``task``) -> its section key; a section key is returned as it is."""
    if dotted == "task":
        return "task.name"
    if dotted in TASK_KEYS:
        return f"task.{dotted}"
    if dotted in TRAIN_KEYS:
        return f"train.{dotted}"
    return dotted


def llc_section(llc: Mapping | None) -> dict | None:
    """An llc section from a notebook's ``llc``: a section as it is, the flat keywords of
    :mod:`llcgrok.sequence_llc` (``epsilons``, ``localizations``, ...) mapped onto one."""
    if llc is None or "calibration" in llc or not set(llc) & set(FLAT_ONLY_KEYWORDS):
        return None if llc is None else dict(llc)
    return llc_section_from_keywords(**llc)


def _set_flat(flat: dict, dotted: str, value: Any, source: str) -> dict:
    target = flat_key(dotted, source)
    return deep_merge(flat, nested(target, value))


def seq_params_from_sections(task=None, model=None, train=None, llc=None, grid=None, *, source: str = "<params>",
                             flat_base: Mapping | None = None) -> SeqParams:
    """Validated :class:`SeqParams` from (partial) sections merged onto ``flat_base`` (a flat
    SeqConfig mapping) or the defaults; every config of the grid is checked."""
    name = (task or {}).get("name") if isinstance(task, Mapping) else None
    if name is not None and name not in SEQ_TASKS:
        raise ConfigError(f"{source}: task '{name}' is not a sequence task ({', '.join(SEQ_TASKS)}): "
                          "run it with train.ipynb, or `llcgrok train`")
    flat = deep_merge(dict(flat_base or {}), flat_config(task, model, train, source))
    base = seq_config(flat, source=source)
    llc_cfg = build_section(LLCConfig, llc, "llc", source)
    grid = grid or {}
    if not isinstance(grid, Mapping) or set(grid) - {"axes", "seeds"}:
        raise ConfigError(f"{source}: 'grid' holds 'axes' and 'seeds' only")
    axes = dict(grid.get("axes") or {})
    for dotted, values in axes.items():
        flat_key(dotted, source)
        if not isinstance(values, (list, tuple)) or not values:
            raise ConfigError(f"{source}: grid axis 'grid.axes.{dotted}' must be a non-empty list, got {values!r}")
    seeds = grid.get("seeds")
    if seeds is not None and (not isinstance(seeds, list) or not seeds):
        raise ConfigError(f"{source}: 'grid.seeds' must be a non-empty list, got {seeds!r}")
    explicit = frozenset(f"{name}.{key}" for name, data in (("task", task), ("model", model), ("train", train))
                         for key in (data or {}))
    params = SeqParams(base=base, llc=llc_cfg, axes=axes, seeds=seeds, source=source, explicit=explicit)
    expand_seq(params)
    return params


def load_seq_params(path) -> SeqParams:
    """Read and validate a sequence-task params YAML file (:func:`llcgrok.config.read_sections`)."""
    return seq_params_from_sections(**read_sections(path), source=str(path))


def _with(cfg: SeqConfig, settings: Mapping[str, Any], source: str) -> SeqConfig:
    flat = cfg.to_dict()
    for dotted, value in settings.items():
        flat = _set_flat(flat, dotted, value, source)
    return seq_config(flat, source=source)


def resolve_seq_run(params: SeqParams, overrides: Mapping[str, Any] | None = None, seed: int | None = None) -> SeqConfig:
    """One run, as :func:`llcgrok.config.resolve_run` makes one: the sections, then the first
    value of each axis they leave out (and of ``grid.seeds``), then the overrides and seed."""
    settings = {d: v[0] for d, v in params.axes.items() if d not in params.explicit}
    if params.seeds and "train.seed" not in params.explicit:
        settings["train.seed"] = params.seeds[0]
    settings.update(overrides or {})
    if seed is not None:
        settings["train.seed"] = seed
    return _with(params.base, settings, params.source)


def expand_seq(params: SeqParams, overrides: Mapping[str, Any] | None = None) -> list[SeqConfig]:
    """Every config of the study (the product of the axes and seeds), overrides applied."""
    keys = list(params.axes)
    configs = []
    for combo in itertools.product(*params.axes.values()):
        for seed in params.seeds or [params.base.seed]:
            settings = {**dict(zip(keys, combo)), "train.seed": seed, **(overrides or {})}
            configs.append(_with(params.base, settings, params.source))
    return configs


def llc_with_overrides(llc: LLCConfig | Mapping | None, overrides: Mapping[str, Any], source: str) -> LLCConfig:
    """An llc section with ``llc.*`` overrides on top (any other key is refused here)."""
    data = dataclasses.asdict(llc) if isinstance(llc, LLCConfig) else copy.deepcopy(dict(llc or {}))
    for dotted, value in overrides.items():
        if not dotted.startswith("llc."):
            raise ConfigError(f"{source}: only llc.* keys apply here, got '{dotted}'")
        data = deep_merge(data, nested(dotted[4:], value))
    return build_section(LLCConfig, data, "llc", source)


def sections_of(cfg: SeqConfig, llc: LLCConfig) -> dict:
    """The params sections of one resolved sequence config: what a notebook is given."""
    flat = cfg.to_dict()
    task = {"name": flat["task"], **{k: flat[k] for k in TASK_KEYS}}
    train = {k: flat[k] for k in TRAIN_KEYS}
    return {"task": task, "model": {"kind": MODEL_KIND, **flat["model"]}, "train": train, "llc": dataclasses.asdict(llc)}
