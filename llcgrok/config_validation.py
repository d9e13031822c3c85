"""Building the section dataclasses from mappings, type-checked, and the checks of values.

Validation happens once, at the edge: a user's mistake becomes a :class:`ConfigError`
whose message is one line naming the file and the dotted key.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import typing
from typing import Any, Mapping

from .config_sections import LLC_METHODS, LLC_SAMPLERS, TASK_NAMES, ConfigError, RunConfig


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % d for d in range(2, int(math.isqrt(n)) + 1))


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it in canonical form."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key, source)
    if origin in (list, typing.List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{key}' must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin in (dict, typing.Dict):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: '{key}' must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            # YAML 1.1 reads "1e-3" (no dot) as a string; accept it as the number it means.
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is not None:
            if not math.isfinite(number):  # NaN passes every comparison; no setting means inf
                raise ConfigError(f"{source}: '{key}' must be finite, got {value!r}")
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    elif dataclasses.is_dataclass(tp):
        return _build(tp, value, key, source)
    raise ConfigError(f"{source}: '{key}' must be {_type_name(tp)}, got {value!r}")


def _build(cls: type, data: Any, prefix: str, source: str, base: Any = None):
    """Merge the mapping ``data`` onto ``base`` (or the defaults) of dataclass ``cls``."""
    obj = copy.deepcopy(base) if base is not None else cls()
    if data is None:
        return obj
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: '{prefix}' must be a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"{source}: unknown key '{dotted}' (known: {', '.join(names)})")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            setattr(obj, key, _build(tp, value, dotted, source, getattr(obj, key)))
        else:
            setattr(obj, key, _coerce(value, tp, dotted, source))
    return obj


def build_section(cls: type, data: Mapping | None, prefix: str, source: str):
    """One section (a dataclass of :mod:`llcgrok.config_sections`) from a mapping merged onto
    its defaults, validated as part of a default run config: the same checks as a params file."""
    section = _build(cls, data, prefix, source)
    run = RunConfig()
    for f in dataclasses.fields(RunConfig):
        if f.name == prefix:
            setattr(run, prefix, section)
    validate_run(run, source)
    return section


def _check_positive(source: str, key: str, value, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{source}: '{key}' must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def validate_run(cfg: RunConfig, source: str) -> RunConfig:
    """Check the values that types alone do not catch. Returns ``cfg``."""
    t, m, tr, llc = cfg.task, cfg.model, cfg.train, cfg.llc
    if t.name not in TASK_NAMES:
        raise ConfigError(f"{source}: 'task.name' must be one of {', '.join(TASK_NAMES)}, got {t.name!r}")
    if not 0.0 < t.training_fraction < 1.0:
        raise ConfigError(f"{source}: 'task.training_fraction' must lie in (0, 1), got {t.training_fraction}")
    if t.name == "permutation":
        if not 2 <= t.k <= 7:
            raise ConfigError(f"{source}: 'task.k' must lie in 2..7 (S_k has k! elements), got {t.k}")
    else:
        if t.p < 2:
            raise ConfigError(f"{source}: 'task.p' must be at least 2, got {t.p}")
        if t.name == "x_div_y" and not is_prime(t.p):
            raise ConfigError(f"{source}: 'task.p' must be prime for x_div_y (b^(p-2) is the inverse only mod a prime), got {t.p}")
    for key in ("num_layers", "d_model", "num_heads", "ffn_mult"):
        _check_positive(source, f"model.{key}", getattr(m, key))
    if m.d_model % m.num_heads:
        raise ConfigError(f"{source}: 'model.num_heads' ({m.num_heads}) must divide 'model.d_model' ({m.d_model})")
    if m.norm not in ("post", "pre"):
        raise ConfigError(f"{source}: 'model.norm' must be 'post' or 'pre', got {m.norm!r}")
    for key in ("lr", "batch_size", "num_steps", "eval_every", "eval_batches", "num_checkpoints",
                "fingerprint_every", "fingerprint_probes"):
        _check_positive(source, f"train.{key}", getattr(tr, key))
    for key in ("weight_decay", "warmup_steps", "early_stop_delay", "seed", "init_perturbation", "perturbation_seed"):
        _check_positive(source, f"train.{key}", getattr(tr, key), allow_zero=True)
    for key in ("beta1", "beta2"):
        if not 0.0 <= getattr(tr, key) < 1.0:
            raise ConfigError(f"{source}: 'train.{key}' must lie in [0, 1), got {getattr(tr, key)}")
    if tr.checkpoint_schedule not in ("log", "linear", "mixed"):
        raise ConfigError(f"{source}: 'train.checkpoint_schedule' must be log, linear or mixed, got {tr.checkpoint_schedule!r}")
    for dev_key, dev in (("train.device", tr.device), ("llc.device", llc.device)):
        if dev not in ("auto", "cpu", "mps") and not dev.startswith("cuda"):
            raise ConfigError(f"{source}: '{dev_key}' must be auto, cuda, mps or cpu, got {dev!r}")
    for key in ("epsilon", "nbeta", "localization", "num_chains", "num_draws", "batch_size", "cores"):
        _check_positive(source, f"llc.{key}", getattr(llc, key), allow_zero=(key == "localization"))
    _check_positive(source, "llc.num_burnin_steps", llc.num_burnin_steps, allow_zero=True)
    for key, allowed in (("sampler", LLC_SAMPLERS), ("method", LLC_METHODS)):
        if getattr(llc, key) not in allowed:
            raise ConfigError(f"{source}: 'llc.{key}' must be one of {', '.join(allowed)}, got {getattr(llc, key)!r}")
    cal = llc.calibration
    _check_positive(source, "llc.curvature_probes", llc.curvature_probes)
    _check_positive(source, "llc.checkpoint_batch", llc.checkpoint_batch)
    if llc.curvature_examples is not None:
        _check_positive(source, "llc.curvature_examples", llc.curvature_examples)
    _check_positive(source, "llc.calibration.max_burnin_steps", cal.max_burnin_steps, allow_zero=True)
    if not cal.localizations:
        raise ConfigError(f"{source}: 'llc.calibration.localizations' needs at least one value")
    for key in ("localizations", "step_fractions", "epsilons", "nbetas"):
        values = getattr(cal, key)
        if values is not None and not values and key != "localizations":
            raise ConfigError(f"{source}: 'llc.calibration.{key}' needs at least one value (or leave it out)")
        for i, value in enumerate(values or []):
            _check_positive(source, f"llc.calibration.{key}[{i}]", value, allow_zero=(key == "localizations"))
    if cal.checkpoints not in ("final", "final+peak"):
        raise ConfigError(f"{source}: 'llc.calibration.checkpoints' must be 'final' or 'final+peak', got {cal.checkpoints!r}")
    _check_positive(source, "llc.calibration.num_draws", cal.num_draws)
    if len(cal.mala_band) != 2 or not 0 <= cal.mala_band[0] < cal.mala_band[1] <= 1:
        raise ConfigError(f"{source}: 'llc.calibration.mala_band' must be [low, high] with 0 <= low < high <= 1")
    return cfg


def _field_type(cls: type, dotted: str, source: str, what: str = "key"):
    """Type annotation of the field at ``dotted`` under dataclass ``cls``."""
    tp = cls
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(tp) or part not in {f.name for f in dataclasses.fields(tp)}:
            raise ConfigError(f"{source}: unknown {what} '{dotted}'")
        tp = typing.get_type_hints(tp)[part]
    return tp


def set_dotted(cfg: RunConfig, dotted: str, value: Any, source: str) -> None:
    """Set ``cfg.<dotted>`` to ``value`` after checking it against the field's type."""
    tp = _field_type(RunConfig, dotted, source)
    *parents, last = dotted.split(".")
    obj = cfg
    for part in parents:
        obj = getattr(obj, part)
    if dataclasses.is_dataclass(tp):
        setattr(obj, last, _build(tp, value, dotted, source, getattr(obj, last)))
    else:
        setattr(obj, last, _coerce(value, tp, dotted, source))
