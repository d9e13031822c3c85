"""Fingerprint studies: train (or reuse) a set of runs along one config axis, by default
``train.weight_decay``, in the layout of a sweep directory (``runs/<run_id>``), and read
their fingerprints (:mod:`llcgrok.fingerprints`) and LLC trajectories into one table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from . import runs
from .config import resolve_run
from .config_sections import ConfigError, Params, RunConfig, get_dotted, run_id_for
from .config_validation import set_dotted, validate_run
from .fingerprints import COLUMNS, read_fingerprints
from .train import ensure_trained
from .trajectory import run_trajectory

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
    dirs = []
    for run_id, cfg in configs:
        run_dir = Path(out_dir) / "runs" / run_id
        ensure_trained(cfg, run_dir, quiet=quiet)
        dirs.append(run_dir)
    return dirs


def run_info(run_dir: str | Path, keys: Iterable[str] = ("train.weight_decay",)) -> dict:
    """run_id, seed, steps to memorization/grokking and the config values at ``keys`` (named by
    their last part, e.g. ``weight_decay``): the columns that label a run in a study table."""
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
    keys = list(keys)
    frames = [run_trajectory(d, llc_cfg, quiet=quiet).assign(**run_info(d, keys)) for d in run_dirs]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def summary_table(frame: pd.DataFrame, by: str = "weight_decay") -> pd.DataFrame:
    """One row per run (``frame`` labelled by :func:`run_info`), sorted by ``by`` and seed."""
    keep = ["run_id", by, "seed", "steps_to_memorization", "steps_to_grokking", "num_steps_run"]
    table = frame.drop_duplicates("run_id")[[c for c in keep if c in frame]]
    return table.sort_values([by, "seed"]).reset_index(drop=True)
