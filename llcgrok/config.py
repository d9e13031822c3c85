"""Configuration: dataclasses for each params section, YAML loading and validation.

A params file has a few top-level sections (``task``, ``model``, ``train``, ``llc``,
``grid``). papermill's ``-f`` injects each top-level key as one notebook variable and
replaces it whole, so every loader here merges *partial* sections onto the defaults.

Validation happens once, at the edge: a user's mistake becomes a :class:`ConfigError`
whose message is one line naming the file and the dotted key.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

TASK_NAMES = (
    "x_plus_y", "x_minus_y", "x_div_y", "permutation",
    # further operations of the original grokking work (Power et al.)
    "x_times_y", "x2_plus_y2", "x3_plus_xy",
)
SEQ_TASKS = ("fraction_of_x", "addition")  # llcgrok.seqtasks; params mapped by llcgrok.seqparams
SECTIONS = ("task", "model", "train", "llc", "grid")
LLC_SAMPLERS = ("auto", "batched", "devinterp")  # llc.estimate_llc(sampler=...)
LLC_METHODS = ("sgld", "rmsprop_sgld")  # llc.estimate_llc(method=...)


class ConfigError(ValueError):
    """A user's configuration mistake; its message is one line meant for the terminal."""


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % d for d in range(2, int(math.isqrt(n)) + 1))


@dataclass
class TaskConfig:
    name: str = "x_plus_y"
    p: int = 97  # modulus of the modular tasks
    k: int = 5  # permutation tasks use the symmetric group S_k
    training_fraction: float = 0.5
    # None ties the split to the run seed, as the reference template does.
    split_seed: typing.Optional[int] = None


@dataclass
class ModelConfig:
    num_layers: int = 2
    d_model: int = 128
    num_heads: int = 4
    ffn_mult: int = 4
    norm: str = "post"  # "post" is the reference block; "pre" is the pre-norm variant


@dataclass
class TrainConfig:
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.98
    weight_decay: float = 0.5
    warmup_steps: int = 50
    batch_size: int = 512
    num_steps: int = 7500
    eval_every: int = 10
    eval_batches: int = 8  # validation on eval_batches x batch_size samples drawn with replacement
    checkpoint_schedule: str = "log"  # "log", "linear" or "mixed" (union of both)
    num_checkpoints: int = 40
    # Stop this many steps after validation accuracy first exceeds 0.99 (None: never stop early).
    early_stop_delay: typing.Optional[int] = None
    seed: int = 0
    device: str = "auto"
    num_threads: typing.Optional[int] = None  # torch intra-op threads; None leaves torch's default
    # Record a fingerprint (19 quantiles of log p(correct) on a fixed probe set of validation
    # examples) every this many steps into fingerprints.csv (None: off); llcgrok.fingerprints.
    fingerprint_every: typing.Optional[int] = None
    fingerprint_probes: int = 100
    # Gaussian noise added to the initial weights, per tensor relative to its RMS (0: none,
    # bit-identical to unperturbed training), drawn from its own generator seeded by perturbation_seed.
    init_perturbation: float = 0.0
    perturbation_seed: int = 0


@dataclass
class CalibrationConfig:
    """Rule v5 (llcgrok.rule): a localization ladder walked downwards, at each rung steps
    epsilon = c / (nbeta h_max + gamma) for the step fractions c, halved until the estimate
    stops moving; the first gamma at which the estimate stops changing is certified."""

    localizations: typing.List[float] = field(default_factory=lambda: [1e5, 1e4, 1e3, 1e2, 1e1, 1.0])
    step_fractions: typing.List[float] = field(default_factory=lambda: [0.2, 0.1, 0.05, 0.025, 0.0125])
    epsilons: typing.Optional[typing.List[float]] = None  # explicit steps instead of step_fractions
    nbetas: typing.Optional[typing.List[float]] = None  # None: llc.nbeta only; more give the nbeta-slope
    num_draws: typing.Optional[int] = None  # ignored since rule v4: calibration uses llc.num_draws, the trajectory's window
    max_burnin_steps: int = 5000  # cap on the automatic burn-in (5 relaxation times of the slowest counted direction)
    checkpoints: str = "final+peak"  # where the rule is applied: "final", or also the checkpoint where tr(H) peaks
    mala_band: typing.List[float] = field(default_factory=lambda: [0.2, 1.0])  # devinterp's MALA estimate reads ~0.55 even on a Gaussian posterior


@dataclass
class LLCConfig:
    # epsilon and localization are used as given only without calibration (rows then say
    # "config", regime "curvature"); calibration replaces them (llcgrok.rule).
    epsilon: float = 1e-6
    nbeta: typing.Optional[float] = None  # None: n / log n for the n training examples
    localization: float = 1e5
    num_chains: int = 4
    num_draws: int = 400
    num_burnin_steps: typing.Optional[int] = None  # None: 5 relaxation times (llcgrok.calibrate.burnin_steps)
    batch_size: int = 256
    seed: int = 0
    cores: int = 1  # processes running chains in parallel
    device: str = "auto"
    calibrate: bool = True  # calibrate (final and tr(H)-peak checkpoints) before a trajectory
    curvature_probes: int = 10  # Hutchinson probes for tr(H) at every checkpoint (trace_ratio, the peak)
    # Checkpoints of a trajectory whose chains advance as one batched computation (batched
    # sampler, cores 1): a small model's step is mostly overhead, which they then share.
    # 1: one at a time. Measured (benchmarks/identity_tables.py): bit for bit the same traces
    # for the modular and addition runs, 1e-8 relative for fraction_of_x's MSE; the presets set it.
    checkpoint_batch: int = 1
    curvature_examples: typing.Optional[int] = None  # tr(H), h_max on this many training examples (None: all)
    sampler: str = "auto"  # "batched" (chains as one computation), "devinterp" (its loop), "auto" (the faster)
    method: str = "sgld"  # "sgld" or "rmsprop_sgld" (RMSProp-preconditioned)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)


@dataclass
class GridConfig:
    """Study axes: dotted config keys mapped to lists of values, plus the seeds.

    ``sweep`` expands the product of all axes and seeds. One run (``llcgrok train``, a
    notebook) is the sections as written: an axis gives its first value, and ``seeds`` its
    first seed, only to a key that the sections leave out (:func:`resolve_run`).
    """

    axes: typing.Dict[str, list] = field(default_factory=dict)
    seeds: typing.Optional[typing.List[int]] = None  # None: just train.seed


@dataclass
class RunConfig:
    """Everything one training run (and its LLC trajectory) needs."""

    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    llc: LLCConfig = field(default_factory=LLCConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def run_id(self) -> str:
        return run_id_for(self)


@dataclass
class Params:
    """A whole params file: one run's defaults plus the study grid."""

    base: RunConfig = field(default_factory=RunConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    source: str = "<params>"
    # Dotted keys the sections set (not defaults): they beat the grid's first values in one run.
    explicit: frozenset = frozenset()

    def to_dict(self) -> dict:
        out = self.base.to_dict()
        out["grid"] = dataclasses.asdict(self.grid)
        return out


# --------------------------------------------------------------------------- validation


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
    """One section (a dataclass of this module) from a mapping merged onto its defaults,
    validated as part of a default run config: the same checks as a params file."""
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


# --------------------------------------------------------------------------- dotted keys


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


def get_dotted(cfg: Any, dotted: str) -> Any:
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


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


STANDARD_AXES = ("task.name", "model.num_layers", "model.d_model", "model.num_heads", "train.seed")


def run_id_for(cfg: RunConfig, extra_axes: typing.Iterable[str] = ()) -> str:
    """Readable id such as ``x_plus_y-L2-d128-h4-s0``.

    Axes beyond the standard ones (say ``train.weight_decay``) are appended as
    ``-weight_decay1.0`` so that every config of a study gets its own id.
    """
    t, m = cfg.task, cfg.model
    run_id = f"{t.name}-L{m.num_layers}-d{m.d_model}-h{m.num_heads}"
    for dotted in extra_axes:
        if dotted not in STANDARD_AXES:
            run_id += f"-{dotted.rsplit('.', 1)[-1]}{get_dotted(cfg, dotted)}"
    return f"{run_id}-s{cfg.train.seed}"


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
