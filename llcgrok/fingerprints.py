"""Training-dynamics fingerprints: what the network says about a fixed probe set, over time.

With ``train.fingerprint_every = N``, training records at step 0 and every N steps the
log-probability the model gives the correct answer on a fixed set of probes (at most
``train.fingerprint_probes`` validation examples, drawn once without replacement by a
generator of their own), summarised as its 19 quantiles 0.05, 0.10, ..., 0.95. The
sequence of these 19-dimensional snapshots, evenly spaced in steps, is what
:mod:`llcgrok.dmd` decomposes.

Recording leaves training untouched: it draws no number from the training generators, and
evaluates without gradients in eval mode, restoring the mode after. Files in the run
directory::

    fingerprints.csv          step, q05, q10, ..., q95 (one row per recorded step)
    fingerprint_probes.json   the probe indices into the validation split, the steps recorded,
                              the quantile levels and the settings

Both are written with metrics.csv, at every checkpoint, and the recorded rows travel in
``state.pt``: a resumed run continues the sequence from its last checkpoint, with no step
missing or repeated.

The study helpers at the end train (or reuse) a set of runs along one config axis, by
default ``train.weight_decay``, in the layout of a sweep directory (``runs/<run_id>``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from . import runs
from .config import ConfigError, Params, RunConfig, run_id_for, set_dotted, validate_run

FINGERPRINTS_CSV = "fingerprints.csv"
PROBES_JSON = "fingerprint_probes.json"
QUANTILES = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 ... 0.95
QUANTILE_COLUMNS = [f"q{round(q * 100):02d}" for q in QUANTILES]  # q05 ... q95
COLUMNS = ["step", *QUANTILE_COLUMNS]
PROBE_STREAM = 3  # generator stream of the probe draw (0-2: init, batches, validation draws)


def probe_indices(num_val: int, num_probes: int, seed: int) -> torch.Tensor:
    """``min(num_probes, num_val)`` distinct validation indices, sorted, drawn by a
    generator seeded from the run seed alone."""
    from .train import _rng_seed

    generator = torch.Generator().manual_seed(_rng_seed(seed, PROBE_STREAM))
    order = torch.randperm(num_val, generator=generator)
    return order[: min(num_probes, num_val)].sort().values


@torch.no_grad()
def log_prob_correct(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(correct answer) per row, in eval mode without gradients (the mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        logp = F.log_softmax(model(inputs).float(), dim=-1)
        return logp.gather(1, targets[:, None]).squeeze(1)
    finally:
        model.train(was_training)


def fingerprint(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """The 19 quantiles (0.05 ... 0.95) of log p(correct) over ``inputs``."""
    values = log_prob_correct(model, inputs, targets).double().cpu().numpy()
    return np.quantile(values, QUANTILES)


class FingerprintRecorder:
    """Records fingerprints of one run on its fixed probe set; ``train()`` drives it."""

    def __init__(self, cfg: RunConfig, val_inputs: torch.Tensor, val_targets: torch.Tensor):
        tc = cfg.train
        if not tc.fingerprint_every:
            raise ValueError("FingerprintRecorder needs train.fingerprint_every")
        self.every = int(tc.fingerprint_every)
        self.indices = probe_indices(len(val_targets), tc.fingerprint_probes, tc.seed)
        device = val_inputs.device
        self.inputs = val_inputs[self.indices.to(device)]
        self.targets = val_targets[self.indices.to(device)]
        self.requested = tc.fingerprint_probes
        self.rows: list[dict] = []

    def due(self, step: int) -> bool:
        return step % self.every == 0 and (not self.rows or self.rows[-1]["step"] < step)

    def record(self, model: torch.nn.Module, step: int) -> dict:
        row = {"step": int(step), **dict(zip(QUANTILE_COLUMNS, map(float, fingerprint(model, self.inputs, self.targets))))}
        self.rows.append(row)
        return row

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=COLUMNS)

    def probes_info(self) -> dict:
        return {
            "split": "val",
            "probe_indices": [int(i) for i in self.indices],
            "num_probes": len(self.indices),
            "requested_probes": self.requested,
            "fingerprint_every": self.every,
            "quantiles": list(QUANTILES),
            "statistic": "log p(correct answer)",
            "steps": [row["step"] for row in self.rows],
        }

    def write(self, run_dir: str | Path) -> None:
        run_dir = Path(run_dir)
        runs.atomic_write_csv(run_dir / FINGERPRINTS_CSV, self.frame())
        runs.atomic_write_json(run_dir / PROBES_JSON, self.probes_info())


def read_fingerprints(run_dir: str | Path) -> pd.DataFrame:
    """``fingerprints.csv`` of a run (step, q05 ... q95), sorted by step."""
    path = Path(run_dir) / FINGERPRINTS_CSV
    if not path.exists():
        raise FileNotFoundError(f"{path}: no fingerprints; train with train.fingerprint_every set")
    return pd.read_csv(path).sort_values("step").reset_index(drop=True)


def read_probes(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / PROBES_JSON).read_text())


# --------------------------------------------------------------------------- studies


def study_configs(
    params: Params,
    axis: str = "train.weight_decay",
    values: Sequence[Any] | None = None,
    seeds: Sequence[int] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> list[tuple[str, RunConfig]]:
    """``[(run_id, config), ...]``: one config per value of ``axis`` and seed.

    ``values`` defaults to the params grid's values of ``axis`` (else the base config's
    value), ``seeds`` to the grid's seeds (else ``train.seed``); other grid axes take their
    first value where the sections leave them out (as one run does); ``overrides`` (dotted
    keys) are applied last, to every config. Run ids name the axis, e.g. ``x_plus_y-L1-d64-h4-weight_decay1.0-s0``, as a
    sweep over the same grid names them, so a sweep's ``runs/`` is reused.
    """
    from .config import get_dotted, resolve_run

    if values is None:
        values = params.grid.axes.get(axis) or [get_dotted(params.base, axis)]
    if seeds is None:
        seeds = params.grid.seeds or [params.base.train.seed]
    extra_axes = list(dict.fromkeys([*params.grid.axes, axis]))
    out = []
    for value in values:
        for seed in seeds:
            cfg = resolve_run(params, seed=int(seed))
            set_dotted(cfg, axis, value, params.source)
            for key, override in (overrides or {}).items():
                set_dotted(cfg, key, override, "overrides")
            validate_run(cfg, params.source)
            if not cfg.train.fingerprint_every:
                raise ConfigError(f"{params.source}: 'train.fingerprint_every' must be set to record fingerprints")
            out.append((run_id_for(cfg, extra_axes), cfg))
    return out


def ensure_study(configs: Iterable[tuple[str, RunConfig]], out_dir: str | Path, quiet: bool = False) -> list[Path]:
    """Train every config into ``out_dir/runs/<run_id>`` unless finished there; the run dirs."""
    from .notebook import ensure_trained

    dirs = []
    for run_id, cfg in configs:
        run_dir = Path(out_dir) / "runs" / run_id
        ensure_trained(cfg, run_dir, quiet=quiet)
        dirs.append(run_dir)
    return dirs


def run_info(run_dir: str | Path, keys: Iterable[str] = ("train.weight_decay",)) -> dict:
    """run_id, seed, steps to memorization/grokking and the config values at ``keys`` (named by
    their last part, e.g. ``weight_decay``): the columns that label a run in a study table."""
    from .config import get_dotted

    cfg = runs.read_config(run_dir)
    summary = runs.read_summary(run_dir) or {}
    info = {"run_id": Path(run_dir).name, "seed": cfg.train.seed}
    for key in keys:
        info[key.rsplit(".", 1)[-1]] = get_dotted(cfg, key)
    for key in ("steps_to_memorization", "steps_to_grokking", "num_steps_run"):
        info[key] = summary.get(key)
    return info


def study_fingerprints(run_dirs: Iterable[str | Path], keys: Iterable[str] = ("train.weight_decay",)) -> pd.DataFrame:
    """The fingerprints of several runs in one table, each row labelled by :func:`run_info`."""
    keys = list(keys)
    frames = [read_fingerprints(d).assign(**run_info(d, keys)) for d in run_dirs]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)


def study_llc(run_dirs: Iterable[str | Path], llc_cfg, keys: Iterable[str] = ("train.weight_decay",),
              quiet: bool = False) -> pd.DataFrame:
    """The LLC trajectory of every run (``llcgrok.llc.run_trajectory``: calibrated when
    ``llc_cfg.calibrate``, resumed from each ``llc.csv``), in one labelled table."""
    from .trajectory import run_trajectory

    keys = list(keys)
    frames = [run_trajectory(d, llc_cfg, quiet=quiet).assign(**run_info(d, keys)) for d in run_dirs]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def summary_table(frame: pd.DataFrame, by: str = "weight_decay") -> pd.DataFrame:
    """One row per run (``frame`` labelled by :func:`run_info`), sorted by ``by`` and seed."""
    keep = ["run_id", by, "seed", "steps_to_memorization", "steps_to_grokking", "num_steps_run"]
    table = frame.drop_duplicates("run_id")[[c for c in keep if c in frame]]
    return table.sort_values([by, "seed"]).reset_index(drop=True)
