"""The sections of a params file as dataclasses, the names the format knows, and run ids.

A params file has a few top-level sections (``task``, ``model``, ``train``, ``llc``,
``grid``); each is one dataclass here, its defaults the library's. Building them from
YAML, and the checks, are :mod:`llcgrok.config_validation`; reading a params file is
:mod:`llcgrok.config`.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

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


def get_dotted(cfg: Any, dotted: str) -> Any:
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


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
