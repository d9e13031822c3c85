"""The params file: reading it, overrides, one run's config and the study's configs.

A params file has a few top-level sections (``task``, ``model``, ``train``, ``llc``,
``grid``; the dataclasses of :mod:`llcgrok.config_sections`). papermill's ``-f`` injects
each top-level key as one notebook variable and replaces it whole, so every loader here
merges *partial* sections onto the defaults.

Validation happens once, at the edge (:mod:`llcgrok.config_validation`): a user's mistake
becomes a :class:`ConfigError` whose message is one line naming the file and the dotted key.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml

from .config_sections import (  # noqa: F401  (re-exported: the params format's names, imported from here)
    LLC_METHODS,
    LLC_SAMPLERS,
    SECTIONS,
    SEQ_TASKS,
    STANDARD_AXES,
    TASK_NAMES,
    CalibrationConfig,
    ConfigError,
    GridConfig,
    LLCConfig,
    ModelConfig,
    Params,
    RunConfig,
    TaskConfig,
    TrainConfig,
    get_dotted,
    run_id_for,
)
from .config_validation import (  # noqa: F401  (build_section, is_prime: re-exported, imported from here)
    _build,
    _check_positive,
    _coerce,
    _field_type,
    build_section,
    is_prime,
    set_dotted,
    validate_run,
)


# --------------------------------------------------------------------------- overrides


def deep_merge(base: Any, extra: Any) -> Any:
    """``extra`` merged onto ``base`` key by key at every depth; None leaves ``base``."""
    if extra is None:
        return base
    if isinstance(base, Mapping) and isinstance(extra, Mapping):
        return {**base, **{k: deep_merge(base.get(k), v) for k, v in extra.items()}}
    return extra


def nested(dotted: str, value: Any) -> dict:
    """``("model.d_model", 8)`` -> ``{"model": {"d_model": 8}}``."""
    *parents, last = dotted.split(".")
    out: dict = {last: value}
    for part in reversed(parents):
        out = {part: out}
    return out


def parse_set_option(text: str, source: str = "--set") -> tuple[str, Any]:
    """``"model.d_model=64"`` -> ``("model.d_model", 64)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"{source}: expected dotted.key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def parse_overrides(texts: Any, source: str = "--set") -> dict:
    """``["model.d_model=48", "train.num_steps=60"]`` (or one such string) -> ``{dotted: value}``,
    each parsed as :func:`parse_set_option` parses ``--set``."""
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, (list, tuple)):
        raise ConfigError(f"{source}: expected a list of 'dotted.key=value' strings, got {texts!r}")
    if not all(isinstance(t, str) for t in texts):
        raise ConfigError(f"{source}: every override is a 'dotted.key=value' string, got {list(texts)!r}")
    return dict(parse_set_option(t, source) for t in texts)


# --------------------------------------------------------------------------- loading


def params_from_sections(
    task: Mapping | None = None,
    model: Mapping | None = None,
    train: Mapping | None = None,
    llc: Mapping | None = None,
    grid: Mapping | None = None,
    *,
    source: str = "<params>",
) -> Params:
    """Build validated :class:`Params` from (possibly partial) section mappings."""
    base = RunConfig()
    for name, data in (("task", task), ("model", model), ("train", train), ("llc", llc)):
        setattr(base, name, _build(type(getattr(base, name)), data, name, source))
    grid_cfg = _build(GridConfig, grid, "grid", source)
    for dotted, values in grid_cfg.axes.items():
        tp = _field_type(RunConfig, dotted, source, what="grid axis")
        if not isinstance(values, (list, tuple)):
            raise ConfigError(f"{source}: grid axis 'grid.axes.{dotted}' must be a list, got {values!r}")
        if not values:
            raise ConfigError(f"{source}: grid axis 'grid.axes.{dotted}' is empty: the grid has no configs")
        grid_cfg.axes[dotted] = [_coerce(v, tp, f"grid.axes.{dotted}[{i}]", source) for i, v in enumerate(values)]
    if grid_cfg.seeds is not None and not grid_cfg.seeds:
        raise ConfigError(f"{source}: 'grid.seeds' is empty: the grid has no configs")
    for i, s in enumerate(grid_cfg.seeds or []):
        _check_positive(source, f"grid.seeds[{i}]", s, allow_zero=True)
    explicit = frozenset().union(*(_leaf_keys(type(getattr(base, n)), data, n) for n, data in
                                    (("task", task), ("model", model), ("train", train), ("llc", llc))))
    params = Params(base=base, grid=grid_cfg, source=source, explicit=explicit)
    expand(params)  # validates every config of the study, so a bad cell fails at load time
    return params


def _leaf_keys(cls: type, data: Any, prefix: str) -> set:
    """The dotted keys that the (already validated) mapping ``data`` sets under ``cls``."""
    keys = set()
    hints = typing.get_type_hints(cls)
    for key, value in (data or {}).items():
        dotted = f"{prefix}.{key}"
        tp = hints[key]
        keys |= _leaf_keys(tp, value, dotted) if dataclasses.is_dataclass(tp) and isinstance(value, Mapping) else {dotted}
    return keys


def read_sections(path: str | Path) -> dict:
    """The sections of a params YAML file as written (``{section: mapping or None}``),
    before any merging. Errors name the file."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise ConfigError(f"{source}: params file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{source}: not valid YAML{where}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: not a text YAML file") from None
    if not data:  # an empty (or all-comment) file is a truncated or wrong file, not "all defaults"
        raise ConfigError(f"{source}: the params file is empty; expected sections {', '.join(SECTIONS)}")
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping with sections {', '.join(SECTIONS)}")
    unknown = [k for k in data if k not in SECTIONS]
    if unknown:
        raise ConfigError(f"{source}: unknown key '{unknown[0]}' (known sections: {', '.join(SECTIONS)})")
    return {k: data.get(k) for k in SECTIONS}


def is_sequence(sections: Mapping | None) -> bool:
    """Whether params sections describe a sequence task (``task.name``), read by
    :mod:`llcgrok.seqparams` rather than :func:`params_from_sections`."""
    task = (sections or {}).get("task") or {}
    return isinstance(task, Mapping) and task.get("name") in SEQ_TASKS


def load_params(path: str | Path) -> Params:
    """Read and validate a params YAML file. Errors name the file and the key."""
    sections = read_sections(path)
    if is_sequence(sections):
        raise ConfigError(f"{path}: task '{sections['task']['name']}' is a sequence task: "
                          "llcgrok.seqparams.load_seq_params reads this file")
    return params_from_sections(**sections, source=str(path))


def resolve_run(params: Params, overrides: Mapping[str, Any] | None = None, seed: int | None = None) -> RunConfig:
    """One run from a params file: the sections as written; for a key they leave out, the
    first value of its grid axis (``train.seed``: the first of ``grid.seeds``); then
    ``overrides`` (dotted keys) and ``seed`` on top. The sections name the single run, the
    grid spans the study around it, so a preset's single run is the config it documents."""
    cfg = copy.deepcopy(params.base)
    for dotted, values in params.grid.axes.items():
        if dotted not in params.explicit:
            set_dotted(cfg, dotted, values[0], params.source)
    if params.grid.seeds and "train.seed" not in params.explicit:
        cfg.train.seed = params.grid.seeds[0]
    for dotted, value in (overrides or {}).items():
        set_dotted(cfg, dotted, value, params.source)
    if seed is not None:
        cfg.train.seed = seed
    return validate_run(cfg, params.source)


def expand(params: Params) -> list[RunConfig]:
    """Every config of the study: the product of all axes and seeds, validated."""
    axes = list(params.grid.axes.items())
    keys = [k for k, _ in axes]
    configs = []
    # A grid over widths and heads may contain shapes where heads do not divide d_model;
    # those cells are dropped (as the capacity grid drops them), not reported as errors.
    heads_axis = "model.num_heads" in params.grid.axes or "model.d_model" in params.grid.axes
    for combo in itertools.product(*[v for _, v in axes]):
        for seed in params.grid.seeds or [params.base.train.seed]:
            cfg = copy.deepcopy(params.base)
            for dotted, value in zip(keys, combo):
                set_dotted(cfg, dotted, value, params.source)
            if heads_axis and cfg.model.num_heads > 0 and cfg.model.d_model % cfg.model.num_heads:
                continue
            cfg.train.seed = seed
            configs.append(validate_run(cfg, params.source))
    if not configs:
        raise ConfigError(f"{params.source}: 'grid.axes' leaves no valid config (heads must divide d_model)")
    return configs


def run_config_from_dict(data: Mapping, source: str = "<config>") -> RunConfig:
    """Rebuild a :class:`RunConfig` from ``to_dict()`` output (e.g. a run's config.yaml)."""
    sections = {k: data.get(k) for k in ("task", "model", "train", "llc")}
    return validate_run(params_from_sections(**sections, source=source).base, source)


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
